"""Regenerate the results tables and quality–latency curves from models, in one command.

    python -m echostream.evaluation.results \\
        --model echostream-tiny=echostream-tiny-fr-en \\
        --model streamspeech-tiny=work/runs/streamspeech_tiny/ckpt_00000200.pt@recompute \\
        --data work/synth-demo --split dev --limit 100 --out docs/results

Each ``--model LABEL=SOURCE[@MODE]`` (SOURCE: a bundled model name, a folder with ``model.pt``
[+ ``vocoder.pt``], or an EchoStream checkpoint file; MODE: ``incremental`` (default) or
``recompute``, StreamSpeech's agent) is evaluated by :func:`echostream.evaluation.runner.evaluate`
on the same utterances: simultaneous at every decision chunk size, and offline. Written to
``--out``: ``eval_<label>.json`` per model (the runner's dict plus where it came from),
``results_table.md`` (every model × run in one table) and ``quality_latency.png`` (BLEU and
ASR-BLEU against AL and computation-aware AL, one line per model, points labelled by chunk).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.checkpoint import load_checkpoint
from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from ..streaming.translator import PRETRAINED_DIR, load_pretrained
from .asr import GENERIC_LM_NAME
from .runner import evaluate

DEFAULT_VOCODER = PRETRAINED_DIR / "vocoder-tiny" / "vocoder.pt"
MODES = ("incremental", "recompute")
# (column header, key in a run's dict, number format)
COLUMNS = (
    ("BLEU", "BLEU", "{:.1f}"),
    ("chrF", "chrF", "{:.1f}"),
    ("ASR-BLEU", "ASR_BLEU", "{:.1f}"),
    ("src WER", "source_WER", "{:.2f}"),
    ("AL", "text_AL", "{:.0f}"),
    ("AL_CA", "text_AL_CA", "{:.0f}"),
    ("LAAL", "text_LAAL", "{:.0f}"),
    ("AP", "text_AP", "{:.2f}"),
    ("DAL", "text_DAL", "{:.0f}"),
    ("speech AL", "speech_AL", "{:.0f}"),
    ("speech AL_CA", "speech_AL_CA", "{:.0f}"),
    ("compute RTF", "text_compute_RTF", "{:.3f}"),
)


@dataclass
class ModelSpec:
    label: str
    source: str
    mode: str = "incremental"

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``LABEL=SOURCE[@MODE]``."""
        label, sep, rest = text.partition("=")
        if not sep or not label or not rest:
            raise ValueError(f"--model {text!r}: expected LABEL=SOURCE[@MODE]")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise ValueError(f"--model {text!r}: label may hold letters, digits, '_', '.', '-'")
        source, _, mode = rest.rpartition("@") if "@" in rest else (rest, "", "incremental")
        if mode not in MODES:
            raise ValueError(f"--model {text!r}: mode {mode!r} is not one of {', '.join(MODES)}")
        return cls(label, source, mode)


def load_model(source: str, vocoder: str | None) -> tuple[EchoStreamModel, UnitVocoder | None]:
    """A checkpoint file, or a bundled model / folder (with its vocoder); ``vocoder`` overrides,
    and a model without one gets the shipped tiny vocoder."""
    path = Path(source)
    if path.is_file():
        model, _ = load_checkpoint(path)
        voc = None
    else:
        model, voc = load_pretrained(source)
    if vocoder is not None:
        voc = UnitVocoder.load(vocoder)
    elif voc is None and DEFAULT_VOCODER.is_file():
        voc = UnitVocoder.load(DEFAULT_VOCODER)
    if voc is not None and voc.cfg.num_units < model.cfg.vocab.num_units:
        raise ValueError(
            f"{source}: the model has {model.cfg.vocab.num_units} units but the vocoder only "
            f"{voc.cfg.num_units}: give a matching --vocoder"
        )
    return model, voc


# ----------------------------------------------------------------------------- rendering


def _chunk_of(run: str) -> int | None:
    m = re.fullmatch(r"simul_(\d+)ms", run)
    return int(m.group(1)) if m else None


