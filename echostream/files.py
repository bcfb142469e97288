"""Atomic file writes: a file is either absent, its old contents or complete, never half-written.

Every file the project writes that another step reads (checkpoints, manifests, tokenizers, CMVN,
k-means, fbank caches, audio) goes through :func:`atomic_path`: the writer fills a temp file in
the destination's folder, which ``os.replace`` then renames over the destination (atomic on
POSIX and Windows within one file system). A failure or an interrupt removes the temp file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temp path next to ``path``; on a clean exit it becomes ``path``.

    ``suffix``: the temp name's ending, for writers that pick the format from it or append
    their own (``np.save`` wants ``.npy``, ``np.savez`` ``.npz``, soundfile the audio type).
    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
    Creates the destination's folder if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", encoding: str | None = None, **kwargs: Any
) -> Iterator[IO]:
    """``open(path, mode)`` that lands atomically: flushed and fsync-ed, then renamed over
    ``path`` on a clean exit (see :func:`atomic_path`). ``mode``: ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, newlines written as given."""
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
