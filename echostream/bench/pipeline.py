"""Whole-agent cost benchmark: per-chunk compute vs stream position, EchoStream vs StreamSpeech.

``echostream bench pipeline`` streams French speech through the complete simultaneous agent
(:class:`~echostream.streaming.translator.StreamingTranslator`'s core: online fbank → encoder →
ASR/ST CTC heads → policy → MT decoder → T2U → unit decoder → units → vocoder) in decision
chunks, for two contenders:

- **echostream-incremental**: an EchoStream model (Emformer) with every stage incremental;
- **streamspeech-recompute**: a StreamSpeech model (chunk Conformer) driven as StreamSpeech's agent
  drives it: every step re-featurises and re-encodes the whole prefix, re-runs the CTC heads, the
  MT decoder (teacher-forced over the whole target prefix per new token), T2U, the unit decoder
  and the vocoder over everything so far.

Recorded per step: source position, wall ms, FLOPs (``FlopCounterMode`` with the CPU attention
formula that ``bench.encoder`` registers), both split by stage (encoder incl. fbank, CTC heads,
MT decoder, T2U + unit decoder, vocoder; ``other`` is the policy and bookkeeping), stream state
bytes. Each step is run twice from the same state (states are values): once timed, once under
the FLOP counter. Inputs of every length L are measured exactly as ``StreamingTranslator``
would run them (full chunks, then ``finish`` with the tail), by forking the long stream at L.

Untrained models' CTC heads emit only blanks, so the policy writes only at the end of the
source; ``busy`` makes the decoders work mid-stream (CTC heads scaled as the tests' busy model,
and their blank bias set so that they emit about ``emit_rate`` tokens per second of source).
Recompute runs cost O(N²): lengths beyond ``recompute_max_s`` are extrapolated from a
quadratic per-step cost model fitted to the measured steps (and one fitted to the measured
``finish`` steps), and marked as such.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..audio.io import load_audio
from ..config import config_path, load_config
from ..models import build_model
from ..models.echostream import TEXT_CTC_SUPPRESS, EchoStreamModel
from ..models.unit_vocoder import UnitVocoder, UnitVocoderConfig
from ..streaming.translator import PRETRAINED_DIR, StreamingTranslator, load_pretrained
from .encoder import machine_info  # importing it registers the CPU SDPA formula
from .pipeline_report import STAGES, WINDOW_S, plot, poly, render_doc, render_markdown

REPO_DIR = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO_DIR / "echostream" / "assets" / "samples"
DEFAULT_VOCODER = PRETRAINED_DIR / "vocoder-tiny" / "vocoder.pt"
FRAME_S = 0.04  # one encoder frame
QUICK = {"lengths": [1, 2, 3], "recompute_max_s": 2, "chunks": [160]}


# ----------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    name: str  # echostream-incremental | streamspeech-recompute
    mode: str  # StreamingTranslator mode
    model: EchoStreamModel
    vocoder: UnitVocoder | None
    source: str  # where the weights come from, for the report
    max_len_a: float = 0.5  # the agent's cap on target tokens per encoder frame (final decode)
    segmenter: bool = False  # the agent's default sentence segmenter on long streams


def vocoder_for(model: EchoStreamModel, path: Path | None = DEFAULT_VOCODER) -> UnitVocoder:
    """The shipped tiny vocoder if it covers the model's units, else a random one of its size."""
    num_units = model.cfg.vocab.num_units
    if path is not None and Path(path).is_file():
        vocoder = UnitVocoder.load(path)
        if vocoder.cfg.num_units >= num_units:
            return vocoder.eval()
    torch.manual_seed(0)
    return UnitVocoder(UnitVocoderConfig(num_units=num_units)).eval()


def random_model(config: Path, seed: int = 0) -> EchoStreamModel:
    torch.manual_seed(seed)
    return build_model(load_config(config)).eval()


