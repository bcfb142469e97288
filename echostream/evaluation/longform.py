"""Long-form evaluation with the community's tools (``make eval-longform``).

1. Builds a long-form set (:mod:`echostream.data.longform`: recordings of consecutive same-voice
   utterances with a YAML audio definition and one reference sentence per line), or uses one.
2. Runs ``simulstream_inference`` (simulstream 1.0.0) with
   :class:`~echostream.integrations.simulstream.EchoStreamProcessor` for EchoStream and for the
   baseline, each writing simulstream's JSONL metrics log.
3. Scores each log with simulstream's scorers — ``simulstream_score_latency --scorer
   stream_laal`` (StreamLAAL, plain and computation-aware, after mWER re-segmentation),
   ``simulstream_score_quality --scorer sacrebleu`` (BLEU after the same re-segmentation; COMET
   is not installed), ``simulstream_stats`` (real-time factor, normalised erasure) — and with
   OmniSTEval (``omnisteval longform``: its own re-segmentation, BLEU, chrF, LongYAAL and the
   Long- variants of AL/LAAL/AP/DAL, computation-unaware and -aware).
4. Plots each system's per-call computation time against the position in the stream, from
   the metrics logs (``compute_vs_position.png``; redrawn from the kept logs by ``--reuse-logs``).
5. Writes ``results.json`` (every number, command, runtime and tool version) and ``results.md``.

References: by default the normalised ones (``{split}.norm.en``: lower-case, no punctuation),
because that is what the model writes; ``--raw-reference`` scores against the corpus text.

The baseline: with ``--baseline-checkpoint PATH`` that checkpoint under StreamSpeech's
recompute agent; without it, the bundled EchoStream weights under the recompute agent
(StreamSpeech's policy implementation: every decision re-encodes the whole prefix), which gives
EchoStream's text at StreamSpeech's computational cost.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..data.longform import LongformConfig, LongformError, build_longform

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "simulstream"
BASELINE_LABEL = "recompute agent (StreamSpeech's policy implementation), EchoStream weights"
TOOLS = ("simulstream", "OmniSTEval", "mweralign", "sacrebleu", "torch")


def default_corpus() -> Path:
    """work/synth-demo when its build is complete, else work/synth-tiny."""
    for name in ("synth-demo", "synth-tiny"):
        build = REPO / "work" / name / "build.json"
        if build.is_file() and json.loads(build.read_text()).get("complete") is True:
            return REPO / "work" / name
    raise SystemExit(
        "eval-longform: no complete corpus in work/synth-demo or work/synth-tiny; build one with "
        "`echostream prepare synth --size demo --out work/synth-demo` or pass --corpus/--data"
    )


# ----------------------------------------------------------------------- parsing tool output

_LAAL = re.compile(
    r"LatencyScores\(ideal_latency=(?P<cu>[^,]+), computational_aware_latency=(?P<ca>[^)]+)\)"
)
_BLEU = re.compile(r"^sacrebleu score: (?P<bleu>\S+)$", re.M)
_AS_WER = re.compile(r"AS-WER \(automatic segmentation mWER\): (?P<wer>\S+)")


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value


def parse_stream_laal(stdout: str) -> dict:
    match = _LAAL.search(stdout)
    if match is None:
        raise ValueError("no 'Latency scores' line in simulstream_score_latency's output")
    return {"StreamLAAL_s": _number(match["cu"]), "StreamLAAL_CA_s": _number(match["ca"])}


def parse_sacrebleu(stdout: str, stderr: str = "") -> dict:
    """BLEU (stdout) and mweralign's AS-WER, which it prints on stderr once per recording."""
    match = _BLEU.search(stdout)
    if match is None:
        raise ValueError("no 'sacrebleu score' line in simulstream_score_quality's output")
    wers = [_number(m["wer"]) for m in _AS_WER.finditer(stderr)]
    return {"BLEU": _number(match["bleu"]), "AS_WER_per_recording": wers}


def parse_stats(stdout: str) -> dict:
    start = stdout.find("Stats: ")
    if start < 0:
        raise ValueError("no 'Stats:' in simulstream_stats's output")
    stats, _ = json.JSONDecoder().raw_decode(stdout[start + len("Stats: ") :])
    return {
        "real_time_factor": stats["real_time_factor"]["value"],
        "normalized_erasure": stats["normalized_erasure"]["value"],
    }


