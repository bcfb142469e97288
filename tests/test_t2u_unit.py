"""T2U encoder and non-autoregressive unit decoder: incremental == parallel, causality,
padding, unit collapse, state stacking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from echostream.config import TransformerDecoderConfig, UnitDecoderConfig
from echostream.models.ctc import CTCGreedyState, greedy_ctc_stream, ids_to_lists
from echostream.models.t2u import T2UEncoder, T2UState
from echostream.models.unit_decoder import UNIT_ID_OFFSET, UnitDecoder, UnitDecoderState

UNITS, RATE = 10, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_t2u(layers: int, d_in: int) -> T2UEncoder:
    torch.manual_seed(0)
    cfg = TransformerDecoderConfig(
        num_layers=layers, d_model=32, num_heads=4, ffn_dim=64, dropout=0.0
    )
    return T2UEncoder(cfg, d_in).eval()


def make_units(layers: int, d_in: int) -> UnitDecoder:
    torch.manual_seed(0)
    cfg = UnitDecoderConfig(
        num_layers=layers, d_model=32, num_heads=4, ffn_dim=64, dropout=0.0, upsample_rate=RATE
    )
    return UnitDecoder(cfg, UNITS, d_in).eval()


def run_stream(module, x, lengths, seed):
    """Feed x (B, T, D) in random ragged chunks (0..3 positions); concatenated outputs."""
    gen = torch.Generator().manual_seed(seed)
    state = module.init_state(x.shape[0])
    pos = torch.zeros_like(lengths)
    outs: list[list[torch.Tensor]] = [[] for _ in range(x.shape[0])]
    while bool((pos < lengths).any()):
        n = torch.minimum(torch.randint(0, 4, lengths.shape, generator=gen), lengths - pos)
        chunk = x.new_zeros(x.shape[0], int(n.max()), x.shape[2])
        for b in range(x.shape[0]):
            chunk[b, : n[b]] = x[b, pos[b] : pos[b] + n[b]]
        pos = pos + n
        y, y_len, state = module.stream(chunk, n, state)
        for b in range(x.shape[0]):
            outs[b].append(y[b, : y_len[b]])
    return [torch.cat(o) for o in outs], state


# --------------------------------------------------------------------------- T2U


@pytest.mark.parametrize(("layers", "d_in"), [(2, 32), (2, 24), (0, 32), (0, 24)])
def test_t2u_stream_equals_forward(layers, d_in):
    t2u = make_t2u(layers, d_in)
    h = torch.randn(3, 9, d_in)
    h_len = torch.tensor([9, 5, 1])
    ref, ref_len = t2u(h, h_len)
    assert ref.shape == (3, 9, 32) and torch.equal(ref_len, h_len)
    outs, state = run_stream(t2u, h, h_len, seed=layers + d_in)
    for b, n in enumerate(h_len.tolist()):
        torch.testing.assert_close(outs[b], ref[b, :n], atol=1e-5, rtol=0)
    assert torch.equal(state.length, h_len)
    if layers == 0 and d_in == 32:
        assert all(torch.equal(ref[b, :n], h[b, :n]) for b, n in enumerate(h_len.tolist()))


def test_t2u_is_causal_and_padding_never_leaks():
    t2u = make_t2u(2, 32)
    h = torch.randn(2, 7, 32)
    h_len = torch.tensor([7, 4])
    ref, _ = t2u(h, h_len)
    later = h.clone()
    later[:, 4] += torch.randn(32)  # (not a constant: LayerNorm would cancel it)
    out, _ = t2u(later, h_len)
    assert torch.equal(out[0, :4], ref[0, :4]) and not torch.allclose(out[0, 4:], ref[0, 4:])
    assert torch.equal(out[1, :4], ref[1, :4])  # position 4 of stream 1 is padding
    noisy = h.clone()
    noisy[1, 4:] = float("nan")
    out, _ = t2u(noisy, h_len)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1, :4], ref[1, :4])


def test_t2u_states_stack():
    t2u = make_t2u(2, 32)
    h = torch.randn(2, 8, 32)
    s0 = t2u.stream(h[:1, :5], torch.tensor([5]), t2u.init_state(1))[2]
    s1 = t2u.stream(h[1:, :2], torch.tensor([2]), t2u.init_state(1))[2]
    both = T2UState.stack([s0, s1])
    out, _, _ = t2u.stream(torch.stack([h[0, 5:8], h[1, 2:5]]), torch.tensor([3, 3]), both)
    ref0, _ = t2u(h[:1], torch.tensor([8]))
    ref1, _ = t2u(h[1:, :5], torch.tensor([5]))
    torch.testing.assert_close(out[0], ref0[0, 5:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], ref1[0, 2:5], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- unit decoder


@pytest.mark.parametrize(("layers", "d_in"), [(2, 32), (2, 24), (0, 32)])
def test_unit_decoder_stream_equals_forward(layers, d_in):
    units = make_units(layers, d_in)
    t2u = torch.randn(3, 8, d_in)
    t2u_len = torch.tensor([8, 5, 1])
    ref, frame_len = units(t2u, t2u_len)
    assert ref.shape == (3, 8 * RATE, UNITS + 1)
    assert frame_len.tolist() == [24, 15, 3]
    outs, state = run_stream(units, t2u, t2u_len, seed=7 + layers)
    for b, n in enumerate(frame_len.tolist()):
        assert outs[b].shape[0] == n
        torch.testing.assert_close(outs[b], ref[b, :n], atol=1e-5, rtol=0)
    assert torch.equal(state.num_positions, t2u_len)
    if layers:
        assert state.self_k.shape[3] == 24 and state.mem_k.shape[3] == 8


def test_unit_frames_of_a_position_never_depend_on_later_positions():
    units = make_units(2, 32)
    t2u = torch.randn(1, 6, 32)
    lens = torch.tensor([6])
    ref, _ = units(t2u, lens)
    later = t2u.clone()
    later[0, 3] += torch.randn(32)
    out, _ = units(later, lens)
    assert torch.equal(out[0, : 3 * RATE], ref[0, : 3 * RATE])
    assert not torch.allclose(out[0, 3 * RATE : 4 * RATE], ref[0, 3 * RATE : 4 * RATE])
    # and the upsampled frames of one position differ (positions are added per frame)
    assert not torch.allclose(ref[0, 0], ref[0, 1])


def test_unit_decoder_padding_never_leaks():
    units = make_units(2, 32)
    t2u = torch.randn(3, 5, 32)
    lens = torch.tensor([5, 3, 1])
    ref, frame_len = units(t2u, lens)
    noisy = t2u.clone()
    noisy[1, 3:] = float("nan")
    noisy[2, 1:] = 1e4
    out, _ = units(noisy, lens)
    for b, n in enumerate(frame_len.tolist()):
        assert torch.equal(out[b, :n], ref[b, :n])
    a, a_len, _ = units.stream(t2u, lens, units.init_state(3))
    c, _, _ = units.stream(noisy, lens, units.init_state(3))
    for b, n in enumerate(a_len.tolist()):
        assert torch.equal(a[b, :n], c[b, :n])


def test_unit_decoder_states_stack():
    units = make_units(2, 24)
    t2u = torch.randn(2, 7, 24)
    s0 = units.stream(t2u[:1, :4], torch.tensor([4]), units.init_state(1))[2]
    s1 = units.stream(t2u[1:, :1], torch.tensor([1]), units.init_state(1))[2]
    both = UnitDecoderState.stack([s0, s1])
    out, n, _ = units.stream(torch.stack([t2u[0, 4:6], t2u[1, 1:3]]), torch.tensor([2, 2]), both)
    ref0, _ = units(t2u[:1, :6], torch.tensor([6]))
    ref1, _ = units(t2u[1:, :3], torch.tensor([3]))
    torch.testing.assert_close(out[0], ref0[0, 4 * RATE :], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], ref1[0, RATE:], atol=1e-5, rtol=0)
    assert n.tolist() == [2 * RATE, 2 * RATE]


def test_units_greedy_collapse_golden_and_incremental():
    # classes: 0 blank, unit u = class u + 1
    classes = torch.tensor([[0, 4, 4, 0, 4, 1, 1, 10, 0], [3, 3, 3, 0, 0, 0, 0, 0, 0]])
    logits = F.one_hot(classes, UNITS + 1).float()
    ids, counts = UnitDecoder.units(logits, torch.tensor([9, 3]))
    assert ids_to_lists(ids, counts) == [[3, 3, 0, 9], [2]]
    # stream the same frames in pieces: same units
    state = CTCGreedyState.initial(2)
    for lo, hi in ((0, 2), (2, 5), (5, 9)):
        n = torch.tensor([hi - lo, max(0, min(3, hi) - lo)])
        _, _, state = greedy_ctc_stream(logits[:, lo:hi], n, state, UNIT_ID_OFFSET)
    assert ids_to_lists(state.tokens, state.num_tokens) == [[3, 3, 0, 9], [2]]


@pytest.mark.parametrize("attention_dropout", [0.0, 0.5])
def test_attention_dropout_is_its_own_setting(attention_dropout):
    """In training mode with dropout 0, only attention_dropout makes two passes differ."""
    torch.manual_seed(0)
    cfg = UnitDecoderConfig(
        num_layers=1,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        dropout=0.0,
        attention_dropout=attention_dropout,
        upsample_rate=RATE,
    )
    decoder = UnitDecoder(cfg, UNITS, 16).train()
    x, lengths = torch.randn(2, 5, 16), torch.tensor([5, 3])
    first, second = decoder(x, lengths)[0], decoder(x, lengths)[0]
    assert torch.equal(first, second) == (attention_dropout == 0.0)