def render_table(results: dict[str, dict[str, Any]]) -> str:
    """One markdown table: every model × run (simultaneous chunks, then offline)."""
    first = next(iter(results.values()))
    recogniser = "pocketsphinx en-us"
    if first.get("asr"):
        lm, dictionary = Path(first["asr"]["lm"]), Path(first["asr"]["dict"])
        recogniser += (
            " with its generic LM"
            if lm.name == GENERIC_LM_NAME
            else f" with the LM `{lm.name}` and dictionary `{dictionary.name}`"
        )
    lines = [
        f"{first['split']} split, {first['utterances']} utterances; latency in ms of source "
        "(SimulEval definitions; `_CA` adds the measured compute); BLEU/chrF on normalised "
        f"text; ASR-BLEU: {recogniser} on the output speech.",
        "",
        "| model | mode | run | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for label, res in results.items():
        runs = sorted(res["runs"], key=lambda r: (_chunk_of(r) is None, _chunk_of(r) or 0))
        for run in runs:
            row = res["runs"][run]
            chunk = _chunk_of(run)
            cells = [
                "—" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in COLUMNS
            ]
            name = f"simul {chunk} ms" if chunk is not None else run
            lines.append(f"| {label} | {res['mode']} | {name} | " + " | ".join(cells) + " |")
    ceilings = {label: r["gold_ceiling"] for label, r in results.items() if r.get("gold_ceiling")}
    if ceilings:
        g = next(iter(ceilings.values()))
        lines += [
            "",
            f"ASR-BLEU ceiling (the same recogniser on the gold target audio, "
            f"{g['utterances']} utterances): {g['ASR_BLEU']:.1f} (WER {g['WER']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """2×2 panels: BLEU vs text AL / AL_CA, ASR-BLEU vs speech AL / AL_CA (text AL when a model
    has no speech output); one line per model, points labelled by chunk, offline dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("BLEU", ("text_AL",), "AL (ms)"),
        ("BLEU", ("text_AL_CA",), "computation-aware AL (ms)"),
        ("ASR_BLEU", ("speech_AL", "text_AL"), "speech AL (ms)"),
        ("ASR_BLEU", ("speech_AL_CA", "text_AL_CA"), "computation-aware speech AL (ms)"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for (metric, x_keys, xlabel), ax in zip(panels, axes.flat, strict=True):
        for k, (label, res) in enumerate(results.items()):
            colour = f"C{k}"
            points = []
            for run, row in res["runs"].items():
                chunk = _chunk_of(run)
                x_key = next((x for x in x_keys if row.get(x) is not None), None)
                if chunk is None or x_key is None or row.get(metric) is None:
                    continue
                points.append((row[x_key], row[metric], chunk, x_key != x_keys[0]))
            points.sort()
            if points:
                note = ", x: text AL (no speech)" if any(p[3] for p in points) else ""
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    "o-",
                    color=colour,
                    label=f"{label} ({res['mode']}){note}",
                )
                for x, y, chunk, _ in points:
                    ax.annotate(
                        f"{chunk} ms",
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                        color=colour,
                    )
            offline = res["runs"].get("offline", {}).get(metric)
            if offline is not None:
                ax.axhline(offline, color=colour, ls=":", lw=1, label=f"{label} offline")
        ax.set(xlabel=xlabel, ylabel=metric.replace("_", "-"))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {metric.replace('_', '-')} measured", ha="center",
                    transform=ax.transAxes, color="grey")  # fmt: skip
    fig.suptitle("Quality vs latency (points: decision chunk size)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m echostream.evaluation.results",
        description="Evaluate models (simultaneous at several chunk sizes + offline) and write "
        "per-model JSON, one markdown table and the quality–latency curves.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="LABEL=SOURCE[@MODE]",
        help="bundled model name, folder or checkpoint; MODE incremental|recompute",
    )
    p.add_argument(
        "--vocoder",
        help="unit vocoder for every model (default: the model's own, "
        "else the shipped vocoder-tiny)",
    )
    p.add_argument("--data", required=True, help="corpus folder with {split}.tsv")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, help="first N utterances of the split")
    p.add_argument("--chunks", default="160,320,640", help="decision chunks in ms")
    p.add_argument("--no-offline", action="store_true")
    p.add_argument("--no-asr", action="store_true", help="skip ASR-BLEU (pocketsphinx)")
    p.add_argument("--asr-lm", help="LM for pocketsphinx (built from training targets only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results", help="folder for the JSON, table and plot")
    args = p.parse_args(argv)
    try:
        specs = [ModelSpec.parse(m) for m in args.model]
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    except ValueError as err:
        p.error(str(err))
    if len({s.label for s in specs}) != len(specs):
        p.error("--model labels must be distinct")
    if not chunks or min(chunks) <= 0:
        p.error(f"--chunks {args.chunks!r}: positive integers in ms, e.g. 160,320,640")
    corpus = Path(args.data)
    if not (corpus / f"{args.split}.tsv").is_file():
        p.error(f"{corpus / f'{args.split}.tsv'}: no such manifest")
    torch.set_num_threads(args.threads)
    asr = None
    if not args.no_asr:
        from .asr import EnglishASR

        asr = EnglishASR(lm=args.asr_lm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m echostream.evaluation.results " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        try:
            model, vocoder = load_model(spec.source, args.vocoder)
        except (FileNotFoundError, ValueError) as err:
            p.error(f"--model {spec.label}: {err}")
        t0 = time.perf_counter()
        res = evaluate(
            model,
            vocoder,
            corpus,
            args.split,
            chunks,
            offline=not args.no_offline,
            mode=spec.mode,
            limit=args.limit,
            asr=asr,
            log=lambda msg, label=spec.label: print(f"[{label}] {msg}", file=sys.stderr),
        )
        res.update(
            label=spec.label,
            source=spec.source,
            threads=args.threads,
            command=command,
            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            eval_wall_s=time.perf_counter() - t0,
        )
        (out / f"eval_{spec.label}.json").write_text(json.dumps(res, indent=1, default=str))
        results[spec.label] = res
    table = render_table(results)
    (out / "results_table.md").write_text(f"Regenerated by `{command}`.\n\n{table}")
    plot_curves(results, out / "quality_latency.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
