"""Batching for training: a length-bucketed, DDP-aware batch sampler; a dataset and collate.

:class:`BucketBatchSampler` groups utterances of similar length so that each batch holds at
most ``max_frames`` *padded* source frames (``batch size × longest utterance``, fairseq's
``max_tokens``). Per epoch: shuffle (seed, epoch), stable-sort by length (so equal lengths stay
shuffled), cut greedily into batches, shuffle the batches, then give rank ``r`` of ``W`` the
batches ``r, r + W, r + 2W, ...`` after dropping the last ``len % W`` batches, so every rank
gets the same number of batches and no utterance appears on two ranks. Same seed and epoch →
same batches on any machine. ``set_epoch(epoch, skip_batches=k)`` resumes mid-epoch.

:class:`S2STDataset` reads a :class:`~echostream.data.manifest.Manifest` (fbank from ``.npy``
files, fairseq zip references or audio files), tokenises text with the corpus tokenizers, and
:func:`collate` pads a list of items into batch-first tensors.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echostream.data.manifest import Manifest, parse_zip_ref, read_manifest, resolve_path
from echostream.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

UNIT_PAD = -1  # padding value of `units` in a batch (unit ids are 0..K-1)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices with ``len(batch) * max(lengths[batch]) <= max_frames``.

    ``lengths``: per-item cost (source fbank frames). ``max_batch_size``: optional cap on items
    per batch. Items longer than ``max_frames`` cannot be batched: they are dropped (counted in
    :attr:`num_dropped`, with a warning). ``rank``/``world_size``: this process's share under
    DDP. ``shuffle=False`` gives sorted batches in order (evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        *,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0
        too_long = self.lengths > max_frames
        self.num_dropped = int(too_long.sum())
        if self.num_dropped:
            warnings.warn(
                f"BucketBatchSampler: {self.num_dropped} item(s) longer than max_frames="
                f"{max_frames} are dropped (longest: {int(self.lengths.max())})",
                stacklevel=2,
            )
        self._valid = np.nonzero(~too_long)[0]
        if len(self._batches_for_epoch(0)) < world_size:
            raise ValueError(f"fewer batches than world_size={world_size}: raise the data size")

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (reshuffles) and skip this rank's first ``skip_batches`` batches."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def state_dict(self, batches_done: int) -> dict:
        """What to save in a checkpoint: ``batches_done`` = this rank's batches consumed."""
        return {"epoch": self.epoch, "skip_batches": batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler seed {self.seed} != checkpoint seed {state['seed']}")
        self.set_epoch(int(state["epoch"]), int(state["skip_batches"]))

    def _batches_for_epoch(self, epoch: int) -> list[list[int]]:
        idx = self._valid
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            idx = idx[rng.permutation(len(idx))]
        idx = idx[np.argsort(self.lengths[idx], kind="stable")]
        batches, current, longest = [], [], 0
        for i in idx.tolist():
            n = int(self.lengths[i])
            grown = max(longest, n) * (len(current) + 1)
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (grown > self.max_frames or full):
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
            batches = [batches[j] for j in order]
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches for ``epoch`` (default: the current one), before skipping."""
        all_batches = self._batches_for_epoch(self.epoch if epoch is None else epoch)
        return all_batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.skip_batches :]

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.skip_batches)


# --------------------------------------------------------------------------- dataset


@dataclass
class S2STItem:
    id: str
    fbank: torch.Tensor  # (T, 80) float32, raw log-mel (CMVN is the model's job)
    src_tokens: torch.Tensor  # (S,) int64, no BOS/EOS
    tgt_tokens: torch.Tensor  # (L,) int64, no BOS/EOS
    units: torch.Tensor  # (U,) int64 (empty when the manifest has audio paths, not units)


class S2STDataset(torch.utils.data.Dataset):
    """Items of a manifest: fbank + source/target token ids + target units.

    Fbank source, in order: ``feature_dir/{id}.npy`` when ``feature_dir`` is given (the synth
    corpus keeps them in ``fbank/{split}``); ``src_audio`` itself when it is an ``.npy`` file or
    a fairseq ``zip:offset:length`` reference; otherwise the audio file, through
    :class:`~echostream.audio.features.FbankExtractor`. Text is normalised and tokenised when
    the tokenizers are given (else empty tensors).
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        src_tokenizer: Tokenizer | None = None,
        tgt_tokenizer: Tokenizer | None = None,
        *,
        feature_dir: str | os.PathLike | None = None,
        num_units: int | None = None,
    ):
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest, num_units=num_units)
        self.manifest = manifest
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.feature_dir = Path(feature_dir) if feature_dir is not None else None
        self._extractor = None

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def lengths(self) -> list[int]:
        """Source fbank frames per item (``src_n_frames``), for :class:`BucketBatchSampler`."""
        return [row.src_n_frames for row in self.manifest]

    def load_fbank(self, i: int) -> torch.Tensor:
        row = self.manifest[i]
        if self.feature_dir is not None:
            return torch.from_numpy(np.load(self.feature_dir / f"{row.id}.npy").astype(np.float32))
        ref = parse_zip_ref(row.src_audio)
        if ref is not None:
            path = resolve_path(row.src_audio, self.manifest.audio_root)
            with open(path, "rb") as f:
                f.seek(ref[1])
                data = f.read(ref[2])
            if data[:6] == b"\x93NUMPY":
                return torch.from_numpy(np.load(io.BytesIO(data)).astype(np.float32))
            import soundfile as sf

            pcm, sr = sf.read(io.BytesIO(data), dtype="float32")
            return self._fbank_of(pcm, sr, str(path))
        path = self.manifest.resolve(row.src_audio)
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path).astype(np.float32))
        from echostream.audio.io import load_audio

        return self._fbank_of(load_audio(path, 16000), 16000, str(path))

    def _fbank_of(self, pcm: np.ndarray, sr: int, name: str) -> torch.Tensor:
        from echostream.audio.features import FbankExtractor
        from echostream.audio.io import resample, to_mono_float32

        if self._extractor is None:
            self._extractor = FbankExtractor()
        pcm = resample(to_mono_float32(pcm, name=name), sr, self._extractor.cfg.sample_rate)
        return self._extractor(pcm)

    def __getitem__(self, i: int) -> S2STItem:
        row = self.manifest[i]

        def tok(tokenizer: Tokenizer | None, text: str) -> torch.Tensor:
            ids = tokenizer.encode(text) if tokenizer is not None else []
            return torch.tensor(ids, dtype=torch.int64)

        units = row.units if row.has_units else []
        return S2STItem(
            id=row.id,
            fbank=self.load_fbank(i),
            src_tokens=tok(self.src_tokenizer, row.src_text),
            tgt_tokens=tok(self.tgt_tokenizer, row.tgt_text),
            units=torch.tensor(units, dtype=torch.int64),
        )


