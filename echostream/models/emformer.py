"""Emformer encoder (Shi et al., ICASSP 2021) with exact, batched, ragged streaming.

Lengths are counted in encoder frames (40 ms). Notation: ``L`` segment length, ``C`` left
context, ``R`` right context (look-ahead), ``M`` memory size, ``P = L + R``.

The input is cut into segments of ``L`` frames; segment ``i`` covers frames ``[iL, iL + L)``.
Every segment carries a *hard copy* of its right context: the ``R`` frames ``[iL + L, iL + L +
R)`` go through every layer together with the segment as an extra block (at layer 0 they are
the input frames; at layer ``l > 0`` the right-context output of layer ``l - 1`` for that
segment). The *main stream* of a layer is the segment outputs, frame by frame.

Attention of layer ``l`` for segment ``i`` (one block of queries, one block of keys/values)::

    queries: [segment (L); right context (R); summary (1)]
    keys:    [memory (M); left context (C); segment (L); right context (R)]

* left context: the main-stream keys/values of layer ``l`` for frames ``[iL - C, iL)``;
* memory: the memory vectors of segments ``i - M .. i - 1`` for layer ``l``. At layer 0 the
  memory vector of segment ``j`` is the mean of its input frames; at layer ``l > 0`` it is the
  attention output of layer ``l - 1``'s summary query for segment ``j``, clamped to
  ``±memory_clamp``. Memory never depends on the same layer's output, so all segments of a
  layer are computed in parallel in ``forward``;
* summary query: the mean of segment ``i``'s valid, layer-normed frames (its query is the
  mean of those frames' queries: the projection is affine). It attends to left context,
  segment and right context, not to memory (as torchaudio). The last layer has no summary
  query (nothing would read it);
* within segment + right context attention is full (non-causal): an output frame may depend on
  every frame of its segment and its right context. Causality holds at the segment level:
  with ``R = 0`` the output of segment ``i`` depends only on frames ``< iL + L``; with ``R > 0``
  on at most ``R`` frames beyond the segment.

Key masking: left-context slots before frame 0, memory slots before segment 0, and every frame
at or beyond the stream's length are masked; a partial last segment's summary averages only
its valid frames; outputs at padded positions are zero. A query row with no valid key (only
possible for padding) is given all keys so that no NaN appears; it is never read.

Layers are pre-norm: ``x += Attn(LN(x))``, optionally ``x += Conv(x)``, ``x += FFN(LN(x))``;
a final LayerNorm follows the last layer. The optional convolution module (``conv_kernel_size >
0``) is Conformer-like: LN, pointwise to 2D + GLU, causal depthwise conv, LayerNorm (not
BatchNorm, so streaming is exact), SiLU, pointwise. It runs over the main stream with ``k - 1``
frames of left padding (zeros at the start of a stream, a cache when streaming); the right
context of segment ``i`` is convolved as the continuation of segment ``i``'s main stream.

``forward`` never builds a ``T × T`` mask: keys/values of the main stream are computed once per
layer, padded left by ``C`` and unfolded into one window of ``C + L`` frames per segment; memory
keys are unfolded over segments. Attention runs per segment with
:func:`torch.nn.functional.scaled_dot_product_attention` and a small additive mask of shape
``(B·N, 1, P + 1, M + C + P)`` built once for all layers, so memory is ``O(T · (M + C + L +
R))``. (Reference config, one utterance, peak measured with the profiler: 19 MiB at 16 s and
73 MiB at 60 s without gradients, 288 MiB and 1.05 GiB with backward; torchaudio's dense-mask
forward takes 177 MiB and 1.6 GiB at 60 s.)

``stream`` keeps a fixed-size :class:`EmformerState` per stream: per-layer left-context keys and
values, per-layer memory *keys and values* (each memory vector is projected once, when it is
produced, instead of at every later segment), per-layer convolution caches, and a pending-input
buffer of ``L + R`` frames. A call processes every segment that its input completes — a
segment is complete with its ``R`` right-context frames (or, with ``final=True``, whatever is
left) — all of them at once, layer by layer, with the same layer code as ``forward``: the
caches take the place of the zero padding before the first segment, and the new caches are
the windows ending at each stream's last segment. Segments a stream does not complete in this
call are computed and discarded (a segment never affects earlier ones); streams with nothing
to do keep their state. Outputs equal ``forward``'s, including a partial last segment. Several
segments per call (decision chunks of 320 ms and more) share each read of the weights, which
is what a small matmul on a CPU waits for.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EmformerConfig
from ..state import StreamState

__all__ = ["Emformer", "EmformerState"]


@dataclasses.dataclass(frozen=True)
class EmformerState(StreamState):
    """Streaming state of :class:`Emformer`; every field has a fixed shape (B = streams).

    ``left_kv`` holds the last ``C`` main-stream keys and values of each layer (last dim:
    ``[key | value]``; oldest first, right-aligned: the valid ones are the last
    ``min(C, frames_done)``); ``memory_kv`` the keys and values of the memory vectors of the
    last ``M`` segments (the valid ones are the last ``min(M, segments_done)``); ``conv_cache``
    the last ``k - 1`` depthwise-conv inputs of the main stream; ``pending`` the input frames
    received but not yet consumed by a segment (left-aligned, ``pending_len`` valid).
    """

    left_kv: torch.Tensor  # (B, layers, C, 2D)
    memory_kv: torch.Tensor  # (B, layers, M, 2D)
    conv_cache: torch.Tensor  # (B, layers, k - 1, D); k - 1 = 0 without the conv module
    pending: torch.Tensor  # (B, L + R, D)
    pending_len: torch.Tensor  # (B,) int64
    frames_done: torch.Tensor  # (B,) int64, input frames whose output was returned
    segments_done: torch.Tensor  # (B,) int64


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, S, D) → (N, H, S, D / H)."""
    n, s, d = x.shape
    return x.view(n, s, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, H, S, Dh) → (N, S, H·Dh)."""
    n, h, s, dh = x.shape
    return x.transpose(1, 2).reshape(n, s, h * dh)


def _attention_mask(
    key_valid: torch.Tensor, rows: int, memory_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask (..., 1, rows + 1, K) from key validity (..., K): 0 where a query may
    attend, -inf elsewhere. ``rows`` segment and right-context queries see every valid key,
    the summary query all but the memory slots. Rows with no valid key see every key (only
    padding rows; keeps softmax finite). Built once per call, shared by all layers."""
    main = key_valid.unsqueeze(-2).expand(*key_valid.shape[:-1], rows, key_valid.shape[-1])
    summary = key_valid.clone()
    summary[..., :memory_size] = False
    allowed = torch.cat([main, summary.unsqueeze(-2)], dim=-2)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, float("-inf")).unsqueeze(-3)


