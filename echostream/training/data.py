"""The corpus as ``echostream train`` reads it, and the model config it implies.

Data directory ``D`` (the layout of ``echostream prepare synth``): ``{split}.tsv`` manifests,
``spm/spm_fr.model`` and ``spm/spm_en.model`` (else the config's ``vocab.src_spm/tgt_spm``),
``cmvn.json`` (optional) and ``fbank/{split}/{id}.npy`` (optional: else features come from
``src_audio``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from echostream.config import EchoStreamConfig, config_from_dict, config_to_dict
from echostream.data.manifest import Manifest, read_manifest
from echostream.text.tokenizer import Tokenizer
from echostream.training.config import TrainingConfig
from echostream.training.errors import TrainingError


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass
class TrainingData:
    """The corpus as the trainer sees it (see the module doc for the layout)."""

    root: Path
    train: Manifest
    dev: Manifest
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    cmvn_path: Path | None
    num_units: int | None  # from build.json, when the corpus says

    def feature_dir(self, split: str) -> Path | None:
        path = self.root / "fbank" / split
        return path if path.is_dir() else None

    def vocab_info(self) -> dict:
        return {
            "src": {
                "vocab_size": self.src_tokenizer.vocab_size,
                "sha256": file_sha256(self.src_tokenizer.path),
            },
            "tgt": {
                "vocab_size": self.tgt_tokenizer.vocab_size,
                "sha256": file_sha256(self.tgt_tokenizer.path),
            },
        }


def load_training_data(
    data_dir: str | os.PathLike, cfg: EchoStreamConfig, tcfg: TrainingConfig
) -> TrainingData:
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(
            f"--data {root}: not a directory (build one with `echostream prepare synth --out DIR`)"
        )
    num_units = None
    build = root / "build.json"
    if build.is_file():
        info = json.loads(build.read_text(encoding="utf-8"))
        if not info.get("complete", False):
            raise TrainingError(f"{root}: corpus build is not complete; re-run `prepare` on it")
        num_units = info.get("settings", {}).get("num_units")

    def tokenizer(name: str, fallback: str | None, which: str) -> Tokenizer:
        path = root / "spm" / name
        if not path.is_file():
            if fallback is None:
                raise TrainingError(
                    f"{root}: no {path.relative_to(root)} and no "
                    f"vocab.{which}_spm in the model config"
                )
            path = Path(fallback)
        return Tokenizer(path)

    src_tok = tokenizer("spm_fr.model", cfg.vocab.src_spm, "src")
    tgt_tok = tokenizer("spm_en.model", cfg.vocab.tgt_spm, "tgt")
    cmvn = root / "cmvn.json"
    cmvn_path = (
        cmvn
        if cmvn.is_file()
        else (Path(cfg.features.cmvn_path) if cfg.features.cmvn_path else None)
    )
    units = num_units if (tcfg.vocab_from_data and num_units) else cfg.vocab.num_units

    def manifest(split: str) -> Manifest:
        m = read_manifest(root / f"{split}.tsv", num_units=units)
        if len(m) == 0:
            raise TrainingError(f"{m.path}: empty manifest (a header and no utterances)")
        return m

    return TrainingData(
        root,
        manifest(tcfg.train_split),
        manifest(tcfg.dev_split),
        src_tok,
        tgt_tok,
        cmvn_path,
        num_units,
    )


def resolve_model_config(
    cfg: EchoStreamConfig, data: TrainingData, tcfg: TrainingConfig
) -> EchoStreamConfig:
    """A copy of ``cfg`` whose vocabulary and CMVN are the data's (``vocab_from_data``), or an
    error when they disagree."""
    cfg = config_from_dict(config_to_dict(cfg))
    sizes = {
        "src_vocab_size": data.src_tokenizer.vocab_size,
        "tgt_vocab_size": data.tgt_tokenizer.vocab_size,
    }
    if data.num_units:
        sizes["num_units"] = int(data.num_units)
    for name, size in sizes.items():
        if getattr(cfg.vocab, name) != size:
            if not tcfg.vocab_from_data:
                raise TrainingError(
                    f"vocab mismatch: model config vocab.{name} = {getattr(cfg.vocab, name)} but "
                    f"the data has {size} ({data.root}); set it to {size} or set "
                    "vocab_from_data: true in the training config"
                )
            setattr(cfg.vocab, name, size)
    cfg.vocab.src_spm, cfg.vocab.tgt_spm = (
        str(data.src_tokenizer.path),
        str(data.tgt_tokenizer.path),
    )
    cfg.features.cmvn_path = str(data.cmvn_path) if data.cmvn_path else None
    return cfg
