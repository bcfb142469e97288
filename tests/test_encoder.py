"""SpeechEncoder: front end + subsampling + body, streaming == parallel from PCM and from fbank."""

import numpy as np
import pytest
import torch
from helpers_models import tiny_config

from echostream.audio.features import GlobalCMVN
from echostream.models.encoder import SpeechEncoder


def _encoder(kind: str) -> SpeechEncoder:
    torch.manual_seed(0)
    config = tiny_config(kind, emformer={"left_context_length": 6, "right_context_length": 1})
    encoder = SpeechEncoder(config).eval()
    rng = np.random.default_rng(0)
    cmvn = GlobalCMVN(
        mean=torch.from_numpy(rng.normal(5, 1, 80).astype(np.float32)),
        std=torch.from_numpy(rng.uniform(1, 3, 80).astype(np.float32)),
    )
    encoder.set_cmvn(cmvn)
    return encoder


def _pcm(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * (200 + 100 * seed) * t)
    return (tone + 0.05 * torch.randn(t.shape, generator=g)).float()


@pytest.mark.parametrize(
    "kind,mode", [("emformer", "cached"), ("conformer", "cached"), ("conformer", "recompute")]
)
def test_stream_pcm_equals_whole_utterance(kind, mode):
    encoder = _encoder(kind)
    pcms = [_pcm(1.37, 0), _pcm(0.81, 1), _pcm(1.05, 2)]  # ragged batch, odd lengths
    with torch.inference_mode():
        full = [encoder.encode_pcm(p) for p in pcms]
        state = encoder.init_state(len(pcms), mode=mode)
        outs = [[] for _ in pcms]
        rng = np.random.default_rng(3)
        pos = [0] * len(pcms)
        while any(pos[i] < len(p) for i, p in enumerate(pcms)):
            sizes = [int(rng.integers(0, 3000)) for _ in pcms]
            chunks = [p[pos[i] : pos[i] + sizes[i]] for i, p in enumerate(pcms)]
            width = max(len(c) for c in chunks)
            batch = torch.zeros(len(pcms), width)
            for i, c in enumerate(chunks):
                batch[i, : len(c)] = c
                pos[i] += len(c)
            lens = torch.tensor([len(c) for c in chunks])
            y, y_len, state = encoder.stream_pcm(batch, lens, state)
            for i in range(len(pcms)):
                outs[i].append(y[i, : y_len[i]])
        y, y_len, state = encoder.stream_pcm(
            torch.zeros(3, 0), torch.zeros(3, dtype=torch.long), state, final=True
        )
        for i in range(len(pcms)):
            outs[i].append(y[i, : y_len[i]])
    for i, ref in enumerate(full):
        got = torch.cat(outs[i])
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_stream_fbank_equals_forward_and_ignores_padding():
    encoder = _encoder("emformer")
    feats = torch.randn(2, 57, 80) * 3 + 5
    lens = torch.tensor([57, 41])
    with torch.inference_mode():
        ref, ref_len = encoder(feats, lens)
        noisy = feats.clone()
        noisy[1, 41:] = 1e4
        ref2, _ = encoder(noisy, lens)
        torch.testing.assert_close(ref2[1, : ref_len[1]], ref[1, : ref_len[1]])
        state = encoder.init_state(2)
        parts = [[], []]
        for start in range(0, 57, 5):
            chunk = feats[:, start : start + 5]
            chunk_len = (lens - start).clamp(0, chunk.shape[1])
            y, y_len, state = encoder.stream(chunk, chunk_len, state)
            for b in range(2):
                parts[b].append(y[b, : y_len[b]])
        y, y_len, state = encoder.stream(
            feats[:, :0], torch.zeros(2, dtype=torch.long), state, final=True
        )
        for b in range(2):
            parts[b].append(y[b, : y_len[b]])
            torch.testing.assert_close(
                torch.cat(parts[b]), ref[b, : ref_len[b]], atol=1e-5, rtol=1e-5
            )


def test_bad_inputs_raise_clear_errors():
    encoder = _encoder("emformer")
    with pytest.raises(ValueError, match=r"fbank \(B, T, 80\)"):
        encoder(torch.randn(2, 10, 40), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="feat_len"):
        encoder(torch.randn(2, 10, 80), torch.tensor([10]))
    with pytest.raises(ValueError, match="stream_pcm expects"):
        encoder.stream_pcm(torch.randn(100), torch.tensor([100]), encoder.init_state(1))
    with pytest.raises(ValueError, match="mode"):
        encoder.init_state(1, mode="fast")


def test_encode_cli_prints_a_row_per_chunk(capsys):
    from pathlib import Path

    from echostream.cli import main

    sample = sorted(
        (Path(__file__).resolve().parents[1] / "echostream" / "assets" / "samples").glob("*.wav")
    )[0]
    assert (
        main(["encode", "--config", "echostream_tiny", "--audio", str(sample), "--chunk-ms", "320"])
        == 0
    )
    rows = [
        line.split()
        for line in capsys.readouterr().out.splitlines()
        if line and line.split()[0].isdigit()
    ]
    assert len(rows) >= 8 and [int(r[0]) for r in rows] == list(range(len(rows)))
    total = sum(int(r[2]) for r in rows)
    assert total == int(rows[-1][3]) > 0  # frames out add up to the running total
