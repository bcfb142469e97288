"""Discrete target units: k-means over 20 ms frames of the target speech, deduplicated.

StreamSpeech's targets are mHuBERT layer-11 features quantised by k-means (K = 1000) at 50 Hz,
consecutive repeats merged. Without a pretrained speech model here, the frames are **80-d
log-mel filterbanks with a 25 ms window and a 20 ms hop** (the framing of HuBERT's 50 Hz
features), normalised per dimension with the training set's mean and std (so every mel band
weighs the same in the Euclidean k-means), and clustered with scikit-learn's MiniBatchKMeans.

Why log-mel and not MFCC+deltas: the target voice is one single speaker (pico2wave en-US, like
CVSS-C's canonical voice), so the speaker/pitch invariance that cepstra buy is not needed, while
the unit vocoder trained here has to turn units back into that same spectrum: a unit whose
centroid *is* a mel frame gives it a direct target (``centroid_mel``) and a trivial baseline
(centroids → mel → any mel vocoder). Deltas would add context, but HuBERT units are per-frame
too, and dedup already absorbs stationary stretches.

The k-means model is stored as ``.npz`` (centroids, CMVN, framing), so assigning units needs
only numpy; scikit-learn is needed to *fit* only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

from echostream.files import atomic_path

UNIT_FORMAT = "echostream-kmeans-units"
INT16_SCALE = 32768.0


@dataclass(frozen=True)
class UnitFeatureConfig:
    """Framing of the unit features: log-mel fbank, 25 ms window, 20 ms hop (50 Hz)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 20.0


def unit_features(pcm: np.ndarray, cfg: UnitFeatureConfig = UnitFeatureConfig()) -> np.ndarray:
    """(N,) float PCM in [-1, 1] at ``cfg.sample_rate`` → (T, num_mel_bins) float32 log-mel,
    T = 1 + (N - window) // hop (Kaldi framing, snip_edges; 0 frames for a too-short input)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(cfg.sample_rate)
    opts.frame_opts.frame_length_ms = float(cfg.frame_length_ms)
    opts.frame_opts.frame_shift_ms = float(cfg.frame_shift_ms)
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = cfg.num_mel_bins
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(float(cfg.sample_rate), np.asarray(pcm, np.float32) * INT16_SCALE)
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32)


def dedup(units: Sequence[int] | np.ndarray) -> list[int]:
    """Merge consecutive repeats: ``[5, 5, 7, 5, 5, 5]`` → ``[5, 7, 5]``."""
    units = np.asarray(units)
    if units.size == 0:
        return []
    keep = np.ones(units.shape[0], dtype=bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep].astype(int).tolist()


class UnitKMeans:
    """A fitted unit quantiser: ``(feats - mean) / std`` → nearest of ``K`` centroids.

    ``centroids``: (K, D) float32 in the normalised space; ``mean``, ``std``: (D,).
    """

    def __init__(
        self,
        centroids: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        feature_cfg: UnitFeatureConfig = UnitFeatureConfig(),
    ):
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.feature_cfg = feature_cfg
        d = self.centroids.shape[1]
        if self.mean.shape != (d,) or self.std.shape != (d,):
            raise ValueError(f"mean/std must be ({d},), got {self.mean.shape}, {self.std.shape}")
        self._c_sq = (self.centroids.astype(np.float64) ** 2).sum(1)

    @property
    def num_units(self) -> int:
        return self.centroids.shape[0]

    @property
    def centroid_mel(self) -> np.ndarray:
        """(K, D) centroids back in log-mel space (the spectrum a unit stands for)."""
        return self.centroids * self.std + self.mean

    @classmethod
    def fit(
        cls,
        features: Iterable[np.ndarray],
        num_units: int,
        *,
        seed: int = 0,
        max_frames: int = 1_000_000,
        feature_cfg: UnitFeatureConfig = UnitFeatureConfig(),
    ) -> UnitKMeans:
        """Fit on (T, D) arrays. At most ``max_frames`` frames are used (an evenly spaced,
        deterministic subset). MiniBatchKMeans, k-means++ init, ``random_state=seed``."""
        from sklearn.cluster import MiniBatchKMeans

        frames = np.concatenate([np.asarray(f, np.float32) for f in features if len(f)])
        if frames.shape[0] > max_frames:
            frames = frames[np.linspace(0, frames.shape[0] - 1, max_frames).astype(np.int64)]
        if frames.shape[0] < num_units:
            raise ValueError(f"k-means with K={num_units} needs >= K frames, got {len(frames)}")
        mean = frames.mean(0, dtype=np.float64).astype(np.float32)
        std = np.maximum(frames.std(0, dtype=np.float64), 1e-3).astype(np.float32)
        normed = (frames - mean) / std
        km = MiniBatchKMeans(
            n_clusters=num_units,
            init="k-means++",
            batch_size=max(4096, 4 * num_units),
            n_init=1,
            max_iter=50,
            max_no_improvement=20,
            reassignment_ratio=0.01,
            random_state=seed,
        )
        km.fit(normed)
        return cls(km.cluster_centers_, mean, std, feature_cfg)

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """(T, D) log-mel → (T,) int64 nearest-centroid ids (no dedup)."""
        x = (np.asarray(feats, np.float32) - self.mean) / self.std
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        dist = self._c_sq[None, :] - 2.0 * (x.astype(np.float64) @ self.centroids.T)
        return dist.argmin(1).astype(np.int64)

    def units(self, pcm: np.ndarray) -> list[int]:
        """Deduplicated units of (N,) PCM at ``feature_cfg.sample_rate``."""
        return dedup(self.assign(unit_features(pcm, self.feature_cfg)))

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.npz`` atomically (temp file + rename)."""
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(
                tmp,
                format=np.array(UNIT_FORMAT),
                centroids=self.centroids,
                mean=self.mean,
                std=self.std,
                feature_cfg=np.array(json.dumps(asdict(self.feature_cfg))),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnitKMeans:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: k-means unit model not found")
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != UNIT_FORMAT:
                raise ValueError(f"{path}: not an EchoStream k-means unit model")
            cfg = UnitFeatureConfig(**json.loads(str(z["feature_cfg"])))
            return cls(z["centroids"], z["mean"], z["std"], cfg)
