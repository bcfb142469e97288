"""SpecAugment (Park et al., 2019) on a padded fbank batch: frequency and time masks.

StreamSpeech's setting (fairseq ``config_gcmvn.yaml``): one frequency mask of width ≤ F = 27
bins, one time mask of width ≤ min(T = 100, p · frames) frames, p = 1, no time warping. Every
random number comes from the ``torch.Generator`` passed in (on the CPU, whatever the batch's
device), so augmentation is a pure function of the generator state: a resumed run that restores
the generator masks exactly as the uninterrupted one.

Masked entries take ``mask_value``: per-bin values (80,) — the trainer passes the global CMVN
mean, so a masked entry is 0 after normalisation, as fairseq masks the normalised features with
their mean — or a scalar, or None for each utterance's own mean over its valid frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from echostream.training.config import SpecAugmentConfig


def _uniform_int(u: Tensor, high: Tensor) -> Tensor:
    """Map uniforms ``u`` in [0, 1) to integers uniform in ``[0, high]`` (elementwise)."""
    return torch.minimum((u * (high + 1).to(u.dtype)).floor().long(), high)


def _span_mask(starts: Tensor, widths: Tensor, size: int) -> Tensor:
    """starts, widths (B, N) → (B, size) bool, True inside any of the N spans."""
    pos = torch.arange(size)[None, None, :]  # (1, 1, size)
    inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (B, N, size)
    return inside.any(1)


class SpecAugment:
    """``aug(fbank, fbank_len, generator)`` → masked copy of fbank (B, T, F); padding untouched."""

    def __init__(self, cfg: SpecAugmentConfig | None = None, mask_value: Tensor | None = None):
        self.cfg = cfg or SpecAugmentConfig()
        self.mask_value = mask_value  # (F,) per-bin value, or None: each utterance's mean

    def masks(
        self, fbank_len: Tensor, num_bins: int, max_frames: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw the masks. fbank_len (B,) → freq (B, num_bins) bool, time (B, max_frames) bool.

        Draws a fixed amount of randomness per utterance (4 uniforms per mask), whatever the
        lengths, so the generator advances identically for any batch of the same size.
        """
        c = self.cfg
        lengths = fbank_len.detach().cpu().long()
        batch = lengths.shape[0]
        u = torch.rand(batch, 2 * (c.freq_mask_N + c.time_mask_N), generator=generator)
        u = u.to(torch.float64)
        uf_w, uf_s = u[:, : c.freq_mask_N], u[:, c.freq_mask_N : 2 * c.freq_mask_N]
        ut = u[:, 2 * c.freq_mask_N :]
        ut_w, ut_s = ut[:, : c.time_mask_N], ut[:, c.time_mask_N :]

        f_max = torch.full((batch, c.freq_mask_N), min(c.freq_mask_F, num_bins))
        f_w = _uniform_int(uf_w, f_max)
        f_s = _uniform_int(uf_s, num_bins - f_w)
        t_cap = torch.clamp((lengths.double() * c.time_mask_p).floor().long(), max=c.time_mask_T)
        t_max = t_cap[:, None].expand(batch, c.time_mask_N)
        t_w = _uniform_int(ut_w, t_max)
        t_s = _uniform_int(ut_s, lengths[:, None] - t_w)
        return _span_mask(f_s, f_w, num_bins), _span_mask(t_s, t_w, max_frames)

    def __call__(self, fbank: Tensor, fbank_len: Tensor, generator: torch.Generator) -> Tensor:
        """fbank (B, T, F) raw log-mel, fbank_len (B,) → masked fbank (B, T, F), a new tensor."""
        if not self.cfg.enabled or fbank.shape[0] == 0:
            return fbank
        _, frames, bins = fbank.shape
        freq, time = self.masks(fbank_len, bins, frames, generator)
        valid = torch.arange(frames)[None, :] < fbank_len.detach().cpu()[:, None]  # (B, T)
        mask = (freq[:, None, :] | time[:, :, None]) & valid[:, :, None]  # (B, T, F)
        mask = mask.to(fbank.device)
        if self.mask_value is not None:
            value = self.mask_value.to(device=fbank.device, dtype=fbank.dtype)  # (F,)
            value = value.expand_as(fbank)
        else:
            vmask = valid.to(fbank.device)[:, :, None]
            count = (fbank_len.to(fbank.device).clamp_min(1) * bins).to(fbank.dtype)
            mean = (fbank * vmask).sum((1, 2)) / count  # (B,)
            value = mean[:, None, None].expand_as(fbank)
        return torch.where(mask, value, fbank)
