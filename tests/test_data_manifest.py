"""Manifest TSV: round trip, validation errors with file:line:field, skip mode, atomic writes;
the CVSS-C reader."""

from __future__ import annotations

import re

import pytest

from echostream.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    ManifestRow,
    read_cvss_c,
    read_manifest,
    write_manifest,
)

HEADER = "\t".join(MANIFEST_COLUMNS)


@pytest.fixture
def audio_dir(tmp_path):
    for name in ("a.flac", "b.flac", "c.wav", "feats.zip"):
        (tmp_path / name).write_bytes(b"x" * 64)
    return tmp_path


def rows():
    return [
        ManifestRow("utt-1", "a.flac", 321, "Ce paquet fournit l'API.", "This package.",
                    "5 0 17 99 3", 5),
        ManifestRow("utt-2", "b.flac", 12, "Deux", "Two", "c.wav", 40),
        ManifestRow("utt-3", "feats.zip:10:20", 7, "Trois – « été »", "Three", "42", 1),
    ]  # fmt: skip


def test_round_trip_identical(audio_dir):
    path = write_manifest(audio_dir / "train.tsv", rows())
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == HEADER
    assert (
        text.splitlines()[1]
        == "utt-1\ta.flac\t321\tCe paquet fournit l'API.\tThis package.\t5 0 17 99 3\t5"
    )
    back = read_manifest(path, num_units=100)
    assert list(back) == rows()
    assert back[0].units == [5, 0, 17, 99, 3] and back[0].has_units
    assert not back[1].has_units and back[2].units == [42]
    write_manifest(audio_dir / "again.tsv", back)
    assert (audio_dir / "again.tsv").read_bytes() == path.read_bytes()
    # column order on read may differ; the values are the same
    cols = list(MANIFEST_COLUMNS)[::-1]
    lines = ["\t".join(cols)] + [
        "\t".join(line.split("\t")[::-1]) for line in text.splitlines()[1:]
    ]
    (audio_dir / "rev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert list(read_manifest(audio_dir / "rev.tsv", num_units=100)) == rows()


GOOD = "utt-1\ta.flac\t321\tbonjour\thello\t5 0 17\t3"


def line(**fields):
    """A row like GOOD (id utt-2) with some columns replaced; ``drop`` removes the last one."""
    values = dict(zip(MANIFEST_COLUMNS, GOOD.split("\t"), strict=True)) | {"id": "utt-2"}
    values.update({k: v for k, v in fields.items() if k != "drop"})
    out = [values[c] for c in MANIFEST_COLUMNS]
    return "\t".join(out[:-1] if fields.get("drop") else out)


BAD_LINES = [
    (line(src_audio="missing.flac"), "src_audio", "file not found", "missing_file"),
    (line(tgt_audio="1 100 2"), "tgt_audio", r"unit #1 = 100 outside \[0, 100\)", "bad_unit"),
    (line(tgt_audio="1 x2 2"), "tgt_audio", "unit #1 is not an integer: 'x2'", "bad_unit"),
    (line(src_text="  "), "src_text", "text is empty", "empty_text"),
    (line(tgt_text=""), "tgt_text", "text is empty", "empty_text"),
    (line(drop=True), None, "has 6 columns, expected 7", "column_count"),
    (line(src_n_frames="ten"), "src_n_frames", "must be a positive integer", "bad_frames"),
    (line(tgt_n_frames="4"), "tgt_n_frames", "is 4 but tgt_audio has 3 units", "bad_frames"),
    (line(id="utt-1"), "id", "'utt-1' already on line 2", "duplicate_id"),
    (line(tgt_audio="gone.wav"), "tgt_audio", "file not found", "missing_file"),
]


@pytest.mark.parametrize(("bad", "field", "message", "kind"), BAD_LINES)
def test_bad_row_fails_with_file_line_field(audio_dir, bad, field, message, kind):
    path = audio_dir / "dev.tsv"
    path.write_text(f"{HEADER}\n{GOOD}\n{bad}\n{GOOD.replace('utt-1', 'utt-9')}\n", "utf-8")
    where = f"{path}:3:{field}: " if field else f"{path}:3: "
    with pytest.raises(ManifestError, match=re.escape(where) + message):
        read_manifest(path, num_units=100)
    with pytest.warns(UserWarning, match=r"skipped 1 bad row"):
        m = read_manifest(path, num_units=100, on_error="skip")
    assert [r.id for r in m] == ["utt-1", "utt-9"]
    assert dict(m.skipped) == {kind: 1}
    assert m.errors[0].startswith(where)


def test_non_utf8_line_and_skip_counts(audio_dir):
    path = audio_dir / "test.tsv"
    bad = b"utt-2\ta.flac\t10\tcaf" + b"\xe9" + b"\thello\t1\t1"
    data = "\n".join([HEADER, GOOD]).encode() + b"\n" + bad + b"\n"
    data += b"utt-3\ta.flac\t10\tbonjour\thello\t1 999\t2\n"
    data += b"utt-4\tnope.flac\t10\tbonjour\thello\t1\t1\n"
    path.write_bytes(data)
    with pytest.raises(ManifestError, match=re.escape(f"{path}:3: not valid UTF-8 (byte 0xe9")):
        read_manifest(path, num_units=100)
    with pytest.warns(
        UserWarning, match=r"skipped 3 bad row\(s\) \(bad_unit: 1, missing_file: 1, not_utf8: 1\)"
    ):
        m = read_manifest(path, num_units=100, on_error="skip")
    assert [r.id for r in m] == ["utt-1"]
    assert [e.split(": ")[0] for e in m.errors] == [
        f"{path}:3",
        f"{path}:4:tgt_audio",
        f"{path}:5:src_audio",
    ]
    # without num_units any non-negative integer is a valid unit; without file checks no IO
    with pytest.warns(UserWarning, match=r"skipped 1 bad row\(s\) \(not_utf8: 1\)"):
        m = read_manifest(path, on_error="skip", check_files=False)
    assert [r.id for r in m] == ["utt-1", "utt-3", "utt-4"]


def test_bad_header_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.tsv")
    (tmp_path / "h.tsv").write_text("id\tsrc_audio\tfoo\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'h.tsv'}:1: header must have")):
        read_manifest(tmp_path / "h.tsv", on_error="skip")
    (tmp_path / "e.tsv").write_bytes(b"")
    with pytest.raises(ManifestError, match=":1: empty manifest"):
        read_manifest(tmp_path / "e.tsv")


