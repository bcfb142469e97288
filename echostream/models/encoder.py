"""SpeechEncoder: front end (fbank → global CMVN) + causal conv subsampling ×4 + body.

The body is EchoStream's :class:`~echostream.models.emformer.Emformer` or StreamSpeech's
:class:`~echostream.models.conformer.ChunkConformer`, chosen by ``cfg.encoder.type``. The whole
encoder follows the streaming contract of DESIGN.md, from fbank frames or from 16 kHz PCM::

    enc, enc_len = encoder(feats, feat_len)                       # parallel, training
    state = encoder.init_state(batch_size)                        # mode="recompute" for baseline
    enc, enc_len, state = encoder.stream(feats, feat_len, state)  # any number of new frames
    enc, enc_len, state = encoder.stream_pcm(pcm, pcm_len, state) # any number of new samples

Concatenated ``stream`` outputs equal ``forward`` on the same input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..audio.features import FbankExtractor, FbankState, GlobalCMVN
from ..config import EchoStreamConfig
from ..state import StreamState
from .conformer import ChunkConformer
from .emformer import Emformer
from .subsampling import Conv2dSubsampling


@dataclasses.dataclass(frozen=True)
class SpeechEncoderState(StreamState):
    fbank: FbankState  # PCM residual (used by stream_pcm only)
    subsampling: StreamState
    body: StreamState


class SpeechEncoder(nn.Module):
    """fbank (B, T, 80) or PCM (B, S) → encoder frames (B, T', d_model), 40 ms each."""

    def __init__(self, cfg: EchoStreamConfig):
        super().__init__()
        self.cfg = cfg
        self.fbank = FbankExtractor(cfg.features)
        # CMVN statistics are buffers of this module, so a checkpoint carries them.
        self.cmvn = (
            GlobalCMVN.load(cfg.features.cmvn_path)
            if cfg.features.cmvn_path
            else GlobalCMVN.identity(cfg.features.num_mel_bins)
        )
        d_model = cfg.encoder.d_model
        self.subsampling = Conv2dSubsampling(cfg.features.num_mel_bins, d_model, cfg.subsampling)
        if cfg.encoder.type == "emformer":
            self.body: Emformer | ChunkConformer = Emformer(cfg.encoder.emformer)
            self.block_frames = cfg.encoder.emformer.segment_length
        else:
            self.body = ChunkConformer(cfg.encoder.conformer)
            self.block_frames = cfg.encoder.conformer.chunk_size

    @property
    def d_model(self) -> int:
        return self.cfg.encoder.d_model

    def set_cmvn(self, cmvn: GlobalCMVN) -> None:
        self.cmvn.mean.copy_(cmvn.mean)
        self.cmvn.std.copy_(cmvn.std)
        self.cmvn.count = cmvn.count

    def _normalise(self, feats: torch.Tensor) -> torch.Tensor:
        return self.cmvn(feats)

    def _check_feats(self, feats: torch.Tensor, feat_len: torch.Tensor) -> None:
        mel = self.cfg.features.num_mel_bins
        if feats.dim() != 3 or feats.shape[-1] != mel:
            raise ValueError(f"SpeechEncoder expects fbank (B, T, {mel}), got {tuple(feats.shape)}")
        if feat_len.shape != (feats.shape[0],):
            raise ValueError(f"feat_len must be ({feats.shape[0]},), got {tuple(feat_len.shape)}")

    # ------------------------------------------------------------------ parallel

    def forward(
        self, feats: torch.Tensor, feat_len: torch.Tensor, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, 80), feat_len (B,) → enc (B, T', D), enc_len (B,).

        ``chunk_size`` (Conformer only) overrides the attention chunk for multi-chunk training.
        """
        self._check_feats(feats, feat_len)
        x, x_len = self.subsampling(self._normalise(feats), feat_len)  # (B, T', D)
        if isinstance(self.body, ChunkConformer):
            return self.body(x, x_len, chunk_size=chunk_size)
        return self.body(x, x_len)

    def features(self, pcm: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Whole-utterance fbank of 16 kHz mono PCM (S,) → (T, 80), not normalised."""
        return self.fbank(pcm)

    def encode_pcm(self, pcm: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One whole utterance of 16 kHz mono PCM (S,) → (T', D)."""
        feats = self.features(pcm).to(self.cmvn.mean.device)
        enc, _ = self(feats[None], torch.tensor([feats.shape[0]], device=feats.device))
        return enc[0]

    # ------------------------------------------------------------------ streaming

    def init_state(self, batch_size: int, mode: str = "cached") -> SpeechEncoderState:
        """``mode`` applies to the Conformer: ``cached`` or ``recompute`` (StreamSpeech's agent)."""
        device, dtype = self.cmvn.mean.device, self.cmvn.mean.dtype
        if isinstance(self.body, ChunkConformer):
            body = self.body.init_state(batch_size, mode=mode, device=device, dtype=dtype)
        else:
            if mode not in ("cached", "recompute"):
                raise ValueError(f"mode must be 'cached' or 'recompute', got {mode!r}")
            body = self.body.init_state(batch_size, device=device, dtype=dtype)
        return SpeechEncoderState(
            fbank=self.fbank.init_state(batch_size),
            subsampling=self.subsampling.init_state(batch_size, device=device, dtype=dtype),
            body=body,
        )

    def stream(
        self,
        feats: torch.Tensor,
        feat_len: torch.Tensor,
        state: SpeechEncoderState,
        final: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, SpeechEncoderState]:
        """New fbank frames (B, T, 80) of each stream → new final encoder frames (B, T', D)."""
        self._check_feats(feats, feat_len)
        x, x_len, sub_state = self.subsampling.stream(
            self._normalise(feats), feat_len, state.subsampling, final=final
        )
        y, y_len, body_state = self.body.stream(x, x_len, state.body, final=final)
        return y, y_len, state.replace(subsampling=sub_state, body=body_state)

    def stream_pcm(
        self,
        pcm: torch.Tensor,
        pcm_len: torch.Tensor,
        state: SpeechEncoderState,
        final: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, SpeechEncoderState]:
        """New 16 kHz samples (B, S) of each stream → new final encoder frames (B, T', D)."""
        if pcm.dim() != 2 or pcm_len.shape != (pcm.shape[0],):
            raise ValueError(
                f"stream_pcm expects pcm (B, S) and pcm_len (B,), got "
                f"{tuple(pcm.shape)} and {tuple(pcm_len.shape)}"
            )
        feats, feat_len, fbank_state = self.fbank.stream(pcm, pcm_len, state.fbank, final=final)
        feats = feats.to(self.cmvn.mean.device)
        y, y_len, state = self.stream(
            feats, feat_len.to(feats.device), state.replace(fbank=fbank_state), final=final
        )
        return y, y_len, state
