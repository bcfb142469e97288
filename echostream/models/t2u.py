"""T2U encoder: causal pre-norm transformer layers over the MT decoder's hidden states.

As StreamSpeech's ``UniTransformerEncoderNoEmb``: no positional encoding (the MT hidden states
carry it), causal self-attention, pre-norm layers and a final LayerNorm. An input projection is
added when the MT decoder's width differs from ``cfg.d_model``. ``num_layers = 0`` is
StreamSpeech's "no synthesizer encoder": the output is the input (projected if the widths
differ), with no LayerNorm.

Causal, so every position is final as soon as it arrives: ``stream`` returns exactly one output
per new input, and its state is the per-layer keys/values of the positions so far (it grows
with the text, like the MT decoder's; :meth:`T2UState.restart` empties it per stream when the
agent starts a new sentence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from echostream.config import TransformerDecoderConfig
from echostream.models.layers import (
    append_ragged,
    causal_visibility,
    lengths_to_mask,
    transformer_layers,
    zero_padding,
)
from echostream.state import StreamState


@dataclass(frozen=True)
class T2UState(StreamState):
    """Left-aligned per-layer self-attention cache of the text positions so far."""

    self_k: Tensor  # (B, L, H, U, Dh)
    self_v: Tensor  # (B, L, H, U, Dh)
    length: Tensor  # (B,) positions so far

    def restart(self, restart: Tensor) -> T2UState:
        """Forget the positions of the streams ``restart`` (B,) bool (a new sentence)."""
        length = torch.where(restart, 0, self.length)
        width = int(length.max()) if length.numel() else 0
        return T2UState(self.self_k[..., :width, :], self.self_v[..., :width, :], length)


class T2UEncoder(nn.Module):
    """forward(h (B, U, d_in), h_len (B,)) -> out (B, U, d_model), h_len."""

    def __init__(self, cfg: TransformerDecoderConfig, d_in: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model, self.num_heads, self.head_dim = d, cfg.num_heads, d // cfg.num_heads
        self.input_proj = nn.Linear(d_in, d) if d_in != d else None
        self.layers = transformer_layers(cfg)
        self.layer_norm = nn.LayerNorm(d) if cfg.num_layers else None

    def _input(self, h: Tensor, h_len: Tensor) -> Tensor:
        h = zero_padding(h, h_len)
        return self.input_proj(h) if self.input_proj is not None else h

    def _output(self, x: Tensor) -> Tensor:
        return self.layer_norm(x) if self.layer_norm is not None else x

    def forward(self, h: Tensor, h_len: Tensor) -> tuple[Tensor, Tensor]:
        x = self._input(h, h_len)
        batch, length = x.shape[:2]
        pos = torch.arange(length, device=x.device).expand(batch, length)
        visible = causal_visibility(pos, pos, lengths_to_mask(h_len, length))
        for layer in self.layers:
            x, _ = layer(x, visible)
        return self._output(x), h_len

    def init_state(self, batch_size: int) -> T2UState:
        p = next(self.parameters(), None)
        device = p.device if p is not None else None
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        empty = torch.zeros(
            batch_size,
            len(self.layers),
            self.num_heads,
            0,
            self.head_dim,
            device=device,
            dtype=dtype,
        )
        return T2UState(
            empty, empty.clone(), torch.zeros(batch_size, dtype=torch.long, device=device)
        )

    def stream(
        self, h_new: Tensor, h_len: Tensor, state: T2UState, final: bool = False
    ) -> tuple[Tensor, Tensor, T2UState]:
        """h_new (B, N, d_in) new MT hidden states, h_len (B,) -> out (B, N, d_model) (all
        final), h_len, state. ``final`` is accepted for the contract; nothing is held back."""
        x = self._input(h_new, h_len)
        batch, n = x.shape[:2]
        pos = state.length.unsqueeze(1) + torch.arange(n, device=x.device)
        past = state.self_k.shape[3]
        key_pos = torch.cat([torch.arange(past, device=x.device).expand(batch, past), pos], 1)
        key_valid = torch.cat([lengths_to_mask(state.length, past), lengths_to_mask(h_len, n)], 1)
        visible = causal_visibility(pos, key_pos, key_valid)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, visible, past_kv=(state.self_k[:, i], state.self_v[:, i]))
            new_k.append(k)
            new_v.append(v)
        if self.layers:
            state = state.replace(
                self_k=append_ragged(state.self_k, state.length, torch.stack(new_k, 1), h_len),
                self_v=append_ragged(state.self_v, state.length, torch.stack(new_v, 1), h_len),
            )
        return self._output(x), h_len, state.replace(length=state.length + h_len)