def test_write_is_atomic(audio_dir):
    path = write_manifest(audio_dir / "train.tsv", rows())
    before = path.read_bytes()
    broken = [*rows(), ManifestRow("utt-4", "a.flac", 3, "tab\there", "x", "1", 1)]
    with pytest.raises(ManifestError, match=r"row 3 \(utt-4\): field src_text contains a tab"):
        write_manifest(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in audio_dir.iterdir() if p.name.endswith(".tmp")) == []


def test_cvss_c_reader(tmp_path):
    cv, cvss = tmp_path / "cv-fr", tmp_path / "cvss_c" / "fr-en"
    (cv / "clips").mkdir(parents=True)
    (cvss / "dev").mkdir(parents=True)
    (cv / "validated.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\n"
        "c1\tcommon_voice_fr_1.mp3\tBonjour « tout » le monde.\t2\n"
        "c2\tcommon_voice_fr_2.mp3\tAu revoir.\t3\n", encoding="utf-8")  # fmt: skip
    for clip in ("common_voice_fr_1.mp3", "common_voice_fr_2.mp3"):
        (cv / "clips" / clip).write_bytes(b"mp3")
    (cvss / "dev" / "common_voice_fr_1.mp3.wav").write_bytes(b"wav")
    (cvss / "dev.tsv").write_text(
        "common_voice_fr_1.mp3\tHello everyone.\ncommon_voice_fr_2.mp3\tGoodbye.\n"
        "common_voice_fr_3.mp3\tUnknown.\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(
        ManifestError, match=re.escape(f"{cvss / 'dev.tsv'}:2:tgt_audio: not found")
    ):
        read_cvss_c(cvss, cv, "dev")
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        pairs = read_cvss_c(cvss, cv, "dev", on_error="skip")
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.id, p.src_text, p.tgt_text) == (
        "common_voice_fr_1",
        "Bonjour « tout » le monde.",
        "Hello everyone.",
    )
    assert p.src_audio == cv / "clips" / "common_voice_fr_1.mp3"
    assert p.tgt_audio == cvss / "dev" / "common_voice_fr_1.mp3.wav"
    with pytest.raises(
        ManifestError, match=re.escape(f"{cvss / 'dev.tsv'}:3:path: common_voice_fr_3.mp3 not in")
    ):
        read_cvss_c(cvss, cv, "dev", check_files=False)
