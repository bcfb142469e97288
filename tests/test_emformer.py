"""Emformer: parallel forward against a naive per-segment reference, streaming == parallel over
a grid of configurations and chunkings, causality, padding, bounded state, stacking, errors."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from echostream.config import EmformerConfig
from echostream.models.emformer import Emformer, EmformerState

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make(seed: int = 0, **overrides) -> Emformer:
    fields = dict(
        d_model=D,
        num_layers=2,
        num_heads=2,
        ffn_dim=32,
        dropout=0.0,
        segment_length=4,
        left_context_length=3,
        right_context_length=1,
        memory_size=2,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = Emformer(EmformerConfig(**fields)).eval()
    with torch.no_grad():  # larger weights than the default init, so that every path matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def inputs(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), D, generator=g)
    return x, torch.tensor(lengths)


def stream_all(
    model: Emformer,
    x: torch.Tensor,
    x_len: torch.Tensor,
    chunk: int | str,
    seed: int = 0,
    state: EmformerState | None = None,
) -> list[torch.Tensor]:
    """Feed each stream its own frames in chunks (``"random"``: ragged sizes per stream and
    call, zeros included), then flush; returns the concatenated outputs of each stream."""
    rng = random.Random(seed)
    b, seg = x.shape[0], model.cfg.segment_length
    state = model.init_state(b) if state is None else state
    pos, outs = [0] * b, [[] for _ in range(b)]
    lengths = x_len.tolist()
    while True:
        sizes = [
            min(chunk if chunk != "random" else rng.randint(0, 2 * seg + 2), n - p)
            for p, n in zip(pos, lengths, strict=True)
        ]
        final = all(p + s >= n for p, s, n in zip(pos, sizes, lengths, strict=True))
        chunk_x = torch.zeros(b, max(sizes), x.shape[2])
        for i in range(b):
            chunk_x[i, : sizes[i]] = x[i, pos[i] : pos[i] + sizes[i]]
            pos[i] += sizes[i]
        y, y_len, state = model.stream(chunk_x, torch.tensor(sizes), state, final=final)
        assert y.shape[0] == b and bool((y_len <= y.shape[1]).all())
        for i in range(b):
            assert y[i, y_len[i] :].abs().sum() == 0  # beyond y_len: zero
            outs[i].append(y[i, : y_len[i]])
        if final:
            return [torch.cat(o) for o in outs]


def assert_stream_matches(model: Emformer, lengths: list[int], chunks) -> None:
    x, x_len = inputs(lengths)
    with torch.no_grad():
        ref, ref_len = model(x, x_len)
        assert ref_len.tolist() == lengths
        for chunk in dict.fromkeys(chunks):  # distinct chunkings, in order
            got = stream_all(model, x, x_len, chunk)
            for i, n in enumerate(lengths):
                assert got[i].shape == (n, D), (chunk, i, got[i].shape)
                err = (got[i] - ref[i, :n]).abs().max().item() if n else 0.0
                assert err <= 1e-5, f"chunk={chunk} stream={i}: max error {err:.2e}"


# ---------------------------------------------------------------------- naive reference


def naive_forward(model: Emformer, x: torch.Tensor) -> torch.Tensor:
    """One stream x (T, D), written from the module docstring's definition, segment by
    segment with explicit key lists and a hand-written softmax."""
    cfg = model.cfg
    seg, ctx, right, mem = (
        cfg.segment_length,
        cfg.left_context_length,
        cfg.right_context_length,
        cfg.memory_size,
    )
    t, d, heads = x.shape[0], cfg.d_model, cfg.num_heads
    bounds = [(s, min(s + seg, t)) for s in range(0, t, seg)]
    main = x.clone()
    rights = [x[e : min(e + right, t)] if e - s == seg else x[:0] for s, e in bounds]
    memory = [x[s:e].mean(0) for s, e in bounds]  # layer 0: mean of each input segment

    def attend(layer, q_rows, kv_rows):
        w, bias = layer.in_proj.weight, layer.in_proj.bias
        q = q_rows @ w[:d].T + bias[:d]
        k = kv_rows @ w[d : 2 * d].T + bias[d : 2 * d]
        v = kv_rows @ w[2 * d :].T + bias[2 * d :]
        dh = d // heads
        out = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
            out.append(torch.softmax(scores, dim=-1) @ v[:, sl])
        return layer.out_proj(torch.cat(out, dim=1))

    for li, layer in enumerate(model.layers):
        summary = mem > 0 and li < cfg.num_layers - 1
        normed = layer.attn_norm(main)
        new_main, new_rights, new_memory = main.clone(), [], []
        for i, (s, e) in enumerate(bounds):
            rn = layer.attn_norm(rights[i])
            # keys: [memory; left context; segment; right context] (raw rows, projected once)
            mem_rows = torch.stack(memory[max(0, i - mem) : i]) if mem and i else x[:0]
            kv_rows = torch.cat([normed[max(0, s - ctx) : e], rn])
            out = attend(layer, torch.cat([normed[s:e], rn]), torch.cat([mem_rows, kv_rows]))
            new_main[s:e] = main[s:e] + out[: e - s]
            new_rights.append(rights[i] + out[e - s :])
            if summary:  # the summary query does not see memory
                s_out = attend(layer, normed[s:e].mean(0, keepdim=True), kv_rows)[0]
                new_memory.append(s_out.clamp(-cfg.memory_clamp, cfg.memory_clamp))
        main, rights, memory = new_main, new_rights, new_memory
        if layer.conv is not None:
            conv, k1 = layer.conv, cfg.conv_kernel_size - 1
            u = conv.glu(main)
            u_pad = torch.cat([u.new_zeros(k1, d), u])
            y = conv.conv_valid(u_pad[None])[0]
            new_rights = []
            for i, (_, e) in enumerate(bounds):  # right context continues its segment
                if not len(rights[i]):
                    new_rights.append(rights[i])
                    continue
                y_r = conv.conv_valid(torch.cat([u_pad[e : e + k1], conv.glu(rights[i])])[None])
                new_rights.append(rights[i] + conv.tail(y_r[0]))
            main, rights = main + conv.tail(y), new_rights

        def ffn(r, layer=layer):
            return layer.ffn_out(layer.activation(layer.ffn_in(layer.ffn_norm(r))))

        main = main + ffn(main)
        rights = [r + ffn(r) for r in rights]
    return model.final_norm(main)


@pytest.mark.parametrize(
    ("seg", "ctx", "right", "mem", "conv", "layers"),
    [
        (4, 3, 2, 2, 3, 3),
        (3, 5, 0, 1, 0, 2),
        (2, 0, 4, 3, 4, 2),
        (4, 30, 1, 8, 0, 3),
        (1, 2, 1, 0, 2, 1),
    ],
)
def test_forward_matches_naive_definition(seg, ctx, right, mem, conv, layers):
    model = make(
        segment_length=seg,
        left_context_length=ctx,
        right_context_length=right,
        memory_size=mem,
        conv_kernel_size=conv,
        num_layers=layers,
    )
    lengths = [23, 14, 1]
    x, x_len = inputs(lengths)
    with torch.no_grad():
        y, _ = model(x, x_len)
        for i, n in enumerate(lengths):
            ref = naive_forward(model, x[i, :n])
            torch.testing.assert_close(y[i, :n], ref, atol=1e-5, rtol=0)
            assert y[i, n:].abs().sum() == 0


# ---------------------------------------------------------------------- streaming == parallel

GRID = list(itertools.product([1, 2, 4, 8], [0, 3, 30], [0, 1, 4], [0, 1, 8]))


@pytest.mark.parametrize(("seg", "ctx", "right", "mem"), GRID)
def test_stream_equals_forward(seg, ctx, right, mem):
    # the conv module alternates over the grid so that every axis value is seen with and
    # without it; test_stream_equals_forward_with_conv covers it on every chunking
    conv = 3 if (seg + ctx + right + mem) % 2 else 0
    model = make(
        segment_length=seg,
        left_context_length=ctx,
        right_context_length=right,
        memory_size=mem,
        conv_kernel_size=conv,
    )
    long = max(ctx, mem * seg) + seg + right + 3  # left context and memory fill up
    lengths = [long, seg + 2, 1]  # not multiples of L (for L > 1), one shorter than R
    assert_stream_matches(model, lengths, [1, 3, seg, 2 * seg + 1, "random"])


@pytest.mark.parametrize("conv", [2, 5])
@pytest.mark.parametrize(("seg", "right"), [(1, 4), (2, 1), (4, 0), (3, 2)])
def test_stream_equals_forward_with_conv(seg, right, conv):
    model = make(
        num_layers=3,
        segment_length=seg,
        right_context_length=right,
        conv_kernel_size=conv,
        left_context_length=3,
        memory_size=2,
    )
    assert_stream_matches(model, [19, 6, 2], [1, 3, seg, 2 * seg + 1, "random"])


def test_stream_per_stream_final_and_empty_streams():
    model = make()
    x, x_len = inputs([9, 0, 5])
    with torch.no_grad():
        ref, _ = model(x, x_len)
        state = model.init_state(3)
        y, y_len, state = model.stream(x, x_len, state, final=torch.tensor([True, True, False]))
        assert y_len.tolist() == [9, 0, 4]  # stream 2 keeps frame 4 (no right context yet)
        torch.testing.assert_close(y[0, :9], ref[0, :9], atol=1e-5, rtol=0)
        torch.testing.assert_close(y[2, :4], ref[2, :4], atol=1e-5, rtol=0)
        y, y_len, _ = model.stream(x[:, :0], torch.zeros(3, dtype=torch.long), state, final=True)
        assert y_len.tolist() == [0, 0, 1]
        torch.testing.assert_close(y[2, :1], ref[2, 4:5], atol=1e-5, rtol=0)


def test_only_final_outputs_are_returned():
    model = make(segment_length=4, right_context_length=2)
    x, _ = inputs([13])
    with torch.no_grad():
        state = model.init_state(1)
        seen = []
        for n in range(13):
            _, y_len, state = model.stream(x[:, n : n + 1], torch.tensor([1]), state)
            seen.append(int(y_len))
        # segment i needs frames up to 4i + 4 + 2; nothing more is released before final
        assert [i + 1 for i, n in enumerate(seen) if n] == [6, 10]
        assert sum(seen) == 8
        _, y_len, state = model.stream(x[:, :0], torch.tensor([0]), state, final=True)
        assert int(y_len) == 5 and int(state.pending_len) == 0


# ---------------------------------------------------------------------- causality, padding


def test_segment_level_causality_without_right_context():
    model = make(segment_length=4, right_context_length=0, conv_kernel_size=3, memory_size=2)
    x, x_len = inputs([26])
    with torch.no_grad():
        y, _ = model(x, x_len)
        for t in (8, 11, 17):
            x2 = x.clone()
            x2[:, t:] += torch.randn_like(x2[:, t:])
            y2, _ = model(x2, x_len)
            done = t // 4 * 4  # segments ending at or before t
            assert torch.equal(y2[:, :done], y[:, :done])
            # the segment holding frame t changes everywhere: attention within it is full
            assert not torch.allclose(y2[:, done : done + 1], y[:, done : done + 1])


@pytest.mark.parametrize("right", [1, 3])
def test_right_context_bounds_look_ahead(right):
    model = make(segment_length=4, right_context_length=right, conv_kernel_size=2)
    x, x_len = inputs([30])
    with torch.no_grad():
        y, _ = model(x, x_len)
        for i in range(4):
            end = 4 * i + 4
            x2 = x.clone()
            x2[:, end + right :] += torch.randn_like(x2[:, end + right :])
            y2, _ = model(x2, x_len)
            assert torch.equal(y2[:, :end], y[:, :end])
            x3 = x.clone()
            x3[:, end + right - 1] += torch.randn(D)  # the last right-context frame is seen
            y3, _ = model(x3, x_len)
            assert not torch.allclose(y3[:, end - 4 : end], y[:, end - 4 : end])


def test_padding_never_leaks():
    model = make(conv_kernel_size=3, right_context_length=2)
    x, x_len = inputs([17, 6, 11])
    with torch.no_grad():
        y, _ = model(x, x_len)
        noisy = x.clone()
        for i, n in enumerate(x_len.tolist()):
            noisy[i, n:] = torch.randn_like(noisy[i, n:]) * 1e4
        noisy[1, 9] = float("nan")
        y2, _ = model(noisy, x_len)
        assert torch.equal(y, y2)
        for i, n in enumerate(x_len.tolist()):
            assert y[i, n:].abs().sum() == 0
            alone, _ = model(x[i : i + 1, :n], x_len[i : i + 1])
            torch.testing.assert_close(y[i, :n], alone[0], atol=1e-5, rtol=0)
        # garbage beyond x_len in streamed chunks does not leak either
        state = model.init_state(3)
        out, out_len, _ = model.stream(noisy, x_len, state, final=True)
        torch.testing.assert_close(out[:, :17], y, atol=1e-5, rtol=0)
        assert torch.equal(out_len, x_len)


def test_training_forward_backward():
    model = make(dropout=0.1, conv_kernel_size=3, right_context_length=2).train()
    x, x_len = inputs([17, 9])
    x.requires_grad_(True)
    y, _ = model(x, x_len)
    y.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().sum() > 0
    assert x.grad[1, 9:].abs().sum() == 0  # no gradient into padding
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------- state


def test_state_stays_bounded():
    model = make(
        d_model=8,
        num_layers=1,
        ffn_dim=8,
        segment_length=16,
        left_context_length=4,
        memory_size=2,
        conv_kernel_size=3,
        right_context_length=1,
    )
    state = model.init_state(1)
    chunk = torch.randn(1, 500, 8)
    with torch.no_grad():
        _, _, state = model.stream(chunk[:, :250], torch.tensor([250]), state)
        after_10s = state.nbytes()
        shapes = {k: v.shape for k, v in vars(state).items()}
        for _ in range(30):  # 15,000 more frames: 10 minutes of 40 ms frames
            _, _, state = model.stream(chunk, torch.tensor([500]), state)
    assert int(state.frames_done) + int(state.pending_len) == 15250
    assert int(state.segments_done) == int(state.frames_done) // 16
    assert state.nbytes() == after_10s
    assert {k: v.shape for k, v in vars(state).items()} == shapes


def test_reference_state_size():
    model = Emformer(EmformerConfig())
    state = model.init_state(2)
    # left-context K|V: 16 layers x 30 x 512; memory K|V: 16 x 8 x 512; pending input:
    # 4 x 256; counters: 3 int64
    per_stream = 4 * (16 * 30 * 512 + 16 * 8 * 512 + 4 * 256) + 3 * 8
    assert state.nbytes() == 2 * per_stream
    assert all(v.shape[0] == 2 for v in vars(state).values())


def test_stack_streams_started_at_different_times():
    model = make(right_context_length=2, conv_kernel_size=3)
    x, _ = inputs([30, 21], seed=3)
    with torch.no_grad():
        ref_a, _ = model(x[:1, :30], torch.tensor([30]))
        ref_b, _ = model(x[1:, :21], torch.tensor([21]))
        # stream a alone for 11 frames, then b joins; 9 frames each, then split again
        ya, la, sa = model.stream(x[:1, :11], torch.tensor([11]), model.init_state(1))
        both = EmformerState.stack([sa, model.init_state(1)])
        chunk = torch.stack([x[0, 11:20], x[1, :9]])
        yab, lab, both = model.stream(chunk, torch.tensor([9, 9]), both)
        sa, sb = both.unstack()
        ya2, la2, _ = model.stream(x[:1, 20:30], torch.tensor([10]), sa, final=True)
        yb2, lb2, _ = model.stream(x[1:, 9:21], torch.tensor([12]), sb, final=True)
    out_a = torch.cat([ya[0, : la[0]], yab[0, : lab[0]], ya2[0, : la2[0]]])
    out_b = torch.cat([yab[1, : lab[1]], yb2[0, : lb2[0]]])
    torch.testing.assert_close(out_a, ref_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_b, ref_b[0], atol=1e-5, rtol=0)


def test_stream_keeps_no_autograd_graph():
    model = make()  # parameters require grad; stream is inference only
    x, x_len = inputs([9])
    y, _, state = model.stream(x, x_len, model.init_state(1))
    assert not y.requires_grad
    assert not any(v.requires_grad for v in vars(state).values())


def test_stream_does_not_mutate_its_state():
    model = make(conv_kernel_size=3)
    x, _ = inputs([13, 7])
    with torch.no_grad():
        _, _, state = model.stream(x[:, :6], torch.tensor([6, 5]), model.init_state(2))
        before = {k: v.clone() for k, v in vars(state).items()}
        y1, l1, s1 = model.stream(x[:, 6:], torch.tensor([7, 2]), state, final=True)
        y2, l2, s2 = model.stream(x[:, 6:], torch.tensor([7, 2]), state, final=True)
    assert all(torch.equal(before[k], v) for k, v in vars(state).items())
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert all(torch.equal(vars(s1)[k], v) for k, v in vars(s2).items())


# ---------------------------------------------------------------------- errors, memory


def test_wrong_input_raises_clear_errors():
    model = make()
    x, x_len = inputs([5, 3])
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model(x[:, :, 0], x_len)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model(torch.zeros(2, 5, 8), x_len)
    with pytest.raises(ValueError, match="x_len must be in"):
        model(x, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="x_len must be a tensor of shape"):
        model(x, torch.tensor([5]))
    with pytest.raises(ValueError, match="integers"):
        model(x, x_len.float())
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model.stream(x[0], x_len, state)
    with pytest.raises(ValueError, match="x_len must be in"):
        model.stream(x, torch.tensor([5, -1]), state)
    with pytest.raises(ValueError, match="state holds 2 streams"):
        model.stream(x[:1], x_len[:1], state)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0
        self.sdpa_masks: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_forward_never_builds_a_dense_time_by_time_tensor():
    # reference lengths (L 4, C 30, M 8) on a small width, 60 s of 40 ms frames
    model = make(
        segment_length=4,
        left_context_length=30,
        memory_size=8,
        right_context_length=0,
        num_layers=2,
    )
    t = 1500
    x = torch.randn(1, t, D)
    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(tuple(attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    with torch.no_grad(), _LargestTensor() as mode, pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "scaled_dot_product_attention", spy)
        model(x, torch.tensor([t]))
    n = t // 4
    assert masks[0] == (n, 1, 4 + 1, 8 + 30 + 4)  # one small block per segment
    # every intermediate is O(T (M + C + L + R)) -- far below T x T elements
    assert mode.largest <= n * (8 + 30 + 4) * D < t * t / 8


def _peak_bytes(fn) -> int:
    """Peak bytes of CPU tensors allocated while ``fn`` runs (profiler memory events)."""
    with torch.profiler.profile(profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


@pytest.mark.slow
def test_forward_peak_memory_reference_config():
    """Peak memory of ``forward`` on 16 s and 60 s (400 and 1500 frames), reference config;
    prints the numbers. Memory grows linearly with T (a dense mask would grow as T²)."""
    model = Emformer(EmformerConfig(dropout=0.0))
    peaks = {}
    for t in (400, 1500):
        x, x_len = torch.randn(1, t, 256), torch.tensor([t])

        def infer(x=x, x_len=x_len):
            with torch.no_grad():
                model(x, x_len)

        def train(x=x, x_len=x_len):
            model(x, x_len)[0].sum().backward()

        peaks[t] = (_peak_bytes(infer), _peak_bytes(train))
        print(
            f"T={t}: forward (no grad) {peaks[t][0] / 2**20:.1f} MiB, "
            f"forward + backward {peaks[t][1] / 2**20:.1f} MiB"
        )
    for mode in (0, 1):
        assert peaks[1500][mode] / peaks[400][mode] < 1.2 * 1500 / 400
    assert peaks[1500][0] < 128 * 2**20