def parse_omnisteval(folder: Path) -> dict:
    """OmniSTEval's ``scores.tsv`` → {metric name: value (None for nan)}."""
    lines = (folder / "scores.tsv").read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "metric\tvalue":
        raise ValueError(f"{folder / 'scores.tsv'}: unexpected header {lines[:1]}")
    return {name: _number(value) for name, value in (line.split("\t") for line in lines[1:])}


# ----------------------------------------------------------------------- running the tools


def _run(name: str, argv: list[str], log_dir: Path, record: dict) -> tuple[str, str]:
    """Run one tool; keep its output in ``log_dir/name.log``; record command and runtime."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    (log_dir / f"{name}.log").write_text(
        f"$ {' '.join(argv)}\n# exit {proc.returncode}, {seconds:.1f} s\n"
        f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )
    record["commands"][name] = " ".join(argv)
    record["runtime_s"][name] = round(seconds, 2)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{name} exited {proc.returncode}: {tail[0]} (see {name}.log)")
    return proc.stdout, proc.stderr


def evaluate_system(name: str, label: str, processor: dict, data: Path, split: str,
                    reference: Path, out: Path, reuse_log: bool = False,
                    earlier: dict | None = None) -> dict:  # fmt: skip
    """Inference + all scorers for one processor config. Errors are recorded, not raised.
    ``reuse_log``: keep an existing metrics log from an earlier run (only re-score); ``earlier``:
    that run's record of this system."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "processor.yaml"
    config.write_text(yaml.safe_dump(processor, sort_keys=False, allow_unicode=True))
    log = folder / "metrics.jsonl"
    definition = data / f"{split}.yaml"
    py = sys.executable
    record: dict = {"label": label, "processor": processor, "commands": {}, "runtime_s": {},
                    "simulstream": {}, "omnisteval": {}, "errors": []}  # fmt: skip
    common = ["--eval-config", str(config), "--log-file", str(log)]
    steps = [
        ("inference", [py, "-m", "simulstream.inference", "--speech-processor-config",
                       str(config), "--wav-list-file", str(data / f"{split}.wav_list"),
                       "--src-lang", "fr", "--tgt-lang", "en", "--metrics-log-file", str(log)],
         None),
        ("score_latency", [py, "-m", "simulstream.metrics.score_latency", *common,
                           "--audio-definition", str(definition), "--reference", str(reference),
                           "--latency-unit", "word", "--scorer", "stream_laal"],
         parse_stream_laal),
        ("score_quality", [py, "-m", "echostream.integrations.simulstream", "score-quality",
                           *common, "--audio-definition", str(definition), "--references",
                           str(reference), "--scorer", "sacrebleu", "--tokenizer", "13a"],
         parse_sacrebleu),
        ("stats", [py, "-m", "simulstream.metrics.stats", *common, "--latency-unit", "word"],
         parse_stats),
        ("omnisteval", [py, "-m", "omnisteval.cli", "longform", "--speech_segmentation",
                        str(definition), "--ref_sentences_file", str(reference),
                        "--hypothesis_file", str(log), "--hypothesis_format", "simulstream",
                        "--simulstream_config_file", str(config), "--lang", "en",
                        "--word_level", "--bleu_tokenizer", "13a",
                        "--output_folder", str(folder / "omnisteval")],
         None),
    ]  # fmt: skip
    if reuse_log and log.is_file() and log.stat().st_size > 0:
        steps = steps[1:]
        earlier = earlier or {}  # keep the earlier run's inference command and time
        record["commands"]["inference"] = earlier.get("commands", {}).get("inference", "(reused)")
        record["runtime_s"]["inference"] = earlier.get("runtime_s", {}).get("inference")
    else:
        log.unlink(missing_ok=True)  # simulstream's logger appends to an existing file
    for step, argv, parse in steps:
        try:
            stdout, stderr = _run(step, argv, folder, record)
            if parse is parse_sacrebleu:
                record["simulstream"].update(parse_sacrebleu(stdout, stderr))
            elif parse is not None:
                record["simulstream"].update(parse(stdout))
            if step == "omnisteval":
                record["omnisteval"] = parse_omnisteval(folder / "omnisteval")
        except (RuntimeError, ValueError, OSError) as err:
            record["errors"].append(f"{step}: {err}")
            if step == "inference":
                break  # nothing to score
    return record


