"""Transformer building blocks shared by the decoders (ST CTC decoder, MT decoder, T2U, units).

Every layer is pre-norm (``x + f(LN(x))``) and every attention goes through
``F.scaled_dot_product_attention`` with an explicit boolean *visibility* mask (True = the query
may look at that key). Incremental decoding keeps keys/values, not hidden states: a layer returns
the keys/values it computed for its new positions, and the caller decides what to cache. Past
keys/values are handed back in as ``past_kv`` and simply prepended to the new ones, so the
caller's mask is over ``[past slots | new positions]``; streams of a batch may have different
amounts of valid past (ragged), which their masks express.

Parameter names follow fairseq's transformer layers (``self_attn.{q,k,v,out}_proj``,
``self_attn_layer_norm``, ``encoder_attn``, ``encoder_attn_layer_norm``, ``fc1``, ``fc2``,
``final_layer_norm``) so a StreamSpeech checkpoint maps onto these modules name by name.

Sinusoidal positions use fairseq's layout (``[sin | cos]`` halves, ``log(10000)/(half-1)``
frequencies) and fairseq's first position, :data:`POSITION_OFFSET` = 2 (its ``padding_idx + 1``):
the token at index ``i`` gets the encoding of position ``i + 2``, so imported weights see the
encodings they were trained with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.config import TransformerDecoderConfig

POSITION_OFFSET = 2  # fairseq's first position (padding_idx + 1), see module docstring


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings. positions: (...) integer -> (..., dim) float32, ``[sin | cos]``."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -scale)
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs  # (..., half)
    out = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        out = F.pad(out, (0, 1))
    return out


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (B,) -> (B, max_len) bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def zero_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """x (B, T, D) with padded frames set to 0 (so even NaN padding cannot leak through 0·v)."""
    return x.masked_fill(~lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1), 0.0)


def append_ragged(cache: Tensor, cache_len: Tensor, new: Tensor, new_len: Tensor) -> Tensor:
    """Append ``new[b, ..., :new_len[b], :]`` after the ``cache_len[b]`` valid entries of
    stream b. Time is dim -2 in both; entries are left-aligned (valid prefix per stream).

    cache (B, ..., T, D), new (B, ..., N, D) -> (B, ..., max(cache_len + new_len), D); slots past
    a stream's new length are zero. Never writes into ``cache`` (states are values).
    """
    total = int((cache_len + new_len).max()) if cache_len.numel() else 0
    batch, n_new = new.shape[0], new.shape[-2]
    keep = min(cache.shape[-2], total)
    out = new.new_zeros(*new.shape[:-2], total + 1, new.shape[-1])  # last slot: dump
    old_valid = lengths_to_mask(cache_len, keep).view(batch, *[1] * (cache.dim() - 3), keep, 1)
    out[..., :keep, :] = torch.where(old_valid, cache[..., :keep, :], 0.0)
    steps = torch.arange(n_new, device=new.device)
    index = torch.where(steps < new_len.unsqueeze(-1), cache_len.unsqueeze(-1) + steps, total)
    index = index.view(batch, *[1] * (new.dim() - 3), n_new, 1).expand_as(new)
    out.scatter_(-2, index, new)
    return out[..., :total, :]


def shift_left_ragged(x: Tensor, shift: Tensor, length: int) -> Tensor:
    """out[b, ..., t, :] = x[b, ..., t + shift[b], :] for t < length (0 when out of range).
    x (B, ..., T, D), shift (B,) -> (B, ..., length, D)."""
    batch, size = x.shape[0], x.shape[-2]
    if size == 0:
        return x.new_zeros(*x.shape[:-2], length, x.shape[-1])
    index = torch.arange(length, device=x.device) + shift.unsqueeze(-1)  # (B, length)
    inside = index < size
    index = index.clamp(max=size - 1)
    view = [batch, *[1] * (x.dim() - 3), length, 1]
    out = x.gather(-2, index.view(view).expand(*x.shape[:-2], length, x.shape[-1]))
    return torch.where(inside.view(view), out, 0.0)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; keys/values may come from a different width ``d_kv``."""

    def __init__(
        self, d_model: int, num_heads: int, d_kv: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        d_kv = d_model if d_kv is None else d_kv
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_kv, d_model)
        self.v_proj = nn.Linear(d_kv, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, H*Dh) -> (B, H, T, Dh)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B, T, d_kv) -> keys, values (B, H, T, Dh)."""
        return self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, visible: Tensor | None) -> Tensor:
        """x (B, Tq, D) queries over k, v (B, H, Tk, Dh); visible (B, Tq, Tk) bool or None.

        A query that sees no key at all (an empty memory, a padded row) returns 0, not NaN.
        """
        q = self._heads(self.q_proj(x))
        mask, anything = None, None
        if visible is not None:
            anything = visible.any(-1)  # (B, Tq)
            mask = (visible | ~anything.unsqueeze(-1)).unsqueeze(1)  # (B, 1, Tq, Tk)
        p = self.dropout if self.training else 0.0
        if k.shape[-2] == 0:  # nothing to attend to
            out = q.new_zeros(q.shape)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            if anything is not None:
                out = out * anything.unsqueeze(1).unsqueeze(-1).to(out.dtype)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def forward(
        self, x: Tensor, memory: Tensor | None = None, visible: Tensor | None = None
    ) -> Tensor:
        """x (B, Tq, D), memory (B, Tk, d_kv) (default: x) -> (B, Tq, D)."""
        k, v = self.project_kv(x if memory is None else memory)
        return self.attend(x, k, v, visible)


class TransformerLayer(nn.Module):
    """Pre-norm layer: self-attention, optional cross-attention (``d_memory`` set), ReLU FFN.

    ``forward(x, self_visible, past_kv, memory_kv, memory_visible) -> (y, (k_new, v_new))``:
    the self-attention keys are ``[past_kv | keys of x]`` (dim 2), ``self_visible`` is
    (B, T, T_past + T). ``memory_kv`` are the cross-attention keys/values of the memory, already
    projected with :meth:`MultiHeadAttention.project_kv` of ``encoder_attn`` (so they can be
    cached and extended frame by frame), ``memory_visible`` is (B, T, S).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        d_memory: int | None = None,
        cross_attention: bool = False,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        p_attn = dropout if attention_dropout is None else attention_dropout
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=p_attn)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = self.encoder_attn_layer_norm = None
        if cross_attention:
            self.encoder_attn = MultiHeadAttention(d_model, num_heads, d_memory, p_attn)
            self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        self_visible: Tensor | None,
        past_kv: tuple[Tensor, Tensor] | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        memory_visible: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_kv(h)  # (B, H, T, Dh)
        k_all, v_all = (
            (k, v)
            if past_kv is None
            else (torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2))
        )
        x = x + self.dropout(self.self_attn.attend(h, k_all, v_all, self_visible))
        if self.encoder_attn is not None:
            if memory_kv is None:
                raise ValueError("this layer has cross-attention: memory_kv is required")
            h = self.encoder_attn_layer_norm(x)
            x = x + self.dropout(self.encoder_attn.attend(h, *memory_kv, memory_visible))
        h = self.final_layer_norm(x)
        x = x + self.dropout(self.fc2(self.dropout(F.relu(self.fc1(h)))))
        return x, (k, v)


def transformer_layers(cfg: TransformerDecoderConfig, d_memory: int | None = None) -> nn.ModuleList:
    """``cfg.num_layers`` :class:`TransformerLayer` of width ``cfg.d_model`` (dropouts from
    ``cfg``), with cross-attention over a memory of width ``d_memory`` when it is given."""
    return nn.ModuleList(
        TransformerLayer(
            cfg.d_model,
            cfg.num_heads,
            cfg.ffn_dim,
            cfg.dropout,
            d_memory=d_memory,
            cross_attention=d_memory is not None,
            attention_dropout=cfg.attention_dropout,
        )
        for _ in range(cfg.num_layers)
    )


def causal_visibility(query_pos: Tensor, key_pos: Tensor, key_valid: Tensor) -> Tensor:
    """query_pos (B, Tq), key_pos (B, Tk) absolute positions, key_valid (B, Tk) bool ->
    (B, Tq, Tk): key at or before the query and valid."""
    return (key_pos.unsqueeze(1) <= query_pos.unsqueeze(2)) & key_valid.unsqueeze(1)
