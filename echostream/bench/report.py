"""Markdown tables and PNG plots from a benchmark result dict (see ``bench.encoder``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .encoder import PLAN_RATIOS

ENCODERS = ("streamspeech-recompute", "conformer-cached", "echostream-emformer")


def _fmt_flops(flops: float) -> str:
    return f"{flops / 1e9:,.1f} G"


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Measured {r['date']} on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, "
        f"Python {m['python']}, fp32, batch 1, random weights"
        + (", quick mode." if r["quick"] else "."),
        "",
        "### Per-chunk compute vs stream position (ms, median / p95)",
        "",
        "The compute of the decision chunk that makes new encoder frames final "
        "(for chunks smaller than the model's block, the one that completes the block).",
        "",
    ]
    positions = sorted({row["position_s"] for row in r["latency"]})
    header = "| threads | chunk | encoder | " + " | ".join(f"{p} s" for p in positions) + " |"
    lines += [header, "|" + "---|" * (3 + len(positions))]
    keys = sorted({(row["threads"], row["chunk_ms"]) for row in r["latency"]})
    for threads, chunk in keys:
        for enc in ENCODERS:
            cells = []
            for p in positions:
                row = next(
                    x
                    for x in r["latency"]
                    if x["threads"] == threads
                    and x["chunk_ms"] == chunk
                    and x["encoder"] == enc
                    and x["position_s"] == p
                )
                cells.append(f"{row['median_ms']:.1f} / {row['p95_ms']:.1f}")
            lines.append(f"| {threads} | {chunk} ms | {enc} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Total work per utterance (100 ms decision chunks, 1 thread)",
        "",
        "| length | recompute FLOPs | cached-Conformer FLOPs | Emformer FLOPs | FLOP ratio "
        "recompute ÷ Emformer | plan's claim | wall recompute | wall Emformer | wall ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seconds in sorted({row["seconds"] for row in r["utterance"]}):
        rows = {row["encoder"]: row for row in r["utterance"] if row["seconds"] == seconds}
        rec, cac, em = (
            rows["streamspeech-recompute"],
            rows["conformer-cached"],
            rows["echostream-emformer"],
        )
        mark = " *(extrapolated)*" if rec["extrapolated"] else ""
        claim = PLAN_RATIOS.get(seconds)
        lines.append(
            f"| {seconds} s | {_fmt_flops(rec['flops'])}{mark} | {_fmt_flops(cac['flops'])} | "
            f"{_fmt_flops(em['flops'])} | **{rec['flops'] / em['flops']:.1f}×** | "
            f"{f'{claim}×' if claim else '—'} | {rec['wall_s']:.2f} s{mark} | "
            f"{em['wall_s']:.2f} s | {rec['wall_s'] / em['wall_s']:.1f}× |"
        )
    checks = [row for row in r["utterance"] if "model_prediction" in row]
    if checks:
        lines += [
            "",
            "Recompute lengths marked *extrapolated* sum a quadratic per-call cost "
            "model fitted to measured single calls at prefixes of "
            + ", ".join(f"{p['prefix_frames'] * 0.04:g}" for p in r["recompute_fit_points"])
            + " s. Check against direct runs: "
            + "; ".join(
                f"{row['seconds']} s measured {_fmt_flops(row['flops'])} / "
                f"{row['wall_s']:.2f} s, model "
                f"{_fmt_flops(row['model_prediction']['flops'])} / "
                f"{row['model_prediction']['wall_s']:.2f} s"
                for row in checks
            )
            + ".",
        ]
    lines += [
        "",
        "### Memory",
        "",
        "| prefix | recompute: peak RSS growth of a step | recompute: one layer's attention "
        "score tensors (fp32) | Emformer streaming state per stream |",
        "|---|---|---|---|",
    ]
    em_state = r["state_bytes"]["echostream-emformer"]
    for seconds, row in sorted(r["memory"].items(), key=lambda kv: float(kv[0])):
        growth = row["peak_rss_growth_mb"]
        # ru_maxrss is a high-water mark: growth <= 0 means the step stayed below the peak that
        # building the models reached, i.e. the probe could not resolve it.
        growth_text = f"{growth:.1f} MB" if growth > 0.5 else "not resolved (below build peak)"
        lines.append(
            f"| {seconds} s | {growth_text} | "
            f"{row['attention_tensors_mb']:.1f} MB | "
            f"{em_state['after_10s'] / 2**20:.2f} MB |"
        )
    s = r["summary"]
    lines += [
        "",
        f"Emformer state after 10 s: {em_state['after_10s']:,} bytes"
        + (f"; after 60 s: {em_state['after_60s']:,} bytes" if "after_60s" in em_state else "")
        + ".",
        "",
        "### Targets",
        "",
    ]
    for name, ok in s["targets"].items():
        verdict = "not measured" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"- `{name}`: {verdict}")
    em = s["emformer_ms_per_segment_1thread"]
    lines.append(
        "- Emformer ms per 160 ms segment on 1 thread by position: "
        + ", ".join(f"{p} s {v:.1f}" for p, v in sorted(em.items()))
        + f" (growth {s['emformer_latency_growth']:.2f}×); recompute at 160 ms: "
        + ", ".join(
            f"{p} s {v:.1f}" for p, v in sorted(s["recompute_ms_per_chunk_1thread"].items())
        )
    )
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for enc in ENCODERS:
        rows = sorted(
            (
                x
                for x in r["latency"]
                if x["encoder"] == enc and x["threads"] == 1 and x["chunk_ms"] == 160
            ),
            key=lambda x: x["position_s"],
        )
        if rows:
            ax.plot(
                [x["position_s"] for x in rows], [x["median_ms"] for x in rows], "o-", label=enc
            )
    ax.axhline(160, color="grey", ls=":", label="real time (160 ms)")
    ax.set(
        xlabel="stream position (s)",
        ylabel="compute per 160 ms chunk (ms, 1 thread)",
        yscale="log",
        title="Per-chunk encoder compute vs position",
    )
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "latency_vs_position.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for enc in ENCODERS:
        rows = sorted(
            (x for x in r["utterance"] if x["encoder"] == enc), key=lambda x: x["seconds"]
        )
        ax.plot([x["seconds"] for x in rows], [x["flops"] for x in rows], "o-", label=enc)
        extra = [x for x in rows if x.get("extrapolated")]
        if extra:
            ax.plot(
                [x["seconds"] for x in extra],
                [x["flops"] for x in extra],
                "x",
                color="black",
                label="extrapolated",
            )
    ax.set(
        xlabel="utterance length (s)",
        ylabel="total FLOPs (100 ms chunks)",
        xscale="log",
        yscale="log",
        title="Cumulative encoder compute per utterance",
    )
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "compute_vs_length.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def render_doc(r: dict[str, Any], command: str, plot_paths: list[Path], doc_path: Path) -> str:
    """The page docs/benchmarks/encoder.md: what was measured, how, and the numbers."""
    rel = [
        p.relative_to(doc_path.parent) if p.is_relative_to(doc_path.parent) else p
        for p in plot_paths
    ]
    head = [
        "# Encoder cost: StreamSpeech's recompute agent vs cached Conformer vs Emformer",
        "",
        f"Produced by `{command}` on {r['date']}. Every number below comes from that one run;",
        "rerun the command to regenerate this page on your machine.",
        "",
        "What is compared (same random input of 40 ms frames, d_model 256, batch 1, fp32, "
        "random weights — cost does not depend on training):",
        "",
        "- **streamspeech-recompute**: the baseline Conformer (12 layers, chunk 320 ms) driven as "
        "StreamSpeech's agent drives it: every decision re-encodes the whole prefix;",
        "- **conformer-cached**: the same Conformer with K/V and conv caches (what a careful "
        "engineer would do; its cache still grows with the stream);",
        "- **echostream-emformer**: the Emformer (16 layers, segment 160 ms, left context 1.2 s, "
        "memory 8), each segment processed once.",
        "",
        "The front end (fbank + subsampling) is the same for all three and is left out. FLOPs are "
        "counted by `torch.utils.flop_counter.FlopCounterMode` (with a formula registered for "
        "the CPU attention kernel, which torch's counter otherwise counts as zero).",
        "",
    ]
    figures = [f"![{p.stem}]({p})" for p in rel]
    return "\n".join(head) + render_markdown(r) + "\n" + "\n\n".join(figures) + "\n"
