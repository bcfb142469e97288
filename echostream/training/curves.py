"""Training curves of one or more runs (their train_log.csv / dev_log.csv) as one PNG.

    python -m echostream.training.curves work/runs/echostream_tiny work/runs/streamspeech_tiny \\
        --out docs/results/training_curves.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

LOSSES = ("loss_total", "loss_mt_ce", "loss_asr_ctc", "loss_st_ctc", "loss_unit_ctc")


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(f)
        ]


def plot_runs(
    runs: Sequence[Path],
    out: Path,
    smooth: int = 10,
    zoom_after: int = 100,
    marks: Sequence[tuple[float, str]] = (),
) -> Path:
    """One panel per loss: smoothed train curve and dev points of every run. The y-axis spans
    the values from update ``zoom_after`` on (the first updates fall from far higher and would
    flatten the rest); ``marks``: (update, label) vertical lines, e.g. where a run continued."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(4 * len(LOSSES), 3.4), sharex=True)
    shown: dict[str, list[float]] = {key: [] for key in LOSSES}
    for run in runs:
        train = read_csv(run / "train_log.csv")
        dev = read_csv(run / "dev_log.csv")
        for ax, key in zip(axes, LOSSES, strict=True):
            steps = [r["step"] for r in train if key in r]
            values = [r[key] for r in train if key in r]
            avg = [
                sum(values[max(0, i - smooth + 1) : i + 1])
                / len(values[max(0, i - smooth + 1) : i + 1])
                for i in range(len(values))
            ]
            (line,) = ax.plot(steps, avg, label=f"{run.name} train")
            shown[key] += [v for s, v in zip(steps, avg, strict=True) if s >= zoom_after]
            dev_key = "dev_" + key.removeprefix("loss_")
            points = [(r["step"], r[dev_key]) for r in dev if dev_key in r]
            shown[key] += [v for s, v in points if s >= zoom_after]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    "o--",
                    color=line.get_color(),
                    label=f"{run.name} dev",
                )
            ax.set(title=key.removeprefix("loss_"), xlabel="update")
    for ax, key in zip(axes, LOSSES, strict=True):
        if shown[key]:
            lo, hi = min(shown[key]), max(shown[key])
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        for step, label in marks:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
            ax.annotate(label, (step, 1), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90, va="top", ha="right", color="gray")  # fmt: skip
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--zoom-after", type=int, default=100, help="y-axes span the values from this update on"
    )
    p.add_argument(
        "--mark",
        action="append",
        default=[],
        metavar="UPDATE:LABEL",
        help="a vertical line at UPDATE (repeatable), e.g. 600:continued",
    )
    args = p.parse_args(argv)
    marks = []
    for mark in args.mark:
        step, _, label = mark.partition(":")
        try:
            marks.append((float(step), label))
        except ValueError:
            p.error(f"--mark {mark!r}: expected UPDATE:LABEL")
    print(plot_runs(args.runs, args.out, zoom_after=args.zoom_after, marks=marks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
