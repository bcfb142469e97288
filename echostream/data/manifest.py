"""Speech-to-speech manifests: StreamSpeech / fairseq TSV, validated row by row; CVSS-C reader.

A manifest is a UTF-8 TSV file with one header line and the columns (any order on read,
this order on write)::

    id  src_audio  src_n_frames  src_text  tgt_text  tgt_audio  tgt_n_frames

* ``src_audio``: the source speech: an audio file (``.wav``/``.flac``/...), an ``.npy`` of
  fbank features, or fairseq's ``path.zip:offset:length`` (a stored ``.npy`` or audio file inside
  an uncompressed zip, as StreamSpeech's ``src_fbank80.zip``). Relative paths are resolved
  against ``audio_root`` (default: the manifest's folder). ``src_n_frames``: fbank frames (10 ms).
* ``tgt_audio``: either discrete units, space-separated integers (StreamSpeech's ``fbank2unit``
  manifests; then ``tgt_n_frames`` is the number of units), or a path like ``src_audio``.
  A value with a space in it, or made of digits only, is read as units.
* ``src_text`` / ``tgt_text``: the transcript and the translation (raw text; normalisation
  happens in the tokenizer). Fields cannot contain tabs or newlines (fairseq reads with
  ``csv.QUOTE_NONE``; so do we).

:func:`read_manifest` checks every row (column count, UTF-8, empty id/text, duplicate ids,
frame counts, unit ids in ``[0, num_units)``, existence of the files) and reports
``file:line:field: problem``. ``on_error="fail"`` (default) raises :class:`ManifestError` at the
first bad row; ``"skip"`` drops bad rows, counts them per problem and keeps the messages.
:func:`write_manifest` writes atomically (temp file + rename): a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Literal

from echostream.files import atomic_write_text

MANIFEST_COLUMNS = (
    "id", "src_audio", "src_n_frames", "src_text", "tgt_text", "tgt_audio", "tgt_n_frames",
)  # fmt: skip
_ZIP_REF = re.compile(r"^(?P<path>.+\.zip):(?P<offset>\d+):(?P<length>\d+)$")
_FORBIDDEN = re.compile(r"[\t\n\r]")


class ManifestError(ValueError):
    """A manifest row or file is invalid. The message starts with ``file:line:field``."""


@dataclass(frozen=True)
class ManifestRow:
    """One utterance pair; field names and order are the manifest columns."""

    id: str
    src_audio: str
    src_n_frames: int
    src_text: str
    tgt_text: str
    tgt_audio: str  # units "12 5 873 ..." or a path
    tgt_n_frames: int

    @property
    def has_units(self) -> bool:
        return is_unit_string(self.tgt_audio)

    @property
    def units(self) -> list[int]:
        """``tgt_audio`` as unit ids. Raises ValueError when it is a path."""
        if not self.has_units:
            raise ValueError(f"{self.id}: tgt_audio is a path, not units: {self.tgt_audio!r}")
        return [int(u) for u in self.tgt_audio.split()]


@dataclass
class Manifest(Sequence):
    """Rows read from ``path`` plus, in skip mode, what was dropped and why."""

    path: Path
    rows: list[ManifestRow]
    audio_root: Path
    skipped: Counter = field(default_factory=Counter)  # problem kind → rows dropped
    errors: list[str] = field(default_factory=list)  # one message per dropped row

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def resolve(self, value: str) -> Path:
        """A ``src_audio``/``tgt_audio`` path (zip refs: the zip) as an absolute path."""
        return resolve_path(value, self.audio_root)


def is_unit_string(value: str) -> bool:
    """True when a ``tgt_audio`` value is a unit sequence (has a space, or is digits only)."""
    value = value.strip()
    return bool(value) and (" " in value or value.isdigit())


def resolve_path(value: str, root: str | os.PathLike) -> Path:
    """File part of an audio/feature reference (``a.flac``, ``f.zip:12:345``) under ``root``."""
    m = _ZIP_REF.match(value)
    path = Path(m["path"] if m else value)
    return path if path.is_absolute() else Path(root) / path


def parse_zip_ref(value: str) -> tuple[str, int, int] | None:
    """``"f.zip:12:345"`` → ``("f.zip", 12, 345)``; anything else → None."""
    m = _ZIP_REF.match(value)
    return (m["path"], int(m["offset"]), int(m["length"])) if m else None


# --------------------------------------------------------------------------- reading


class _RowError(Exception):
    def __init__(self, column: str, kind: str, message: str):
        super().__init__(message)
        self.column, self.kind, self.message = column, kind, message


def _parse_count(value: str, column: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise _RowError(column, "bad_frames", f"must be a positive integer, got {value!r}")
    return int(value)


def _check_file(value: str, column: str, root: Path) -> None:
    path = resolve_path(value, root)
    if not path.is_file():
        raise _RowError(column, "missing_file", f"file not found: {path}")
    ref = parse_zip_ref(value)
    if ref is not None and ref[1] + ref[2] > path.stat().st_size:
        raise _RowError(column, "missing_file", f"{value}: range past the end of {path}")


def _parse_row(
    values: list[str], columns: list[str], root: Path, num_units: int | None, check_files: bool
) -> ManifestRow:
    d = dict(zip(columns, values, strict=True))
    for name in ("id", "src_audio", "tgt_audio"):
        if not d[name].strip():
            raise _RowError(name, "empty_field", "is empty")
    for name in ("src_text", "tgt_text"):
        if not d[name].strip():
            raise _RowError(name, "empty_text", "text is empty")
    src_n = _parse_count(d["src_n_frames"], "src_n_frames")
    tgt_n = _parse_count(d["tgt_n_frames"], "tgt_n_frames")
    if check_files:
        _check_file(d["src_audio"], "src_audio", root)
    if is_unit_string(d["tgt_audio"]):
        tokens = d["tgt_audio"].split()
        for i, tok in enumerate(tokens):
            if not tok.isdigit():
                raise _RowError("tgt_audio", "bad_unit", f"unit #{i} is not an integer: {tok!r}")
            if num_units is not None and int(tok) >= num_units:
                raise _RowError(
                    "tgt_audio", "bad_unit", f"unit #{i} = {tok} outside [0, {num_units})"
                )
        if len(tokens) != tgt_n:
            raise _RowError(
                "tgt_n_frames", "bad_frames", f"is {tgt_n} but tgt_audio has {len(tokens)} units"
            )
    elif check_files:
        _check_file(d["tgt_audio"], "tgt_audio", root)
    return ManifestRow(
        d["id"], d["src_audio"], src_n, d["src_text"], d["tgt_text"], d["tgt_audio"], tgt_n
    )


def read_manifest(
    path: str | os.PathLike,
    *,
    num_units: int | None = None,
    on_error: Literal["fail", "skip"] = "fail",
    check_files: bool = True,
    audio_root: str | os.PathLike | None = None,
) -> Manifest:
    """Read and validate a manifest TSV (see module doc).

    ``num_units``: units must lie in ``[0, num_units)`` (None: only non-negative integers).
    ``check_files``: every referenced audio/feature file must exist under ``audio_root``
    (default: the manifest's folder). ``on_error="skip"`` drops bad rows and warns once with
    the counts (``Manifest.skipped``, ``Manifest.errors``); ``"fail"`` raises
    :class:`ManifestError` naming ``file:line:field`` at the first bad row. A bad header, an
    unreadable or empty file always raises.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    path = Path(path)
    root = Path(audio_root) if audio_root is not None else path.parent
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read manifest: {err.strerror or err}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ManifestError(f"{path}:1: empty manifest (no header line)")
    try:
        header = lines[0].decode("utf-8").rstrip("\r").split("\t")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}:1: header is not valid UTF-8 ({err.reason})") from None
    header[0] = header[0].removeprefix("\ufeff")
    if sorted(header) != sorted(MANIFEST_COLUMNS) or len(set(header)) != len(header):
        raise ManifestError(
            f"{path}:1: header must have the columns {', '.join(MANIFEST_COLUMNS)} (any order), "
            f"got {', '.join(header)}"
        )
    manifest = Manifest(path=path, rows=[], audio_root=root)
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        try:
            try:
                text = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as err:
                raise _RowError(
                    "-",
                    "not_utf8",
                    f"not valid UTF-8 (byte {err.object[err.start]:#04x} at offset {err.start})",
                ) from None
            values = text.split("\t")
            if len(values) != len(header):
                raise _RowError(
                    "-", "column_count", f"has {len(values)} columns, expected {len(header)}"
                )
            row = _parse_row(values, header, root, num_units, check_files)
            if row.id in seen:
                raise _RowError("id", "duplicate_id", f"{row.id!r} already on line {seen[row.id]}")
        except _RowError as err:
            where = f"{path}:{lineno}" + (f":{err.column}" if err.column != "-" else "")
            message = f"{where}: {err.message}"
            if on_error == "fail":
                raise ManifestError(message) from None
            manifest.skipped[err.kind] += 1
            manifest.errors.append(message)
            continue
        seen[row.id] = lineno
        manifest.rows.append(row)
    if manifest.skipped:
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(manifest.skipped.items()))
        warnings.warn(
            f"{path}: skipped {sum(manifest.skipped.values())} bad row(s) ({counts}); "
            f"first: {manifest.errors[0]}",
            stacklevel=2,
        )
    return manifest


