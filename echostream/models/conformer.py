"""StreamSpeech's chunk-based Conformer encoder: the baseline EchoStream is measured against.

The layer is fairseq's Conformer layer as StreamSpeech configures it (``--attn-type espnet
--pos-enc-type rel_pos --chunk-size 8 --uni-encoder``)::

    x = x + ½·FFN₁(x)          macaron half-step FFN (LN → Linear → SiLU → Linear)
    x = x + RelPosMHA(LN(x))   Transformer-XL / ESPnet relative-position attention
    x = x + Conv(x)            LN → pointwise → GLU → causal depthwise → LN → SiLU → pointwise
    x = x + ½·FFN₂(x)
    x = LN(x)

Attention is chunk-causal: frame ``t`` of chunk ``c = t // chunk_size`` sees every frame of its
own chunk and everything before it (unbounded left context). The relative-position term is
``(q_i + v)·W_pos·pe(clip(i - j, ±max_relative_position))``; it depends on ``i - j`` only, so a
cached stream computes exactly what the parallel pass computes.

Departures from StreamSpeech, all for exact streaming:

- The depthwise convolution is strictly causal (left padding ``k - 1``). StreamSpeech's
  ``ChunkCausalConv1d`` lets a frame see up to ``k // 2`` later frames inside its own chunk.
- The convolution module normalises with LayerNorm instead of BatchNorm, so each frame's output
  never depends on other frames or other utterances in the batch (streaming is exact for any
  batch, in training mode too).

Like StreamSpeech's encoder, the input is scaled by ``sqrt(d_model)`` and passed through a linear
layer (and dropout) before the layers; there is no norm after the last layer (each layer ends
with one).

Two streaming modes (``init_state(mode=...)``):

- ``recompute``: what StreamSpeech's SimulEval agent does. The state is the whole input prefix;
  every call appends the new frames and re-runs :meth:`ChunkConformer.forward` over the whole
  prefix (O(T²) per utterance), returning the outputs of chunks completed since the last call.
- ``cached``: per-layer key/value caches of every past frame (they grow with the stream; the
  left context is unbounded), the last ``k - 1`` conv inputs per layer, and the input frames of
  the incomplete chunk. Each chunk is encoded once.

Both return only outputs of complete chunks (plus the last partial chunk at ``final=True``) and
equal ``forward`` with the same chunk size.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.config import ConformerConfig
from echostream.state import StreamState

StreamMode = Literal["cached", "recompute"]


# --------------------------------------------------------------------------- ragged helpers


def _append(buf: Tensor, buf_len: Tensor, x: Tensor, x_len: Tensor) -> tuple[Tensor, Tensor]:
    """Per stream, ``buf[b, :buf_len[b]] ++ x[b, :x_len[b]]``, left-aligned, zero-padded.

    buf: (B, Tb, D), x: (B, Tx, D), lengths (B,) -> (B, T, D), (B,) with T = max total length.
    """
    out_len = buf_len + x_len
    if buf.shape[1] == 0:
        return x[:, : int(out_len.max()) if x.shape[0] else 0], out_len
    total = int(out_len.max()) if buf.shape[0] else 0
    t = torch.arange(total, device=buf.device)
    src = torch.where(t < buf_len[:, None], t, buf.shape[1] + t - buf_len[:, None])
    valid = t < out_len[:, None]  # (B, T)
    src = torch.where(valid, src, 0)
    both = torch.cat([buf, x], dim=1)
    out = both.gather(1, src[..., None].expand(-1, -1, both.shape[2]))
    return out.masked_fill(~valid[..., None], 0.0), out_len


def _take(buf: Tensor, start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Per stream, ``buf[b, start[b] : start[b] + count[b]]``, left-aligned, zero-padded.

    buf: (B, T, D), start/count (B,) -> (B, max(count), D), count.
    """
    total = int(count.max()) if buf.shape[0] else 0
    t = torch.arange(total, device=buf.device)
    valid = t < count[:, None]  # (B, T')
    src = torch.where(valid, start[:, None] + t, 0)
    out = buf.gather(1, src[..., None].expand(-1, -1, buf.shape[2]))
    return out.masked_fill(~valid[..., None], 0.0), count


