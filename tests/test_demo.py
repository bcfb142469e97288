"""`echostream demo`: the bundled model translates a bundled recording end to end, offline."""

import soundfile as sf
import torch

from echostream.cli import main
from echostream.streaming.translator import PRETRAINED_DIR, load_pretrained


def test_bundled_model_loads_by_name_without_network():
    model, vocoder = load_pretrained("echostream-tiny-fr-en")
    assert model.cfg.model == "echostream" and model.tgt_tokenizer is not None
    assert vocoder is not None and vocoder.cfg.num_units == model.cfg.vocab.num_units
    baseline, no_vocoder = load_pretrained("streamspeech-tiny-fr-en")  # the A/B baseline
    assert baseline.cfg.model == "streamspeech" and no_vocoder is None
    assert baseline.tgt_tokenizer.sp.serialized_model_proto() == (
        model.tgt_tokenizer.sp.serialized_model_proto()
    )  # same corpus, same target pieces
    for path in PRETRAINED_DIR.glob("*/*.pt"):
        assert path.stat().st_size <= 25 * 2**20, f"{path} is over the 25 MB repository limit"


def test_demo_prints_the_translation_and_writes_speech(tmp_path, capsys):
    torch.set_num_threads(1)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "EN translation:" in out and "real-time factor" in out
    assert "reference  FR: Le principal usage connu d'Ant" in out
    wav, sr = sf.read(tmp_path / "fr_dev_000988.en.wav")
    assert sr == 16000 and len(wav) > 0


def test_unknown_model_name_is_a_clear_error():
    import pytest

    with pytest.raises(FileNotFoundError, match="bundled: echostream-tiny-fr-en"):
        load_pretrained("no-such-model")
