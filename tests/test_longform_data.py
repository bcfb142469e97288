"""Long-form streams from the synthetic corpus: exact placement, pauses, formats, determinism."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from echostream.data.longform import (
    LongformConfig,
    LongformError,
    build_longform,
    main_prepare_longform,
    voice_of,
)
from echostream.text.normalize import normalize

TINY = Path(__file__).resolve().parents[1] / "work" / "synth-tiny"


@pytest.fixture(autouse=True, scope="module")
def _tiny_corpus(synth_tiny):
    """work/synth-tiny, built on first use (tests/conftest.py)."""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("longform")
    summary = build_longform(TINY, out, LongformConfig("dev", minutes=1 / 3, streams=2, seed=3))
    return out, summary


def test_voice_of_strips_rate_and_pitch():
    assert voice_of("espeak:fr+f1:r175:p59") == "espeak:fr+f1"
    assert voice_of("mbrola:fr1:r153:p60") == "mbrola:fr1"
    assert voice_of("pico:fr-FR") == "pico:fr-FR"


def test_offsets_and_durations_match_the_audio_exactly(built):
    out, summary = built
    definition = yaml.safe_load((out / "dev.yaml").read_text())
    segments = [line.split("\t") for line in (out / "dev.segments.tsv").read_text().splitlines()]
    header, rows = segments[0], segments[1:]
    assert header == ["wav", "offset", "duration", "pause_before", "id", "voice"]
    assert len(definition) == len(rows) == summary["sentences"]
    manifest = {
        line.split("\t")[0]: line.split("\t")
        for line in (TINY / "dev.tsv").read_text().splitlines()[1:]
    }
    refs = (out / "dev.en").read_text().splitlines()
    srcs = (out / "dev.fr").read_text().splitlines()
    assert (out / "dev.norm.en").read_text().splitlines() == [normalize(r) for r in refs]
    wavs = {}
    for i, (entry, row) in enumerate(zip(definition, rows, strict=True)):
        assert set(entry) == {"wav", "offset", "duration", "speaker_id"}
        assert entry["wav"] == row[0] and entry["speaker_id"] == row[5]
        if entry["wav"] not in wavs:
            pcm, sr = sf.read(out / "wavs" / entry["wav"], dtype="int16")
            assert sr == 16000 and pcm.ndim == 1
            assert sf.info(out / "wavs" / entry["wav"]).subtype == "PCM_16"
            wavs[entry["wav"]] = pcm
        pcm = wavs[entry["wav"]]
        utterance, _ = sf.read(TINY / manifest[row[4]][1], dtype="int16")
        start = round(entry["offset"] * 16000)
        assert start == entry["offset"] * 16000  # offsets fall on whole samples
        assert round(entry["duration"] * 16000) == len(utterance)
        np.testing.assert_array_equal(pcm[start : start + len(utterance)], utterance)
        pause = round(float(row[3]) * 16000)
        assert 0.2 * 16000 <= pause <= 0.8 * 16000
        assert not pcm[start - pause : start].any()  # the pause before it is silence
        assert refs[i] == manifest[row[4]][4] and srcs[i] == manifest[row[4]][3]
    for rec in summary["recordings"]:
        pcm = wavs[rec["wav"]]
        assert len(pcm) / 16000 == rec["seconds"] >= 20.0
        last = [e for e in definition if e["wav"] == rec["wav"]][-1]
        end = round((last["offset"] + last["duration"]) * 16000)
        assert 0.2 * 16000 <= len(pcm) - end <= 0.8 * 16000  # trailing pause
        assert not pcm[end:].any()
    # one voice per recording, different voices across recordings, utterances in split order
    voices = {rec["wav"]: {e["speaker_id"] for e in definition if e["wav"] == rec["wav"]}
              for rec in summary["recordings"]}  # fmt: skip
    assert all(len(v) == 1 for v in voices.values())
    assert len({next(iter(v)) for v in voices.values()}) == len(voices)
    order = list(manifest)
    for wav in voices:
        ids = [r[4] for r in rows if r[0] == wav]
        assert [order.index(i) for i in ids] == sorted(order.index(i) for i in ids)
    listed = (out / "dev.wav_list").read_text().split()
    assert listed == [f"wavs/{r['wav']}" for r in summary["recordings"]]


def test_deterministic_and_seeded(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_longform(TINY, again, LongformConfig("dev", minutes=1 / 3, streams=2, seed=3))
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.relative_to(out)
        if name.name == "dev.json":  # records the corpus path only
            continue
        assert path.read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    build_longform(TINY, other, LongformConfig("dev", minutes=1 / 3, streams=2, seed=4))
    assert (other / "dev.yaml").read_bytes() != (out / "dev.yaml").read_bytes()


def test_simulstream_reads_the_definition(built):
    readers = pytest.importorskip("simulstream.metrics.readers")
    out, summary = built
    refs = readers.YamlReferenceReader(str(out / "dev.yaml"), str(out / "dev.en"))
    texts = refs.get_reference_texts()
    assert list(texts) == [Path(r["wav"]).stem for r in summary["recordings"]]
    assert sum(len(v) for v in texts.values()) == summary["sentences"]


def test_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(LongformError, match="too few utterances"):
        build_longform(TINY, tmp_path, LongformConfig("dev", minutes=5, streams=2))
    with pytest.raises(LongformError, match="manifest for split 'nope' not found"):
        build_longform(TINY, tmp_path, LongformConfig("nope"))
    with pytest.raises(LongformError, match="corpus folder not found"):
        build_longform(tmp_path / "missing", tmp_path, LongformConfig())
    with pytest.raises(LongformError, match="minutes must be > 0"):
        LongformConfig(minutes=0)
    argv = ["--corpus", str(TINY), "--minutes", "9", "--out", str(tmp_path / "x")]
    assert main_prepare_longform(argv) == 1
    assert "too few utterances" in capsys.readouterr().err
    assert not (tmp_path / "x" / "dev.json").exists()