# ----------------------------------------------------------------------- compute vs position

PLOT_FILE = "compute_vs_position.png"


def read_compute_log(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """A simulstream metrics log → {recording stem: (audio processed s, computation ms)}, one
    point per ``process_chunk``/``end_of_stream`` call in log order.

    The log's lines are ``{"model_loading_time"}``, per stream ``{"id", "metadata":
    {"wav_name"}}``, then per call ``{"id", "total_audio_processed", "computation_time",
    "generated_tokens", "deleted_tokens"}`` (seconds)."""
    names: dict[int, str] = {}
    series: dict[str, tuple[list[float], list[float]]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        if "metadata" in entry:
            names[entry["id"]] = Path(entry["metadata"]["wav_name"]).stem
        elif "computation_time" in entry:
            if entry["id"] not in names:
                raise ValueError(f"{path}:{number}: stream id {entry['id']} has no metadata line")
            xs, ys = series.setdefault(names[entry["id"]], ([], []))
            xs.append(float(entry["total_audio_processed"]))
            ys.append(1000.0 * float(entry["computation_time"]))
    return series


def plot_compute_vs_position(logs: dict[str, Path], png: Path, title: str = "") -> dict:
    """Per-call computation time (ms, y) against audio processed (s, x) for each system's
    simulstream metrics log, all on one axes: colour = system, marker = recording (all
    recordings). The y axis is logarithmic when the largest plotted time is more than 10× the
    smallest (positive) one. Writes ``png`` (matplotlib, Agg) and returns what it plotted:
    ``{"series": {system: {recording: (xs, ys)}}, "log_y": bool, "recordings": [...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {system: read_compute_log(path) for system, path in logs.items()}
    recordings = sorted({name for per in series.values() for name in per})
    if not recordings:
        raise ValueError(f"no computation_time entries in {', '.join(map(str, logs.values()))}")
    times = [y for per in series.values() for _, ys in per.values() for y in ys if y > 0]
    log_y = bool(times) and max(times) > 10 * min(times)
    markers = "o^sDvP*Xh<>"
    fig, ax = plt.subplots(figsize=(9, 5))
    for k, (system, per) in enumerate(series.items()):
        for name, (xs, ys) in per.items():
            marker = markers[recordings.index(name) % len(markers)]
            ax.plot(xs, ys, marker=marker, markersize=3, linewidth=0.6, color=f"C{k}",
                    label=f"{system} · {name}")  # fmt: skip
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("position in the stream: audio processed (s)")
    ax.set_ylabel("computation time of the call (ms)" + (", log scale" if log_y else ""))
    ax.set_title(
        (title + "\n" if title else "")
        + f"computation per simulstream call vs position, all {len(recordings)} recordings "
        "(colour = system, marker = recording)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"series": series, "log_y": log_y, "recordings": recordings}


def compute_profile(xs: list[float], ys: list[float], bin_s: float = 10.0) -> list[dict]:
    """Median and max computation (ms) of the calls whose position falls in each ``bin_s``
    window ``[k·bin_s, (k+1)·bin_s)`` of the stream."""
    bins: dict[int, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        bins.setdefault(int(x // bin_s), []).append(y)
    return [
        {"from_s": k * bin_s, "to_s": (k + 1) * bin_s, "calls": len(v),
         "median_ms": statistics.median(v), "max_ms": max(v)}
        for k, v in sorted(bins.items())
    ]  # fmt: skip


def plot_systems(systems: dict, out: Path, title: str) -> dict:
    """``OUT/compute_vs_position.png`` from the systems' metrics logs (those that exist), and
    per system the 10 s profile of its calls (all recordings pooled). Errors are recorded."""
    logs = {name: out / name / "metrics.jsonl" for name in systems}
    logs = {name: log for name, log in logs.items() if log.is_file() and log.stat().st_size}
    if not logs:
        return {"error": "no metrics log to plot"}
    try:
        plotted = plot_compute_vs_position(logs, out / PLOT_FILE, title)
    except (ValueError, OSError, KeyError, ImportError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    profile = {}
    for name, per in plotted["series"].items():
        xs = [x for xs, _ in per.values() for x in xs]
        ys = [y for _, ys in per.values() for y in ys]
        profile[name] = compute_profile(xs, ys)
    return {"file": PLOT_FILE, "log_y": plotted["log_y"], "recordings": plotted["recordings"],
            "profile_10s": profile}  # fmt: skip


# ----------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_markdown(results: dict) -> str:
    data = results["data"]
    minutes = sum(r["seconds"] for r in data["recordings"]) / 60
    lines = [
        f"# Long-form evaluation ({results['split']}: {len(data['recordings'])} recordings, "
        f"{minutes:.1f} min, {data['sentences']} sentences; corpus {data['corpus']})",
        "",
        f"References: `{results['reference']}`. simulstream {results['versions']['simulstream']}"
        f", OmniSTEval {results['versions']['OmniSTEval']}.",
        "",
        "| system | BLEU (simulstream) | BLEU (OmniSTEval) | chrF | StreamLAAL s | "
        "StreamLAAL CA s | LongYAAL ms | LongYAAL CA ms | LongLAAL ms | RTF | inference s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["systems"].items():
        s, o = r["simulstream"], r["omnisteval"]
        cells = [
            f"{name}: {r['label']}",
            _fmt(s.get("BLEU")), _fmt(o.get("BLEU")), _fmt(o.get("chrF")),
            _fmt(s.get("StreamLAAL_s")), _fmt(s.get("StreamLAAL_CA_s")),
            _fmt(o.get("LongYAAL (CU)"), 0), _fmt(o.get("LongYAAL (CA)"), 0),
            _fmt(o.get("LongLAAL (CU)"), 0), _fmt(s.get("real_time_factor"), 3),
            _fmt(r["runtime_s"].get("inference"), 1),  # None when the log was reused
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "BLEU (simulstream): sacrebleu 13a after mweralign re-segmentation; BLEU/chrF "
        "(OmniSTEval): after its own alignment. StreamLAAL: simulstream's `stream_laal` (CA: "
        "computation-aware). LongYAAL/LongLAAL: OmniSTEval (CU and CA); n/a when no word of any "
        "re-segmented sentence was emitted before the end of its recording (YAAL ignores later "
        "words). RTF: `simulstream_stats` real-time factor (compute seconds per audio second). "
        "inference s: wall time of `simulstream_inference` (model loading included).",
    ]
    plot = results.get("compute_plot", {})
    if "file" in plot:
        lines += ["", f"![computation per call vs position]({plot['file']})", "",
                  f"`{plot['file']}`: computation time of every simulstream call (ms"
                  f"{', log scale' if plot['log_y'] else ''}) against the audio processed by "
                  f"then, all recordings ({', '.join(plot['recordings'])}), from each system's "
                  "`metrics.jsonl`. Per 10 s of stream position, all recordings pooled: median "
                  "(max) ms per call.", ""]  # fmt: skip
        names = list(plot["profile_10s"])
        lines += ["| position s | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        by_bin: dict[tuple, dict] = {}
        for name in names:
            for row in plot["profile_10s"][name]:
                by_bin.setdefault((row["from_s"], row["to_s"]), {})[name] = row
        for (lo, hi), rows in sorted(by_bin.items()):
            cells = [f"{rows[n]['median_ms']:.0f} ({rows[n]['max_ms']:.0f})" if n in rows
                     else "–" for n in names]  # fmt: skip
            lines.append(f"| {lo:.0f}–{hi:.0f} | " + " | ".join(cells) + " |")
    elif "error" in plot:
        lines.append(f"\n**plot error**: {plot['error']}")
    for name, r in results["systems"].items():
        for error in r["errors"]:
            lines.append(f"\n**{name} error**: {error}")
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    found = {}
    for tool in TOOLS:
        try:
            found[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            found[tool] = None
    return found


# ----------------------------------------------------------------------- entry point


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echostream eval-longform",
        description="Long-form evaluation of EchoStream and the recompute baseline with "
        "simulstream (inference, StreamLAAL, BLEU, RTF) and OmniSTEval (BLEU, chrF, LongYAAL).",
    )
    p.add_argument("--out", default="out/eval-longform", help="folder for results and logs")
    p.add_argument("--data", help="an existing long-form set (from `prepare longform`)")
    p.add_argument("--corpus", help="corpus to build the set from (default: work/synth-demo "
                   "when complete, else work/synth-tiny)")  # fmt: skip
    p.add_argument("--split", default="dev")
    p.add_argument("--minutes", type=float, default=3.0, help="length of each recording")
    p.add_argument("--streams", type=int, default=2, help="number of recordings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="echostream-tiny-fr-en", help="bundled model or folder")
    p.add_argument("--checkpoint", help="an EchoStream checkpoint file instead of --model")
    p.add_argument("--vocoder", help="unit vocoder .pt for --checkpoint (else text only)")
    p.add_argument("--baseline-checkpoint", help="a trained baseline checkpoint (recompute agent)")
    p.add_argument("--baseline-vocoder", help="unit vocoder .pt for --baseline-checkpoint")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--chunk-ms", type=int, default=320, help="decision chunk (both systems)")
    p.add_argument("--translator-kwargs", default="{}",
                   help="JSON: extra StreamingTranslator arguments (EchoStream)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads of each system")
    p.add_argument(
        "--reuse-logs",
        action="store_true",
        help="keep the metrics logs of an earlier run in --out: only re-score",
    )
    p.add_argument("--raw-reference", action="store_true",
                   help="score against the corpus text instead of the normalised one")  # fmt: skip
    return p


def _processor(template: str, args, **overrides) -> dict:
    config = yaml.safe_load((CONFIGS / template).read_text())
    config.update(speech_chunk_size=args.chunk_ms / 1000, chunk_ms=args.chunk_ms,
                  threads=args.threads, **overrides)  # fmt: skip
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        translator_kwargs = json.loads(args.translator_kwargs)
        if not isinstance(translator_kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise SystemExit(f"eval-longform: --translator-kwargs: {err}") from None
    if args.data:
        data = Path(args.data)
        if not (data / f"{args.split}.json").is_file():
            raise SystemExit(f"eval-longform: {data / (args.split + '.json')}: no long-form set")
        summary = json.loads((data / f"{args.split}.json").read_text())
    else:
        data = out / "data"
        corpus = Path(args.corpus) if args.corpus else default_corpus()
        try:
            cfg = LongformConfig(args.split, args.minutes, args.streams, args.seed)
            summary = build_longform(corpus, data, cfg)
        except LongformError as err:
            raise SystemExit(f"eval-longform: {err}") from None
    reference = data / (f"{args.split}.en" if args.raw_reference else f"{args.split}.norm.en")
    print(f"long-form set: {data} ({summary['sentences']} sentences)", file=sys.stderr)

    echostream = _processor(
        "echostream.yaml", args, model=args.model, checkpoint=args.checkpoint,
        vocoder=args.vocoder, speech_output=not args.checkpoint or bool(args.vocoder),
        translator=translator_kwargs,
    )  # fmt: skip
    systems = [("echostream", "EchoStream (incremental agent)", echostream)]
    if not args.skip_baseline:
        if args.baseline_checkpoint:
            label = f"baseline checkpoint {args.baseline_checkpoint}, recompute agent"
            baseline = _processor(
                "recompute-baseline.yaml", args, checkpoint=args.baseline_checkpoint,
                vocoder=args.baseline_vocoder, speech_output=bool(args.baseline_vocoder),
            )  # fmt: skip
        else:
            label, baseline = BASELINE_LABEL, _processor("recompute-baseline.yaml", args)
        systems.append(("baseline", label, baseline))

    previous_path = out / "results.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    results = {"split": args.split, "data": summary, "reference": str(reference),
               "versions": _versions(), "systems": {}}  # fmt: skip
    for name, label, processor in systems:
        print(f"{name}: {label} ...", file=sys.stderr, flush=True)
        record = evaluate_system(
            name, label, processor, data, args.split, reference, out, args.reuse_logs,
            previous.get("systems", {}).get(name),
        )  # fmt: skip
        results["systems"][name] = record
        for error in record["errors"]:
            print(f"  error: {error}", file=sys.stderr)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    minutes = sum(r["seconds"] for r in summary["recordings"]) / 60
    results["compute_plot"] = plot_systems(
        results["systems"], out, f"long-form {args.split}: {len(summary['recordings'])} "
        f"recordings, {minutes:.1f} min; {args.chunk_ms} ms chunks, {args.threads} thread(s)",
    )  # fmt: skip
    if "error" in results["compute_plot"]:
        print(f"  plot error: {results['compute_plot']['error']}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render_markdown(results)
    (out / "results.md").write_text(text)
    print(text)
    failed = any(r["errors"] for r in results["systems"].values())
    return 1 if failed or "error" in results["compute_plot"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
