"""Translation and recognition quality: corpus BLEU, chrF (sacrebleu) and WER.

Every function takes keyword-only ``hyps=`` and ``refs=`` (one reference per hypothesis, same
order), so that the two can never be swapped silently (BLEU and WER are not symmetric).

- :func:`bleu`: sacrebleu corpus BLEU, ``13a`` tokenisation, case-sensitive — on raw text this is
  the usual text BLEU (what SimulEval's ``BLEU`` scorer computes).
- :func:`chrf`: sacrebleu corpus chrF (character 6-grams, beta 2, no word n-grams).
- ``normalizer=``: applied to hypotheses and references alike before scoring. ``"echostream"``
  (:func:`echostream.text.normalize.normalize`: lower-case, punctuation removed, inner
  apostrophes kept) is the ASR-BLEU convention: an ASR transcript has no case or punctuation,
  so the reference must not have them either (StreamSpeech scores lower-cased ASR output
  against its normalised references, ``13a``). ``"streamspeech"`` reproduces StreamSpeech's
  normalisation exactly (punctuation deleted: ``don't`` → ``dont``); a callable is used as is;
  None leaves the text as it is.
- :func:`asr_bleu`: :func:`bleu` with the ``"echostream"`` normaliser, for transcripts of output
  speech (the same numbers as :func:`echostream.evaluation.asr.asr_bleu`).
- :func:`word_error_rate`: corpus WER = word edit distance summed over sentences / reference
  words summed (a fraction, not a percentage), after the normaliser (default ``"echostream"``);
  own Levenshtein distance, no extra dependency.

Empty hypotheses are valid (they score 0 and count as deletions); an empty corpus, a length
mismatch, or (for WER) references without words raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import sacrebleu

from echostream.text.normalize import normalize, streamspeech_normalize

Normalizer = Literal["echostream", "streamspeech"] | Callable[[str], str] | None
_NORMALIZERS: dict[str, Callable[[str], str]] = {
    "echostream": normalize,
    "streamspeech": streamspeech_normalize,
}


def _prepare(
    hyps: Sequence[str], refs: Sequence[str], normalizer: Normalizer
) -> tuple[list[str], list[str]]:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hyps and refs are sequences of sentences, not one string")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("empty corpus")
    if normalizer is None:
        fn = str
    elif callable(normalizer):
        fn = normalizer
    elif normalizer in _NORMALIZERS:
        fn = _NORMALIZERS[normalizer]
    else:
        raise ValueError(f"normalizer must be one of {list(_NORMALIZERS)}, a callable or None")
    return [fn(h) for h in hyps], [fn(r) for r in refs]


def bleu(
    *,
    hyps: Sequence[str],
    refs: Sequence[str],
    normalizer: Normalizer = None,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> float:
    """Corpus BLEU (0-100) with sacrebleu (default ``13a``, case-sensitive, exp smoothing)."""
    hyps, refs = _prepare(hyps, refs, normalizer)
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize, lowercase=lowercase).score


def chrf(*, hyps: Sequence[str], refs: Sequence[str], normalizer: Normalizer = None) -> float:
    """Corpus chrF (0-100) with sacrebleu's defaults (char order 6, beta 2, word order 0)."""
    hyps, refs = _prepare(hyps, refs, normalizer)
    return sacrebleu.corpus_chrf(hyps, [refs]).score


def asr_bleu(*, hyps: Sequence[str], refs: Sequence[str]) -> float:
    """BLEU of ASR transcripts of output speech: both sides normalised (lower-case, no
    punctuation), ``13a``."""
    return bleu(hyps=hyps, refs=refs, normalizer="echostream")


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitution = insertion = deletion
    = 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(
    *, hyps: Sequence[str], refs: Sequence[str], normalizer: Normalizer = "echostream"
) -> float:
    """Corpus WER in [0, inf): sum of word edit distances / sum of reference words."""
    hyps, refs = _prepare(hyps, refs, normalizer)
    edits = words = 0
    for hyp, ref in zip(hyps, refs, strict=True):
        r = ref.split()
        edits += edit_distance(r, hyp.split())
        words += len(r)
    if words == 0:
        raise ValueError("references contain no words: WER is undefined")
    return edits / words


def quality_report(
    *, hyps: Sequence[str], refs: Sequence[str], normalizer: Normalizer = "echostream"
) -> dict[str, float]:
    """``BLEU`` and ``chrF`` on raw text, ``BLEU_norm`` / ``chrF_norm`` / ``WER`` after the
    normaliser (``WER`` as a fraction)."""
    return {
        "BLEU": bleu(hyps=hyps, refs=refs),
        "chrF": chrf(hyps=hyps, refs=refs),
        "BLEU_norm": bleu(hyps=hyps, refs=refs, normalizer=normalizer),
        "chrF_norm": chrf(hyps=hyps, refs=refs, normalizer=normalizer),
        "WER": word_error_rate(hyps=hyps, refs=refs, normalizer=normalizer),
    }