@torch.no_grad()
def make_busy(model: EchoStreamModel, pcm: np.ndarray, emit_rate: float | None) -> dict:
    """Make a model's policy write mid-stream: scale its CTC heads ×30 and re-draw the MT
    embeddings as the tests' ``busy_model`` does; then, if ``emit_rate`` (tokens per second of
    source) is given, add to each head's blank logit the bias that makes it non-blank on that
    fraction of frames of ``pcm`` (parallel encoder pass). Returns the biases added."""
    model.asr_ctc.proj.weight.mul_(30.0)
    model.st_ctc.head.proj.weight.mul_(30.0)
    model.mt_decoder.embed_tokens.weight.normal_(0, 1.0)
    if not emit_rate:
        return {}
    feats = model.encoder.features(pcm)  # (T, 80)
    enc, enc_len = model.encoder(feats[None], torch.tensor([feats.shape[0]]))
    st_logits, st_len = model.st_ctc(enc, enc_len)
    seconds = len(pcm) / model.cfg.features.sample_rate
    biases = {}
    for name, head, logits in (
        ("asr", model.asr_ctc, model.asr_ctc(enc)[0, : int(enc_len[0])]),
        ("st", model.st_ctc.head, st_logits[0, : int(st_len[0])]),
    ):
        others = logits.clone()
        others[:, [0, *TEXT_CTC_SUPPRESS]] = float("-inf")
        margin = logits[:, 0] - others.max(-1).values  # blank wins where > 0
        fraction = min(1.0, emit_rate * seconds / margin.numel())
        delta = -float(torch.quantile(margin, fraction))
        head.proj.bias[0] += delta
        biases[name] = delta
    return biases


# ----------------------------------------------------------------------------- stage meter


class StageMeter:
    """Attributes the wall time and FLOPs of an agent step to pipeline stages by wrapping the
    entry methods of the stage modules on the instances (the outermost wrapped call counts).
    Use as a context manager; the wrappers are removed on exit."""

    def __init__(self, model: EchoStreamModel, vocoder: UnitVocoder | None):
        m = model
        self.targets = [
            ("encoder", m.encoder, ("stream_pcm", "forward", "features")),
            ("ctc", m.asr_ctc, ("forward",)),
            ("ctc", m.st_ctc, ("stream", "forward")),
            ("mt", m.mt_decoder, ("extend_memory", "stream", "forward")),
            ("t2u_units", m.t2u, ("stream", "forward")),
            ("t2u_units", m.unit_decoder, ("stream", "forward")),
        ]
        if vocoder is not None:
            self.targets.append(("vocoder", vocoder, ("stream", "forward")))
        self.counter: FlopCounterMode | None = None
        self._depth = 0
        self.reset()

    def reset(self) -> None:
        self.ms = dict.fromkeys(STAGES[:-1], 0.0)
        self.flops = dict.fromkeys(STAGES[:-1], 0)

    def _wrap(self, stage: str, method):
        def wrapper(*args, **kwargs):
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            flops0 = self.counter.get_total_flops() if self.counter is not None else 0
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.ms[stage] += (time.perf_counter() - t0) * 1000
                if self.counter is not None:
                    self.flops[stage] += self.counter.get_total_flops() - flops0
                self._depth -= 1

        return wrapper

    def __enter__(self) -> StageMeter:
        for stage, obj, names in self.targets:
            for name in names:
                setattr(obj, name, self._wrap(stage, getattr(obj, name)))
        return self

    def __exit__(self, *exc) -> None:
        for _, obj, names in self.targets:
            for name in names:
                delattr(obj, name)  # back to the class's method


# ----------------------------------------------------------------------------- streaming


def bench_audio(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """(N,) float32: the bundled French recordings, repeated up to ``seconds``."""
    samples = [load_audio(p, sample_rate) for p in sorted(SAMPLES_DIR.glob("*.wav"))]
    if not samples:
        raise FileNotFoundError(f"{SAMPLES_DIR}: no bundled .wav samples")
    total = round(seconds * sample_rate)
    reps = math.ceil(total / sum(len(s) for s in samples))
    return np.concatenate(samples * reps)[:total]


def _measure(core, meter: StageMeter, pcm: np.ndarray, state, final: bool, flops: bool):
    """One agent step, timed, then again from the same state under the FLOP counter."""
    x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None]
    n = torch.tensor([x.shape[1]])
    meter.reset()
    t0 = time.perf_counter()
    outputs, new_state = core.step(x, n, state, final=final)
    row: dict[str, Any] = {"wall_ms": (time.perf_counter() - t0) * 1000}
    row["stage_ms"] = dict(meter.ms, other=row["wall_ms"] - sum(meter.ms.values()))
    if flops:
        meter.reset()
        with FlopCounterMode(display=False) as counter:
            meter.counter = counter
            core.step(x, n, state, final=final)
        meter.counter = None
        row["flops"] = counter.get_total_flops()
        row["stage_flops"] = dict(meter.flops, other=row["flops"] - sum(meter.flops.values()))
    out = outputs[0]
    row.update(
        state_bytes=new_state.nbytes(),
        new_tokens=len(out.target_ids),
        new_units=len(out.units),
        new_audio_samples=int(out.audio.numel()),
    )
    return row, new_state


