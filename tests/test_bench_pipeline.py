"""Whole-pipeline benchmark: forked lengths equal real runs, stage accounting is complete, the
extrapolation is exact on a quadratic, and the quick mode shows flat vs growing per-chunk FLOPs.
Timings are never asserted."""

import json

import pytest
import torch
from helpers_models import busy_model, speechlike, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from echostream.bench.pipeline import (
    Contender,
    StageMeter,
    extrapolate_total,
    fit_cost_model,
    fit_nonnegative_quadratic,
    main,
    per_chunk_at,
    render_markdown,
    run_benchmark,
    stream_contender,
    translator_for,
)
from echostream.config import ConformerConfig, validate_config
from echostream.models import build_model
from echostream.streaming.translator import StreamingTranslator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def contenders() -> list[Contender]:
    """A busy tiny Emformer model (incremental) and the same decoders on a tiny Conformer."""
    model, vocoder = busy_model(0)
    cfg = tiny_config()
    cfg.model, cfg.encoder.type = "streamspeech", "conformer"
    cfg.encoder.conformer = ConformerConfig(
        d_model=32, num_layers=2, num_heads=4, ffn_dim=64, conv_kernel_size=5, chunk_size=4
    )
    torch.manual_seed(1)
    base = build_model(validate_config(cfg)).eval()
    with torch.no_grad():
        for head in (base.asr_ctc, base.st_ctc.head):
            head.proj.weight.mul_(30.0)
        base.mt_decoder.embed_tokens.weight.normal_(0, 1.0)
    return [
        Contender("echostream-incremental", "incremental", model, vocoder, "busy tiny"),
        Contender("streamspeech-recompute", "recompute", base, vocoder, "busy tiny"),
    ]


@pytest.mark.parametrize("which", [0, 1])
def test_forked_lengths_equal_translator_runs(which):
    c = contenders()[which]
    pcm = speechlike(1.6, seed=3)
    run = stream_contender(c, pcm, [0.7, 1.6], 160, flops=False, log=lambda m: None)
    for length in (0.7, 1.6):
        tr = translator_for(c, 160)
        tr.push(pcm[: round(length * 16000)])
        tr.finish()
        total = run["totals"][f"{length:g}"]
        assert total["steps"] == len(tr.step_times)
        assert total["target_tokens"] == len(tr.target_ids)
        assert total["units"] == len(tr.units)
    assert run["totals"]["1.6"]["mid_stream_tokens"] > 0  # the busy policy writes mid-stream
    positions = [s["position_s"] for s in run["steps"]]
    assert positions == pytest.approx([0.16 * (k + 1) for k in range(10)])


def test_stage_meter_accounts_for_every_flop_and_unwraps():
    for c in contenders():
        tr = StreamingTranslator(c.model, c.vocoder, chunk_ms=320, mode=c.mode)
        pcm = torch.from_numpy(speechlike(1.0, seed=1))[None]
        state = tr.core.init_state(1)
        with StageMeter(c.model, c.vocoder) as meter, FlopCounterMode(display=False) as counter:
            meter.counter = counter
            tr.core.step(pcm, torch.tensor([pcm.shape[1]]), state, final=True)
        total = counter.get_total_flops()
        assert sum(meter.flops.values()) == total > 0  # nothing outside the stages
        for stage in ("encoder", "ctc", "mt", "t2u_units", "vocoder"):
            assert meter.flops[stage] > 0, stage
            assert meter.ms[stage] > 0, stage
        for obj in (c.model.encoder, c.model.st_ctc, c.model.mt_decoder, c.vocoder):
            assert not {"forward", "stream", "stream_pcm"} & set(vars(obj)), obj


