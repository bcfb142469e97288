"""BLEU / chrF / WER: hand-worked golden values, normalisation, error paths."""

from __future__ import annotations

import json

import pytest

from echostream.evaluation import asr
from echostream.evaluation.quality import (
    asr_bleu,
    bleu,
    chrf,
    edit_distance,
    quality_report,
    word_error_rate,
)


def test_bleu_golden():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, BP = 1):
    # 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    # -> (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** (1/4).
    score = bleu(hyps=["the cat sat on the mat"], refs=["the cat sat on a mat"])
    assert score == pytest.approx(100 * (1 / 12) ** 0.25, rel=1e-12)
    same = ["Hello big wide world ."]
    assert bleu(hyps=same, refs=same) == pytest.approx(100)
    assert bleu(hyps=["Hello world ."], refs=["Hello world ."]) == 0.0  # no 4-gram at all
    # Case-sensitive and 13a-tokenised ("mat!" -> "mat !") on raw text...
    raw = bleu(hyps=["The cat sat on the mat!"], refs=["the cat sat on a mat"])
    assert raw < score
    # ...identical to the golden once both sides are normalised (ASR-BLEU convention).
    for fn in (
        lambda h, r: bleu(hyps=h, refs=r, normalizer="echostream"),
        lambda h, r: asr_bleu(hyps=h, refs=r),
        lambda h, r: bleu(hyps=h, refs=r, normalizer="streamspeech"),
        lambda h, r: bleu(hyps=h, refs=r, normalizer=lambda t: t.lower().rstrip("!")),
    ):
        assert fn(["The cat sat on the mat!"], ["the cat sat on a mat"]) == pytest.approx(score)
    upper = bleu(hyps=["THE CAT SAT ON"], refs=["the cat sat on"], lowercase=True)
    assert upper == pytest.approx(100)


def test_normalizers_differ_on_apostrophes():
    # EchoStream keeps inner apostrophes ("don't"), StreamSpeech deletes them ("dont").
    hyps, refs = ["Don't stop me now."], ["dont stop me now"]
    assert bleu(hyps=hyps, refs=refs, normalizer="streamspeech") == pytest.approx(100)
    assert bleu(hyps=hyps, refs=refs, normalizer="echostream") < 100.0


def test_chrf_golden():
    # "ab" vs "abc": 1-grams P 2/2 R 2/3; 2-grams P 1/1 R 1/2; higher orders empty (ignored).
    # Mean P = 1, mean R = 7/12; chrF (beta 2) = 5 P R / (4 P + R) = (35/12) / (55/12) = 7/11.
    assert chrf(hyps=["ab"], refs=["abc"]) == pytest.approx(700 / 11, rel=1e-12)
    # "ab" vs "ac": 1-grams P = R = 1/2, 2-grams 0 -> mean P = R = 1/4 -> 25.
    assert chrf(hyps=["ab"], refs=["ac"]) == pytest.approx(25.0, rel=1e-12)
    assert chrf(hyps=["AB!"], refs=["ab"], normalizer="echostream") == pytest.approx(100.0)


def test_wer_golden():
    refs = ["the cat sat", "hello world"]
    # 1 insertion ("down") + 1 deletion ("world") over 5 reference words.
    assert word_error_rate(hyps=["the cat sat down", "hello"], refs=refs) == pytest.approx(0.4)
    noisy = ["The cat, sat down!", "HELLO"]
    assert word_error_rate(hyps=noisy, refs=refs) == pytest.approx(0.4)  # normalised
    # Raw words: The/the, cat,/cat substituted, "down!" inserted; HELLO substituted, world
    # deleted -> 5 edits / 5 words.
    assert word_error_rate(hyps=noisy, refs=refs, normalizer=None) == pytest.approx(1.0)
    assert word_error_rate(hyps=["", "hello world"], refs=["a b c", "hello world"]) == 0.6
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2


def test_empty_hypotheses_are_scored():
    assert bleu(hyps=["", ""], refs=["a b", "c d"]) == 0.0
    assert chrf(hyps=[""], refs=["abc"]) == 0.0
    assert word_error_rate(hyps=[""], refs=["a b c"]) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(hyps=["a", "b"], refs=["a"])
    with pytest.raises(ValueError, match="empty corpus"):
        chrf(hyps=[], refs=[])
    with pytest.raises(TypeError, match="not one string"):
        bleu(hyps="a b c", refs=["a b c"])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(hyps=["a"], refs=["!!!"])  # nothing left after normalisation
    with pytest.raises(ValueError, match="normalizer must be"):
        bleu(hyps=["a"], refs=["a"], normalizer="nfkc")
    with pytest.raises(TypeError):
        bleu(["a"], ["a"])  # keyword-only: hyps= and refs= cannot be swapped by position


def test_report_and_agreement_with_asr_module():
    hyps = ["I would like to submit this idea.", "Thank you"]
    refs = ["I'd like to submit this idea to the assembly.", "thank you very much"]
    report = quality_report(hyps=hyps, refs=refs)
    assert set(report) == {"BLEU", "chrF", "BLEU_norm", "chrF_norm", "WER"}
    # echostream.evaluation.asr (pocketsphinx side) scores with the same normaliser.
    assert report["WER"] == pytest.approx(asr.word_error_rate(refs, hyps))
    assert report["BLEU_norm"] == pytest.approx(asr.asr_bleu(refs, hyps))


def test_bleu_equals_simuleval_scorer():
    try:
        from simuleval.evaluator.instance import LogInstance
        from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer
    except ImportError as err:
        pytest.skip(f"SimulEval not importable ({err}); optional reference for this check")

    hyps = ["the cat sat on the mat", "I would like to submit this idea", "yes"]
    refs = ["the cat sat on a mat", "I would like to submit this idea to you", "no"]
    instances = {
        i: LogInstance(json.dumps({"index": i, "prediction": h, "reference": r}))
        for i, (h, r) in enumerate(zip(hyps, refs, strict=True))
    }
    assert bleu(hyps=hyps, refs=refs) == SacreBLEUScorer("13a")(instances)
