"""Smoke test of the encoder benchmark: it runs, its output is well formed (timings unchecked)."""

import json
from pathlib import Path

import pytest
import torch

from echostream.bench.encoder import chunk_frames, extrapolate_recompute, run_benchmark
from echostream.bench.report import plot, render_markdown
from echostream.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "fr-en"


def test_chunk_frames_cover_time_exactly():
    assert chunk_frames(40, 5) == [1] * 5
    assert chunk_frames(100, 4) == [2, 3, 2, 3]  # 100 ms of 40 ms frames
    assert sum(chunk_frames(100, 100)) == 250  # 10 s = 250 frames
    assert chunk_frames(320, 3, start_ms=40) == [8, 8, 8]


def test_extrapolation_reproduces_an_exact_quadratic():
    points = [
        {"prefix_frames": t, "flops": 5 + 3 * t + 2 * t * t, "wall_s": 0.5 * t}
        for t in (10, 50, 100, 400)
    ]
    got = extrapolate_recompute(points, 2, 100)  # 20 calls, prefixes 2, 5, 7, 10, ...
    prefixes = [sum(chunk_frames(100, 20)[: k + 1]) for k in range(20)]
    assert got["flops"] == pytest.approx(sum(5 + 3 * t + 2 * t * t for t in prefixes))
    assert got["extrapolated"] and got["calls"] == 20


def test_quick_benchmark_runs_and_reports(tmp_path):
    torch.set_num_threads(1)
    results = run_benchmark(
        quick=True,
        echostream_config=CONFIGS / "config_echostream_tiny.yaml",
        streamspeech_config=CONFIGS / "config_streamspeech_tiny.yaml",
        log=lambda msg: None,
    )
    json.loads(json.dumps(results, default=str))  # serialisable
    encoders = {"streamspeech-recompute", "conformer-cached", "echostream-emformer"}
    assert {r["encoder"] for r in results["latency"]} == encoders
    assert {(r["encoder"], r["seconds"]) for r in results["utterance"]} == {
        (e, s) for e in encoders for s in (1, 10)
    }
    for row in results["latency"]:
        assert row["median_ms"] > 0 and row["p95_ms"] >= row["median_ms"] and row["frames_out"] > 0
    rec10 = next(
        r
        for r in results["utterance"]
        if r["encoder"] == "streamspeech-recompute" and r["seconds"] == 10
    )
    assert rec10["extrapolated"]
    summary = results["summary"]
    assert summary["flop_ratio"][10] > summary["flop_ratio"][1] > 1  # quadratic vs linear
    state = results["state_bytes"]["echostream-emformer"]
    assert state["after_10s"] == state["after_60s"] > 0
    text = render_markdown(results)
    assert "| 10 s |" in text and "*(extrapolated)*" in text and "### Targets" in text
    paths = plot(results, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_rejects_unknown_config(capsys):
    with pytest.raises(SystemExit, match="no config file"):
        main(["bench", "encoder", "--quick", "--echostream", "nope"])
