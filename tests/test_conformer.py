"""ChunkConformer (StreamSpeech baseline): streaming == parallel, chunk causality, padding,
state semantics, relative-position attention against a naive reference, error paths."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from echostream.config import ConformerConfig
from echostream.models.conformer import (
    ChunkConformer,
    ConformerCachedState,
    ConformerRecomputeState,
    RelPositionAttention,
    _rel_positions,
    sinusoidal_relative_table,
)
from echostream.state import StreamState

D = 16
MAX_REL = 6  # small, so that clipping of relative distances is exercised
LENGTHS = [19, 7, 13]  # not multiples of the chunk sizes 2, 4, 8


def make_model(chunk_size: int = 4, seed: int = 0) -> ChunkConformer:
    torch.manual_seed(seed)
    cfg = ConformerConfig(
        d_model=D, num_layers=2, num_heads=2, ffn_dim=32, conv_kernel_size=5,
        chunk_size=chunk_size, max_relative_position=MAX_REL, dropout=0.0,
    )  # fmt: skip
    return ChunkConformer(cfg).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def model() -> ChunkConformer:
    return make_model()


def make_batch(lengths=LENGTHS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), D, generator=g)
    x_len = torch.tensor(lengths)
    return x.masked_fill(~(torch.arange(x.shape[1]) < x_len[:, None])[..., None], 0.0), x_len


def feed_sizes(kind: str, chunk: int, rng: random.Random) -> int:
    return {"1": 1, "3": 3, "chunk": chunk, "2chunk+1": 2 * chunk + 1}.get(
        kind, rng.randint(0, 2 * chunk + 1)
    )


def run_stream(model, x, x_len, state, kind: str, chunk: int, seed: int = 0):
    """Feed each stream in pieces (ragged: per-stream sizes, finished streams get 0 frames);
    returns per-stream concatenated outputs and checks that only complete chunks come out."""
    rng = random.Random(seed)
    B = x.shape[0]
    pos = torch.zeros(B, dtype=torch.long)
    outs: list[list[torch.Tensor]] = [[] for _ in range(B)]
    emitted = torch.zeros(B, dtype=torch.long)
    while True:
        n = torch.tensor([feed_sizes(kind, chunk, rng) for _ in range(B)])
        n = torch.minimum(n, x_len - pos)
        final = bool((pos + n >= x_len).all())
        piece = torch.zeros(B, int(n.max()), D)
        for b in range(B):
            piece[b, : n[b]] = x[b, pos[b] : pos[b] + n[b]]
        y, y_len, state = model.stream(piece, n, state, final=final)
        assert y.shape[0] == B and y.shape[1] == int(y_len.max())
        pos += n
        emitted += y_len
        expected = x_len if final else pos // chunk * chunk
        assert torch.equal(emitted, expected), (emitted, expected)
        for b in range(B):
            outs[b].append(y[b, : y_len[b]])
            assert not y[b, y_len[b] :].any()  # padding of the output is zero
        if final:
            return [torch.cat(o) for o in outs], state


# --------------------------------------------------------------------------- streaming == parallel


@pytest.mark.parametrize("mode", ["cached", "recompute"])
@pytest.mark.parametrize("chunk", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["1", "3", "chunk", "2chunk+1", "random"])
def test_stream_equals_forward(model, mode, chunk, kind):
    x, x_len = make_batch()
    with torch.no_grad():
        y, _ = model(x, x_len, chunk_size=chunk)
        state = model.init_state(3, mode, chunk_size=chunk)
        outs, _ = run_stream(model, x, x_len, state, kind, chunk, seed=chunk)
    for b in range(3):
        torch.testing.assert_close(outs[b], y[b, : x_len[b]], atol=1e-5, rtol=0)


def test_stream_default_chunk_is_config_chunk(model):
    x, x_len = make_batch()
    with torch.no_grad():
        y, _ = model(x, x_len)  # cfg.chunk_size = 4
        outs, _ = run_stream(model, x, x_len, model.init_state(3), "3", 4)
    for b in range(3):
        torch.testing.assert_close(outs[b], y[b, : x_len[b]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["cached", "recompute"])
def test_stream_whole_input_at_once_and_empty_calls(model, mode):
    x, x_len = make_batch()
    with torch.no_grad():
        y, _ = model(x, x_len)
        state = model.init_state(3, mode)
        y0, y0_len, state = model.stream(x[:, :0], torch.zeros(3, dtype=torch.long), state)
        assert y0.shape == (3, 0, D) and not y0_len.any()
        y1, y1_len, state = model.stream(x, x_len, state)
        assert y1_len.tolist() == [16, 4, 12]
        y2, y2_len, _ = model.stream(x[:, :0], torch.zeros(3, dtype=torch.long), state, final=True)
        assert y2_len.tolist() == [3, 3, 1]
    for b in range(3):
        out = torch.cat([y1[b, : y1_len[b]], y2[b, : y2_len[b]]])
        torch.testing.assert_close(out, y[b, : x_len[b]], atol=1e-5, rtol=0)


def test_cached_state_holds_every_past_frame(model):
    x, x_len = make_batch()
    with torch.no_grad():
        _, _, state = model.stream(x, x_len, model.init_state(3))
    assert isinstance(state, ConformerCachedState)
    assert state.processed.tolist() == [16, 4, 12]
    assert state.pending_len.tolist() == [3, 3, 1]
    assert state.keys.shape == (3, 2, 2, 16, D // 2)  # (B, L, H, T, d_k), left-aligned
    assert not state.keys[1, :, :, 4:].any() and not state.values[2, :, :, 12:].any()
    assert state.conv.shape == (3, 2, 4, D)  # k - 1 = 4 frames per layer


# --------------------------------------------------------------------------- masks


def test_chunk_causality(model):
    x, x_len = make_batch([19])
    for t in (4, 8, 12):  # chunk boundaries for chunk_size 4
        x2 = x.clone()
        x2[:, t:] += torch.randn_like(x2[:, t:])
        with torch.no_grad():
            y, _ = model(x, x_len)
            y2, _ = model(x2, x_len)
        assert torch.equal(y[:, :t], y2[:, :t])
        assert not torch.allclose(y[:, t:], y2[:, t:])
    # Inside a chunk, a frame sees the later frames of its own chunk.
    x3 = x.clone()
    x3[:, 6] += 1.0
    with torch.no_grad():
        y3, _ = model(x3, x_len)
    assert torch.equal(y[:, :4], y3[:, :4]) and not torch.allclose(y[:, 4:6], y3[:, 4:6])


def test_full_attention_differs_from_chunked_and_equals_large_chunk(model):
    x, x_len = make_batch()
    with torch.no_grad():
        full, _ = model(x, x_len, chunk_size=0)
        chunked, _ = model(x, x_len, chunk_size=4)
        large, _ = model(x, x_len, chunk_size=x.shape[1])
        larger, _ = model(x, x_len, chunk_size=100)
    assert (full - chunked).abs().max() > 1e-2
    torch.testing.assert_close(large, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(larger, full, atol=1e-6, rtol=0)
    # Without a chunk mask, the last frame changes the first output.
    x2 = x.clone()
    x2[0, 18] += 1.0
    with torch.no_grad():
        full2, _ = model(x2, x_len, chunk_size=0)
    assert not torch.allclose(full[0, 0], full2[0, 0])


@pytest.mark.parametrize("chunk", [0, 4])
def test_padding_never_leaks(model, chunk):
    x, x_len = make_batch()
    garbage = x.clone()
    pad = ~(torch.arange(x.shape[1]) < x_len[:, None])
    garbage[pad] = 1e3 * torch.randn(int(pad.sum()), D)
    with torch.no_grad():
        y, y_len = model(x, x_len, chunk_size=chunk)
        y2, _ = model(garbage, x_len, chunk_size=chunk)
        singles = [model(x[b : b + 1, : x_len[b]], x_len[b : b + 1], chunk)[0] for b in range(3)]
    assert torch.equal(y_len, x_len)
    assert torch.equal(y, y2)
    assert not y[pad].any()
    for b in range(3):
        torch.testing.assert_close(y[b, : x_len[b]], singles[b][0], atol=1e-5, rtol=0)


def test_empty_stream_in_batch_gives_no_nan(model):
    x, _ = make_batch()
    x_len = torch.tensor([19, 0, 13])
    with torch.no_grad():
        y, _ = model(x, x_len)
        for mode in ("cached", "recompute"):
            ys, ys_len, _ = model.stream(x, x_len, model.init_state(3, mode), final=True)
            assert torch.isfinite(ys).all() and ys_len.tolist() == [19, 0, 13]
            torch.testing.assert_close(ys, y, atol=1e-5, rtol=0)
    assert torch.isfinite(y).all() and not y[1].any()


# --------------------------------------------------------------------------- state semantics


def snapshot(state: StreamState) -> dict:
    return {
        f.name: v.clone() if isinstance(v, torch.Tensor) else v
        for f in dataclasses.fields(state)
        for v in [getattr(state, f.name)]
    }


@pytest.mark.parametrize("mode", ["cached", "recompute"])
def test_stream_does_not_mutate_state(model, mode):
    x, x_len = make_batch()
    with torch.no_grad():
        _, _, state = model.stream(x[:, :6], torch.tensor([6, 5, 6]), model.init_state(3, mode))
        before = snapshot(state)
        y1, l1, _ = model.stream(x[:, 6:], x_len - torch.tensor([6, 5, 6]), state, final=True)
        after = snapshot(state)
        y2, l2, _ = model.stream(x[:, 6:], x_len - torch.tensor([6, 5, 6]), state, final=True)
    assert before.keys() == after.keys()
    for name in before:
        if isinstance(before[name], torch.Tensor):
            assert torch.equal(before[name], after[name]), name
        else:
            assert before[name] == after[name], name
    assert torch.equal(y1, y2) and torch.equal(l1, l2)  # a state is a value: replayable
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.chunk_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("mode", ["cached", "recompute"])
def test_stack_unstack_streams_started_at_different_times(model, mode):
    x, x_len = make_batch([19, 17, 13])
    with torch.no_grad():
        y, _ = model(x, x_len)
        outs: list[list[torch.Tensor]] = [[] for _ in range(3)]
        states = []
        for b, n in enumerate([11, 0, 6]):  # stream 1 has not started yet
            yb, lb, sb = model.stream(
                x[b : b + 1, :n], torch.tensor([n]), model.init_state(1, mode)
            )
            outs[b].append(yb[0, : lb[0]])
            states.append(sb)
        joint = type(states[0]).stack(states)
        assert joint.batch_size == 3
        start = torch.tensor([11, 0, 6])
        n = torch.tensor([5, 9, 3])
        piece = torch.zeros(3, 9, D)
        for b in range(3):
            piece[b, : n[b]] = x[b, start[b] : start[b] + n[b]]
        yj, lj, joint = model.stream(piece, n, joint)
        for b in range(3):
            outs[b].append(yj[b, : lj[b]])
        start += n
        for b, sb in enumerate(joint.unstack()):
            rest = x[b : b + 1, start[b] : x_len[b]]
            yb, lb, _ = model.stream(rest, torch.tensor([rest.shape[1]]), sb, final=True)
            outs[b].append(yb[0, : lb[0]])
    for b in range(3):
        torch.testing.assert_close(torch.cat(outs[b]), y[b, : x_len[b]], atol=1e-5, rtol=0)


def test_states_of_different_chunk_sizes_do_not_stack(model):
    cached, recompute = model.init_state(1, "cached"), model.init_state(1, "recompute")
    assert isinstance(recompute, ConformerRecomputeState)
    with pytest.raises(ValueError, match="cannot stack"):
        ConformerCachedState.stack([cached, model.init_state(1, "cached", chunk_size=2)])


# --------------------------------------------------------------------------- attention maths


def test_sinusoidal_relative_table_golden():
    table = sinusoidal_relative_table(2, 4)  # rows: r = -2 .. 2
    assert table.shape == (5, 4)
    torch.testing.assert_close(table[2], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    w1 = 1e4 ** (-2 / 4)
    expected = torch.tensor([math.sin(1), math.cos(1), math.sin(w1), math.cos(w1)])
    torch.testing.assert_close(table[3], expected)
    torch.testing.assert_close(table[1], expected * torch.tensor([-1.0, 1.0, -1.0, 1.0]))


@pytest.mark.parametrize("num_queries", [1, 9])  # the two orders of position_scores
def test_rel_position_attention_matches_naive_formula(num_queries):
    torch.manual_seed(3)
    attn = RelPositionAttention(D, 2, 0.0).eval()
    max_rel, T = 3, 9
    table = sinusoidal_relative_table(max_rel, D)
    x = torch.randn(2, T, D)
    q, k, v = attn.project(x)
    q = q[:, :, T - num_queries :]
    q_pos = torch.arange(T - num_queries, T)[None]
    k_pos = torch.arange(T)
    allowed = (k_pos // 4 <= q_pos[..., None] // 4)[:, None]  # chunk mask, chunk 4
    pos = _rel_positions(table, max_rel, q_pos, k_pos, allowed, -3, T - 1)
    with torch.no_grad():
        out = attn.attend(q, k, v, pos)
        # Naive ESPnet formula, element by element.
        p = attn.linear_pos(table).view(-1, 2, D // 2)  # (2M + 1, H, d_k)
        scores = torch.empty(2, 2, num_queries, T)
        for i in range(num_queries):
            for j in range(T):
                r = max(-max_rel, min(max_rel, int(q_pos[0, i]) - j)) + max_rel
                ac = ((q[:, :, i] + attn.pos_bias_u) * k[:, :, j]).sum(-1)
                bd = ((q[:, :, i] + attn.pos_bias_v) * p[r]).sum(-1)
                scores[:, :, i, j] = (ac + bd) / math.sqrt(D // 2)
        scores = scores.masked_fill(~allowed, float("-inf"))
        ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, num_queries, D)
        ref = attn.linear_out(ref)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_forward_trains():
    model = make_model().train()
    x, x_len = make_batch()
    y, _ = model(x, x_len, chunk_size=model.sample_chunk_size())
    y.pow(2).sum().backward()
    attn = model.layers[0].self_attn
    for p in (attn.pos_bias_u, attn.pos_bias_v, attn.linear_pos.weight, model.input_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_sample_chunk_size():
    model = make_model()
    assert model.sample_chunk_size() == 4
    model.cfg.train_chunk_sizes = [8, 16, 0]
    rng = random.Random(0)
    assert {model.sample_chunk_size(rng) for _ in range(50)} == {8, 16, 0}


# --------------------------------------------------------------------------- errors


def test_errors(model):
    x, x_len = make_batch()
    with pytest.raises(ValueError, match=r"shape \(batch, time, 16\)"):
        model(x[0], x_len)
    with pytest.raises(ValueError, match=r"shape \(batch, time, 16\)"):
        model(x[..., :8], x_len)
    with pytest.raises(ValueError, match="x_len"):
        model(x, x_len[:2])
    with pytest.raises(ValueError, match="x_len"):
        model(x, x_len + 5)
    with pytest.raises(ValueError, match="chunk_size"):
        model(x, x_len, chunk_size=-1)
    with pytest.raises(ValueError, match="mode"):
        model.init_state(3, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        model.init_state(3, "cached", chunk_size=0)
    state = model.init_state(2)
    with pytest.raises(ValueError, match="streams"):
        model.stream(x, x_len, state)
    with pytest.raises(ValueError, match=r"shape \(batch, time, 16\)"):
        model.stream(x[:2, :, :4], x_len[:2], state)
    with pytest.raises(ValueError, match="Conformer state"):
        model.stream(x[:2], x_len[:2], object())  # type: ignore[arg-type]
