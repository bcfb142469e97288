"""`echostream evaluate` end to end on a three-utterance corpus made of the bundled samples."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from echostream.cli import main
from echostream.data.manifest import ManifestRow, write_manifest
from echostream.evaluation.runner import evaluate, render_markdown
from echostream.models.checkpoint import save_checkpoint

SAMPLES = Path(__file__).resolve().parents[1] / "echostream" / "assets" / "samples"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rows = []
    for i, wav in enumerate(sorted(SAMPLES.glob("*.wav"))):
        (tmp_path / "src").mkdir(exist_ok=True)
        shutil.copy(wav, tmp_path / "src" / wav.name)
        rows.append(
            ManifestRow(
                f"u{i}", f"src/{wav.name}", 100, "bonjour le monde", "hello world", "1 2 3", 3
            )
        )
    write_manifest(tmp_path / "dev.tsv", rows)
    return tmp_path


def test_evaluate_reports_quality_and_latency(corpus, tmp_path):
    from helpers_models import busy_model

    torch.set_num_threads(1)
    model, vocoder = busy_model()
    results = evaluate(model, vocoder, corpus, "dev", [320], offline=True, log=lambda m: None)
    assert results["utterances"] == 3
    simul, offline = results["runs"]["simul_320ms"], results["runs"]["offline"]
    for row in (simul, offline):
        assert 0 <= row["BLEU"] <= 100 and row["source_WER"] >= 0
    # the random model writes digits-as-text: BLEU is 0 but latency is defined and sane
    # (StartOffset: source time of the first word; EndOffset: last word minus source length)
    assert simul["text_StartOffset"] >= 320 and simul["text_EndOffset"] <= 0
    assert simul["text_AL_CA"] >= simul["text_AL"]
    assert simul["text_compute_RTF"] > 0
    assert "speech_AL" in simul
    text = render_markdown(results, "tiny random")
    assert "| simul_320ms |" in text and "| offline |" in text

    # the CLI writes the same structure
    save_checkpoint(tmp_path / "m.pt", model)
    vocoder.save(tmp_path / "v.pt")
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m.pt"),
                "--vocoder",
                str(tmp_path / "v.pt"),
                "--data",
                str(corpus),
                "--chunks",
                "640",
                "--no-offline",
                "--no-asr",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    assert set(saved["runs"]) == {"simul_640ms"} and saved["utterances"] == 3
