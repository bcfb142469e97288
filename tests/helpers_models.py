"""Small models and signals shared by tests (copied from tests/test_streaming.py's helpers).

``busy_model`` is a tiny random EchoStream model whose CTC heads fire often, so that the
simultaneous policy writes at many steps (an untrained model mostly outputs blanks);
``speechlike`` is a deterministic tone-and-noise signal at 16 kHz.
"""

from __future__ import annotations

import numpy as np
import torch

from echostream.config import EchoStreamConfig, EmformerConfig, validate_config
from echostream.models import build_model
from echostream.models.unit_vocoder import UnitVocoder, UnitVocoderConfig


def tiny_config() -> EchoStreamConfig:
    """A 2-layer Emformer EchoStream config with 12-token vocabularies and 10 units."""
    cfg = EchoStreamConfig()
    cfg.subsampling.channels = 16
    cfg.encoder.emformer = EmformerConfig(
        d_model=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        segment_length=4,
        left_context_length=8,
        right_context_length=0,
        memory_size=2,
        dropout=0.0,
    )
    cfg.vocab.src_vocab_size = cfg.vocab.tgt_vocab_size = 12
    cfg.vocab.num_units = 10
    cfg.st_ctc_decoder.num_layers, cfg.st_ctc_decoder.ffn_dim = 1, 64
    cfg.st_ctc_decoder.dropout = 0.0
    for dec in (cfg.mt_decoder, cfg.t2u_encoder, cfg.unit_decoder):
        dec.d_model, dec.num_heads, dec.ffn_dim, dec.num_layers, dec.dropout = 32, 4, 64, 1, 0.0
    cfg.unit_decoder.upsample_rate = 3
    return validate_config(cfg)


def busy_model(seed: int = 0):
    """(model, vocoder): random weights, CTC heads scaled so that they emit often."""
    torch.manual_seed(seed)
    model = build_model(tiny_config()).eval()
    with torch.no_grad():
        for head in (model.asr_ctc, model.st_ctc.head):
            head.proj.weight.mul_(30.0)
        model.mt_decoder.embed_tokens.weight.normal_(0, 1.0)
    vocoder = UnitVocoder(
        UnitVocoderConfig(num_units=10, unit_dim=16, frame_dim=16, unit_layers=1, frame_layers=1)
    ).eval()
    return model, vocoder


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """(N,) float32 at 16 kHz: 200 ms segments of tones and noise at random frequencies/levels."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(int(seconds / 0.2)):
        t = torch.arange(3200) / 16000
        f = float(torch.randint(100, 3000, (1,), generator=g))
        amp = float(torch.rand(1, generator=g)) * 0.5
        noise = amp * float(torch.rand(1, generator=g)) * torch.randn(3200, generator=g)
        parts.append(amp * torch.sin(2 * torch.pi * f * t) + noise)
    return torch.cat(parts).numpy().astype(np.float32)
