"""80-d log-mel filterbank features (kaldi-native-fbank), whole-file and streaming, and global CMVN.

Framing (Kaldi, ``snip_edges=True``): frame ``i`` covers samples ``[i*shift, i*shift + length)``
(16 kHz, 25 ms / 10 ms: 400 / 160 samples), so ``N`` samples give ``1 + (N - length) // shift``
frames (0 when ``N < length``) and a tail shorter than one frame is dropped. Every step of Kaldi's
fbank (dither, DC removal, pre-emphasis, window, FFT, mel, log) is local to a frame, so frames
computed from a buffer that starts at a frame boundary are the frames of the whole file: the
streaming path exploits this and is bit-exact (checked in ``tests/test_audio.py``). With
``dither > 0`` the noise is random and no two runs agree; keep ``dither = 0`` (the default).

Scale: PCM in [-1, 1] is multiplied by 32768 before Kaldi sees it, as Kaldi (and fairseq /
StreamSpeech's ``waveform * 32768`` before ``kaldi.fbank``) expect int16-range samples. This
shifts every log-mel value by ``2 * log(32768)`` relative to [-1, 1] input and keeps the log floor
(``eps``) negligible for quiet speech; CMVN removes the offset anyway.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import torch
from torch import nn

from echostream.config import FeatureConfig
from echostream.files import atomic_write_text
from echostream.state import StreamState

INT16_SCALE = 32768.0
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool): fbank of many streams


def _map_streams(fn, items: list) -> list:
    """``[fn(x) for x in items]``, spread over ``torch.get_num_threads()`` threads when there
    are several streams and threads (kaldi-native-fbank runs without the GIL)."""
    global _POOL
    threads = torch.get_num_threads()
    if threads < 2 or len(items) < 4:
        return [fn(x) for x in items]
    if _POOL is None or _POOL[0] != threads:
        _POOL = (threads, ThreadPoolExecutor(threads, thread_name_prefix="fbank"))
    return list(_POOL[1].map(fn, items))


@dataclass(frozen=True)
class FbankState(StreamState):
    """Per-stream samples not yet covered by an emitted frame.

    ``residual``: (B, frame_length_samples) float32, the first ``residual_len[b]`` samples of
    row ``b`` are valid (always fewer than one frame). ``num_frames``: (B,) int64 frames emitted.
    The size is fixed: it never grows with the stream.
    """

    residual: torch.Tensor
    residual_len: torch.Tensor
    num_frames: torch.Tensor


class FbankExtractor:
    """Kaldi log-mel fbank from ``cfg`` (80 bins, 25 ms window, 10 ms hop, povey window).

    ``extractor(pcm)``: whole signal (N,) → (T, num_mel_bins) float32, T = :meth:`num_frames`.
    ``extractor.batch(pcm, pcm_len)``: (B, S) → (B, T, F) zero-padded + (B,) lengths.
    ``extractor.stream(pcm, pcm_len, state)``: incremental, equal to the whole-file frames.
    PCM is float in [-1, 1] at ``cfg.sample_rate`` (see :mod:`echostream.audio.io`).
    """

    def __init__(self, cfg: FeatureConfig | None = None):
        self.cfg = cfg = cfg or FeatureConfig()
        cfg.validate()
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(cfg.sample_rate)
        opts.frame_opts.frame_length_ms = float(cfg.frame_length_ms)
        opts.frame_opts.frame_shift_ms = float(cfg.frame_shift_ms)
        opts.frame_opts.dither = float(cfg.dither)
        opts.frame_opts.snip_edges = True
        opts.mel_opts.num_bins = cfg.num_mel_bins
        self.opts = opts
        # Kaldi's own rounding: static_cast<int32>(samp_freq * 0.001 * ms).
        self.frame_length = int(cfg.sample_rate * 0.001 * cfg.frame_length_ms)
        self.frame_shift = int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms)
        self.dim = cfg.num_mel_bins

    def num_frames(self, num_samples: int) -> int:
        """Frames in ``num_samples`` samples (snip_edges: complete frames only)."""
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def _compute(self, pcm: np.ndarray) -> np.ndarray:
        """(N,) float32 in [-1, 1] → (num_frames(N), dim) float32, via one fresh OnlineFbank."""
        n = self.num_frames(pcm.shape[0])
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        fbank = knf.OnlineFbank(self.opts)
        fbank.accept_waveform(float(self.cfg.sample_rate), pcm * np.float32(INT16_SCALE))
        assert fbank.num_frames_ready == n, (fbank.num_frames_ready, n)
        return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)

    @staticmethod
    def _as_numpy(pcm: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(pcm, torch.Tensor):
            pcm = pcm.detach().cpu().numpy()
        return np.ascontiguousarray(pcm, dtype=np.float32)

    def __call__(self, pcm: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Whole signal: (N,) float in [-1, 1] → (T, dim) float32 torch tensor."""
        pcm = self._as_numpy(pcm)
        if pcm.ndim != 1:
            raise ValueError(f"FbankExtractor expects 1-D mono PCM (N,), got shape {pcm.shape}")
        if not np.isfinite(pcm).all():
            raise ValueError("FbankExtractor: PCM contains NaN or infinite samples")
        return torch.from_numpy(self._compute(pcm))

    def batch(
        self, pcm: torch.Tensor | np.ndarray, pcm_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole signals, batched: (B, S), (B,) → feats (B, T, dim) zero-padded, feat_len (B,)."""
        pcm = self._as_numpy(pcm)
        lens = [int(n) for n in pcm_len]
        self._check_batch(pcm, lens, batch_size=len(lens))
        return self._pad(_map_streams(self._compute, [pcm[b, :n] for b, n in enumerate(lens)]))

    # ------------------------------------------------------------------ streaming

    def init_state(self, batch_size: int) -> FbankState:
        return FbankState(
            residual=torch.zeros(batch_size, self.frame_length, dtype=torch.float32),
            residual_len=torch.zeros(batch_size, dtype=torch.int64),
            num_frames=torch.zeros(batch_size, dtype=torch.int64),
        )

    def stream(
        self,
        pcm: torch.Tensor | np.ndarray,
        pcm_len: torch.Tensor,
        state: FbankState,
        final: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, FbankState]:
        """Feed new samples of B independent streams; emit every frame that became complete.

        pcm: (B, S) float32 in [-1, 1]; row b holds ``pcm_len[b]`` new samples (0 is fine).
        Returns feats (B, F, dim) zero-padded, feat_len (B,) int64 and the new state. The
        concatenation of a stream's emitted frames equals ``self(whole signal)`` exactly.

        ``final=True`` ends every stream of the batch: as in the whole-file path (snip_edges),
        the tail shorter than one frame yields no frame and is discarded, so the returned state
        has an empty residual (``num_frames`` is kept); it emits nothing extra.
        """
        pcm = self._as_numpy(pcm)
        lens = [int(n) for n in pcm_len]
        self._check_batch(pcm, lens, batch_size=state.batch_size)
        residual = state.residual.numpy()
        new_residual = np.zeros_like(residual)
        new_residual_len = torch.zeros_like(state.residual_len)
        kept = state.residual_len.tolist()
        bufs = [np.concatenate([residual[b, : kept[b]], pcm[b, :n]]) for b, n in enumerate(lens)]
        out = _map_streams(self._compute, bufs)
        for b, (buf, feats) in enumerate(zip(bufs, out, strict=True)):
            rest = buf[feats.shape[0] * self.frame_shift :]  # always < frame_length samples
            if not final:
                new_residual[b, : rest.shape[0]] = rest
                new_residual_len[b] = rest.shape[0]
        feats, feat_len = self._pad(out)
        new_state = FbankState(
            residual=torch.from_numpy(new_residual),
            residual_len=new_residual_len,
            num_frames=state.num_frames + feat_len,
        )
        return feats, feat_len, new_state

    # ------------------------------------------------------------------ helpers

    def _check_batch(self, pcm: np.ndarray, lens: list[int], batch_size: int) -> None:
        if pcm.ndim != 2 or pcm.shape[0] != batch_size:
            raise ValueError(f"expected PCM of shape (B={batch_size}, S), got {pcm.shape}")
        if len(lens) != batch_size:
            raise ValueError(f"expected {batch_size} lengths, got {len(lens)}")
        for b, n in enumerate(lens):
            if not 0 <= n <= pcm.shape[1]:
                raise ValueError(f"pcm_len[{b}] = {n} outside [0, {pcm.shape[1]}]")
            if not np.isfinite(pcm[b, :n]).all():
                raise ValueError(f"stream {b}: PCM contains NaN or infinite samples")

    def _pad(self, feats: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        feat_len = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        out = torch.zeros(len(feats), max((f.shape[0] for f in feats), default=0), self.dim)
        for b, f in enumerate(feats):
            out[b, : f.shape[0]] = torch.from_numpy(f)
        return out, feat_len


# ---------------------------------------------------------------------- global CMVN


class CMVNError(ValueError):
    """A CMVN statistics file is missing, unreadable or malformed (message names file/field)."""


CMVN_FORMAT = "echostream-global-cmvn"


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation: ``(x - mean) / std`` per feature dimension.

    Statistics are buffers (they follow ``.to(device)`` and ``state_dict``). Build with
    :meth:`fit` (any iterable of (T, dim) features), :meth:`from_audio_files`, :meth:`load`
    (JSON written by :meth:`save`) or :meth:`identity` (mean 0, std 1: untrained models).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, count: int = 0):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be 1-D of one size, got {mean.shape}, {std.shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("CMVN mean must be finite and std finite and > 0")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.count = int(count)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def identity(cls, dim: int = 80) -> GlobalCMVN:
        return cls(torch.zeros(dim), torch.ones(dim), count=0)

    @classmethod
    def fit(cls, features: Iterable[torch.Tensor], min_std: float = 1e-3) -> GlobalCMVN:
        """Statistics of every frame of ``features`` ((T, dim) tensors), summed in float64.

        ``std`` is floored at ``min_std`` so a constant dimension does not blow up.
        """
        total = total_sq = None
        count = 0
        for i, feats in enumerate(features):
            feats = torch.as_tensor(feats)
            if feats.dim() != 2 or (total is not None and feats.shape[1] != total.shape[0]):
                want = "(T, dim)" if total is None else f"(T, {total.shape[0]})"
                raise ValueError(f"features[{i}]: expected shape {want}, got {tuple(feats.shape)}")
            feats = feats.to(torch.float64)
            if total is None:
                total = torch.zeros(feats.shape[1], dtype=torch.float64)
                total_sq = torch.zeros_like(total)
            total += feats.sum(0)
            total_sq += feats.square().sum(0)
            count += feats.shape[0]
        if total is None or count == 0:
            raise CMVNError("GlobalCMVN.fit: no feature frames to compute statistics from")
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        std = var.sqrt().clamp_min(min_std)
        return cls(mean.float(), std.float(), count=count)

    @classmethod
    def from_audio_files(
        cls, paths: Iterable[str | os.PathLike], cfg: FeatureConfig | None = None
    ) -> GlobalCMVN:
        """Fit on fbank features of audio files (loaded at ``cfg.sample_rate``, mono)."""
        from echostream.audio.io import load_audio

        extractor = FbankExtractor(cfg)
        sr = extractor.cfg.sample_rate
        return cls.fit(extractor(load_audio(p, target_sr=sr)) for p in paths)

    def forward(self, feats: torch.Tensor, feat_len: torch.Tensor | None = None) -> torch.Tensor:
        """(..., T, dim) → normalised, same shape. With ``feat_len`` ((B,) for (B, T, dim)),
        frames at or beyond a stream's length are set to 0."""
        if feats.shape[-1] != self.dim:
            raise ValueError(f"GlobalCMVN of dim {self.dim} got features of shape {feats.shape}")
        out = (feats - self.mean) / self.std
        if feat_len is not None:
            valid = torch.arange(feats.shape[-2], device=feats.device) < feat_len[:, None]
            out = out.masked_fill(~valid[..., None], 0.0)
        return out

    # ------------------------------------------------------------------ JSON

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics as JSON (atomically: temp file + rename)."""
        path = Path(path)
        payload = {
            "format": CMVN_FORMAT,
            "version": 1,
            "dim": self.dim,
            "count": self.count,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }
        atomic_write_text(path, json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> GlobalCMVN:
        """Read JSON written by :meth:`save`. Raises :class:`CMVNError` naming file and field."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CMVNError(f"{path}: CMVN statistics file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise CMVNError(f"{path}: cannot read CMVN statistics: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CMVNError(f"{path}: invalid JSON in CMVN statistics: {err}") from None
        if not isinstance(data, dict):
            raise CMVNError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != CMVN_FORMAT:
            raise CMVNError(
                f"{path}: field 'format' must be {CMVN_FORMAT!r}, got {data.get('format')!r}"
            )
        vectors = {}
        for name in ("mean", "std"):
            if name not in data:
                raise CMVNError(f"{path}: missing field '{name}'")
            values = data[name]
            ok = isinstance(values, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
            if not ok or not values:
                raise CMVNError(
                    f"{path}: field '{name}' must be a non-empty list of finite numbers"
                )
            vectors[name] = values
        dim = data.get("dim", len(vectors["mean"]))
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise CMVNError(f"{path}: field 'dim' must be a positive integer, got {dim!r}")
        for name, values in vectors.items():
            if len(values) != dim:
                raise CMVNError(
                    f"{path}: field '{name}' has {len(values)} values, expected dim = {dim}"
                )
        if any(v <= 0 for v in vectors["std"]):
            raise CMVNError(f"{path}: field 'std' must be > 0 everywhere")
        count = data.get("count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CMVNError(f"{path}: field 'count' must be a non-negative integer, got {count!r}")
        return cls(torch.tensor(vectors["mean"]), torch.tensor(vectors["std"]), count=count)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, count={self.count}"
