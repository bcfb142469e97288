"""Causal 2-D convolutional subsampling ×4: 10 ms fbank frames → 40 ms encoder frames.

Two ``Conv2d(kernel k, stride 2)`` + ReLU over (time, frequency), then a linear to ``d_model``.

Time (causal): each conv pads ``k - 1`` zero frames on the left only, so conv output ``j`` reads
its input frames ``2j - (k-1) .. 2j``. Composed, output frame ``t`` reads input (fbank) frames
``4t - 3(k-1) .. 4t`` (``4t-6 .. 4t`` for k = 3; indices < 0 are the zero padding) and nothing
later: it is final as soon as input frame ``4t`` has arrived. Lengths: ``ceil(T/2)`` after the
first conv, ``ceil(T/4)`` after the second (:func:`output_length`), whatever ``k``.

Frequency (not a streaming axis): no padding ("valid" convolutions, as ESPnet/WeNet's
``Conv2dSubsampling4``): ``F1 = (F - k)//2 + 1``, ``F2 = (F1 - k)//2 + 1`` (80 → 39 → 19 for
k = 3); the linear sees ``channels * F2`` values per frame.

Padding never leaks: frames at or beyond a stream's length are zeroed before each conv, and
outputs at or beyond ``output_length`` are zeroed.

Streaming keeps, per stream, the last ``k - 1`` frames entering each conv (zeros at the start,
which are exactly the causal padding) and the count of input frames seen, whose parity says
where the next stride-2 window starts. ``stream`` emits every output that is final, so
``final=True`` has nothing left to flush.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from echostream.config import SubsamplingConfig
from echostream.state import StreamState

SUBSAMPLING_FACTOR = 4


def output_length(input_length: int | torch.Tensor) -> int | torch.Tensor:
    """Output frames for ``input_length`` fbank frames: ceil(ceil(T/2)/2) = ceil(T/4)."""
    return (input_length + SUBSAMPLING_FACTOR - 1) // SUBSAMPLING_FACTOR


def _half_length(n: torch.Tensor) -> torch.Tensor:
    """Outputs of one causal stride-2 conv over ``n`` frames: ceil(n/2)."""
    return (n + 1) // 2


def _mask_time(x: torch.Tensor, length: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero the positions ``>= length[b]`` along ``dim`` of the batch-first tensor ``x``."""
    valid = torch.arange(x.shape[dim], device=x.device) < length[:, None]  # (B, T)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    return x.masked_fill(~valid.view(shape), 0.0)


@dataclass(frozen=True)
class SubsamplingState(StreamState):
    """Per-stream caches of a :class:`Conv2dSubsampling` (fixed size).

    ``in_cache``: (B, k-1, in_dim) last input frames; ``mid_cache``: (B, channels, k-1, F1) last
    outputs of the first conv (after ReLU); ``num_frames``: (B,) int64 input frames consumed.
    """

    in_cache: torch.Tensor
    mid_cache: torch.Tensor
    num_frames: torch.Tensor


