"""Long-stream benchmark: an hour of speech through the simultaneous agent, at constant cost?

Streams a long input (bundled French samples, or the wavs of a folder, looped in a fixed order
with pauses between utterances) through :class:`~echostream.streaming.translator.
StreamingTranslator` (``history=False``: the translator keeps nothing of the past) as fast as
it can, one decision chunk at a time, and records per minute of source audio:

- per-step compute: wall ms (mean, p95, max), CPU ms (mean, steps without the FLOP counter)
  and FLOPs (``FlopCounterMode`` on every ``--flops-every``-th step, CPU attention included;
  mean and median — a sentence-closing step decodes the whole sentence and weighs ~10×);
- the agent's state bytes (max) and the process's resident memory (RSS at the minute's end);
- target tokens, units and output audio produced, sentences closed.

Writes ``longstream.json`` (settings, per-minute rows, minute-1 vs last-minute summary),
``longstream.png`` (the three curves) and ``longstream.md`` (a table) to ``--out``::

    python -m echostream.bench.longstream --minutes 60 --threads 1 --out docs/benchmarks/longstream

``--segmenter off`` runs the unsegmented agent (state grows with the stream) for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..audio.io import load_audio
from ..streaming.segmenter import SegmenterConfig
from ..streaming.translator import StreamingTranslator, load_pretrained
from .encoder import _register_cpu_sdpa_flops

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"
RATE = 16000


def utterances(folder: Path | None) -> list[np.ndarray]:
    """The 16 kHz utterances to loop: every ``*.wav`` / ``*.flac`` of ``folder`` (sorted;
    default: the bundled samples)."""
    folder = folder or SAMPLES_DIR
    paths = sorted(p for p in folder.glob("*") if p.suffix in (".wav", ".flac"))
    if not paths:
        raise FileNotFoundError(f"no .wav or .flac files in {folder}")
    return [load_audio(p, RATE) for p in paths]


def talk(utts: list[np.ndarray], seed: int, pause_s: tuple[float, float]) -> Iterator[np.ndarray]:
    """Endless stream: the utterances in a shuffled order (reshuffled each round), each followed
    by a pause of uniform random length in ``pause_s``."""
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(utts)):
            yield utts[i]
            yield np.zeros(int(RATE * rng.uniform(*pause_s)), np.float32)


def chunks(source: Iterator[np.ndarray], size: int, total: int) -> Iterator[np.ndarray]:
    """``total`` samples of ``source`` in pieces of ``size`` (the last may be shorter)."""
    buffer, done = np.zeros(0, np.float32), 0
    while done < total:
        while len(buffer) < size:
            buffer = np.concatenate([buffer, next(source)])
        piece = buffer[: min(size, total - done)]
        buffer = buffer[len(piece) :]
        done += len(piece)
        yield piece


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def count_cpu_attention_flops() -> None:
    """Make ``FlopCounterMode`` count CPU attention (see :mod:`echostream.bench.encoder`)."""
    try:
        _register_cpu_sdpa_flops()
    except RuntimeError as err:  # registered already (its own guard misses the packet key)
        if "duplicate" not in str(err):
            raise


def run(
    translator: StreamingTranslator,
    source: Iterator[np.ndarray],
    minutes: float,
    flops_every: int,
    progress: bool = False,
    on_minute: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Stream ``minutes`` of ``source`` through ``translator``; one row per minute
    (``on_minute(rows)`` after each, e.g. to save partial results)."""
    count_cpu_attention_flops()
    step_samples = translator.chunk_samples
    total = int(minutes * 60 * RATE)
    rows: list[dict] = []
    minute: dict = {}

    def new_minute(index: int) -> dict:
        lists = {"ms": [], "cpu_ms": [], "flops": []}
        return dict(minute=index + 1, state=0, tokens=0, units=0, audio=0, segments=0, **lists)

    minute = new_minute(0)
    fed = 0
    for step, piece in enumerate(chunks(source, step_samples, total)):
        counter = FlopCounterMode(display=False) if step % flops_every == 0 else None
        t0, c0 = time.perf_counter(), time.process_time()
        if counter is not None:
            with counter:
                events = translator.push(piece, RATE)
        else:
            events = translator.push(piece, RATE)
        if counter is None:  # CPU time of the steps run without the FLOP counter's overhead
            minute["cpu_ms"].append((time.process_time() - c0) * 1000)
        minute["ms"].append((time.perf_counter() - t0) * 1000)
        if counter is not None:
            minute["flops"].append(counter.get_total_flops())
        fed += len(piece)
        minute["state"] = max(minute["state"], translator.state_bytes())
        for e in events:
            minute["tokens"] += len(e.ids) if e.kind == "text" else 0
            minute["units"] += len(e.ids) if e.kind == "units" else 0
            minute["audio"] += len(e.audio) if e.kind == "audio" else 0
        minute["segments"] = translator.segment
        if fed >= (minute["minute"]) * 60 * RATE or fed >= total:
            rows.append(_summarise(minute, rows))
            if progress:
                r = rows[-1]
                print(f"minute {r['minute']}: {r['step_ms_mean']:.1f} ms/step, state "
                      f"{r['state_kb']:.0f} KB, RSS {r['rss_mb']:.0f} MB, {r['tokens']} tokens",
                      flush=True)  # fmt: skip
            if on_minute is not None:
                on_minute(rows)
            minute = new_minute(len(rows))
            minute["segments"] = translator.segment
    return rows


