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

Words without a pronunciation in the recogniser's dictionary stay in the LM (pocketsphinx skips
them); their share of the training tokens is reported, as it bounds what the LM can add.
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
from echostream.files import atomic_open
from echostream.text.normalize import normalize

DEFAULT_NAME = "asr_lm.arpa"


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
    if path is None:
        from pocketsphinx import get_model_path

        path = Path(get_model_path()) / "en-us" / "cmudict-en-us.dict"
    words = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                words.add(line.split(maxsplit=1)[0].split("(")[0])
    return words


def build_asr_lm(
    data_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    discount_mass: float = 0.5,
) -> tuple[Path, dict]:
    """Write the ARPA trigram of ``data_dir``'s training targets -> (path, statistics)."""
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
    stats = {
        "sentences": len(texts),
        "tokens": sum(tokens.values()),
        "ngrams": {"1": lm.count_1, "2": lm.count_2, "3": lm.count_3},
        "discount_mass": discount_mass,
        "words": len(tokens),
        "words_without_pronunciation": len(oov),
        "tokens_without_pronunciation": sum(oov.values()) / max(sum(tokens.values()), 1),
    }
    return out, stats


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="echostream prepare asr-lm",
        description="Build the ASR-BLEU recogniser's trigram LM from a corpus' training "
        "targets (train.tsv only: never dev/test).",
    )
    p.add_argument("--data", required=True, help="corpus folder holding train.tsv")
    p.add_argument("--out", help=f"ARPA file to write (default: DATA/{DEFAULT_NAME})")
    p.add_argument("--discount-mass", type=float, default=0.5, help="back-off discount mass")
    args = p.parse_args(argv)
    try:
        path, stats = build_asr_lm(args.data, args.out, args.discount_mass)
    except (FileNotFoundError, ValueError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{path}: " + json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
