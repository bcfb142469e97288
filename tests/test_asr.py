"""EnglishASR (pocketsphinx en-us) and the WER / ASR-BLEU scorers."""

from __future__ import annotations

import numpy as np
import pytest

from echostream.evaluation.asr import asr_bleu, word_error_rate

pytest.importorskip("pocketsphinx")


def test_word_error_rate_golden():
    # one substitution (b→x) + one insertion (d) over 3 reference words
    assert word_error_rate(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)
    # corpus level: (0 + 2) edits / (2 + 2) words; normalisation removes case and punctuation
    assert word_error_rate(["Hello, World!", "x y"], ["hello world", ""]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["a"])


def test_asr_bleu_bounds():
    refs = ["this package contains the tools for the library"]
    assert asr_bleu(refs, ["This package contains the tools for the library."]) == pytest.approx(
        100
    )
    assert asr_bleu(refs, ["nothing matches here at all"]) < 5


def test_missing_lm_is_reported(tmp_path):
    from echostream.evaluation.asr import EnglishASR

    with pytest.raises(FileNotFoundError, match="language model"):
        EnglishASR(lm=tmp_path / "nope.lm")


def test_transcribes_pico_english():
    from echostream.data.tts import pico_available, pico_synth
    from echostream.evaluation.asr import EnglishASR

    if not pico_available():
        pytest.skip("pico2wave (the English target voice) is not installed")
    asr = EnglishASR()
    refs = ["this package contains the documentation", "support for the new version"]
    hyps = []
    for text in refs:
        pcm, sr = pico_synth(text)
        assert sr == 16000
        hyps.append(asr.transcribe(pcm))
    assert word_error_rate(refs, hyps) <= 0.5, hyps
    # empty input gives no words (digital silence may not: pocketsphinx can hallucinate a word)
    assert asr.transcribe(np.zeros(0, np.float32)) == ""
    with pytest.raises(ValueError, match="NaN"):
        asr.transcribe(np.full(100, np.nan, np.float32))