def _summarise(minute: dict, rows: list[dict]) -> dict:
    ms = np.asarray(minute["ms"])
    closed_before = sum(r["segments_closed"] for r in rows)
    return {
        "minute": minute["minute"],
        "steps": len(ms),
        "step_ms_mean": float(ms.mean()),
        "step_ms_p95": float(np.percentile(ms, 95)),
        "step_ms_max": float(ms.max()),
        "step_cpu_ms_mean": float(np.mean(minute["cpu_ms"])) if minute["cpu_ms"] else 0.0,
        "step_mflops_mean": float(np.mean(minute["flops"]) / 1e6) if minute["flops"] else 0.0,
        "step_mflops_median": float(np.median(minute["flops"]) / 1e6) if minute["flops"] else 0.0,
        "state_kb": minute["state"] / 1024,
        "rss_mb": rss_bytes() / 2**20,
        "tokens": minute["tokens"],
        "units": minute["units"],
        "audio_s": minute["audio"] / RATE,
        "segments_closed": minute["segments"] - closed_before,
    }


def summary(rows: list[dict]) -> dict:
    first, last = rows[0], rows[-1]

    def ratio(key: str) -> float:
        return last[key] / first[key] if first[key] else math.nan

    return {
        "minutes": len(rows),
        "first": first,
        "last": last,
        "step_ms_mean_ratio": ratio("step_ms_mean"),
        "step_mflops_mean_ratio": ratio("step_mflops_mean"),
        "step_mflops_median_ratio": ratio("step_mflops_median"),
        "step_cpu_ms_mean_ratio": ratio("step_cpu_ms_mean"),
        "state_kb_ratio": ratio("state_kb"),
        "rss_mb_growth": last["rss_mb"] - first["rss_mb"],
        "state_kb_max": max(r["state_kb"] for r in rows),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| minute | steps | wall ms/step mean | p95 | max | CPU ms/step | MFLOP/step mean "
        "| median | state KB (max) | RSS MB | tokens | units | audio s | sentences |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['minute']} | {r['steps']} | {r['step_ms_mean']:.1f} | {r['step_ms_p95']:.1f} "
            f"| {r['step_ms_max']:.1f} | {r['step_cpu_ms_mean']:.1f} "
            f"| {r['step_mflops_mean']:.1f} | {r['step_mflops_median']:.1f} | {r['state_kb']:.0f} "
            f"| {r['rss_mb']:.0f} | {r['tokens']} | {r['units']} | {r['audio_s']:.1f} "
            f"| {r['segments_closed']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(minutes, [r["step_ms_mean"] for r in rows], label="mean")
    axes[0].plot(minutes, [r["step_ms_p95"] for r in rows], label="p95")
    axes[0].plot(minutes, [r["step_cpu_ms_mean"] for r in rows], label="CPU mean")
    axes[0].set_ylabel("compute per step (ms; wall unless CPU)")
    axes[0].legend()
    axes[1].plot(minutes, [r["state_kb"] for r in rows], color="C2")
    axes[1].set_ylabel("agent state, max (KB)")
    axes[2].plot(minutes, [r["rss_mb"] for r in rows], color="C3")
    axes[2].set_ylabel("process RSS (MB)")
    for ax in axes:
        ax.set_xlabel("minute of source audio")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echostream bench longstream",
        description="Stream a long input through the agent; per-minute compute, state, RSS.",
    )
    p.add_argument("--model", default="echostream-tiny-fr-en", help="bundled name or folder")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--chunk-ms", type=int, default=320)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wav-dir", type=Path, default=None, help="utterances to loop (*.wav, *.flac)")
    p.add_argument("--pause", type=float, nargs=2, default=(0.6, 1.6), metavar=("MIN", "MAX"),
                   help="seconds of silence after each utterance (uniform)")  # fmt: skip
    p.add_argument("--segmenter", choices=("on", "off"), default="on")
    p.add_argument("--context-frames", type=int, default=0)
    p.add_argument("--max-segment-s", type=float, default=20.0)
    p.add_argument("--pause-ms", type=float, default=800.0)
    p.add_argument("--flops-every", type=int, default=10, help="count FLOPs every N-th step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("work/bench-longstream"))
    p.add_argument("--progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.minutes <= 0 or args.flops_every < 1:
        raise SystemExit("--minutes must be > 0 and --flops-every >= 1")
    torch.set_num_threads(args.threads)
    model, vocoder = load_pretrained(args.model)
    segmenter = (
        SegmenterConfig(args.pause_ms, args.max_segment_s, context_frames=args.context_frames)
        if args.segmenter == "on"
        else None
    )
    translator = StreamingTranslator(
        model, vocoder, chunk_ms=args.chunk_ms, segmenter=segmenter, history=False
    )
    source = talk(utterances(args.wav_dir), args.seed, tuple(args.pause))
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.model}, {args.chunk_ms} ms chunks, segmenter {args.segmenter}, 1 stream"
    t0 = time.perf_counter()
    result: dict = {}

    def save(rows: list[dict], final: bool = False) -> None:
        """Results so far (rewritten every minute, so a stopped run leaves its minutes)."""
        wall = time.perf_counter() - t0
        result.update(
            settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            segmenter=None if segmenter is None else vars(segmenter),
            machine={
                "platform": platform.platform(),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "load_avg": os.getloadavg(),
            },
            complete=final,
            wall_s=wall,
            rtf=wall / (len(rows) * 60),
            summary=summary(rows),
            minutes=rows,
        )
        (args.out / "longstream.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "longstream.md").write_text(table(rows))
        if final or len(rows) % 5 == 0:
            plot(rows, args.out / "longstream.png", title)

    rows = run(translator, source, args.minutes, args.flops_every, args.progress, save)
    translator.finish()
    save(rows, final=True)
    wall = result["wall_s"]
    s = result["summary"]
    print(f"{len(rows)} minutes in {wall:.0f} s (RTF {result['rtf']:.3f}); last/first minute: "
          f"ms/step x{s['step_ms_mean_ratio']:.2f}, CPU ms/step "
          f"x{s['step_cpu_ms_mean_ratio']:.2f}, FLOPs/step x{s['step_mflops_mean_ratio']:.2f}, "
          f"state x{s['state_kb_ratio']:.2f}, RSS {s['rss_mb_growth']:+.1f} MB; "
          f"wrote {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
