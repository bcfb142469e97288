"""Long-form driver: the compute-vs-position plot read from simulstream metrics logs."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from echostream.evaluation.longform import (
    PLOT_FILE,
    compute_profile,
    plot_compute_vs_position,
    plot_systems,
    read_compute_log,
    render_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(path: Path, streams: dict[str, list[tuple[float, float, list[str]]]]) -> Path:
    """A metrics log as ``simulstream_inference`` writes it: the loading time, then per stream
    its metadata line and one line per call (seconds)."""
    lines = [{"model_loading_time": 1.5}]
    for k, (wav, calls) in enumerate(streams.items()):
        lines.append({"id": k, "metadata": {"wav_name": f"/data/wavs/{wav}.wav"}})
        for audio, seconds, tokens in calls:
            lines.append({"id": k, "total_audio_processed": audio, "computation_time": seconds,
                          "generated_tokens": tokens, "deleted_tokens": []})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")  # + a blank line
    return path


@pytest.fixture
def two_logs(tmp_path):
    fast = write_log(
        tmp_path / "echostream" / "metrics.jsonl",
        {
            "dev_00": [(0.32, 0.0625, []), (0.64, 0.125, ["▁the"]), (0.7, 0.5, ["▁end"])],
            "dev_01": [(0.32, 0.03125, []), (0.5, 0.25, ["▁a"])],
        },
    )
    slow = write_log(
        tmp_path / "baseline" / "metrics.jsonl",
        {"dev_00": [(0.32, 0.25, []), (0.64, 1.5, ["▁the"]), (0.7, 2.0, ["▁end"])]},
    )
    return fast, slow


def test_read_compute_log_gives_position_and_milliseconds_per_call(two_logs):
    series = read_compute_log(two_logs[0])
    assert list(series) == ["dev_00", "dev_01"]
    assert series["dev_00"] == ([0.32, 0.64, 0.7], [62.5, 125.0, 500.0])
    assert series["dev_01"] == ([0.32, 0.5], [31.25, 250.0])


def test_plot_returns_the_plotted_series_and_writes_a_png(two_logs, tmp_path):
    png = tmp_path / "plots" / "compute.png"
    plotted = plot_compute_vs_position({"echostream": two_logs[0], "baseline": two_logs[1]}, png)
    assert plotted["series"] == {
        "echostream": {
            "dev_00": ([0.32, 0.64, 0.7], [62.5, 125.0, 500.0]),
            "dev_01": ([0.32, 0.5], [31.25, 250.0]),
        },
        "baseline": {"dev_00": ([0.32, 0.64, 0.7], [250.0, 1500.0, 2000.0])},
    }
    assert plotted["recordings"] == ["dev_00", "dev_01"]
    assert plotted["log_y"] is True  # 2000 ms / 31.25 ms = 64 > 10
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_linear_y_when_the_times_span_less_than_10x(tmp_path):
    log = write_log(tmp_path / "a.jsonl", {"dev_00": [(0.32, 0.1, []), (0.64, 1.0, [])]})
    plotted = plot_compute_vs_position({"a": log}, tmp_path / "a.png")
    assert plotted["log_y"] is False  # exactly 10×: not more
    assert plotted["series"] == {"a": {"dev_00": ([0.32, 0.64], [100.0, 1000.0])}}


def test_a_call_of_an_unannounced_stream_is_an_error(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text(json.dumps({"id": 3, "total_audio_processed": 0.32, "computation_time": 0.1,
                               "generated_tokens": [], "deleted_tokens": []}) + "\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"bad.jsonl:1: stream id 3 has no metadata line"):
        read_compute_log(log)
    with pytest.raises(ValueError, match="no computation_time entries"):
        plot_compute_vs_position({"a": write_log(tmp_path / "empty.jsonl", {})}, tmp_path / "x.png")


def test_compute_profile_bins_by_position():
    rows = compute_profile([0.5, 9.5, 10.0, 25.0, 26.0], [1.0, 3.0, 7.0, 2.0, 4.0], bin_s=10.0)
    assert rows == [
        {"from_s": 0.0, "to_s": 10.0, "calls": 2, "median_ms": 2.0, "max_ms": 3.0},
        {"from_s": 10.0, "to_s": 20.0, "calls": 1, "median_ms": 7.0, "max_ms": 7.0},
        {"from_s": 20.0, "to_s": 30.0, "calls": 2, "median_ms": 3.0, "max_ms": 4.0},
    ]


def test_the_driver_plots_from_the_logs_in_out_and_links_the_png(two_logs, tmp_path):
    record = {"label": "x", "simulstream": {}, "omnisteval": {}, "errors": [],
              "runtime_s": {"inference": 1.0}}  # fmt: skip
    systems = {"echostream": record, "baseline": record}
    plot = plot_systems(systems, tmp_path, "title")
    assert plot["file"] == PLOT_FILE and (tmp_path / PLOT_FILE).read_bytes()[:8] == PNG_MAGIC
    assert plot["profile_10s"]["baseline"] == [
        {"from_s": 0.0, "to_s": 10.0, "calls": 3, "median_ms": 1500.0, "max_ms": 2000.0}
    ]
    assert plot["profile_10s"]["echostream"][0]["median_ms"] == 125.0  # of 62.5…500 and 31.25…
    results = {"split": "dev", "reference": "ref", "systems": systems, "compute_plot": plot,
               "versions": {"simulstream": "1.0.0", "OmniSTEval": "0.1.10"},
               "data": {"corpus": "c", "sentences": 2,
                        "recordings": [{"seconds": 0.7}, {"seconds": 0.5}]}}  # fmt: skip
    text = render_markdown(results)
    assert f"![computation per call vs position]({PLOT_FILE})" in text
    assert "| 0–10 | 125 (500) | 1500 (2000) |" in text
    # no log for either system: recorded as an error, no plot written
    assert plot_systems(systems, tmp_path / "none", "t") == {"error": "no metrics log to plot"}
