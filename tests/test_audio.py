"""Front end: audio I/O (soundfile + soxr), fbank (whole file == streaming), global CMVN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from echostream.audio.features import CMVNError, FbankExtractor, FbankState, GlobalCMVN
from echostream.audio.io import (
    AudioError,
    StreamingResampler,
    load_audio,
    resample,
    save_audio,
    to_mono_float32,
)
from echostream.config import FeatureConfig

SR = 16000


def _speechlike(num_samples: int, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Harmonics with a wobbling pitch plus noise, in [-1, 1], float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(h * phase) / h for h in range(1, 8)) * 0.2
    x = x + 0.02 * rng.standard_normal(num_samples)
    return x.astype(np.float32)


def _sine(freq: float, seconds: float, sr: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


# ---------------------------------------------------------------------------- audio I/O


@pytest.mark.parametrize("sr_in", [44100, 8000, 22050, 48000])
def test_load_resamples_to_16k(tmp_path, sr_in):
    x = _sine(1000.0, 0.73, sr_in)
    path = tmp_path / f"sine_{sr_in}.wav"
    sf.write(path, x, sr_in, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x) * SR / sr_in) <= 1
    # Still a 1 kHz sine of amplitude 0.5 (away from the filter's edge effects).
    ref = _sine(1000.0, len(y) / SR + 1, SR)[: len(y)]
    mid = slice(200, len(y) - 200)
    corr = np.dot(y[mid], ref[mid]) / (np.linalg.norm(y[mid]) * np.linalg.norm(ref[mid]))
    assert corr > 0.999
    assert abs(np.abs(y[mid]).max() - 0.5) < 0.01


def test_load_16k_is_untouched(tmp_path):
    x = _speechlike(5000)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    assert np.array_equal(load_audio(tmp_path / "a.wav"), x)


def test_stereo_to_mono(tmp_path):
    left, right = _sine(440.0, 0.2, SR), _speechlike(3200, seed=1)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    # In-memory, both layouts.
    stereo = np.stack([left, right])
    np.testing.assert_allclose(to_mono_float32(stereo, channels_first=True), (left + right) / 2)
    np.testing.assert_allclose(to_mono_float32(stereo.T), (left + right) / 2)


def test_int16_scaling():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_array_equal(
        to_mono_float32(pcm), np.array([0, 0.5, -1.0, 32767 / 32768], dtype=np.float32)
    )
    assert to_mono_float32(pcm).dtype == np.float32


def _write_bad(tmp_path, kind: str):
    path = tmp_path / f"bad_{kind}.wav"
    if kind == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), SR, subtype="FLOAT")
    elif kind in ("nan", "inf"):
        x = _speechlike(1600)
        x[777] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "missing":
        pass
    elif kind == "truncated-header":
        sf.write(path, _speechlike(1600), SR)
        path.write_bytes(path.read_bytes()[:20])
    return path


@pytest.mark.parametrize(
    "kind, words",
    [
        ("empty", "empty"),
        ("nan", "NaN"),
        ("inf", "infinite"),
        ("corrupt", "cannot read"),
        ("missing", "not found"),
        ("truncated-header", "cannot read"),
    ],
)
def test_bad_audio_raises_audio_error_naming_file(tmp_path, kind, words):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert path.name in str(err.value)
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_in_memory_errors():
    with pytest.raises(AudioError, match="empty"):
        to_mono_float32(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        to_mono_float32(np.array([0.0, np.nan]), name="mic")
    with pytest.raises(AudioError, match="mic"):
        to_mono_float32(np.array([0.0, -np.inf]), name="mic")
    with pytest.raises(AudioError, match="shape"):
        to_mono_float32(np.zeros((2, 2, 2)))


def test_save_audio_atomic_round_trip(tmp_path):
    x = _speechlike(4000)
    path = tmp_path / "out.flac"
    save_audio(path, x, SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac"]  # no temp file left
    y, sr = sf.read(path, dtype="float32")
    assert sr == SR and len(y) == len(x)
    assert np.abs(y - x).max() < 1e-4  # 16-bit FLAC
    save_audio(tmp_path / "f.wav", x, SR, subtype="FLOAT")
    assert np.array_equal(load_audio(tmp_path / "f.wav"), x)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "bad.wav", np.array([np.nan], dtype=np.float32), SR)
    assert not (tmp_path / "bad.wav").exists()


@pytest.mark.parametrize("sr_in", [44100, 8000])
def test_streaming_resampler_equals_whole(sr_in):
    x = _speechlike(int(0.5 * sr_in), seed=2, sr=sr_in)
    whole = resample(x, sr_in, SR)
    rs = StreamingResampler(sr_in, SR)
    rng = np.random.default_rng(0)
    parts, start = [], 0
    while start < len(x):
        n = int(rng.integers(1, 700))
        parts.append(rs.process(x[start : start + n]))
        start += n
    parts.append(rs.process(np.zeros(0, dtype=np.float32), last=True))
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    with pytest.raises(RuntimeError):
        rs.process(x[:10])
    same = StreamingResampler(SR, SR)
    assert np.array_equal(same.process(x[:100]), x[:100])


# ---------------------------------------------------------------------------- fbank


@pytest.fixture(scope="module")
def extractor() -> FbankExtractor:
    return FbankExtractor(FeatureConfig())


def test_fbank_shape_and_content(extractor):
    assert (extractor.frame_length, extractor.frame_shift) == (400, 160)
    for n, frames in [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)]:
        assert extractor.num_frames(n) == frames
        assert extractor(np.full(n, 0.1, dtype=np.float32)).shape == (frames, 80)
    # A 2 kHz tone puts its energy in the mel bin around 2 kHz (bins are 20 Hz .. 8 kHz).
    feats = extractor(_sine(2000.0, 0.5, SR))
    assert feats.dtype == torch.float32
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    centre = (mel(2000) - mel(20)) / (mel(8000) - mel(20)) * 81 - 1  # bin index of 2 kHz
    assert abs(int(feats.mean(0).argmax()) - centre) <= 1
    # int16 scale: a 0.5-amplitude tone's peak bin sits far above 0 (log power of int16 range).
    assert feats.max() > 15.0


def test_fbank_rejects_bad_input(extractor):
    with pytest.raises(ValueError, match="NaN"):
        extractor(np.array([0.0] * 500 + [np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        extractor(np.zeros((2, 500), dtype=np.float32))
    state = extractor.init_state(2)
    with pytest.raises(ValueError, match="B=2"):
        extractor.stream(torch.zeros(3, 10), torch.tensor([1, 1, 1]), state)
    with pytest.raises(ValueError, match="pcm_len"):
        extractor.stream(torch.zeros(2, 10), torch.tensor([1, 11]), state)


def _stream_all(extractor, signals, chunk_sizes, seed=0):
    """Feed each signal in its own chunking (a ragged batch); return per-stream features."""
    rng = np.random.default_rng(seed)
    state = extractor.init_state(len(signals))
    pos = [0] * len(signals)
    out = [[] for _ in signals]
    sizes_seen = set()
    while any(p < len(s) for p, s in zip(pos, signals, strict=True)):
        lens = []
        for b, s in enumerate(signals):
            size = chunk_sizes[b]
            n = int(rng.integers(0, 3000)) if size == "random" else size
            lens.append(min(n, len(s) - pos[b]))
        pcm = torch.zeros(len(signals), max(lens))
        for b, s in enumerate(signals):
            pcm[b, : lens[b]] = torch.from_numpy(s[pos[b] : pos[b] + lens[b]])
            pos[b] += lens[b]
        before = state
        feats, feat_len, state = extractor.stream(pcm, torch.tensor(lens), state)
        assert before.residual_len.shape == state.residual_len.shape  # input state untouched
        sizes_seen.add(state.nbytes())
        for b in range(len(signals)):
            out[b].append(feats[b, : feat_len[b]])
            assert torch.all(feats[b, feat_len[b] :] == 0)
    assert len(sizes_seen) == 1  # state size does not depend on how much was streamed
    _, last_len, final_state = extractor.stream(
        torch.zeros(len(signals), 0), torch.zeros(len(signals), dtype=torch.long), state, True
    )
    assert last_len.tolist() == [0] * len(signals)
    assert final_state.residual_len.tolist() == [0] * len(signals)
    assert final_state.num_frames.tolist() == state.num_frames.tolist()
    return [torch.cat(o) for o in out], state


@pytest.mark.parametrize("chunk", [1, 37, 160, 400, 5120, "random"])
def test_fbank_stream_equals_whole_file(extractor, chunk):
    n = 2500 if chunk == 1 else 13_000  # 1-sample feeding is slow in Python; keep it short
    x = _speechlike(n, seed=3)
    whole = extractor(x)
    streamed, state = _stream_all(extractor, [x], [chunk])
    assert torch.equal(streamed[0], whole)  # bit-exact
    assert int(state.num_frames[0]) == whole.shape[0]
    assert int(state.residual_len[0]) == n - whole.shape[0] * 160


def test_fbank_stream_ragged_batch(extractor):
    signals = [_speechlike(n, seed=s) for n, s in [(3001, 4), (9_999, 5), (399, 6)]]
    streamed, _ = _stream_all(extractor, signals, [1, 37, "random"])
    for x, feats in zip(signals, streamed, strict=True):
        assert torch.equal(feats, extractor(x))
    streamed, _ = _stream_all(extractor, signals, ["random", 160, 5120], seed=1)
    for x, feats in zip(signals, streamed, strict=True):
        assert torch.equal(feats, extractor(x))
    batch, batch_len = extractor.batch(
        torch.stack([torch.from_numpy(np.pad(x, (0, 10_000 - len(x)))) for x in signals]),
        torch.tensor([len(x) for x in signals]),
    )
    assert batch_len.tolist() == [extractor.num_frames(len(x)) for x in signals]
    for b, x in enumerate(signals):
        assert torch.equal(batch[b, : batch_len[b]], extractor(x))


def test_fbank_state_stack_select(extractor):
    """Streams started at different times are batched by stacking their states."""
    a, b = _speechlike(6000, seed=7), _speechlike(6000, seed=8)
    sa = extractor.init_state(1)
    _, _, sa = extractor.stream(torch.from_numpy(a[:1234])[None], torch.tensor([1234]), sa)
    sb = extractor.init_state(1)
    _, _, sb = extractor.stream(torch.from_numpy(b[:555])[None], torch.tensor([555]), sb)
    pre_a = extractor(a[:1234])
    pre_b = extractor(b[:555])
    state = FbankState.stack([sa, sb])
    assert state.batch_size == 2
    rest = torch.stack([torch.from_numpy(a[1234:5234]), torch.from_numpy(b[555:4555])])
    feats, feat_len, state = extractor.stream(rest, torch.tensor([4000, 4000]), state)
    assert torch.equal(torch.cat([pre_a, feats[0, : feat_len[0]]]), extractor(a[:5234]))
    assert torch.equal(torch.cat([pre_b, feats[1, : feat_len[1]]]), extractor(b[:4555]))
    only_b = state.select([1])
    assert only_b.num_frames.tolist() == [extractor.num_frames(4555)]


# ---------------------------------------------------------------------------- CMVN


def test_cmvn_fit_normalises_and_round_trips(tmp_path, extractor):
    torch.manual_seed(0)
    feats = [torch.randn(t, 80) * 3 + torch.linspace(-5, 5, 80) for t in (50, 123, 7)]
    cmvn = GlobalCMVN.fit(feats)
    assert cmvn.count == 180
    normed = cmvn(torch.cat(feats))
    assert normed.mean(0).abs().max() < 1e-5
    assert (normed.std(0, unbiased=False) - 1).abs().max() < 1e-4
    path = tmp_path / "cmvn.json"
    cmvn.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmvn.json"]
    loaded = GlobalCMVN.load(path)
    assert torch.equal(loaded.mean, cmvn.mean) and torch.equal(loaded.std, cmvn.std)
    assert loaded.count == 180
    # Padding frames are zeroed when lengths are given.
    batch = torch.stack([feats[2], feats[0][:7]])
    out = cmvn(batch, torch.tensor([7, 3]))
    assert torch.equal(out[1, 3:], torch.zeros(4, 80))
    assert torch.equal(out[0], cmvn(feats[2]))
    ident = GlobalCMVN.identity(80)
    assert torch.equal(ident(feats[0]), feats[0])


def test_cmvn_fit_float64_accumulation():
    """Large offset, small spread: a float32 sum-of-squares would lose the variance."""
    x = torch.full((20_000, 2), 1000.0) + torch.tensor([[0.01, -0.01]]) * torch.randn(20_000, 1)
    cmvn = GlobalCMVN.fit([x[:10_000], x[10_000:]], min_std=1e-6)
    want = x.double().std(0, unbiased=False).float()
    assert torch.allclose(cmvn.std, want, rtol=1e-3)


def test_cmvn_from_audio_files(tmp_path, extractor):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], _speechlike(4000 + 1000 * i, seed=i), SR, subtype="FLOAT")
    cmvn = GlobalCMVN.from_audio_files(paths)
    all_feats = torch.cat([extractor(load_audio(p)) for p in paths])
    assert cmvn.count == all_feats.shape[0]
    torch.testing.assert_close(cmvn.mean, all_feats.mean(0), atol=1e-4, rtol=0)
    with pytest.raises(AudioError, match=r"missing\.wav"):
        GlobalCMVN.from_audio_files([tmp_path / "missing.wav"])


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "not found"),
        ("{ not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ({"format": "other"}, "'format'"),
        ({"format": "echostream-global-cmvn", "std": [1.0]}, "missing field 'mean'"),
        ({"format": "echostream-global-cmvn", "mean": [0.0, 1.0], "std": [1.0]}, "'std' has 1"),
        ({"format": "echostream-global-cmvn", "mean": ["a"], "std": [1.0]}, "'mean' must be"),
        ({"format": "echostream-global-cmvn", "mean": [0.0], "std": [0.0]}, "'std' must be > 0"),
        ({"format": "echostream-global-cmvn", "mean": [0], "std": [1], "count": -1}, "'count'"),
    ],
)
def test_cmvn_bad_files(tmp_path, content, words):
    path = tmp_path / "stats.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CMVNError) as err:
        GlobalCMVN.load(path)
    assert "stats.json" in str(err.value) and words in str(err.value)


def test_cmvn_errors():
    with pytest.raises(CMVNError, match="no feature frames"):
        GlobalCMVN.fit([])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        GlobalCMVN.fit([torch.zeros(3, 80), torch.zeros(3, 40)])
    with pytest.raises(ValueError, match="dim 80"):
        GlobalCMVN.identity(80)(torch.zeros(2, 40))


def test_fbank_final_drops_tail(extractor):
    x = _speechlike(5000, seed=11)  # 29 frames, 360 samples of tail
    feats, feat_len, state = extractor.stream(
        torch.from_numpy(x)[None], torch.tensor([5000]), extractor.init_state(1), final=True
    )
    assert torch.equal(feats[0, : feat_len[0]], extractor(x))
    assert state.residual_len.tolist() == [0] and state.num_frames.tolist() == [29]