def test_fit_and_extrapolation_reproduce_an_exact_quadratic():
    def cost(t):
        return 2.0 + 3.0 * t + 5.0 * t * t

    def row(t):
        stages = {"encoder": cost(t), "ctc": 0.0, "mt": 0.0, "t2u_units": 0.0, "vocoder": 0.0}
        return {"wall_ms": cost(t), "stage_ms": dict(stages, other=0.0)}

    steps = [dict(row(0.16 * (k + 1)), position_s=0.16 * (k + 1)) for k in range(12)]
    totals = {
        f"{L:g}": {"length_s": L, "finish": row(10 * L)} for L in (0.5, 1.0, 1.5)
    }  # finish cost: a quadratic in L too
    run = {"steps": steps, "totals": totals}
    fit = fit_cost_model(run)
    assert fit["step"]["wall_ms"] == pytest.approx((2.0, 3.0, 5.0))
    assert fit["finish"]["wall_ms"] == pytest.approx((2.0, 30.0, 500.0))
    got = extrapolate_total(run, fit, 4.0, 160)
    want = sum(cost(0.16 * (k + 1)) for k in range(25)) + cost(40.0)
    assert got["total_ms"] == pytest.approx(want) and got["steps"] == 26
    assert not got["measured"] and got["rtf"] == pytest.approx(want / 4000)
    measured = per_chunk_at(run, 1.92)  # the last measured step: a mean over real steps
    assert not measured["extrapolated"] and measured["steps"] == 7  # (0.92, 1.92]
    assert measured["wall_ms"] == pytest.approx(sum(cost(0.16 * k) for k in range(6, 13)) / 7)
    far = per_chunk_at(run, 3.0, fit)
    assert far["extrapolated"]
    assert far["wall_ms"] == pytest.approx(sum(cost(3.0 - 0.16 * k) for k in range(7)) / 7)


def test_nonnegative_fit_never_lets_a_cost_fall():
    assert fit_nonnegative_quadratic([(t, 1 + 2 * t + 3 * t * t) for t in range(5)]) == (
        pytest.approx((1.0, 2.0, 3.0))
    )
    # a falling series: any positive slope fits worse than the constant mean
    assert fit_nonnegative_quadratic([(0, 5), (1, 4), (2, 3), (3, 2)]) == pytest.approx(
        (3.5, 0.0, 0.0)
    )
    assert fit_nonnegative_quadratic([(2, 8)]) == pytest.approx((8.0, 0.0, 0.0))


def test_benchmark_on_tiny_models_reports_flat_vs_growing(tmp_path):
    results = run_benchmark(contenders(), [0.5, 1.0, 1.5], [160], 1.0, log=lambda m: None)
    json.loads(json.dumps(results, default=str))
    inc = results["runs"]["echostream-incremental@160"]
    rec = results["runs"]["streamspeech-recompute@160"]
    assert {k for k in rec["totals"] if not rec["totals"][k]["measured"]} == {"1.5"}
    assert rec["per_chunk"]["1.5"]["extrapolated"] and not inc["per_chunk"]["1.5"]["extrapolated"]
    step = inc["steps"][-1]
    assert step.keys() >= {"position_s", "wall_ms", "flops", "stage_ms", "stage_flops"}
    assert step["stage_flops"]["other"] == 0
    s = results["summary"]["160"]
    assert s["recompute_flops_growth"] > 2 * s["incremental_flops_growth"]
    text = render_markdown(results)
    assert "| echostream-incremental GFLOPs/chunk |" in text and "*" in text
    results["command"] = "echostream bench pipeline --test"
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(results, default=str))
    assert render_markdown(json.loads(saved.read_text())) == text  # JSON round trip
    doc = tmp_path / "page.md"
    assert main(["--render", str(saved), "--out", str(tmp_path / "out"), "--doc", str(doc)]) == 0
    page = doc.read_text()
    assert "Produced by `echostream bench pipeline --test`" in page
    assert "| echostream-incremental | t2u_units |" in page and text in page
    assert (tmp_path / "out" / "pipeline_per_chunk_160ms.png").stat().st_size > 1000


@pytest.mark.slow
def test_quick_mode_on_tiny_configs(tmp_path):
    doc = tmp_path / "pipeline.md"
    argv = ["--quick", "--config", "echostream_tiny", "--out", str(tmp_path), "--doc", str(doc)]
    assert main(argv) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["quick"] and r["lengths_s"] == [1, 2, 3] and r["chunks_ms"] == [160]
    inc = r["runs"]["echostream-incremental@160"]["per_chunk"]
    rec = r["runs"]["streamspeech-recompute@160"]["per_chunk"]
    assert inc["3"]["flops"] / inc["1"]["flops"] < 1.2  # flat with position
    assert rec["3"]["flops"] / rec["1"]["flops"] > 2.0  # grows with position
    assert rec["3"]["extrapolated"] and not rec["2"]["extrapolated"]
    for key in ("summary", "contenders", "machine", "busy"):
        assert key in r
    assert "echostream bench pipeline --quick" in doc.read_text()
    assert (tmp_path / "pipeline_per_chunk_160ms.png").stat().st_size > 1000


def test_cli_errors():
    with pytest.raises(SystemExit):
        main(["--baseline-config", "nope"])
    with pytest.raises(SystemExit):
        main(["--doc", "x.md"])  # --doc without --out
