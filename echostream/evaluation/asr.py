"""English ASR for ASR-BLEU / ASR-WER: pocketsphinx 5 with the en-us model its wheel ships.

``EnglishASR`` wraps ``pocketsphinx.Decoder``: 16 kHz mono float PCM in [-1, 1] in, lower-case
text out. The acoustic model (``en-us``), the dictionary (``cmudict-en-us.dict``) and, by default,
the generic US-English trigram LM (``en-us.lm.bin``) are those of the ``pocketsphinx`` PyPI wheel
(``pocketsphinx.get_model_path()``); ``lm=`` takes another ARPA/binary LM (e.g. one built from the
training targets only, never dev/test), ``dict=`` another pronunciation dictionary. Each
utterance is decoded as one whole utterance (``full_utt=True``), so results do not depend on
chunking; decoding is deterministic.

Scoring: :func:`word_error_rate` (corpus-level: total edits / total reference words) and
:func:`asr_bleu` (sacrebleu corpus BLEU) on text normalised by
:func:`echostream.text.normalize.normalize` (lower-case, punctuation removed, inner apostrophes
kept), applied to references and hypotheses alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from echostream.evaluation import quality
from echostream.text.normalize import normalize

SAMPLE_RATE = 16000
GENERIC_LM_NAME = "en-us.lm.bin"  # the wheel's generic US-English trigram


def model_dir() -> Path:
    """The en-us model folder of pocketsphinx's wheel (acoustic model, generic LM, CMUdict)."""
    from pocketsphinx import get_model_path

    return Path(get_model_path()) / "en-us"


def cmudict_path() -> Path:
    """The pronunciation dictionary of pocketsphinx's wheel (CMUdict, en-us)."""
    return model_dir() / "cmudict-en-us.dict"


class EnglishASR:
    """pocketsphinx en-us recogniser. ``transcribe(pcm)`` -> text.

    lm: path of an N-gram LM (ARPA or pocketsphinx binary); None: the wheel's generic en-us LM.
    dict: pronunciation dictionary; None: the LM's own (same path, ``.dict``: what ``echostream
    prepare asr-lm`` writes beside its LM) when there is one, else the wheel's CMUdict.
    """

    def __init__(
        self,
        lm: str | os.PathLike | None = None,
        dict: str | os.PathLike | None = None,  # pocketsphinx's own name
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "EnglishASR needs pocketsphinx (pip install pocketsphinx; its wheel ships the "
                "en-us model)"
            ) from err
        self.lm = Path(lm) if lm is not None else model_dir() / GENERIC_LM_NAME
        if dict is None and lm is not None and self.lm.with_suffix(".dict").is_file():
            dict = self.lm.with_suffix(".dict")
        self.dict = Path(dict) if dict is not None else cmudict_path()
        for what, path in (("language model", self.lm), ("dictionary", self.dict)):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: pocketsphinx {what} not found")
        self.sample_rate = sample_rate
        self._decoder = Decoder(
            hmm=str(model_dir() / "en-us"),
            lm=str(self.lm),
            dict=str(self.dict),
            samprate=float(sample_rate),
            loglevel="FATAL",
        )

    def transcribe(self, pcm: np.ndarray) -> str:
        """(N,) float PCM in [-1, 1] at ``sample_rate`` -> recognised words, lower-case ("" for
        silence or empty input)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            return ""
        if not np.isfinite(pcm).all():
            raise ValueError("EnglishASR.transcribe: audio contains NaN or infinite samples")
        raw = np.clip(np.round(pcm * 32767.0), -32768, 32767).astype("<i2").tobytes()
        dec = self._decoder
        dec.start_utt()
        dec.process_raw(raw, no_search=False, full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        return normalize(hyp.hypstr) if hyp is not None else ""

    def transcribe_many(self, pcms: Iterable[np.ndarray]) -> list[str]:
        return [self.transcribe(p) for p in pcms]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER in [0, inf) of normalised text: :func:`echostream.evaluation.quality.
    word_error_rate` with references first."""
    return quality.word_error_rate(hyps=hyps, refs=refs)


def asr_bleu(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """BLEU of normalised text: :func:`echostream.evaluation.quality.asr_bleu` with references
    first."""
    return quality.asr_bleu(hyps=hyps, refs=refs)
