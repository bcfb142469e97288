"""Results regeneration: model specs, the golden markdown table, the curves, and one end-to-end
run on two utterances of the tiny synthetic corpus with tiny random checkpoints."""

import json

import pytest
import torch
from helpers_models import busy_model

from echostream.evaluation.results import ModelSpec, main, plot_curves, render_table
from echostream.models.checkpoint import save_checkpoint


def run(bleu, asr_bleu, al, al_ca, rtf, speech=True):
    row = {
        "BLEU": bleu,
        "chrF": 2 * bleu,
        "source_WER": 0.5,
        "text_AL": al,
        "text_AL_CA": al_ca,
        "text_LAAL": al + 10,
        "text_AP": 0.75,
        "text_DAL": al + 20,
        "text_compute_RTF": rtf,
        "ASR_BLEU": asr_bleu,
    }
    if speech:
        row.update(speech_AL=al + 100, speech_AL_CA=al_ca + 100)
    return row


def synthetic_results():
    ceiling = {"ASR_BLEU": 36.14, "WER": 0.52, "utterances": 30}
    return {
        "echo": {
            "split": "dev",
            "utterances": 30,
            "mode": "incremental",
            "gold_ceiling": ceiling,
            "runs": {
                "simul_640ms": run(12.0, 8.0, 2400.0, 2500.0, 0.1),
                "simul_160ms": run(10.04, 7.0, 1500.4, 1700.6, 0.125),
                "offline": {"BLEU": 13.0, "chrF": 26.0, "source_WER": 0.25, "ASR_BLEU": 9.0},
            },
        },
        "base": {
            "split": "dev",
            "utterances": 30,
            "mode": "recompute",
            "gold_ceiling": ceiling,
            "runs": {"simul_160ms": run(9.96, 6.0, 1510.0, 3000.0, 0.9, speech=False)},
        },
    }


GOLDEN = """\
dev split, 30 utterances; latency in ms of source (SimulEval definitions; `_CA` adds the measured compute); BLEU/chrF on normalised text; ASR-BLEU: pocketsphinx en-us on the output speech.

| model | mode | run | BLEU | chrF | ASR-BLEU | src WER | AL | AL_CA | LAAL | AP | DAL | speech AL | speech AL_CA | compute RTF |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| echo | incremental | simul 160 ms | 10.0 | 20.1 | 7.0 | 0.50 | 1500 | 1701 | 1510 | 0.75 | 1520 | 1600 | 1801 | 0.125 |
| echo | incremental | simul 640 ms | 12.0 | 24.0 | 8.0 | 0.50 | 2400 | 2500 | 2410 | 0.75 | 2420 | 2500 | 2600 | 0.100 |
| echo | incremental | offline | 13.0 | 26.0 | 9.0 | 0.25 | — | — | — | — | — | — | — | — |
| base | recompute | simul 160 ms | 10.0 | 19.9 | 6.0 | 0.50 | 1510 | 3000 | 1520 | 0.75 | 1530 | — | — | 0.900 |

ASR-BLEU ceiling (the same recogniser on the gold target audio, 30 utterances): 36.1 (WER 0.52).
"""  # noqa: E501


def test_table_is_golden():
    assert render_table(synthetic_results()) == GOLDEN


def test_table_names_the_recogniser_that_made_asr_bleu():
    results = synthetic_results()
    first = next(iter(results.values()))
    first["asr"] = {"lm": "/x/en-us/en-us.lm.bin", "dict": "/x/en-us/cmudict-en-us.dict"}
    assert "ASR-BLEU: pocketsphinx en-us with its generic LM on" in render_table(results)
    first["asr"] = {"lm": "work/d/asr_lm.arpa", "dict": "work/d/asr_lm.dict"}
    table = render_table(results)
    assert "with the LM `asr_lm.arpa` and dictionary `asr_lm.dict` on the output" in table


def test_curves_are_drawn(tmp_path):
    path = plot_curves(synthetic_results(), tmp_path / "curves.png")
    assert path.stat().st_size > 10_000


def test_model_spec_parsing_and_errors():
    assert ModelSpec.parse("a=echostream-tiny-fr-en") == ModelSpec(
        "a", "echostream-tiny-fr-en", "incremental"
    )
    assert ModelSpec.parse("b=work/x@y/ckpt.pt@recompute") == ModelSpec(
        "b", "work/x@y/ckpt.pt", "recompute"
    )
    for bad, message in (
        ("noequals", "LABEL=SOURCE"),
        ("a b=x", "label"),
        ("a=x@fast", "mode 'fast'"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelSpec.parse(bad)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "a=x", "--model", "a=y", "--data", str(tmp_path)])
    assert "distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "a=x", "--data", str(tmp_path)])
    assert "dev.tsv: no such manifest" in capsys.readouterr().err


def test_end_to_end_on_two_utterances(tmp_path, synth_tiny):
    torch.set_num_threads(1)
    model, vocoder = busy_model(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model)
    vocoder.save(tmp_path / "vocoder.pt")
    out = tmp_path / "results"
    argv = [
        "--model", f"inc={ckpt}", "--model", f"rec={ckpt}@recompute",
        "--vocoder", str(tmp_path / "vocoder.pt"), "--data", str(synth_tiny), "--split", "dev",
        "--limit", "2", "--chunks", "320,640", "--no-asr", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    inc = json.loads((out / "eval_inc.json").read_text())
    rec = json.loads((out / "eval_rec.json").read_text())
    assert inc["utterances"] == 2 and set(inc["runs"]) == {"simul_320ms", "simul_640ms", "offline"}
    assert rec["mode"] == "recompute" and inc["source"] == str(ckpt)
    for name in ("simul_320ms", "simul_640ms"):  # both agents decide alike: same text, latency
        assert inc["runs"][name]["BLEU"] == rec["runs"][name]["BLEU"]
        assert inc["runs"][name]["text_AL"] == rec["runs"][name]["text_AL"]
        assert inc["runs"][name]["text_AL_CA"] >= inc["runs"][name]["text_AL"]
    table = (out / "results_table.md").read_text()
    assert table.startswith("Regenerated by `python -m echostream.evaluation.results --model inc=")
    assert "| rec | recompute | simul 640 ms |" in table
    assert (out / "quality_latency.png").stat().st_size > 10_000
