"""Causal conv subsampling ×4: output length, causality, padding, streaming == parallel."""

from __future__ import annotations

import pytest
import torch

from echostream.config import SubsamplingConfig
from echostream.models.subsampling import (
    SUBSAMPLING_FACTOR,
    Conv2dSubsampling,
    SubsamplingState,
    output_length,
)

IN_DIM, OUT_DIM = 80, 16


def _model(kernel_size: int = 3, channels: int = 8, seed: int = 0) -> Conv2dSubsampling:
    torch.manual_seed(seed)
    model = Conv2dSubsampling(IN_DIM, OUT_DIM, SubsamplingConfig(channels, kernel_size)).eval()
    with torch.no_grad():  # positive biases keep ReLUs alive, so every dependency is visible
        model.conv1.bias.uniform_(0.1, 0.3)
        model.conv2.bias.uniform_(0.1, 0.3)
    return model


def _batch(lengths: list[int], seed: int = 1, pad_value: float = 0.0):
    torch.manual_seed(seed)
    x = torch.full((len(lengths), max(lengths), IN_DIM), pad_value)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randn(n, IN_DIM)
    return x, torch.tensor(lengths)


def test_output_length():
    assert SUBSAMPLING_FACTOR == 4
    assert [output_length(t) for t in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert output_length(torch.tensor([0, 4, 5, 1000])).tolist() == [0, 1, 2, 250]


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_forward_shapes(kernel_size):
    model = _model(kernel_size)
    for t in [1, 2, 3, 4, 5, 8, 13]:
        y, y_len = model(*_batch([t]))
        assert y.shape == (1, output_length(t), OUT_DIM)
        assert y_len.tolist() == [output_length(t)]
    assert model.freq1 == (IN_DIM - kernel_size) // 2 + 1
    assert model.out.in_features == 8 * ((model.freq1 - kernel_size) // 2 + 1)


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_receptive_field_is_exactly_documented(kernel_size):
    """Output t reads input frames 4t - 3(k-1) .. 4t and nothing else."""
    model = _model(kernel_size)
    x, x_len = _batch([40])
    x.requires_grad_(True)
    y, _ = model(x, x_len)
    for t in [0, 1, 4, 9]:
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        seen = (grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
        first = max(0, 4 * t - 3 * (kernel_size - 1))
        assert seen == list(range(first, 4 * t + 1)), (t, seen)


def test_causality():
    """Perturbing frames >= s leaves every output whose receptive field ends before s unchanged."""
    model = _model()
    x, x_len = _batch([37])
    y, _ = model(x, x_len)
    for s in [0, 1, 5, 8, 20, 36]:
        x2 = x.clone()
        x2[:, s:] += 10 * torch.randn_like(x2[:, s:])
        y2, _ = model(x2, x_len)
        unchanged = (s + 3) // 4  # outputs t with 4t < s
        assert torch.equal(y2[:, :unchanged], y[:, :unchanged])
        assert not torch.allclose(y2[:, unchanged], y[:, unchanged])  # the next one does change


def test_padding_never_leaks():
    model = _model()
    lengths = [13, 5, 1]
    x, x_len = _batch(lengths, pad_value=float("nan"))
    y, y_len = model(x, x_len)
    assert y_len.tolist() == [4, 2, 1]
    assert torch.isfinite(y).all()
    for b, n in enumerate(lengths):
        alone, _ = model(x[b : b + 1, :n], x_len[b : b + 1])
        torch.testing.assert_close(y[b, : y_len[b]], alone[0], atol=1e-6, rtol=0)
        assert torch.equal(y[b, y_len[b] :], torch.zeros_like(y[b, y_len[b] :]))
    big, _ = model(*_batch(lengths, pad_value=1e6))
    torch.testing.assert_close(big, y, atol=1e-6, rtol=0)


def _stream(model, x, x_len, sizes, seed=0):
    """Feed each stream in its own chunk sizes ("random" draws 0..6); return outputs and state."""
    gen = torch.Generator().manual_seed(seed)
    batch = x.shape[0]
    state = model.init_state(batch)
    pos = torch.zeros(batch, dtype=torch.long)
    outs = [[] for _ in range(batch)]
    nbytes = {state.nbytes()}
    while (pos < x_len).any():
        take = []
        for b in range(batch):
            n = int(torch.randint(0, 7, (1,), generator=gen)) if sizes[b] == "random" else sizes[b]
            take.append(min(n, int(x_len[b] - pos[b])))
        chunk = torch.zeros(batch, max(take), IN_DIM)
        for b in range(batch):
            chunk[b, : take[b]] = x[b, pos[b] : pos[b] + take[b]]
        cache_before = state.in_cache.clone()
        y, y_len, new_state = model.stream(chunk, torch.tensor(take), state)
        assert torch.equal(state.in_cache, cache_before)  # states are values
        state = new_state
        nbytes.add(state.nbytes())
        pos += torch.tensor(take)
        for b in range(batch):
            outs[b].append(y[b, : y_len[b]])
    assert len(nbytes) == 1  # fixed-size state
    y, y_len, final_state = model.stream(
        torch.zeros(batch, 0, IN_DIM), torch.zeros(batch, dtype=torch.long), state, final=True
    )
    assert y.shape == (batch, 0, OUT_DIM) and y_len.tolist() == [0] * batch
    return [torch.cat(o) for o in outs], final_state


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
@pytest.mark.parametrize("size", [1, 3, 4, 5, "random"])
def test_stream_equals_forward(kernel_size, size):
    model = _model(kernel_size)
    x, x_len = _batch([23])
    y, y_len = model(x, x_len)
    with torch.no_grad():
        streamed, state = _stream(model, x, x_len, [size])
    assert streamed[0].shape == (int(y_len[0]), OUT_DIM)
    torch.testing.assert_close(streamed[0], y[0], atol=1e-5, rtol=0)
    assert state.num_frames.tolist() == [23]


@pytest.mark.parametrize("sizes", [(1, 3, 4), (5, "random", 2), ("random", "random", "random")])
def test_stream_ragged_batch(sizes):
    model = _model()
    lengths = [29, 10, 3]
    x, x_len = _batch(lengths, seed=5)
    y, y_len = model(x, x_len)
    with torch.no_grad():
        streamed, _ = _stream(model, x, x_len, list(sizes), seed=len(str(sizes)))
    for b in range(3):
        torch.testing.assert_close(streamed[b], y[b, : y_len[b]], atol=1e-5, rtol=0)


def test_stream_final_and_stacking():
    """final=True emits nothing extra; states of streams started at different times stack."""
    model = _model()
    x, x_len = _batch([21, 21], seed=9)
    y, _ = model(x, x_len)
    with torch.no_grad():
        a0, _, sa = model.stream(x[:1, :7], torch.tensor([7]), model.init_state(1))
        b0, _, sb = model.stream(x[1:, :2], torch.tensor([2]), model.init_state(1))
        state = SubsamplingState.stack([sa, sb])
        chunk = torch.stack([x[0, 7:21], x[1, 2:16]])
        rest, rest_len, state = model.stream(chunk, torch.tensor([14, 14]), state, final=True)
    torch.testing.assert_close(torch.cat([a0[0], rest[0, : rest_len[0]]]), y[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.cat([b0[0], rest[1, : rest_len[1]]]), y[1, : output_length(16)], atol=1e-5, rtol=0
    )
    assert state.select([1]).num_frames.tolist() == [16]


def test_wrong_input_raises():
    model = _model()
    with pytest.raises(ValueError, match=r"\(B, T, 80\)"):
        model(torch.zeros(1, 10, 40), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"\(B, T, 80\)"):
        model(torch.zeros(10, 80), torch.tensor([10]))
    with pytest.raises(ValueError, match="x_len"):
        model(torch.zeros(2, 10, 80), torch.tensor([10]))
    with pytest.raises(ValueError, match="x_len"):
        model(torch.zeros(1, 10, 80), torch.tensor([11]))
    with pytest.raises(ValueError, match="state holds 2"):
        model.stream(torch.zeros(1, 4, 80), torch.tensor([4]), model.init_state(2))
    with pytest.raises(ValueError, match="too small"):
        Conv2dSubsampling(4, 8, SubsamplingConfig(4, 3))
