"""Small models, configs and signals shared by tests.

``tiny_config`` is a tiny EchoStream config (Emformer or chunk-Conformer encoder), with keywords
for the variants the test files need; ``busy_model`` is a tiny random model whose CTC heads fire
often, so that the simultaneous policy writes at many steps (an untrained model mostly outputs
blanks); ``speechlike`` is a deterministic tone-and-noise signal at 16 kHz; ``torch_threads``
runs a block on n torch threads.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from echostream.config import (
    ConformerConfig,
    CTCDecoderConfig,
    EchoStreamConfig,
    EmformerConfig,
    EncoderConfig,
    LossConfig,
    SubsamplingConfig,
    TransformerDecoderConfig,
    UnitDecoderConfig,
    VocabConfig,
    validate_config,
)
from echostream.models import build_model
from echostream.models.unit_vocoder import UnitVocoder, UnitVocoderConfig

MODEL_OF = {"emformer": "echostream", "conformer": "streamspeech"}  # encoder kind -> model
KIND_OF = {model: kind for kind, model in MODEL_OF.items()}  # model -> encoder kind


def tiny_config(
    kind: str = "emformer",
    *,
    channels: int = 16,
    d_model: int = 32,
    num_heads: int = 4,
    ffn_dim: int = 64,
    decoder_dims: tuple[int, int, int] | None = None,
    mt_layers: int = 1,
    upsample_rate: int = 3,
    vocab: tuple[int, int, int] = (12, 12, 10),
    ctc_left_context: int | None = None,
    label_smoothing: float | None = None,
    emformer: dict[str, Any] | None = None,
    conformer: dict[str, Any] | None = None,
) -> EchoStreamConfig:
    """A validated EchoStream config without dropout; ``kind``: "emformer" (model "echostream")
    or "conformer" (model "streamspeech").

    By default: 16 subsampling channels; 2-layer encoders of width ``d_model`` = 32 with
    ``num_heads`` = 4 and ``ffn_dim`` = 64 (Emformer: segments of 4, left context 8, no right
    context, memory 2; Conformer: kernel 5, chunks of 4); a 1-layer ST-CTC decoder with the
    encoder's heads and FFN width; 1-layer MT, T2U and unit decoders (``mt_layers`` for MT) of
    ``decoder_dims`` = (width, heads, FFN width), the encoder's unless given, upsampling by 3;
    ``vocab`` = (source pieces, target pieces, units) = (12, 12, 10). ``ctc_left_context`` and
    ``label_smoothing`` replace the config defaults when given. ``emformer`` / ``conformer``
    override fields of that encoder body (both bodies are set; ``kind`` picks the one used)."""
    if kind not in MODEL_OF:
        raise ValueError(f"kind must be one of {sorted(MODEL_OF)}, got {kind!r}")
    body = {"d_model": d_model, "num_layers": 2, "num_heads": num_heads, "ffn_dim": ffn_dim}
    body["dropout"] = 0.0
    emformer_fields = dict(
        body, segment_length=4, left_context_length=8, right_context_length=0, memory_size=2
    )
    conformer_fields = dict(body, conv_kernel_size=5, chunk_size=4)
    dec_model, dec_heads, dec_ffn = decoder_dims or (d_model, num_heads, ffn_dim)
    dec = {"d_model": dec_model, "num_heads": dec_heads, "ffn_dim": dec_ffn}
    dec |= {"dropout": 0.0, "attention_dropout": 0.0}
    ctc = {} if ctc_left_context is None else {"left_context_length": ctc_left_context}
    loss = {} if label_smoothing is None else {"label_smoothing": label_smoothing}
    cfg = EchoStreamConfig(
        model=MODEL_OF[kind],
        subsampling=SubsamplingConfig(channels=channels),
        encoder=EncoderConfig(
            type=kind,
            emformer=EmformerConfig(**{**emformer_fields, **(emformer or {})}),
            conformer=ConformerConfig(**{**conformer_fields, **(conformer or {})}),
        ),
        vocab=VocabConfig(src_vocab_size=vocab[0], tgt_vocab_size=vocab[1], num_units=vocab[2]),
        st_ctc_decoder=CTCDecoderConfig(
            num_layers=1, num_heads=num_heads, ffn_dim=ffn_dim, dropout=0.0, **ctc
        ),
        mt_decoder=TransformerDecoderConfig(num_layers=mt_layers, **dec),
        t2u_encoder=TransformerDecoderConfig(num_layers=1, **dec),
        unit_decoder=UnitDecoderConfig(num_layers=1, upsample_rate=upsample_rate, **dec),
        loss=LossConfig(**loss),
    )
    return validate_config(cfg)


def busy_model(seed: int = 0, kind: str = "emformer"):
    """(model, vocoder): a ``tiny_config(kind)`` model with random weights (``seed``), its CTC
    heads scaled so that they react strongly to the input and emit often, and a tiny vocoder."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(kind)).eval()
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


def assert_same_outputs(got: list[list], singles: list[list]) -> None:
    """Per stream, the StepOutputs of a batched run equal those of the stream run alone: the
    same source, target and unit ids (joined over steps) and the same audio (≤ 1e-5)."""
    for i, (batched, alone) in enumerate(zip(got, singles, strict=True)):
        for name in ("asr_ids", "target_ids", "units"):
            joined = [x for o in batched for x in getattr(o, name)]
            assert joined == [x for o in alone for x in getattr(o, name)], (i, name)
        np.testing.assert_allclose(
            torch.cat([o.audio for o in batched]).numpy(),
            torch.cat([o.audio for o in alone]).numpy(),
            atol=1e-5,
        )


@contextmanager
def torch_threads(n: int):
    """Run the block on ``n`` torch threads, then restore the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
