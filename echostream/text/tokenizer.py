"""SentencePiece unigram tokenizers for source (French) and target (English) text.

Id conventions (fixed for every model trained here, and checked on load):

=====  =========  ==========================================================================
id     piece      use
=====  =========  ==========================================================================
0      ``<pad>``  padding, and the **CTC blank** of the ASR / ST / unit CTC heads
1      ``<unk>``  unknown
2      ``<s>``    BOS (the MT decoder's start symbol)
3      ``</s>``   EOS
4...   pieces     ``vocab_size`` counts all of the above
=====  =========  ==========================================================================

Text is normalised with :func:`echostream.text.normalize.normalize` before training and before
encoding (``normalize=False`` skips it, e.g. for already-normalised manifest text), so the
vocabulary never sees upper case or punctuation. Training is deterministic for a given input
(fixed sentencepiece seed, input not sampled).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from echostream.files import atomic_write_bytes
from echostream.text.normalize import normalize as _normalize

PAD_ID = BLANK_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_IDS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


class TokenizerError(ValueError):
    """A tokenizer model is missing, unreadable or uses other special ids."""


class Tokenizer:
    """A trained sentencepiece model (``.model`` file) with EchoStream's id conventions."""

    pad_id = blank_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_path: str | os.PathLike):
        path = Path(model_path)
        if not path.is_file():
            hint = " (train one with `train_tokenizer` or `echostream prepare synth`)"
            raise TokenizerError(f"{path}: sentencepiece model not found{hint}")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{path}: not a readable sentencepiece model: {err}") from None
        found = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if found != SPECIAL_IDS:
            raise TokenizerError(
                f"{path}: special ids (pad, unk, bos, eos) = {found}, expected {SPECIAL_IDS}; "
                "retrain with `train_tokenizer`"
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(
        self, text: str, *, normalize: bool = True, bos: bool = False, eos: bool = False
    ) -> list[int]:
        """Text → ids (no BOS/EOS unless asked). ``normalize`` applies :func:`normalize` first."""
        ids = self.sp.EncodeAsIds(_normalize(text) if normalize else text)
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def encode_pieces(self, text: str, *, normalize: bool = True) -> list[str]:
        return self.sp.EncodeAsPieces(_normalize(text) if normalize else text)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text. Special ids (pad/blank, unk, bos, eos) are dropped; no CTC collapsing."""
        keep = [int(i) for i in ids if int(i) not in SPECIAL_IDS]
        for i in keep:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside [0, {self.vocab_size}) for {self.path}")
        return self.sp.DecodeIds(keep)

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    texts: Iterable[str],
    prefix: str | os.PathLike,
    vocab_size: int,
    *,
    normalize: bool = True,
    character_coverage: float = 1.0,
    num_threads: int = 1,
) -> Tokenizer:
    """Train a unigram model on ``texts`` and write ``{prefix}.model`` and ``{prefix}.vocab``.

    ``vocab_size`` is a maximum: on a small corpus sentencepiece may produce fewer pieces
    (``hard_vocab_limit=False``); read :attr:`Tokenizer.vocab_size` for the real size. Files are
    written under a temporary name and renamed, so a crash leaves no half-written model. The
    ``.model`` bytes depend only on the texts and settings (not on paths or time).
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [_normalize(t) if normalize else t for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise ValueError(f"train_tokenizer({prefix}): no non-empty text to train on")
    if vocab_size <= len(SPECIAL_IDS):
        raise ValueError(f"vocab_size must be > {len(SPECIAL_IDS)}, got {vocab_size}")
    spm.set_random_generator_seed(1234)
    model = io.BytesIO()  # no input file or prefix: they would be recorded inside the model
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        input_sentence_size=0,  # use every sentence (no random sampling)
        shuffle_input_sentence=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = "".join(f"{sp.IdToPiece(i)}\t{sp.GetScore(i):g}\n" for i in range(sp.GetPieceSize()))
    atomic_write_bytes(f"{prefix}.vocab", vocab.encode("utf-8"))
    atomic_write_bytes(f"{prefix}.model", proto)  # last: its presence means "complete"
    return Tokenizer(f"{prefix}.model")