def _pad(seqs: list[torch.Tensor], value: float) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
    shape = (len(seqs), int(lengths.max()) if len(seqs) else 0, *seqs[0].shape[1:])
    out = torch.full(shape, value, dtype=seqs[0].dtype)
    for b, s in enumerate(seqs):
        out[b, : s.shape[0]] = s
    return out, lengths


def collate(items: list[S2STItem]) -> dict:
    """Pad a list of items into a batch (all tensors batch-first).

    Returns ``ids`` (list of str) and: ``fbank`` (B, T, 80) zero-padded + ``fbank_len`` (B,);
    ``src_tokens`` (B, S) + ``src_len``; ``tgt_tokens`` (B, L) + ``tgt_len`` (CTC targets, no
    BOS/EOS); ``prev_output_tokens`` (B, L+1) = BOS + target and ``tgt_out`` (B, L+1) =
    target + EOS (teacher forcing for the MT decoder); ``units`` (B, U) + ``unit_len``.
    Token tensors are padded with PAD = 0 (the CTC blank; use ``ignore_index=0`` for CE),
    ``units`` with :data:`UNIT_PAD` = -1. Lengths are int64.
    """
    if not items:
        raise ValueError("collate: empty batch")
    fbank, fbank_len = _pad([it.fbank for it in items], 0.0)
    src, src_len = _pad([it.src_tokens for it in items], PAD_ID)
    tgt, tgt_len = _pad([it.tgt_tokens for it in items], PAD_ID)
    bos = torch.tensor([BOS_ID], dtype=torch.int64)
    eos = torch.tensor([EOS_ID], dtype=torch.int64)
    prev, _ = _pad([torch.cat([bos, it.tgt_tokens]) for it in items], PAD_ID)
    out, _ = _pad([torch.cat([it.tgt_tokens, eos]) for it in items], PAD_ID)
    units, unit_len = _pad([it.units for it in items], UNIT_PAD)
    return {
        "ids": [it.id for it in items],
        "fbank": fbank,  # (B, T, 80)
        "fbank_len": fbank_len,  # (B,)
        "src_tokens": src,  # (B, S)
        "src_len": src_len,
        "tgt_tokens": tgt,  # (B, L)
        "tgt_len": tgt_len,
        "prev_output_tokens": prev,  # (B, L+1)
        "tgt_out": out,  # (B, L+1)
        "units": units,  # (B, U)
        "unit_len": unit_len,
    }
