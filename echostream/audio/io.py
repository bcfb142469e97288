"""Audio input/output: load any file soundfile reads as 16 kHz mono float32, save atomically.

Everything returned is a 1-D ``np.float32`` array of samples in [-1, 1] (soundfile's float
scale). Problems a user can cause (missing file, unreadable or corrupt file, no samples, NaN or
infinite samples) raise :class:`AudioError` naming the file and the problem.

Resampling uses soxr at high quality (``"HQ"``). :class:`StreamingResampler` wraps
``soxr.ResampleStream`` for live input: fed the same samples in any chunking, its concatenated
output equals :func:`resample` of the whole signal (soxr keeps the filter state internally, so it
is an object with hidden state, used at the edge of the system before the pure streaming modules).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from echostream.files import atomic_path

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = "HQ"


class AudioError(ValueError):
    """Audio cannot be used: missing, unreadable, empty, or with NaN/inf samples."""


def to_mono_float32(
    pcm: np.ndarray, *, name: str = "<array>", channels_first: bool = False
) -> np.ndarray:
    """Validate in-memory audio and return it as mono float32 in [-1, 1].

    ``pcm``: (N,) or (N, C) (soundfile's layout; (C, N) with ``channels_first=True``). Integer
    PCM is scaled to float (int16 / 32768, int32 / 2**31, uint8 centred on 128); channels are
    averaged. ``name`` is used in error messages (a file path when there is one).
    Returns (N,) float32. Raises :class:`AudioError` on empty or non-finite audio.
    """
    pcm = np.asarray(pcm)
    if pcm.ndim == 2:
        if channels_first:
            pcm = pcm.T
    elif pcm.ndim != 1:
        raise AudioError(f"{name}: expected 1-D or 2-D audio samples, got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        pcm = pcm.astype(np.float32) / 32768.0
    elif pcm.dtype == np.int32:
        pcm = (pcm.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif pcm.dtype == np.uint8:
        pcm = (pcm.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(pcm.dtype, np.floating):
        pcm = pcm.astype(np.float32, copy=False)
    else:
        raise AudioError(f"{name}: unsupported sample type {pcm.dtype}")
    if pcm.ndim == 2:
        if pcm.shape[1] == 0:
            raise AudioError(f"{name}: audio has no channels")
        pcm = pcm.mean(axis=1, dtype=np.float32) if pcm.shape[1] > 1 else pcm[:, 0]
    if pcm.size == 0:
        raise AudioError(f"{name}: audio is empty (no samples)")
    if not np.isfinite(pcm).all():
        bad = int(np.size(pcm) - np.count_nonzero(np.isfinite(pcm)))
        raise AudioError(f"{name}: audio contains {bad} NaN or infinite sample(s)")
    return np.ascontiguousarray(pcm)


def resample(pcm: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample (N,) float32 audio from ``sr_in`` to ``sr_out`` Hz (soxr, high quality).

    The output has ``round(N * sr_out / sr_in)`` samples (±1); same rate returns the input.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    pcm = np.asarray(pcm, dtype=np.float32)
    if sr_in == sr_out or pcm.size == 0:
        return pcm
    return soxr.resample(pcm, sr_in, sr_out, quality=RESAMPLE_QUALITY).astype(
        np.float32, copy=False
    )


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at ``target_sr`` Hz. Returns (N,) float32.

    Any format and rate libsndfile reads (wav, flac, ogg, ...); channels are averaged.
    Raises :class:`AudioError` (message names the file) for a missing, unreadable or corrupt
    file, a file without samples, or NaN/inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(
            f"{path}: cannot read audio (corrupt or unsupported format): {err}"
        ) from None
    pcm = to_mono_float32(data, name=str(path))
    return resample(pcm, sr, target_sr)


def save_audio(
    path: str | os.PathLike, pcm: np.ndarray, sr: int = SAMPLE_RATE, subtype: str | None = None
) -> None:
    """Write (N,) or (N, C) float audio to ``path`` atomically (temp file + rename).

    The format follows the file extension (``.wav`` defaults to 16-bit PCM, ``.flac`` to 16-bit
    FLAC); ``subtype`` overrides it (e.g. ``"FLOAT"``). Non-finite or empty audio is refused.
    """
    path = Path(path)
    pcm = np.asarray(pcm)
    if pcm.size == 0:
        raise AudioError(f"{path}: refusing to write empty audio")
    if np.issubdtype(pcm.dtype, np.floating) and not np.isfinite(pcm).all():
        raise AudioError(f"{path}: refusing to write audio with NaN or infinite samples")
    fmt = path.suffix.lstrip(".").upper()
    if not fmt:
        raise AudioError(f"{path}: no file extension to choose the audio format from")
    with atomic_path(path) as tmp:
        sf.write(tmp, pcm, sr, subtype=subtype, format=fmt)


class StreamingResampler:
    """Chunk-wise resampling of one live mono stream (wraps ``soxr.ResampleStream``).

    ``process(chunk)`` takes (n,) samples at ``sr_in`` and returns the (m,) float32 samples at
    ``sr_out`` that are ready; ``process(chunk, last=True)`` flushes the filter's tail. The
    concatenated outputs equal :func:`resample` of the concatenated input. Same rates: identity.
    """

    def __init__(self, sr_in: int, sr_out: int = SAMPLE_RATE):
        if sr_in <= 0 or sr_out <= 0:
            raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
        self.sr_in, self.sr_out = sr_in, sr_out
        self._finished = False
        self._stream = (
            None
            if sr_in == sr_out
            else soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        )

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        if self._finished:
            raise RuntimeError("StreamingResampler: process() called after last=True")
        chunk = np.asarray(chunk)
        if chunk.size:
            chunk = to_mono_float32(chunk, name="<stream chunk>")
        else:
            chunk = np.zeros(0, dtype=np.float32)
        self._finished = last
        if self._stream is None:
            return chunk
        return self._stream.resample_chunk(chunk, last=last).astype(np.float32, copy=False)