# --------------------------------------------------------------------------- writing


def _format_row(row: ManifestRow, index: int) -> list[str]:
    values = [str(v) for v in astuple(row)]
    for f, v in zip(fields(ManifestRow), values, strict=True):
        if _FORBIDDEN.search(v):
            raise ManifestError(f"row {index} ({row.id}): field {f.name} contains a tab/newline")
    return values


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    """Write rows as a manifest TSV atomically (temp file in the same folder + rename)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n",
                        escapechar=None, quotechar=None)  # fmt: skip
    writer.writerow(MANIFEST_COLUMNS)
    for i, row in enumerate(rows):
        writer.writerow(_format_row(row, i))
    atomic_write_text(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- CVSS-C


@dataclass(frozen=True)
class CvssPair:
    """One CVSS-C pair joined with its Common Voice source.

    ``id``: the Common Voice clip name without ``.mp3`` (StreamSpeech's utterance id).
    ``src_audio``: the Common Voice clip (MP3, 48 kHz); ``tgt_audio``: the CVSS-C target
    (``{split}/{clip}.wav``, 24 kHz mono, one canonical voice).
    """

    id: str
    src_audio: Path
    src_text: str
    tgt_text: str
    tgt_audio: Path


def read_cvss_c(
    cvss_dir: str | os.PathLike,
    cv_dir: str | os.PathLike,
    split: str,
    *,
    on_error: Literal["fail", "skip"] = "fail",
    check_files: bool = True,
) -> list[CvssPair]:
    """Join CVSS-C ``{cvss_dir}/{split}.tsv`` with Common Voice's ``{cv_dir}/validated.tsv``.

    Layout assumed (CVSS v1.0, as StreamSpeech's ``prep_cvss_c_multilingual_data.py`` reads it):

    * ``cvss_dir`` = ``.../cvss_c_v1.0/fr-en``: ``train.tsv``, ``dev.tsv``, ``test.tsv`` without
      header, two columns ``path<TAB>translation`` (``path`` = the Common Voice clip name, e.g.
      ``common_voice_fr_17299399.mp3``); target audio at ``{split}/{path}.wav``.
    * ``cv_dir`` = Common Voice French (release 4, the one CoVoST 2 uses): ``validated.tsv``
      with a header containing at least ``path`` and ``sentence``; clips at ``clips/{path}``.

    Rows whose clip is absent from ``validated.tsv`` or whose files are missing are errors
    (``file:line``), handled as in :func:`read_manifest`.
    """
    cvss_dir, cv_dir = Path(cvss_dir), Path(cv_dir)
    sentences = _read_cv_sentences(cv_dir / "validated.tsv")
    tsv = cvss_dir / f"{split}.tsv"
    try:
        lines = tsv.read_bytes().split(b"\n")
    except OSError as err:
        raise ManifestError(f"{tsv}: cannot read CVSS-C split: {err.strerror or err}") from None
    pairs, bad = [], []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                parts = raw.decode("utf-8").rstrip("\r").split("\t")
            except UnicodeDecodeError as err:
                raise _RowError("-", "not_utf8", f"not valid UTF-8 ({err.reason})") from None
            if len(parts) != 2:
                raise _RowError("-", "column_count", f"has {len(parts)} columns, expected 2")
            clip, translation = parts
            if not translation.strip():
                raise _RowError("translation", "empty_text", "text is empty")
            if clip not in sentences:
                raise _RowError("path", "missing_source", f"{clip} not in {cv_dir}/validated.tsv")
            pair = CvssPair(
                id=clip.removesuffix(".mp3"),
                src_audio=cv_dir / "clips" / clip,
                src_text=sentences[clip],
                tgt_text=translation,
                tgt_audio=cvss_dir / split / f"{clip}.wav",
            )
            if check_files:
                for name in ("src_audio", "tgt_audio"):
                    if not getattr(pair, name).is_file():
                        raise _RowError(name, "missing_file", f"not found: {getattr(pair, name)}")
        except _RowError as err:
            where = f"{tsv}:{lineno}" + (f":{err.column}" if err.column != "-" else "")
            if on_error == "fail":
                raise ManifestError(f"{where}: {err.message}") from None
            bad.append(f"{where}: {err.message}")
            continue
        pairs.append(pair)
    if bad:
        warnings.warn(f"{tsv}: skipped {len(bad)} bad row(s); first: {bad[0]}", stacklevel=2)
    return pairs


def _read_cv_sentences(path: Path) -> dict[str, str]:
    """``path`` → ``sentence`` from a Common Voice TSV (quotes in sentences are literal)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None or "path" not in header or "sentence" not in header:
                raise ManifestError(f"{path}:1: expected a header with 'path' and 'sentence'")
            ip, isent = header.index("path"), header.index("sentence")
            return {r[ip]: r[isent] for r in reader if len(r) > max(ip, isent)}
    except FileNotFoundError:
        raise ManifestError(f"{path}: Common Voice validated.tsv not found") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not valid UTF-8 ({err.reason})") from None