def translator_for(c: Contender, chunk_ms: int) -> StreamingTranslator:
    """The agent a contender is measured as. The sentence segmenter (when the translator has
    one) is on only if ``c.segmenter``: off, the stream is one unsegmented utterance."""
    kwargs: dict[str, Any] = {"chunk_ms": chunk_ms, "mode": c.mode, "max_len_a": c.max_len_a}
    if "segmenter" in inspect.signature(StreamingTranslator).parameters and not c.segmenter:
        kwargs["segmenter"] = None
    return StreamingTranslator(c.model, c.vocoder, **kwargs)


def stream_contender(
    c: Contender,
    pcm: np.ndarray,
    lengths: list[float],
    chunk_ms: int,
    flops: bool = True,
    log=print,
) -> dict[str, Any]:
    """Stream ``pcm`` in decision chunks; at each length L, fork a ``finish`` with the tail (what
    ``StreamingTranslator`` does on an L-second input). Returns steps and per-length totals."""
    translator = translator_for(c, chunk_ms)
    core, chunk, rate = translator.core, translator.chunk_samples, translator.sample_rate
    state = core.init_state(1)
    steps, totals, pos = [], {}, 0
    ends = sorted(round(L * rate) for L in lengths)
    tokens = units = 0
    with StageMeter(c.model, c.vocoder) as meter:
        while ends:
            if pos + chunk <= ends[0]:
                row, state = _measure(core, meter, pcm[pos : pos + chunk], state, False, flops)
                pos += chunk
                row["position_s"] = pos / rate
                tokens, units = tokens + row["new_tokens"], units + row["new_units"]
                steps.append(row)
                continue
            end = ends.pop(0)
            fin, _ = _measure(core, meter, pcm[pos:end], state, True, flops)
            before = [s for s in steps if s["position_s"] <= end / rate]
            length = end / rate
            total_ms = sum(s["wall_ms"] for s in before) + fin["wall_ms"]
            totals[f"{length:g}"] = {
                "length_s": length,
                "measured": True,
                "finish": fin,
                "steps": len(before) + 1,
                "total_ms": total_ms,
                "total_flops": sum(s.get("flops", 0) for s in before) + fin.get("flops", 0),
                "rtf": total_ms / 1000 / length,
                "target_tokens": tokens + fin["new_tokens"],
                "units": units + fin["new_units"],
                "mid_stream_tokens": tokens,
            }
            log(
                f"{c.name:<24} chunk={chunk_ms}ms {length:g}s: {len(before)} steps, "
                f"compute {total_ms / 1000:.2f}s (RTF {totals[f'{length:g}']['rtf']:.3f}), "
                f"{tokens} tokens written mid-stream, "
                f"{totals[f'{length:g}']['target_tokens']} in all"
            )
    return {"steps": steps, "totals": totals}


# ----------------------------------------------------------------------------- extrapolation


def _fit_keys(rows: list[dict]) -> list[tuple[str, str | None]]:
    keys = [("wall_ms", None)] + [("stage_ms", s) for s in STAGES]
    if rows and "flops" in rows[0]:
        keys += [("flops", None)] + [("stage_flops", s) for s in STAGES]
    return keys


def _value(row: dict, key: tuple[str, str | None]) -> float:
    return row[key[0]] if key[1] is None else row[key[0]][key[1]]


def _name(key: tuple[str, str | None]) -> str:
    return key[0] if key[1] is None else f"{key[0]}.{key[1]}"


