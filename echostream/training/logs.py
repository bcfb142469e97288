"""Training logs: per-step CSV (resumable), optional TensorBoard, a tqdm progress bar.

``train_log.csv`` has one row per optimiser update and ``dev_log.csv`` one per evaluation. The
columns are fixed by the first row written (later unknown keys are dropped with a warning,
missing ones stay empty). On resume, rows after the checkpoint's step are dropped (they belong
to the part of the killed run that is being redone), so each file stays one clean curve.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
import warnings
from pathlib import Path

from echostream.files import atomic_write_text


def _format(value) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


class CSVLog:
    """Append rows (dicts) to a CSV file whose header is the first row's keys."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        self._warned: set[str] = set()
        if self.path.is_file():
            with open(self.path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None

    def truncate_after(self, step: int) -> int:
        """Drop rows whose ``step`` is greater than ``step``; returns how many were dropped."""
        if not self.path.is_file():
            return 0
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return 0
        header, body = rows[0], rows[1:]
        at = header.index("step")
        keep = [r for r in body if r and int(r[at]) <= step]
        if len(keep) != len(body):
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([header, *keep])
            atomic_write_text(self.path, buf.getvalue())
        return len(body) - len(keep)

    def write(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(self.columns)
        unknown = [k for k in row if k not in self.columns and k not in self._warned]
        if unknown:  # e.g. a resumed run whose model reports a new loss: keep the file's columns
            warnings.warn(f"{self.path}: {unknown} not in the header; not logged", stacklevel=2)
            self._warned.update(unknown)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([_format(row.get(c)) for c in self.columns])

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))


class TensorBoardLog:
    """Scalars to TensorBoard when ``tensorboard`` is installed; otherwise does nothing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar over optimiser steps (ETA from tqdm) with loss, lr and frames/s in the postfix.

    ``enabled=False`` (other ranks, ``--quiet``) prints nothing. Messages go through
    :meth:`write` so they do not break the bar; they are also appended to ``log_path``.
    """

    def __init__(self, total: int, initial: int, enabled: bool, log_path: Path | None = None):
        self.log_path = log_path
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )

    def update(self, step: int, losses: dict[str, float], lr: float, frames_per_s: float) -> None:
        if self.bar is None:
            return
        short = {k.removesuffix("_loss"): v for k, v in losses.items()}
        post = " ".join(f"{k}={v:.3g}" for k, v in short.items())
        self.bar.set_postfix_str(f"{post} lr={lr:.2e} {frames_per_s:,.0f} fr/s", refresh=False)
        self.bar.update(step - self.bar.n)

    def write(self, message: str, echo: bool = True) -> None:
        if self.log_path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")
        if not echo:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