class Conv2dSubsampling(nn.Module):
    """Causal conv subsampling ×4. ``forward``: (B, T, in_dim), (B,) → (B, ceil(T/4), out_dim)."""

    def __init__(self, in_dim: int = 80, out_dim: int = 256, cfg: SubsamplingConfig | None = None):
        super().__init__()
        cfg = cfg or SubsamplingConfig()
        cfg.validate()
        k, channels = cfg.kernel_size, cfg.channels
        self.in_dim, self.out_dim, self.kernel_size, self.channels = in_dim, out_dim, k, channels
        self.freq1 = (in_dim - k) // 2 + 1
        self.freq2 = (self.freq1 - k) // 2 + 1
        if self.freq2 < 1:
            raise ValueError(f"in_dim={in_dim} is too small for two convs of kernel {k}")
        self.conv1 = nn.Conv2d(1, channels, k, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, k, stride=2)
        self.out = nn.Linear(channels * self.freq2, out_dim)

    # ------------------------------------------------------------------ parallel

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, in_dim), x_len: (B,) → y: (B, ceil(T/4), out_dim), y_len: (B,)."""
        self._check(x, x_len)
        pad = self.kernel_size - 1
        h = _mask_time(x, x_len, dim=1).unsqueeze(1)  # (B, 1, T, in_dim)
        # conv2's causal left padding is made by conv1: 2·pad more zero input frames give pad
        # more leading outputs, zeroed with the frames past the length in one pass (padding
        # the C-channel tensor instead is a full copy forward and backward; same values).
        h = F.relu(self.conv1(F.pad(h, (0, 0, 3 * pad, 0))))  # (B, C, pad + ceil(T/2), F1)
        h_len = _half_length(x_len)
        t = torch.arange(h.shape[2], device=h.device)
        keep = (t >= pad) & (t < (h_len + pad)[:, None])  # (B, pad + ceil(T/2))
        h = F.relu(self.conv2(h * keep[:, None, :, None]))  # (B, C, ceil(T/4), F2)
        y_len = _half_length(h_len)
        y = self.out(h.transpose(1, 2).flatten(2))  # (B, T', out_dim)
        return _mask_time(y, y_len, dim=1), y_len

    # ------------------------------------------------------------------ streaming

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SubsamplingState:
        """A fresh state for ``batch_size`` streams (defaults: the parameters' device/dtype)."""
        ref = self.conv1.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        k1 = self.kernel_size - 1
        return SubsamplingState(
            in_cache=torch.zeros(batch_size, k1, self.in_dim, device=device, dtype=dtype),
            mid_cache=torch.zeros(
                batch_size, self.channels, k1, self.freq1, device=device, dtype=dtype
            ),
            num_frames=torch.zeros(batch_size, dtype=torch.int64, device=device),
        )

    def stream(
        self,
        x: torch.Tensor,
        x_len: torch.Tensor,
        state: SubsamplingState,
        final: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, SubsamplingState]:
        """New frames of B streams → their final outputs. x: (B, T, in_dim) with ``x_len[b]``
        valid frames per stream (0 allowed). Returns y (B, T', out_dim) zero-padded, y_len (B,)
        and the new state. Outputs are emitted as soon as final, so ``final`` changes nothing.
        """
        self._check(x, x_len)
        if x.shape[0] != state.batch_size:
            raise ValueError(f"state holds {state.batch_size} streams, input has {x.shape[0]}")
        x_len = x_len.to(state.num_frames.device)
        n_in = state.num_frames
        n_mid = _half_length(n_in)
        h = x.unsqueeze(1)  # (B, 1, T, in_dim)
        h, h_len, in_cache = self._stream_conv(
            self.conv1, state.in_cache.unsqueeze(1), h, x_len, n_in
        )  # (B, C, T1, F1)
        h, y_len, mid_cache = self._stream_conv(self.conv2, state.mid_cache, h, h_len, n_mid)
        y = _mask_time(self.out(h.transpose(1, 2).flatten(2)), y_len, dim=1)  # (B, T', out_dim)
        new_state = SubsamplingState(
            in_cache=in_cache.squeeze(1), mid_cache=mid_cache, num_frames=n_in + x_len
        )
        return y, y_len, new_state

    def _stream_conv(
        self,
        conv: nn.Conv2d,
        cache: torch.Tensor,
        new: torch.Tensor,
        new_len: torch.Tensor,
        seen: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One causal stride-2 conv (+ ReLU) over cached + new frames, per-stream offsets.

        cache: (B, C_in, k-1, F) last inputs; new: (B, C_in, N, F) with ``new_len`` valid;
        seen: (B,) inputs consumed before. Buffer position p holds input ``seen - (k-1) + p``.
        Output ``j`` (inputs ``2j-k+1 .. 2j``) starts at position ``2j - seen``; the first due
        output is ``ceil(seen/2)``, at position ``seen % 2``. Returns outputs (B, C, M, F'),
        their counts (B,) and the new cache (B, C_in, k-1, F).
        """
        k1 = self.kernel_size - 1
        b, c_in, n, freq = new.shape
        # Fast paths (exact): skip masks and gathers when every stream has the same shape of
        # work — the usual case (one stream, or streams fed equal chunks) — as they are no-ops.
        lengths = set(new_len.tolist())
        ragged = lengths != {n}
        buf = torch.cat([cache, _mask_time(new, new_len, dim=2) if ragged else new], dim=2)
        pos = torch.arange(k1 + n, device=buf.device)
        out_len = _half_length(seen + new_len) - _half_length(seen)  # (B,)
        # New cache: the last k-1 valid frames, positions new_len .. new_len + k-2.
        if len(lengths) == 1:
            first = lengths.pop()
            new_cache = buf[:, :, first : first + k1].clone()
        else:
            idx = (new_len[:, None] + pos[None, :k1]).view(b, 1, k1, 1).expand(b, c_in, k1, freq)
            new_cache = buf.gather(2, idx)
        if n == 0:
            return (
                buf.new_zeros(b, conv.out_channels, 0, (freq - self.kernel_size) // 2 + 1),
                out_len,
                new_cache,
            )
        # Shift odd-phase streams by one so every stream's first window starts at position 0.
        phases = set((seen % 2).tolist())
        if phases == {1}:  # what the gather below does when every shift is 1
            buf = torch.cat([buf[:, :, 1:], buf[:, :, -1:]], dim=2)
        elif phases != {0}:
            shift = (pos[None, :] + seen[:, None] % 2).clamp_max(k1 + n - 1)  # (B, k-1+N)
            buf = buf.gather(2, shift.view(b, 1, -1, 1).expand_as(buf))
        out = F.relu(conv(buf))  # (B, C, ceil(N/2), F')
        if set(out_len.tolist()) == {out.shape[2]}:
            return out, out_len, new_cache
        return _mask_time(out, out_len, dim=2), out_len, new_cache

    # ------------------------------------------------------------------ checks

    def _check(self, x: torch.Tensor, x_len: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"Conv2dSubsampling expects (B, T, {self.in_dim}) input, got {tuple(x.shape)}"
            )
        if x_len.shape != (x.shape[0],):
            raise ValueError(f"x_len must have shape ({x.shape[0]},), got {tuple(x_len.shape)}")
        if x_len.numel() and (int(x_len.min()) < 0 or int(x_len.max()) > x.shape[1]):
            raise ValueError(f"x_len must be within [0, T={x.shape[1]}], got {x_len.tolist()}")
