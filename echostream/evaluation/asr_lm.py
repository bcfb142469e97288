"""A domain language model for the English recogniser of ASR-BLEU, from *training* targets only.

pocketsphinx's generic en-us LM knows little of the corpus' domain (Debian package
descriptions); a trigram of the training split's English text raises what the recogniser can
hear in the gold target audio, the ceiling of every ASR-BLEU. Only ``train.tsv`` is read, never
dev or test, so the LM does not know the sentences it is scored on.

The model is built by pocketsphinx's own ARPA writer (:class:`pocketsphinx.lm.ArpaBoLM`: a
back-off trigram with a fixed discount mass) on text normalised exactly as the recogniser's
output and the references are (:func:`echostream.text.normalize.normalize`)::

    echostream prepare asr-lm --data work/synth-demo        # -> work/synth-demo/asr_lm.arpa
    echostream evaluate ... --asr-lm work/synth-demo/asr_lm.arpa

pocketsphinx can only recognise words its dictionary pronounces: CMUdict lacks ~9% of the
training tokens here (package and library names). Their pronunciations come from espeak-ng's
English phonemes mapped to the recogniser's ARPAbet phones (:func:`arpabet`), and the dictionary
(CMUdict + those words) is written next to the LM (``asr_lm.dict``), where :class:`~echostream.
evaluation.asr.EnglishASR` picks it up with the LM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from echostream.data.manifest import ManifestError, read_manifest
from echostream.evaluation.asr import cmudict_path
from echostream.files import atomic_open
from echostream.text.normalize import normalize

DEFAULT_NAME = "asr_lm.arpa"


# espeak-ng en-us phoneme mnemonics -> pocketsphinx en-us phones (ARPAbet without stress).
# Longest match first; stress and boundary marks are dropped (_IGNORED).
_ESPEAK_TO_ARPABET = {
    "i@3": "IH R", "A@": "AA R", "O@": "AO R", "o@": "AO R", "U@": "UH R", "e@": "EH R",
    "i@": "IH R", "@L": "AH L", "aI": "AY", "aU": "AW", "eI": "EY", "oU": "OW", "OI": "OY",
    "3:": "ER", "A:": "AA", "O:": "AO", "i:": "IY", "u:": "UW", "I2": "IH", "I#": "IH",
    "a#": "AH", "@2": "AH", "@5": "AH", "t#": "T", "tS": "CH", "dZ": "JH", "n-": "AH N",
    "l-": "AH L", "r-": "R", "@": "AH", "3": "ER", "a": "AE", "A": "AA", "e": "EH", "E": "EH",
    "i": "IY", "I": "IH", "0": "AA", "O": "AO", "U": "UH", "V": "AH", "b": "B", "d": "D",
    "f": "F", "g": "G", "h": "HH", "j": "Y", "k": "K", "l": "L", "m": "M", "n": "N", "N": "NG",
    "p": "P", "r": "R", "s": "S", "S": "SH", "t": "T", "T": "TH", "D": "DH", "v": "V", "w": "W",
    "z": "Z", "Z": "ZH", "x": "K", "?": "", "t2": "T", "d2": "D", "O2": "AO", "a2": "AH",
    "o": "OW",
}  # fmt: skip
_IGNORED = set("',;:_=|!% ")


def training_targets(data_dir: str | os.PathLike) -> list[str]:
    """The normalised English targets of ``data_dir/train.tsv`` (empty ones dropped)."""
    manifest = Path(data_dir) / "train.tsv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: no training manifest (the LM is built from the training split only)"
        )
    rows = read_manifest(manifest, check_files=False)
    texts = [t for t in (normalize(row.tgt_text) for row in rows) if t]
    if not texts:
        raise ValueError(f"{manifest}: no English target text to build an LM from")
    return texts


def dictionary_words(path: str | os.PathLike | None = None) -> set[str]:
    """Words of a pocketsphinx dictionary (default: the wheel's CMUdict); ``word(2)`` variants
    count as ``word``."""
    words = set()
    path = cmudict_path() if path is None else path
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                words.add(line.split(maxsplit=1)[0].split("(")[0])
    return words


def arpabet(phonemes: str) -> str | None:
    """espeak-ng mnemonics (``h@l'oU``) -> ARPAbet (``HH AH L OW``); None when a symbol has no
    mapping (the word is then left out rather than mispronounced)."""
    phones, i = [], 0
    while i < len(phonemes):
        if phonemes[i] in _IGNORED:
            i += 1
            continue
        for size in (3, 2, 1):
            piece = phonemes[i : i + size]
            if len(piece) == size and piece in _ESPEAK_TO_ARPABET:
                phones += _ESPEAK_TO_ARPABET[piece].split()
                i += size
                break
        else:
            return None
    return " ".join(phones) or None


def write_dictionary(
    missing: Sequence[str], out: Path, base: str | os.PathLike | None = None
) -> int:
    """``base`` (default: the wheel's CMUdict) + an espeak-ng pronunciation for each of the
    ``missing`` words (words ``base`` lacks), to ``out``; returns how many words were added."""
    from echostream.data.tts import espeak_phonemes

    base = cmudict_path() if base is None else base
    added = []
    for word in sorted(set(missing)):
        phones = arpabet(espeak_phonemes(word))
        if phones:
            added.append(f"{word} {phones}\n")
    with atomic_open(out, "w") as f:
        f.write(Path(base).read_text(encoding="utf-8"))
        f.writelines(added)
    return len(added)


def build_asr_lm(
    data_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    discount_mass: float = 0.5,
) -> tuple[Path, dict]:
    """Write the ARPA trigram of ``data_dir``'s training targets and its dictionary (same
    name, ``.dict``) -> (LM path, statistics)."""
    from pocketsphinx.lm import ArpaBoLM

    if not 0.0 < discount_mass < 1.0:
        raise ValueError(f"discount_mass must be in (0, 1), got {discount_mass}")
    texts = training_targets(data_dir)
    out = Path(out) if out is not None else Path(data_dir) / DEFAULT_NAME
    lm = ArpaBoLM(text="\n".join(texts) + "\n", add_start=True, discount_mass=discount_mass)
    lm.compute()
    with atomic_open(out, "w") as f:
        lm.write(f)
    tokens = Counter(w for t in texts for w in t.split())
    known = dictionary_words()
    oov = {w: n for w, n in tokens.items() if w not in known}
    added = write_dictionary(list(oov), out.with_suffix(".dict"))
    stats = {
        "sentences": len(texts),
        "tokens": sum(tokens.values()),
        "ngrams": {"1": lm.count_1, "2": lm.count_2, "3": lm.count_3},
        "discount_mass": discount_mass,
        "words": len(tokens),
        "words_without_pronunciation": len(oov),
        "tokens_without_pronunciation": sum(oov.values()) / max(sum(tokens.values()), 1),
        "pronunciations_added": added,
        "dictionary": str(out.with_suffix(".dict")),
    }
    return out, stats


def measure_ceilings(data_dir: str | os.PathLike, lm: Path, split: str, limit: int) -> dict:
    """WER / ASR-BLEU of the recogniser on the gold target audio of ``split``'s first ``limit``
    utterances: generic LM, ``lm`` with CMUdict, ``lm`` with its own dictionary."""
    from echostream.evaluation.asr import EnglishASR
    from echostream.evaluation.runner import gold_ceiling, load_split

    utterances = load_split(Path(data_dir), split, limit)
    recognisers = {
        "generic LM, CMUdict": EnglishASR(),
        "training-target trigram, CMUdict": EnglishASR(lm=lm, dict=cmudict_path()),
        "training-target trigram + its dictionary": EnglishASR(lm=lm),
    }
    return {name: gold_ceiling(utterances, asr) for name, asr in recognisers.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="echostream prepare asr-lm",
        description="Build the ASR-BLEU recogniser's trigram LM from a corpus' training "
        "targets (train.tsv only: never dev/test).",
    )
    p.add_argument("--data", required=True, help="corpus folder holding train.tsv")
    p.add_argument("--out", help=f"ARPA file to write (default: DATA/{DEFAULT_NAME})")
    p.add_argument("--discount-mass", type=float, default=0.5, help="back-off discount mass")
    p.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="then measure the recogniser's WER / ASR-BLEU on the gold target audio of the "
        "first N utterances of --measure-split, with and without this LM and dictionary",
    )
    p.add_argument("--measure-split", default="dev")
    args = p.parse_args(argv)
    try:
        path, stats = build_asr_lm(args.data, args.out, args.discount_mass)
    except (FileNotFoundError, ValueError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{path}: " + json.dumps(stats))
    if args.measure > 0:
        ceilings = measure_ceilings(args.data, path, args.measure_split, args.measure)
        print(f"gold target audio, {args.measure_split}, first {args.measure} utterances:")
        print("| recogniser | WER | ASR-BLEU |\n|---|---|---|")
        for name, c in ceilings.items():
            if c is None:
                print(f"| {name} | — | — |  (no gold target audio)")
            else:
                print(f"| {name} | {100 * c['WER']:.1f}% | {c['ASR_BLEU']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
