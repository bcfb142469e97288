"""Prepare CVSS-C Fr→En (with its Common Voice source audio) into EchoStream's corpus layout.

Not run on real data here (no dataset can be downloaded on this machine): it is tested on a fake
CVSS-C / Common Voice tree made of synthetic speech. See ``docs/recipes/cvss-c.md``.

Output (same layout as :mod:`echostream.data.synth`, so training has one path)::

    fbank/{split}/{id}.npy   source fbank (float16), from the Common Voice MP3 at 16 kHz
    cmvn.json                global CMVN of the train fbank
    spm/spm_fr.model, spm/spm_en.model
    units/kmeans.npz, units/{split}.tsv   k-means units of the CVSS-C target speech
    {split}.tsv              manifests; src_audio = absolute path of the Common Voice clip

The units are EchoStream's own (log-mel k-means, :mod:`echostream.data.units`), to be voiced by
a vocoder trained on them. To use the official mHuBERT km1000 units and vocoder instead, read
StreamSpeech's own ``fbank2unit/{split}.tsv`` manifests directly (see the recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from echostream.data.manifest import ManifestRow, read_cvss_c, write_manifest
from echostream.data.synth import (
    SPLITS,
    SynthCorpus,
    SynthError,
    _build_units,
    _fbank_job,
    _Workers,
)
from echostream.files import atomic_write_text


def prepare_cvss_c(
    cvss_dir: str | os.PathLike,
    cv_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_units: int = 1000,
    src_vocab_size: int = 6000,
    tgt_vocab_size: int = 6000,
    on_error: str = "fail",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> SynthCorpus:
    """Build manifests, features, tokenizers and units from CVSS-C + Common Voice (resumable).

    ``cvss_dir``: ``.../cvss_c_v1.0/fr-en`` (``{split}.tsv``, ``{split}/*.mp3.wav``);
    ``cv_dir``: Common Voice French (``validated.tsv``, ``clips/``), see
    :func:`~echostream.data.manifest.read_cvss_c`. ``on_error="skip"`` drops bad rows.
    """
    t_start = time.time()
    corpus = SynthCorpus(Path(out_dir).resolve())
    corpus.root.mkdir(parents=True, exist_ok=True)
    found = {s: read_cvss_c(cvss_dir, cv_dir, s, on_error=on_error) for s in SPLITS}  # type: ignore[arg-type]
    for split, items in found.items():
        if not items:
            raise SynthError(f"{cvss_dir}/{split}.tsv: no usable pairs")
    by_id = {s: {p.id: p for p in found[s]} for s in SPLITS}
    pairs = {s: [(p.id, p.src_text, p.tgt_text) for p in found[s]] for s in SPLITS}
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    with _Workers(workers, progress) as pool:
        keys = [(s, p.id) for s in SPLITS for p in found[s]]
        jobs = [(str(by_id[s][i].src_audio), str(corpus.fbank(s, i))) for s, i in keys]
        frames = dict(zip(keys, pool.map(_fbank_job, jobs, "fbank"), strict=True))
        if not corpus.cmvn.is_file():
            import torch

            from echostream.audio.features import GlobalCMVN

            feats = (
                torch.from_numpy(np.load(corpus.fbank("train", i)).astype(np.float32))
                for i, _, _ in pairs["train"]
            )
            GlobalCMVN.fit(feats).save(corpus.cmvn)
        from echostream.text.tokenizer import train_tokenizer

        for path, column, vocab in (
            (corpus.src_spm, 1, src_vocab_size),
            (corpus.tgt_spm, 2, tgt_vocab_size),
        ):
            if not path.is_file():
                train_tokenizer([p[column] for p in pairs["train"]], path.with_suffix(""), vocab)
        units = _build_units(
            corpus, pairs, num_units, seed, pool, lambda s, i: by_id[s][i].tgt_audio
        )
    for split in SPLITS:
        rows = [
            ManifestRow(
                id=p.id,
                src_audio=str(p.src_audio),
                src_n_frames=frames[(split, p.id)],
                src_text=p.src_text,
                tgt_text=p.tgt_text,
                tgt_audio=" ".join(map(str, units[split][p.id])),
                tgt_n_frames=len(units[split][p.id]),
            )
            for p in found[split]
        ]
        write_manifest(corpus.manifest(split), rows)
    info = {
        "source": {"cvss_dir": str(cvss_dir), "cv_dir": str(cv_dir)},
        "counts": {s: len(pairs[s]) for s in SPLITS},
        "num_units": num_units,
        "seconds": round(time.time() - t_start, 1),
        "complete": True,
    }
    atomic_write_text(corpus.build_info, json.dumps(info, indent=1) + "\n")
    return corpus


def main_prepare_cvss_c(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``echostream prepare cvss-c --cvss DIR --cv DIR --out DIR``."""
    p = argparse.ArgumentParser(
        prog="echostream prepare cvss-c", description=__doc__.split("\n")[0]
    )
    p.add_argument("--cvss", required=True, help="CVSS-C fr-en folder ({split}.tsv, {split}/)")
    p.add_argument("--cv", required=True, help="Common Voice fr folder (validated.tsv, clips/)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-units", type=int, default=1000)
    p.add_argument("--src-vocab-size", type=int, default=6000)
    p.add_argument("--tgt-vocab-size", type=int, default=6000)
    p.add_argument("--skip-bad-rows", action="store_true", help="drop bad rows (default: fail)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        prepare_cvss_c(
            args.cvss,
            args.cv,
            args.out,
            num_units=args.num_units,
            src_vocab_size=args.src_vocab_size,
            tgt_vocab_size=args.tgt_vocab_size,
            on_error="skip" if args.skip_bad_rows else "fail",
            workers=args.workers,
            progress=not args.quiet,
        )
    except (SynthError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_prepare_cvss_c())