class _ConvModule(nn.Module):
    """LN → pointwise (2D) → GLU → causal depthwise conv → LN → SiLU → pointwise → dropout."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float):
        super().__init__()
        self.kernel_size = kernel_size
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def glu(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) → depthwise-conv input (..., D)."""
        x = F.layer_norm(x, x.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        return F.glu(F.linear(x, self.pointwise_in.weight, self.pointwise_in.bias), dim=-1)

    def conv_valid(self, u: torch.Tensor) -> torch.Tensor:
        """Depthwise conv without padding: (N, S, D) → (N, S - k + 1, D)."""
        y = F.conv1d(
            u.transpose(1, 2), self.depthwise.weight, self.depthwise.bias, groups=u.shape[-1]
        )
        return y.transpose(1, 2)

    def tail(self, y: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        norm = self.depthwise_norm
        y = F.silu(F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps))
        y = F.linear(y, self.pointwise_out.weight, self.pointwise_out.bias)
        return self.dropout(y) if dropout else y


class _EmformerLayer(nn.Module):
    """Pre-norm layer: attention, optional conv module, FFN; ``forward`` runs every segment
    of a sequence at once, ``step`` one segment per stream from the caches."""

    def __init__(self, cfg: EmformerConfig):
        super().__init__()
        d = cfg.d_model
        self.num_heads = cfg.num_heads
        self.segment_length = cfg.segment_length
        self.left_context_length = cfg.left_context_length
        self.memory_size = cfg.memory_size
        self.memory_clamp = cfg.memory_clamp
        self.attention_dropout = cfg.dropout
        self.attn_norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 3 * d)  # query | key | value
        self.out_proj = nn.Linear(d, d)
        self.conv = (
            _ConvModule(d, cfg.conv_kernel_size, cfg.dropout) if cfg.conv_kernel_size > 0 else None
        )
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, cfg.ffn_dim)
        self.ffn_out = nn.Linear(cfg.ffn_dim, d)
        self.activation = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def _norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        dropout: float = 0.0,
    ) -> torch.Tensor:
        """q (N, Q, D), k/v (N, K, D), mask (N, 1, Q, K) → out_proj(attention) (N, Q, D)."""
        h = self.num_heads
        out = F.scaled_dot_product_attention(
            _heads(q, h), _heads(k, h), _heads(v, h), attn_mask=mask, dropout_p=dropout
        )
        return F.linear(_merge_heads(out), self.out_proj.weight, self.out_proj.bias)

    def _ffn(self, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        h = F.linear(self._norm(self.ffn_norm, x), self.ffn_in.weight, self.ffn_in.bias)
        h = self.activation(h)
        h = F.linear(self.dropout(h) if dropout else h, self.ffn_out.weight, self.ffn_out.bias)
        return self.dropout(h) if dropout else h

    # ------------------------------------------------------------------ segments in parallel

    def forward(
        self,
        z: torch.Tensor,
        memory: torch.Tensor | None,
        seg_weight: torch.Tensor,
        mask: torch.Tensor,
        summary: bool,
        cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """N consecutive segments of every stream at once (memory never depends on the same
        layer's output, so nothing in a layer is sequential across segments).

        z: (B, N, P, D) segment frames then right-context frames of each segment;
        memory: (B, N, D) this layer's memory vector of each segment, or None (M = 0);
        seg_weight: (B, N, L) weights of the masked mean over a segment's valid frames;
        mask: (B·N, 1, P + summary, M + C + P); summary: whether to compute summary queries;
        cache: what precedes segment 0 — (left_kv (B, C, 2D), memory_kv (B, M, 2D), conv
        (B, k-1, D)) when streaming, None (zeros, masked) for a whole sequence.
        Returns z (B, N, P, D), the next layer's memory (B, N, D) or None, and what extends
        the caches (main-stream keys/values (B, N·L, 2D), memory keys/values (B, N or 0, 2D),
        conv inputs (B, N·L or 0, D)): the caches after segment i are the windows of
        [cache; extension] ending at segment i (``Emformer.stream``).
        Dropout only in training and without a cache.
        """
        b, n, p, d = z.shape
        seg, ctx, mem = self.segment_length, self.left_context_length, self.memory_size
        drop = self.training and cache is None
        rows = self._norm(self.attn_norm, z).reshape(b, n * p, d)
        if memory is not None:  # the memory vectors' keys/values come from the same matmul
            rows = torch.cat([rows, memory], dim=1)  # (B, N·P + N, D)
        qkv = F.linear(rows, self.in_proj.weight, self.in_proj.bias)
        q, kv = qkv[:, : n * p].view(b, n, p, 3 * d).split([d, 2 * d], dim=-1)  # (B,N,P,D|2D)
        if summary:  # query of the mean of the normed frames = mean of their queries
            s_q = torch.bmm(seg_weight.view(b * n, 1, seg), q[:, :, :seg].reshape(b * n, seg, d))
            q = torch.cat([q, s_q.view(b, n, 1, d)], dim=2)  # (B, N, P + 1, D)
        main = kv[:, :, :seg].reshape(b, n * seg, 2 * d)  # new main-stream keys/values
        new_memory_kv = qkv[:, n * p :, d:]  # (B, N or 0, 2D): of this call's memory vectors
        if n == 1 and cache is not None:  # one segment (160 ms chunks): keys = caches + block
            k, v = torch.cat([cache[1], cache[0], kv[:, 0]], dim=1).split(d, dim=-1)
        else:  # windows over [left context; main stream] and [memory slots; new memory]
            left_kv = (
                F.pad(main, (0, 0, ctx, 0)) if cache is None else torch.cat([cache[0], main], 1)
            )
            memory_kv = left_kv.new_zeros(b, mem, 2 * d) if cache is None else cache[1]
            memory_kv = torch.cat([memory_kv, new_memory_kv], dim=1)  # (B, M + N, 2D)

            def keys_of(half: slice) -> torch.Tensor:
                """Keys (or values) of every segment: (B·N, M + C + P, D), windows unfolded."""
                parts = [left_kv[..., half].unfold(1, ctx + seg, seg)[:, :n], kv[:, :, seg:, half]]
                parts[0] = parts[0].transpose(2, 3)
                if memory is not None:
                    parts.insert(0, memory_kv[..., half].unfold(1, mem, 1)[:, :n].transpose(2, 3))
                return torch.cat(parts, dim=2).reshape(b * n, -1, d)

            k, v = keys_of(slice(0, d)), keys_of(slice(d, 2 * d))
        dropout = self.attention_dropout if drop else 0.0
        out = self._attend(q.reshape(b * n, -1, d), k, v, mask, dropout).view(b, n, -1, d)
        z = z + (self.dropout(out[:, :, :p]) if drop else out[:, :, :p])
        next_memory = out[:, :, p].clamp(-self.memory_clamp, self.memory_clamp) if summary else None
        conv_in = z[:, 0, :0]  # (B, 0, D): no conv module, nothing to cache
        if self.conv is not None:
            y, conv_in = self._conv_parallel(z, None if cache is None else cache[2], drop)
            z = z + y
        return z + self._ffn(z, dropout=drop), next_memory, (main, new_memory_kv, conv_in)

    def _conv_parallel(
        self, z: torch.Tensor, cache: torch.Tensor | None, dropout: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv module over the main stream (after ``cache`` (B, k-1, D) or zeros); the right
        context continues its segment. z (B, N, P, D) → (B, N, P, D) and the new main-stream
        conv inputs (B, N·L, D)."""
        assert self.conv is not None
        b, n, p, d = z.shape
        seg, k1 = self.segment_length, self.conv.kernel_size - 1
        u = self.conv.glu(z)
        u_new = u[:, :, :seg].reshape(b, n * seg, d)
        u_main = F.pad(u_new, (0, 0, k1, 0)) if cache is None else torch.cat([cache, u_new], 1)
        y_main = self.conv.conv_valid(u_main).view(b, n, seg, d)  # (B, N, L, D)
        if p == seg:
            return self.conv.tail(y_main, dropout), u_new
        # the k - 1 main-stream inputs before frame (i + 1)L, then segment i's right context
        before = u_main[:, seg:].unfold(1, k1, seg).transpose(2, 3) if k1 else u[:, :, :0]
        u_right = torch.cat([before, u[:, :, seg:]], dim=2).reshape(b * n, k1 + p - seg, d)
        y_right = self.conv.conv_valid(u_right).view(b, n, p - seg, d)
        return self.conv.tail(torch.cat([y_main, y_right], dim=2), dropout), u_new


class Emformer(nn.Module):
    """Emformer encoder: (B, T, d_model) + lengths (B,) → (B, T, d_model) + lengths.

    ``forward`` for whole sequences (training); ``init_state`` / ``stream`` for any number of
    new frames per stream with outputs equal to ``forward``'s (see the module docstring).
    """

    def __init__(self, cfg: EmformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.layers = nn.ModuleList(_EmformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)

    # ------------------------------------------------------------------ helpers

    def _check_input(self, x: torch.Tensor, x_len: torch.Tensor) -> None:
        d = self.cfg.d_model
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Emformer expects x of shape (B, T, {d}), got {shape}")
        if not isinstance(x_len, torch.Tensor) or x_len.shape != (x.shape[0],):
            shape = tuple(x_len.shape) if isinstance(x_len, torch.Tensor) else x_len
            raise ValueError(f"x_len must be a tensor of shape ({x.shape[0]},), got {shape}")
        if x_len.dtype.is_floating_point or x_len.dtype == torch.bool:
            raise ValueError(f"x_len must hold integers, got {x_len.dtype}")
        if x_len.numel() and (int(x_len.min()) < 0 or int(x_len.max()) > x.shape[1]):
            raise ValueError(f"x_len must be in [0, T={x.shape[1]}], got {x_len.tolist()}")

    def _summary_layers(self) -> list[bool]:
        """Layer l computes summary queries iff M > 0 and a layer l + 1 reads them."""
        n = self.cfg.num_layers
        return [self.cfg.memory_size > 0 and i < n - 1 for i in range(n)]

    # ------------------------------------------------------------------ parallel

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), x_len (B,) → y (B, T, D) (zero beyond x_len), y_len (B,) = x_len."""
        self._check_input(x, x_len)
        cfg = self.cfg
        seg, ctx, right, mem = (
            cfg.segment_length,
            cfg.left_context_length,
            cfg.right_context_length,
            cfg.memory_size,
        )
        b, t, d = x.shape
        x_len = x_len.to(device=x.device, dtype=torch.long)
        if t == 0:
            return x.new_zeros(b, 0, d), x_len
        n = math.ceil(t / seg)
        frame = torch.arange(n * seg + right, device=x.device)
        valid = frame < x_len[:, None]  # (B, N·L + R)
        x = F.pad(x, (0, 0, 0, n * seg + right - t)).masked_fill(~valid[..., None], 0.0)
        right_pos = torch.arange(1, n + 1, device=x.device)[:, None] * seg + torch.arange(
            right, device=x.device
        )  # (N, R)
        seg_valid = valid[:, : n * seg].view(b, n, seg)
        z = torch.cat([x[:, : n * seg].view(b, n, seg, d), x[:, right_pos]], dim=2)  # (B,N,P,D)
        seg_weight = seg_valid / seg_valid.sum(-1, keepdim=True).clamp(min=1)
        seg_weight = seg_weight.to(x.dtype)  # (B, N, L)
        memory = torch.einsum("bnl,bnld->bnd", seg_weight, z[:, :, :seg]) if mem else None

        # key validity per segment: [memory (M); left context + segment (C + L); right (R)]
        seg_idx = torch.arange(n, device=x.device)[:, None]
        mem_valid = (seg_idx - mem + torch.arange(mem, device=x.device)) >= 0  # (N, M)
        window = seg_idx * seg - ctx + torch.arange(ctx + seg, device=x.device)  # (N, C + L)
        win_valid = (window >= 0) & (window < x_len[:, None, None])
        key_valid = torch.cat([mem_valid.expand(b, n, mem), win_valid, valid[:, right_pos]], dim=2)
        mask = _attention_mask(key_valid, seg + right, mem, x.dtype).flatten(0, 1)  # (B·N,1,P+1,K)

        for layer, summary in zip(self.layers, self._summary_layers(), strict=True):
            rows = mask if summary else mask[:, :, : seg + right]
            z, memory, _ = layer(z, memory, seg_weight, rows, summary)
        y = self.final_norm(z[:, :, :seg]).reshape(b, n * seg, d)[:, :t]
        return y.masked_fill(~valid[:, :t, None], 0.0), x_len

    # ------------------------------------------------------------------ streaming

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> EmformerState:
        """A fresh state for ``batch_size`` streams (defaults: the parameters' device/dtype)."""
        ref = self.final_norm.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        cfg = self.cfg
        n, d = cfg.num_layers, cfg.d_model

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)

        def counter() -> torch.Tensor:
            return torch.zeros(batch_size, device=device, dtype=torch.long)

        return EmformerState(
            left_kv=zeros(n, cfg.left_context_length, 2 * d),
            memory_kv=zeros(n, cfg.memory_size, 2 * d),
            conv_cache=zeros(n, max(cfg.conv_kernel_size - 1, 0), d),
            pending=zeros(cfg.segment_length + cfg.right_context_length, d),
            pending_len=counter(),
            frames_done=counter(),
            segments_done=counter(),
        )

    @torch.no_grad()
    def stream(
        self,
        x: torch.Tensor,
        x_len: torch.Tensor,
        state: EmformerState,
        final: bool | torch.Tensor = False,
    ) -> tuple[torch.Tensor, torch.Tensor, EmformerState]:
        """New frames x (B, T, D), x_len (B,) → final outputs y (B, T', D), y_len (B,), state.

        Stream ``b``'s new outputs are ``y[b, :y_len[b]]`` (zero beyond). A segment is output
        once its ``R`` right-context frames have arrived; ``final`` (a bool or a (B,) bool
        tensor) flushes the rest, the last segment possibly partial. After ``final`` a stream
        is finished: start the next utterance with a fresh state. Inference only: runs
        without dropout and without gradients (a state never holds an autograd graph).
        """
        self._check_input(x, x_len)
        if state.batch_size != x.shape[0]:
            raise ValueError(f"state holds {state.batch_size} streams, x has {x.shape[0]}")
        cfg = self.cfg
        seg, ctx, right, mem = (
            cfg.segment_length,
            cfg.left_context_length,
            cfg.right_context_length,
            cfg.memory_size,
        )
        b, t, d = x.shape
        p = seg + right
        dev = x.device
        x_len = x_len.to(device=dev, dtype=torch.long)
        final_t = torch.as_tensor(final, device=dev, dtype=torch.bool).expand(b)

        # pending frames then new frames, per stream, left-aligned: buf (B, W, D)
        have = state.pending_len + x_len  # (B,)
        steps = torch.where(final_t, (have + seg - 1) // seg, (have - right).clamp(min=0) // seg)
        steps_list = steps.tolist()
        num_steps = max(steps_list, default=0)
        width = max(p + t, num_steps * seg + p)
        pos = torch.arange(width, device=dev)
        joined = F.pad(
            torch.cat([state.pending, x.to(state.pending.dtype)], dim=1), (0, 0, 0, width - p - t)
        )
        src = torch.where(
            pos < state.pending_len[:, None], pos, pos - state.pending_len[:, None] + p
        )
        buf = joined.gather(1, src.clamp(max=width - 1)[..., None].expand(b, width, d))
        buf = buf.masked_fill((pos >= have[:, None])[..., None], 0.0)

        # every segment this call completes, all streams at once: z (B, N, P, D), N = num_steps
        n = num_steps
        frames_done, segments_done = state.frames_done, state.segments_done
        k_idx = torch.arange(n, device=dev)
        right_pos = (k_idx[:, None] + 1) * seg + torch.arange(right, device=dev)  # (N, R)
        z = torch.cat([buf[:, : n * seg].view(b, n, seg, d), buf[:, right_pos]], dim=2)
        seg_count = (have[:, None] - k_idx * seg).clamp(0, seg)  # (B, N)
        right_count = (have[:, None] - k_idx * seg - seg).clamp(0, right)
        seg_valid = torch.arange(seg, device=dev) < seg_count[..., None]  # (B, N, L)
        seg_weight = (seg_valid / seg_count.clamp(min=1)[..., None]).to(buf.dtype)
        memory = (seg_weight.unsqueeze(2) @ z[:, :, :seg]).squeeze(2) if mem else None  # (B,N,D)
        # key validity per segment: [memory (M); left context (C); segment (L); right (R)]
        seg_before = (segments_done[:, None] + k_idx)[..., None]  # (B, N, 1)
        frame_before = (frames_done[:, None] + k_idx * seg)[..., None]
        key_valid = torch.cat(
            [
                seg_before - mem + torch.arange(mem, device=dev) >= 0,
                frame_before - ctx + torch.arange(ctx, device=dev) >= 0,
                seg_valid,
                torch.arange(right, device=dev) < right_count[..., None],
            ],
            dim=2,
        )  # (B, N, M + C + P)
        mask = _attention_mask(key_valid, p, mem, buf.dtype).flatten(0, 1)  # (B·N,1,P+1,K)

        caches = zip(
            state.left_kv.unbind(1), state.memory_kv.unbind(1), state.conv_cache.unbind(1),
            strict=True,
        )  # fmt: skip
        extended: list[tuple[torch.Tensor, ...]] = []
        layers = self.layers if n else []  # no complete segment: caches unchanged
        for layer, summary, cache in zip(layers, self._summary_layers(), caches, strict=False):
            rows = mask if summary else mask[:, :, :p]
            z, memory, layer_caches = layer(z, memory, seg_weight, rows, summary, cache)
            extended.append(layer_caches)
        if extended:  # stream b's caches after its last segment: windows ending at steps[b]
            left_kv, memory_kv, conv_cache = (
                _window(
                    torch.cat([old, torch.stack(new, dim=1)], dim=2),
                    steps * every,
                    size,
                    steps_list,
                )
                for old, new, every, size in zip(
                    (state.left_kv, state.memory_kv, state.conv_cache),
                    zip(*extended, strict=True),
                    (seg, 1, seg),
                    (ctx, mem, max(cfg.conv_kernel_size - 1, 0)),
                    strict=True,
                )
            )  # (B, layers, C | M | k-1, ·)
        else:
            left_kv, memory_kv, conv_cache = state.left_kv, state.memory_kv, state.conv_cache

        y_len = torch.minimum(steps * seg, have)
        y = self.final_norm(z[:, :, :seg]).reshape(b, n * seg, d)  # (B, N·L, D)
        y = y.masked_fill((torch.arange(n * seg, device=dev) >= y_len[:, None])[..., None], 0.0)
        frames_done = frames_done + torch.where(k_idx < steps[:, None], seg_count, 0).sum(1)
        segments_done = segments_done + steps

        used = torch.where(final_t, have, steps * seg)
        pending_len = have - used
        slot = torch.arange(p, device=dev)
        idx = (used[:, None] + slot).clamp(max=width - 1)
        pending = buf.gather(1, idx[..., None].expand(b, p, d))
        pending = pending.masked_fill((slot >= pending_len[:, None])[..., None], 0.0)

        new_state = EmformerState(
            left_kv=left_kv,
            memory_kv=memory_kv,
            conv_cache=conv_cache,
            pending=pending,
            pending_len=pending_len,
            frames_done=frames_done,
            segments_done=segments_done,
        )
        return y, y_len, new_state


def _window(x: torch.Tensor, start: torch.Tensor, size: int, starts: list[int]) -> torch.Tensor:
    """Rows ``start[b] .. start[b] + size`` (dim 2) of each stream: x (B, layers, T, ·), start
    (B,) → (B, layers, size, ·). A slice when every stream starts at the same row (the usual
    case: ``starts``, the steps per stream, all equal), else a gather."""
    if len(set(starts)) <= 1:
        first = int(start[0]) if len(starts) else 0
        return x[:, :, first : first + size].clone()  # not a view: hold only the window
    idx = start[:, None] + torch.arange(size, device=x.device)  # (B, size)
    return x.gather(2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))
