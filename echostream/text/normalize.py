"""Text normalisation for vocabularies, CTC targets and BLEU: lower-case, no punctuation.

StreamSpeech trains its sentencepiece models and computes its ASR/ST targets on
``re.sub(r"[^\\w\\s]", "", text.lower())``: every punctuation mark is *deleted*, so French elisions
and hyphenated words are glued (``d'Ant`` → ``dant``, ``multi-plateforme`` → ``multiplateforme``,
English ``mailer's`` → ``mailers``). :func:`streamspeech_normalize` reproduces that exactly
(plus whitespace collapsing), for models and manifests made by StreamSpeech.

EchoStream's own rule, :func:`normalize`, differs in two documented ways that keep words apart:

1. An apostrophe *between two letters* stays (as ASCII ``'``; ``’ ‘ ʼ ′`` count as apostrophes):
   ``l'API`` → ``l'api``, ``aujourd’hui`` → ``aujourd'hui``, ``mailer's`` → ``mailer's``.
   French elided articles and pronouns are words of their own; keeping the apostrophe lets the
   tokenizer learn ``l'`` / ``d'`` / ``qu'`` pieces instead of fusing them into every noun.
   Quotes (an apostrophe next to a space, digit or edge) are removed.
2. Every other character that is neither a letter/digit (``\\w`` minus ``_``) nor whitespace
   becomes a *space*, so ``multi-plateforme`` → ``multi plateforme``,
   ``readbuffer/writebuffer`` → ``readbuffer writebuffer``, ``2.0`` → ``2 0``.

Both lower-case (Unicode ``str.lower``), apply NFKC first (``ﬁ`` → ``fi``, no-break spaces →
spaces; accents are kept: ``é`` stays ``é``), collapse whitespace and strip. Both are idempotent.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "′": "'", "`": "'"})
# An apostrophe with a letter on both sides (letters: \w without digits and underscore).
_INNER_APOSTROPHE = re.compile(r"(?<=[^\W\d_])'(?=[^\W\d_])")
_PLACEHOLDER = "\ue000"  # private-use character: protects inner apostrophes during stripping
_NOT_WORD = re.compile(r"[^\w\s" + _PLACEHOLDER + r"]|_")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """EchoStream normalisation (see module doc): NFKC, lower-case, inner apostrophes kept,
    other punctuation → space, whitespace collapsed. ``"L'API, c'est-à-dire…"`` →
    ``"l'api c'est à dire"``."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _INNER_APOSTROPHE.sub(_PLACEHOLDER, text)
    text = _NOT_WORD.sub(" ", text).replace(_PLACEHOLDER, "'")
    return _SPACES.sub(" ", text).strip()


def streamspeech_normalize(text: str) -> str:
    """StreamSpeech's normalisation: ``re.sub(r"[^\\w\\s]", "", text.lower())``, then whitespace
    collapsed (sentencepiece does that anyway). Punctuation is deleted, not spaced."""
    return _SPACES.sub(" ", re.sub(r"[^\w\s]", "", text.lower())).strip()