def _check_input(x: Tensor, x_len: Tensor, d_model: int, where: str) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{where}: expected x of shape (batch, time, {d_model}), got {tuple(x.shape)}"
        )
    if x_len.dim() != 1 or x_len.shape[0] != x.shape[0]:
        raise ValueError(
            f"{where}: expected x_len of shape ({x.shape[0]},), got {tuple(x_len.shape)}"
        )
    if x_len.dtype.is_floating_point or x_len.dtype == torch.bool:
        raise ValueError(f"{where}: x_len must be an integer tensor, got {x_len.dtype}")
    if x.shape[0] and (int(x_len.min()) < 0 or int(x_len.max()) > x.shape[1]):
        raise ValueError(f"{where}: x_len must lie in [0, {x.shape[1]}], got {x_len.tolist()}")


# --------------------------------------------------------------------------- relative positions


def sinusoidal_relative_table(max_relative_position: int, d_model: int) -> Tensor:
    """Sinusoidal encodings of signed distances ``-M .. M`` -> (2M + 1, d_model); row ``r + M``
    is ``[sin(r·w₀), cos(r·w₀), sin(r·w₁), …]`` with ``wᵢ = 10000^(-2i / d_model)``."""
    r = torch.arange(-max_relative_position, max_relative_position + 1, dtype=torch.float64)
    w = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(1e4) / d_model))
    table = torch.zeros(len(r), d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(r[:, None] * w)
    table[:, 1::2] = torch.cos(r[:, None] * w)[:, : d_model // 2]
    return table.float()


class RelPositions(NamedTuple):
    """Which keys each query sees, and at which (clipped) distance.

    ``index``: (B or 1, 1, Tq, Tk) int64, the row of ``pe_rows`` holding ``pe(clip(i - j))``,
    or ``len(pe_rows)`` where query i must not see key j; ``pe_rows``: (R, D) the encodings of
    the distances that occur.
    """

    index: Tensor
    pe_rows: Tensor


def _rel_positions(
    table: Tensor, max_rel: int, q_pos: Tensor, k_pos: Tensor, allowed: Tensor, r_lo: int, r_hi: int
) -> RelPositions:
    """q_pos: (B|1, Tq), k_pos: (Tk,) absolute frame indices; allowed: (B|1, 1, Tq, Tk).
    ``r_lo <= i - j <= r_hi`` must hold for every allowed pair."""
    r_lo, r_hi = max(r_lo, -max_rel), min(max(r_hi, r_lo), max_rel)
    rel = (q_pos[:, None, :, None] - k_pos).clamp_(r_lo, r_hi).sub_(r_lo)  # (B|1, 1, Tq, Tk)
    # A query with nothing to attend to (an empty stream) would give NaN: let it see everything;
    # its output is discarded.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    index = torch.where(allowed, rel, r_hi - r_lo + 1)
    return RelPositions(index, table[r_lo + max_rel : r_hi + max_rel + 1])


# --------------------------------------------------------------------------- modules


class FeedForward(nn.Module):
    """LN -> Linear(d, ffn) -> SiLU -> dropout -> Linear(ffn, d) -> dropout; (B, T, D) -> same."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.w_1 = nn.Linear(d_model, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w_2(self.dropout(F.silu(self.w_1(self.layer_norm(x))))))


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (ESPnet's
    ``RelPositionMultiHeadedAttention``): ``score(i, j) = ((q_i + u)·k_j + (q_i + v)·p(i - j)) /
    sqrt(d_k)`` with ``p = linear_pos(pe)``. The position term enters
    ``scaled_dot_product_attention`` as an additive float mask."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = dropout

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, d_k)."""
        B, T, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.num_heads, self.d_head).transpose(1, 2)

        return heads(self.linear_q(x)), heads(self.linear_k(x)), heads(self.linear_v(x))

    def position_scores(self, q_v: Tensor, pe_rows: Tensor) -> Tensor:
        """(q + v)·linear_pos(pe) for every row of ``pe_rows``: (B, H, Tq, d_k), (R, D) ->
        (B, H, Tq, R). Few queries (a streamed chunk) fold W_pos into the queries instead of
        projecting all R encodings; both orders compute the same product."""
        B, H, Tq, dk = q_v.shape
        R, D = pe_rows.shape
        if R * D * D + B * H * Tq * dk * R <= B * H * Tq * D * (dk + R):
            p = self.linear_pos(pe_rows).view(R, H, dk).transpose(0, 1)  # (H, R, d_k)
            return q_v @ p.transpose(1, 2)
        w = self.linear_pos.weight.view(H, dk, D)  # output features are head-major
        return (q_v @ w) @ pe_rows.T  # (B, H, Tq, D) @ (D, R)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pos: RelPositions) -> Tensor:
        """q (B, H, Tq, d_k), k/v (B, H, Tk, d_k) -> (B, Tq, D)."""
        B, H, Tq, dk = q.shape
        q_v = (q + self.pos_bias_v[:, None]) / math.sqrt(dk)
        scores = self.position_scores(q_v, pos.pe_rows.to(q.dtype))  # (B, H, Tq, R)
        # One gather gives both the position term and the mask (index R is the -inf column).
        masked = scores.new_full((B, H, Tq, 1), float("-inf"))
        scores = torch.cat([scores, masked], dim=-1)  # (B, H, Tq, R + 1)
        bias = scores.gather(-1, pos.index.expand(B, H, Tq, k.shape[2]))  # (B, H, Tq, Tk)
        out = F.scaled_dot_product_attention(
            q + self.pos_bias_u[:, None],
            k,
            v,
            attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, Tq, d_k)
        return self.linear_out(out.transpose(1, 2).reshape(B, Tq, H * dk))


class ConvModule(nn.Module):
    """LN -> pointwise (D -> 2D) -> GLU -> causal depthwise conv (kernel k) -> LayerNorm -> SiLU
    -> pointwise -> dropout. LayerNorm (not StreamSpeech's BatchNorm) keeps every output frame a
    function of its own input history only, so streaming is exact for any batch."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv1 = nn.Linear(d_model, 2 * d_model, bias=False)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=False)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_conv2 = nn.Linear(d_model, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def gated(self, x: Tensor) -> Tensor:
        """(B, T, D) -> GLU output (B, T, D): the depthwise conv's input, what the stream caches."""
        return F.glu(self.pointwise_conv1(self.layer_norm(x)), dim=-1)

    def finish(self, g: Tensor) -> Tensor:
        """g: (B, k - 1 + T, D), GLU outputs with k - 1 frames of left context -> (B, T, D)."""
        h = self.depthwise_conv(g.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_conv2(F.silu(self.norm(h))))


class LayerCache(NamedTuple):
    """A layer's view of the call-owned caches during one streamed chunk step.

    ``keys``/``values``: (B, H, T_alloc, d_k) buffers, written in place at ``write_index``
    (B, C) where ``write_mask`` (B, C) is true; attention reads the first ``num_keys`` frames.
    ``conv``: (B, k - 1, D) the last GLU outputs before this chunk.
    """

    keys: Tensor
    values: Tensor
    write_index: Tensor
    write_mask: Tensor
    num_keys: int
    conv: Tensor


class ConformerLayer(nn.Module):
    """Macaron FFN, relative-position MHA, causal conv module, FFN, final LayerNorm."""

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ffn1 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = RelPositionAttention(d, cfg.num_heads, cfg.dropout)
        self.self_attn_dropout = nn.Dropout(cfg.dropout)
        self.conv_module = ConvModule(d, cfg.conv_kernel_size, cfg.dropout)
        self.ffn2 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(
        self, x: Tensor, pos: RelPositions, cache: LayerCache | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, T, D) -> (B, T, D), and the conv input with its left context (B, k-1+T, D).

        Without ``cache`` the keys are ``x``'s own frames and the conv context is zeros; with
        it, this chunk's keys/values are written into the cache and attention reads the cache.
        """
        x = x + 0.5 * self.ffn1(x)
        q, k, v = self.self_attn.project(self.self_attn_layer_norm(x))
        if cache is not None:
            k = _write(cache.keys, cache.write_index, cache.write_mask, k)[:, :, : cache.num_keys]
            v = _write(cache.values, cache.write_index, cache.write_mask, v)[:, :, : cache.num_keys]
        x = x + self.self_attn_dropout(self.self_attn.attend(q, k, v, pos))
        g = self.conv_module.gated(x)
        if cache is None:
            g = F.pad(g, (0, 0, self.conv_module.kernel_size - 1, 0))
        else:
            g = torch.cat([cache.conv, g], dim=1)
        x = x + self.conv_module.finish(g)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x), g


def _write(buf: Tensor, index: Tensor, mask: Tensor, new: Tensor) -> Tensor:
    """In place: ``buf[b, :, index[b, t]] = new[b, :, t]`` where ``mask[b, t]``; returns buf.

    buf: (B, H, T, d_k) (a call-owned buffer, never a state's tensor), index/mask (B, C),
    new (B, H, C, d_k).
    """
    idx = index[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3])
    old = buf.gather(2, idx)
    return buf.scatter_(2, idx, torch.where(mask[:, None, :, None], new, old))


# --------------------------------------------------------------------------- states


@dataclasses.dataclass(frozen=True)
class ConformerRecomputeState(StreamState):
    """StreamSpeech's agent: the whole input prefix, re-encoded at every call.

    prefix: (B, T, D) input frames so far, left-aligned; prefix_len: (B,) valid frames;
    emitted: (B,) output frames already returned; chunk_size: attention chunk in frames.
    """

    prefix: Tensor
    prefix_len: Tensor
    emitted: Tensor
    chunk_size: int


@dataclasses.dataclass(frozen=True)
class ConformerCachedState(StreamState):
    """Key/value and conv caches; each chunk is encoded once.

    pending: (B, P, D) input frames of the incomplete chunk, left-aligned; pending_len: (B,);
    processed: (B,) frames encoded so far = valid length of the key/value caches;
    keys/values: (B, L, H, T, d_k) per-layer caches of every encoded frame, left-aligned;
    conv: (B, L, k - 1, D) per-layer last GLU outputs; chunk_size: attention chunk in frames.
    """

    pending: Tensor
    pending_len: Tensor
    processed: Tensor
    keys: Tensor
    values: Tensor
    conv: Tensor
    chunk_size: int


ConformerState = ConformerRecomputeState | ConformerCachedState


# --------------------------------------------------------------------------- encoder


class ChunkConformer(nn.Module):
    """StreamSpeech's chunk-based Conformer encoder. Input and output (B, T, d_model).

    ``forward(x, x_len, chunk_size=None)`` encodes whole sequences (training);
    ``init_state(batch_size, mode)`` and ``stream(x, x_len, state, final)`` encode them
    incrementally and give the same outputs (see the module docstring).
    """

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_scale = math.sqrt(cfg.d_model)
        self.input_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        table = sinusoidal_relative_table(cfg.max_relative_position, cfg.d_model)
        self.register_buffer("rel_pe", table, persistent=False)  # (2M + 1, D)

    def sample_chunk_size(self, rng: random.Random | None = None) -> int:
        """Multi-chunk training: a chunk size drawn from ``cfg.train_chunk_sizes`` (0 = full
        attention), or ``cfg.chunk_size`` when that list is empty."""
        choices = self.cfg.train_chunk_sizes or [self.cfg.chunk_size]
        return (rng or random).choice(choices)

    # ------------------------------------------------------------------ parallel

    def forward(
        self, x: Tensor, x_len: Tensor, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, T, D), x_len: (B,) -> y: (B, T, D) (zero beyond x_len), x_len.

        ``chunk_size``: frames per attention chunk; None takes ``cfg.chunk_size``, 0 means full
        (offline) attention.
        """
        _check_input(x, x_len, self.cfg.d_model, "ChunkConformer.forward")
        chunk = self.cfg.chunk_size if chunk_size is None else int(chunk_size)
        if chunk < 0:
            raise ValueError(f"ChunkConformer.forward: chunk_size must be >= 0, got {chunk}")
        B, T, _ = x.shape
        if T == 0:
            return x.new_zeros(B, 0, self.cfg.d_model), x_len
        t = torch.arange(T, device=x.device)
        valid = t < x_len[:, None]  # (B, T)
        if chunk == 0 or chunk >= T:
            allowed = valid[:, None, None, :]  # (B, 1, 1, T)
            r_lo = -(T - 1)
        else:
            chunk_of = t // chunk
            sees = chunk_of[None, :] <= chunk_of[:, None]  # (Tq, Tk)
            allowed = sees & valid[:, None, None, :]  # (B, 1, T, T)
            r_lo = -(chunk - 1)
        allowed = allowed.expand(B, 1, T, T)
        pos = _rel_positions(
            self.rel_pe, self.cfg.max_relative_position, t[None], t, allowed, r_lo, T - 1
        )
        h = self.dropout(self.input_proj(x * self.embed_scale))
        h = h.masked_fill(~valid[..., None], 0.0)
        for layer in self.layers:
            h, _ = layer(h, pos)
            h = h.masked_fill(~valid[..., None], 0.0)
        return h, x_len

    # ------------------------------------------------------------------ streaming

    def init_state(
        self,
        batch_size: int,
        mode: StreamMode = "cached",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
    ) -> ConformerState:
        """Empty state for ``batch_size`` streams.

        ``mode``: ``"cached"`` (KV + conv caches) or ``"recompute"`` (StreamSpeech's agent:
        re-encode the whole prefix at every call). ``chunk_size`` (frames, >= 1) defaults to
        ``cfg.chunk_size``; a multi-chunk-trained model can stream at any of its chunk sizes.
        """
        if mode not in ("cached", "recompute"):
            raise ValueError(f"mode must be 'cached' or 'recompute', got {mode!r}")
        chunk = self.cfg.chunk_size if chunk_size is None else int(chunk_size)
        if chunk < 1:
            raise ValueError(f"streaming needs chunk_size >= 1, got {chunk}")
        param = self.input_proj.weight
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        D, L = self.cfg.d_model, self.cfg.num_layers
        zeros_len = torch.zeros(batch_size, dtype=torch.long, device=device)
        frames = torch.zeros(batch_size, 0, D, device=device, dtype=dtype)
        if mode == "recompute":
            return ConformerRecomputeState(frames, zeros_len, zeros_len.clone(), chunk)
        H = self.cfg.num_heads
        kv = torch.zeros(batch_size, L, H, 0, D // H, device=device, dtype=dtype)
        k1 = self.cfg.conv_kernel_size - 1
        conv = torch.zeros(batch_size, L, k1, D, device=device, dtype=dtype)
        return ConformerCachedState(
            frames, zeros_len, zeros_len.clone(), kv, kv.clone(), conv, chunk
        )

    def stream(
        self, x: Tensor, x_len: Tensor, state: ConformerState, final: bool = False
    ) -> tuple[Tensor, Tensor, ConformerState]:
        """Encode new input frames of each stream.

        x: (B, T, D) new frames, x_len: (B,) how many are valid per stream (0 allowed).
        Returns y: (B, T', D) the outputs of chunks completed by this call (with
        ``final=True`` also the last partial chunk), y_len: (B,), and the new state. The input
        state is not modified. After ``final=True`` start a new state.
        """
        if not isinstance(state, ConformerRecomputeState | ConformerCachedState):
            raise ValueError(f"expected a Conformer state, got {type(state).__name__}")
        _check_input(x, x_len, self.cfg.d_model, "ChunkConformer.stream")
        if x.shape[0] != state.batch_size:
            raise ValueError(
                f"ChunkConformer.stream: x has {x.shape[0]} streams, state has {state.batch_size}"
            )
        x_len = x_len.to(device=x.device, dtype=torch.long)
        x = x.masked_fill(
            ~(torch.arange(x.shape[1], device=x.device) < x_len[:, None])[..., None], 0
        )
        if isinstance(state, ConformerRecomputeState):
            return self._stream_recompute(x, x_len, state, final)
        return self._stream_cached(x, x_len, state, final)

    def _stream_recompute(
        self, x: Tensor, x_len: Tensor, state: ConformerRecomputeState, final: bool
    ) -> tuple[Tensor, Tensor, ConformerRecomputeState]:
        prefix, prefix_len = _append(state.prefix, state.prefix_len, x, x_len)  # (B, T, D)
        C = state.chunk_size
        end = prefix_len if final else prefix_len // C * C  # outputs that are final now
        # As StreamSpeech's agent: re-encode the whole prefix at every call.
        y_all, _ = self.forward(prefix, prefix_len, chunk_size=C)
        y, y_len = _take(y_all, state.emitted, end - state.emitted)
        return y, y_len, state.replace(prefix=prefix, prefix_len=prefix_len, emitted=end)

    def _stream_cached(
        self, x: Tensor, x_len: Tensor, state: ConformerCachedState, final: bool
    ) -> tuple[Tensor, Tensor, ConformerCachedState]:
        C, D = state.chunk_size, self.cfg.d_model
        M = self.cfg.max_relative_position
        pending, pending_len = _append(state.pending, state.pending_len, x, x_len)  # (B, P, D)
        num_chunks = (pending_len + C - 1) // C if final else pending_len // C  # (B,)
        steps = int(num_chunks.max()) if pending.shape[0] else 0
        if steps == 0:
            y = pending.new_zeros(pending.shape[0], 0, D)
            return (
                y,
                torch.zeros_like(pending_len),
                state.replace(pending=pending, pending_len=pending_len),
            )

        B, L, H, T0, dk = state.keys.shape
        first = int(state.processed.max())
        # Fresh buffers owned by this call (the input state is never written to).
        tail = state.keys.new_zeros(B, L, H, max(0, first + steps * C - T0), dk)
        keys = torch.cat([state.keys, tail], dim=3)  # (B, L, H, T_alloc, d_k)
        values = torch.cat([state.values, tail], dim=3)
        conv = list(state.conv.unbind(1))  # L × (B, k - 1, D)
        k1 = self.cfg.conv_kernel_size - 1
        pending = F.pad(pending, (0, 0, 0, max(0, steps * C - pending.shape[1])))
        t = torch.arange(C, device=x.device)
        processed = state.processed
        outputs = []
        for s in range(steps):
            # Frames of chunk s valid per stream: C, fewer in a final partial chunk, 0 if idle.
            count = torch.where(s < num_chunks, (pending_len - s * C).clamp(0, C), 0)  # (B,)
            num_keys = first + (s + 1) * C
            k_pos = torch.arange(num_keys, device=x.device)
            q_pos = processed[:, None] + t  # (B, C) absolute frame indices
            allowed = (k_pos < (processed + count)[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
            pos = _rel_positions(
                self.rel_pe,
                M,
                q_pos,
                k_pos,
                allowed.expand(B, 1, C, num_keys),
                -(C - 1),
                num_keys - 1,
            )
            write_mask = t < count[:, None]  # (B, C)
            h = self.dropout(self.input_proj(pending[:, s * C : (s + 1) * C] * self.embed_scale))
            for i, layer in enumerate(self.layers):
                cache = LayerCache(keys[:, i], values[:, i], q_pos, write_mask, num_keys, conv[i])
                h, g = layer(h, pos, cache)  # g: (B, k - 1 + C, D)
                # Keep the last k - 1 conv inputs up to this chunk's last valid frame.
                idx = (count[:, None] + torch.arange(k1, device=x.device))[..., None]
                conv[i] = g.gather(1, idx.expand(-1, -1, D))
            outputs.append(h.masked_fill(~write_mask[..., None], 0.0))
            processed = processed + count

        y_len = processed - state.processed
        y = torch.cat(outputs, dim=1)[:, : int(y_len.max())]  # (B, T', D), left-aligned
        rest, rest_len = _take(pending, y_len, pending_len - y_len)
        num_frames = int(processed.max())
        new_state = state.replace(
            pending=rest,
            pending_len=rest_len,
            processed=processed,
            keys=keys[:, :, :, :num_frames],
            values=values[:, :, :, :num_frames],
            conv=torch.stack(conv, dim=1),
        )
        return y, y_len, new_state
