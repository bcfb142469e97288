"""Non-autoregressive unit decoder: T2U positions upsampled ×rate, transformer layers, unit CTC.

As StreamSpeech's ``CTCTransformerUnitDecoder``: every T2U output position is repeated
``upsample_rate`` times (position ``p`` gives frames ``p·rate … p·rate + rate - 1``), sinusoidal
positions of the frame index are added (first position :data:`POSITION_OFFSET`), then pre-norm
layers with causal self-attention over the frames and cross-attention to the T2U outputs
(keys/values read them at their own width ``d_in``), a final LayerNorm and a bias-free CTC head
over ``num_units + 1`` classes (class 0 blank, unit ``u`` is class ``u + 1``, see ``ctc.py``).

Deliberate change from StreamSpeech: a frame of source position ``p`` cross-attends only to T2U
positions ``<= p`` (StreamSpeech's streaming mask with ``src_wait = 0, src_step = 1`` — used in
its training — whereas its agent re-runs the unit decoder over the whole text at every step).
With causal self-attention that makes the decoder incremental: new text positions produce new
unit frames, old frames are final and never recomputed. The state holds, per layer, the
self-attention keys/values of the frames so far and the cross-attention keys/values of the T2U
positions so far (both grow with the sentence; :meth:`UnitDecoderState.restart` empties them per
stream when the agent starts a new sentence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from echostream.config import UnitDecoderConfig
from echostream.models.ctc import CTCHead, greedy_ctc
from echostream.models.layers import (
    POSITION_OFFSET,
    append_ragged,
    causal_visibility,
    lengths_to_mask,
    sinusoidal_positions,
    transformer_layers,
    zero_padding,
)
from echostream.state import StreamState

UNIT_ID_OFFSET = 1  # unit u is CTC class u + 1 (class 0 is the prepended blank)


@dataclass(frozen=True)
class UnitDecoderState(StreamState):
    """Left-aligned caches; frames so far = ``num_positions * upsample_rate``."""

    self_k: Tensor  # (B, L, H, F, Dh) self-attention keys of the unit frames so far
    self_v: Tensor  # (B, L, H, F, Dh)
    mem_k: Tensor  # (B, L, H, P, Dh) cross-attention keys of the T2U positions so far
    mem_v: Tensor  # (B, L, H, P, Dh)
    num_positions: Tensor  # (B,) T2U positions so far

    def restart(self, restart: Tensor, rate: int) -> UnitDecoderState:
        """Forget the positions (and their ``rate`` frames each) of the streams ``restart``
        (B,) bool: a new sentence starts at frame 0."""
        positions = torch.where(restart, 0, self.num_positions)
        width = int(positions.max()) if positions.numel() else 0
        f = width * rate
        return UnitDecoderState(
            self.self_k[..., :f, :],
            self.self_v[..., :f, :],
            self.mem_k[..., :width, :],
            self.mem_v[..., :width, :],
            positions,
        )


class UnitDecoder(nn.Module):
    """forward(t2u_out (B, P, d_in), t2u_len (B,)) -> logits (B, P·rate, num_units + 1),
    frame lengths (B,) = t2u_len·rate."""

    def __init__(self, cfg: UnitDecoderConfig, num_units: int, d_in: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model, self.rate = d, cfg.upsample_rate
        self.num_heads, self.head_dim = cfg.num_heads, d // cfg.num_heads
        self.input_proj = nn.Linear(d_in, d) if d_in != d else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = transformer_layers(cfg, d_memory=d_in)
        self.layer_norm = nn.LayerNorm(d)
        self.head = CTCHead(d, num_units, prepend_blank=True, bias=False)

    def _frames(self, t2u: Tensor, first_frame: Tensor) -> Tensor:
        """t2u (B, P, d_in) -> upsampled frames (B, P·rate, D) whose first frame has absolute
        index first_frame (B,)."""
        x = t2u.repeat_interleave(self.rate, dim=1)
        if self.input_proj is not None:
            x = self.input_proj(x)
        index = first_frame.unsqueeze(1) + torch.arange(x.shape[1], device=x.device)
        pos = sinusoidal_positions(index + POSITION_OFFSET, self.d_model).to(x.dtype)
        return self.dropout(x + pos)

    def forward(self, t2u_out: Tensor, t2u_len: Tensor) -> tuple[Tensor, Tensor]:
        t2u_out = zero_padding(t2u_out, t2u_len)
        batch, positions = t2u_out.shape[:2]
        x = self._frames(t2u_out, t2u_len.new_zeros(batch))
        frames = torch.arange(x.shape[1], device=x.device).expand(batch, -1)
        frame_len = t2u_len * self.rate
        self_visible = causal_visibility(frames, frames, lengths_to_mask(frame_len, x.shape[1]))
        src = torch.arange(positions, device=x.device).expand(batch, -1)
        memory_visible = causal_visibility(
            frames // self.rate, src, lengths_to_mask(t2u_len, positions)
        )
        for layer in self.layers:
            memory_kv = layer.encoder_attn.project_kv(t2u_out)
            x, _ = layer(x, self_visible, memory_kv=memory_kv, memory_visible=memory_visible)
        return self.head(self.layer_norm(x)), frame_len

    def init_state(self, batch_size: int) -> UnitDecoderState:
        w = self.head.proj.weight
        empty = w.new_zeros(batch_size, len(self.layers), self.num_heads, 0, self.head_dim)
        return UnitDecoderState(
            empty,
            empty.clone(),
            empty.clone(),
            empty.clone(),
            torch.zeros(batch_size, dtype=torch.long, device=w.device),
        )

    def stream(
        self, t2u_new: Tensor, new_len: Tensor, state: UnitDecoderState, final: bool = False
    ) -> tuple[Tensor, Tensor, UnitDecoderState]:
        """t2u_new (B, N, d_in) new T2U positions, new_len (B,) -> logits of their frames
        (B, N·rate, num_units + 1) (all final), frame counts (B,) = new_len·rate, state.
        ``final`` is accepted for the contract; nothing is held back."""
        t2u_new = zero_padding(t2u_new, new_len)
        batch = t2u_new.shape[0]
        x = self._frames(t2u_new, state.num_positions * self.rate)
        frames = state.num_positions.unsqueeze(1) * self.rate + torch.arange(
            x.shape[1], device=x.device
        )  # (B, N·rate) absolute frame indices
        frame_len = new_len * self.rate
        past = state.self_k.shape[3]
        key_frames = torch.cat([torch.arange(past, device=x.device).expand(batch, past), frames], 1)
        key_valid = torch.cat(
            [
                lengths_to_mask(state.num_positions * self.rate, past),
                lengths_to_mask(frame_len, x.shape[1]),
            ],
            1,
        )
        self_visible = causal_visibility(frames, key_frames, key_valid)
        positions = state.num_positions + new_len
        mem_k, mem_v, new_k, new_v = [], [], [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.encoder_attn.project_kv(t2u_new)  # only the new positions
            mem_k.append(append_ragged(state.mem_k[:, i], state.num_positions, k, new_len))
            mem_v.append(append_ragged(state.mem_v[:, i], state.num_positions, v, new_len))
            if i == 0:
                src = torch.arange(mem_k[0].shape[2], device=x.device).expand(batch, -1)
                memory_visible = causal_visibility(
                    frames // self.rate, src, lengths_to_mask(positions, src.shape[1])
                )
            x, (k, v) = layer(
                x,
                self_visible,
                past_kv=(state.self_k[:, i], state.self_v[:, i]),
                memory_kv=(mem_k[i], mem_v[i]),
                memory_visible=memory_visible,
            )
            new_k.append(k)
            new_v.append(v)
        logits = self.head(self.layer_norm(x))
        if self.layers:
            frames_before = state.num_positions * self.rate
            state = state.replace(
                self_k=append_ragged(state.self_k, frames_before, torch.stack(new_k, 1), frame_len),
                self_v=append_ragged(state.self_v, frames_before, torch.stack(new_v, 1), frame_len),
                mem_k=torch.stack(mem_k, 1),
                mem_v=torch.stack(mem_v, 1),
            )
        return logits, frame_len, state.replace(num_positions=positions)

    @staticmethod
    def units(
        logits: Tensor, frame_len: Tensor, suppress: Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        """Greedy CTC collapse to unit ids (repeats merged, blanks dropped, as StreamSpeech's
        deduplicated units): logits (B, F, C), frame_len (B,) -> units (B, N) (-1 padded),
        counts (B,). Incrementally: :func:`echostream.models.ctc.greedy_ctc_stream` with
        ``id_offset=UNIT_ID_OFFSET``."""
        return greedy_ctc(logits, frame_len, UNIT_ID_OFFSET, suppress)