def fit_nonnegative_quadratic(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares a + b·t + c·t² with a, b, c ≥ 0 (a cost cannot fall with length, and an
    unconstrained fit to noisy steps can turn negative when extrapolated). Exact: the optimum is
    the unconstrained fit on the terms it keeps positive, so the best feasible fit over every
    subset of terms (no more terms than points) is it."""
    ts = torch.tensor([p[0] for p in points], dtype=torch.float64)
    ys = torch.tensor([p[1] for p in points], dtype=torch.float64)
    powers = torch.stack([torch.ones_like(ts), ts, ts * ts], dim=1)  # (N, 3)
    best, best_err = (0.0, 0.0, 0.0), float((ys * ys).sum())
    for size in range(1, min(3, len(points)) + 1):
        for terms in itertools.combinations(range(3), size):
            design = powers[:, list(terms)]
            coef = torch.linalg.lstsq(design, ys[:, None]).solution[:, 0]
            if (coef < 0).any():
                continue
            err = float(((design @ coef - ys) ** 2).sum())
            if err < best_err - 1e-12 * max(1.0, best_err):
                full = [0.0, 0.0, 0.0]
                for k, v in zip(terms, coef.tolist(), strict=True):
                    full[k] = v
                best, best_err = (full[0], full[1], full[2]), err
    return best


def fit_cost_model(run: dict[str, Any]) -> dict[str, Any]:
    """Per-stage non-negative quadratic fits of the per-step cost over the measured non-final
    steps (t = position in s) and of the ``finish`` step over the measured lengths (t = length);
    a total's coefficients are the sums of its stages' (so the parts add up to the whole)."""
    steps, fins = run["steps"], list(run["totals"].values())
    out: dict[str, Any] = {"step": {}, "finish": {}}
    for key in _fit_keys(steps):
        if key[1] is None:
            continue
        name = _name(key)
        out["step"][name] = fit_nonnegative_quadratic(
            [(s["position_s"], _value(s, key)) for s in steps]
        )
        out["finish"][name] = fit_nonnegative_quadratic(
            [(f["length_s"], _value(f["finish"], key)) for f in fins]
        )
    for total, part in (("wall_ms", "stage_ms"), ("flops", "stage_flops")):
        for which in ("step", "finish"):
            parts = [v for k, v in out[which].items() if k.startswith(part + ".")]
            if parts:
                out[which][total] = tuple(sum(c[i] for c in parts) for i in range(3))
    return out


def extrapolate_total(run: dict, fit: dict, length: float, chunk_ms: int) -> dict[str, Any]:
    """Total compute of an L-second input from the fitted per-step and finish costs."""
    calls = int(length * 1000 // chunk_ms)
    positions = [(k + 1) * chunk_ms / 1000 for k in range(calls)]
    out: dict[str, Any] = {"length_s": length, "measured": False, "steps": calls + 1}
    for total, key in (("total_ms", "wall_ms"), ("total_flops", "flops")):
        if key in fit["step"]:
            out[total] = sum(poly(fit["step"][key], t) for t in positions) + poly(
                fit["finish"][key], length
            )
    out["rtf"] = out["total_ms"] / 1000 / length
    return out


def per_chunk_at(run: dict, position: float, fit: dict | None = None) -> dict[str, Any]:
    """Mean per-step cost over the steps in (position - 1 s, position]; from the fitted model
    when the run did not reach that far (``extrapolated``)."""
    steps = run["steps"]
    rows = [s for s in steps if position - WINDOW_S < s["position_s"] <= position + 1e-9]
    chunk_s = steps[0]["position_s"] if steps else 0.0
    if rows and steps[-1]["position_s"] + chunk_s > position + 1e-9:  # the run got there
        out = {"extrapolated": False, "steps": len(rows)}
        for key in _fit_keys(rows):
            out[_name(key)] = sum(_value(r, key) for r in rows) / len(rows)
        return out
    if fit is None:
        raise ValueError(f"no measured steps near {position} s and no cost model")
    ts = [position - k * chunk_s for k in range(max(1, math.ceil(WINDOW_S / chunk_s - 1e-9)))]
    out = {"extrapolated": True, "steps": len(ts)}
    for name, coef in fit["step"].items():
        out[name] = sum(poly(coef, t) for t in ts) / len(ts)
    return out


# ----------------------------------------------------------------------------- driver


def build_contenders(
    model: str | None,
    config: Path | None,
    baseline_config: Path,
    vocoder: Path | None,
) -> list[Contender]:
    if config is not None:
        echo, source = random_model(config), f"{config.name}, random weights"
        echo_voc = vocoder_for(echo, vocoder or DEFAULT_VOCODER)
    else:
        echo, echo_voc = load_pretrained(model)
        source = f"bundled {model}"
        if vocoder is not None or echo_voc is None:
            echo_voc = vocoder_for(echo, vocoder or DEFAULT_VOCODER)
    base = random_model(baseline_config)
    return [
        Contender("echostream-incremental", "incremental", echo, echo_voc, source),
        Contender(
            "streamspeech-recompute",
            "recompute",
            base,
            vocoder_for(base, vocoder or DEFAULT_VOCODER),
            f"{baseline_config.name}, random weights",
        ),
    ]


def run_benchmark(
    contenders: list[Contender],
    lengths: list[float],
    chunks: list[int],
    recompute_max_s: float,
    busy: bool = False,
    emit_rate: float | None = 3.0,
    threads: int = 1,
    quick: bool = False,
    segmenter: bool = False,
    log=print,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    lengths = sorted(lengths)
    pcm = bench_audio(max(lengths))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "threads": threads,
        "quick": quick,
        "lengths_s": lengths,
        "chunks_ms": chunks,
        "recompute_max_s": recompute_max_s,
        "busy": busy,
        "emit_rate": emit_rate if busy else None,
        "segmenter": segmenter,
        "contenders": {},
        "runs": {},
    }
    for c in contenders:
        info: dict[str, Any] = {"mode": c.mode, "weights": c.source, "config": _describe(c.model)}
        if busy:
            info["busy_blank_bias"] = make_busy(c.model, pcm[: 30 * 16000], emit_rate)
            if emit_rate:  # a random MT decoder never says EOS: cap the final decode as a
                c.max_len_a = emit_rate * FRAME_S  # trained one would end (rate × length)
        info["max_len_a"] = c.max_len_a
        c.segmenter = segmenter
        results["contenders"][c.name] = info
    for chunk_ms in chunks:
        for c in contenders:
            measured = [L for L in lengths if c.mode != "recompute" or recompute_max_s >= L]
            run = stream_contender(c, pcm, measured, chunk_ms, log=log)
            fit = run["fit"] = fit_cost_model(run) if len(run["steps"]) >= 3 else None
            for L in lengths:
                if f"{L:g}" in run["totals"]:
                    continue
                if fit is None:
                    raise ValueError(
                        f"{c.name}: {len(run['steps'])} measured steps are too few to fit a cost "
                        f"model: raise recompute_max_s ({recompute_max_s:g} s)"
                    )
                run["totals"][f"{L:g}"] = extrapolate_total(run, fit, L, chunk_ms)
            run["per_chunk"] = {f"{L:g}": per_chunk_at(run, L, fit) for L in lengths}
            results["runs"][f"{c.name}@{chunk_ms}"] = run
    results["summary"] = summarise(results, contenders)
    return results


def _describe(model: EchoStreamModel) -> str:
    cfg = model.cfg
    enc = cfg.encoder.emformer if cfg.encoder.type == "emformer" else cfg.encoder.conformer
    return (
        f"{cfg.encoder.type} {enc.num_layers}L d{enc.d_model}, MT {cfg.mt_decoder.num_layers}L "
        f"d{cfg.mt_decoder.d_model}, T2U {cfg.t2u_encoder.num_layers}L, unit decoder "
        f"{cfg.unit_decoder.num_layers}L, {sum(p.numel() for p in model.parameters()):,} params"
    )


def _state_bytes(run: dict) -> dict[str, int]:
    """Largest stream state over the measured steps of each measured length."""
    return {
        L: max(s["state_bytes"] for s in run["steps"] if s["position_s"] <= t["length_s"])
        for L, t in run["totals"].items()
        if t["measured"]
    }


def summarise(results: dict, contenders: list[Contender]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for chunk_ms in results["chunks_ms"]:
        inc = results["runs"][f"{contenders[0].name}@{chunk_ms}"]
        rec = results["runs"][f"{contenders[1].name}@{chunk_ms}"]
        first, last = (f"{results['lengths_s'][i]:g}" for i in (0, -1))
        row = {
            "incremental_flops_growth": inc["per_chunk"][last]["flops"]
            / inc["per_chunk"][first]["flops"],
            "recompute_flops_growth": rec["per_chunk"][last]["flops"]
            / rec["per_chunk"][first]["flops"],
            "ms_ratio": {
                L: rec["per_chunk"][L]["wall_ms"] / inc["per_chunk"][L]["wall_ms"]
                for L in inc["per_chunk"]
            },
            "flops_ratio": {
                L: rec["per_chunk"][L]["flops"] / inc["per_chunk"][L]["flops"]
                for L in inc["per_chunk"]
            },
            "incremental_rtf": {L: t["rtf"] for L, t in inc["totals"].items()},
            "recompute_rtf": {L: t["rtf"] for L, t in rec["totals"].items()},
            "incremental_state_bytes": _state_bytes(inc),
            "recompute_state_bytes": _state_bytes(rec),
        }
        row["rtf_target_met"] = max(row["incremental_rtf"].values()) <= 0.25
        s[str(chunk_ms)] = row
    return s


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="echostream bench pipeline",
        description="Per-chunk compute of the whole agent vs stream position: EchoStream "
        "incremental vs StreamSpeech's recompute agent.",
    )
    p.add_argument("--model", default="echostream-tiny-fr-en", help="bundled model or folder")
    p.add_argument("--config", help="EchoStream config (name or path): random weights")
    p.add_argument("--baseline-config", default="streamspeech_tiny", help="baseline config")
    p.add_argument("--vocoder", help="unit vocoder checkpoint (default: the shipped tiny one)")
    p.add_argument("--lengths", default="1,5,10,30,60", help="input lengths in s")
    p.add_argument("--chunks", default="160", help="decision chunks in ms, e.g. 160,320")
    p.add_argument(
        "--recompute-max-s",
        type=float,
        default=10.0,
        help="stream the recompute baseline up to this length; extrapolate beyond",
    )
    p.add_argument("--busy", action="store_true", help="make the policy write mid-stream")
    p.add_argument(
        "--emit-rate",
        type=float,
        default=3.0,
        help="with --busy: CTC tokens per second of source (0: as the tests' busy model)",
    )
    p.add_argument(
        "--segmenter",
        action="store_true",
        help="keep the agent's sentence segmenter on (default off: one unsegmented utterance)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="lengths 1,2,3 s, recompute to 2 s")
    p.add_argument("--out", help="folder for results.json, results.md and the plots")
    p.add_argument("--doc", help="also write this documentation page (with --out)")
    p.add_argument(
        "--render", metavar="RESULTS_JSON", help="measure nothing: re-render a results.json"
    )
    p.add_argument("--note", help="a remark printed on the page (e.g. the machine was busy)")
    args = p.parse_args(argv)
    if args.doc and not args.out:
        p.error("--doc needs --out (the folder for its plots)")
    if args.render:
        try:
            results = json.loads(Path(args.render).read_text())
        except (OSError, ValueError) as err:
            p.error(f"{args.render}: cannot read a results JSON ({err})")
        results["note"] = args.note or results.get("note")
        return _write(results, args.out, args.doc)
    try:
        config = config_path(args.config) if args.config else None
        baseline = config_path(args.baseline_config)
        contenders = build_contenders(
            args.model, config, baseline, Path(args.vocoder) if args.vocoder else None
        )
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    lengths, chunks = _floats(args.lengths), [int(c) for c in _floats(args.chunks)]
    recompute_max = args.recompute_max_s
    if args.quick:
        lengths, chunks = QUICK["lengths"], QUICK["chunks"]
        recompute_max = QUICK["recompute_max_s"]
    if not lengths or min(lengths) <= 0 or not chunks or min(chunks) <= 0:
        p.error("--lengths and --chunks must be positive numbers")
    if recompute_max < min(lengths):
        p.error(f"--recompute-max-s {recompute_max:g} is below the shortest length")
    results = run_benchmark(
        contenders,
        lengths,
        chunks,
        recompute_max,
        busy=args.busy,
        emit_rate=args.emit_rate or None,
        threads=args.threads,
        quick=args.quick,
        segmenter=args.segmenter,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    words = sys.argv[1:] if argv is None else argv
    results["command"] = "echostream bench pipeline " + shlex.join(words)
    results["note"] = args.note
    return _write(results, args.out, args.doc)


def _write(results: dict[str, Any], out: str | None, doc: str | None) -> int:
    text = render_markdown(results)
    print(text)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (folder / "results.md").write_text(text)
        plots = plot(results, folder)
        if doc:
            page = render_doc(results, results.get("command", "?").strip(), plots, Path(doc))
            Path(doc).write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
