"""Sentence segmentation of an unbounded stream: when to close a sentence and start afresh.

The models are trained on single sentences of ~5 s. On a long stream (a talk), the simultaneous
agent closes the current *segment* (a sentence) when one of these fires, per stream:

- **pause**: the ASR CTC and the ST CTC have both output blanks for the last ``pause_ms`` of
  encoder frames, after the segment heard something (a CTC token);
- **eos** (optional): after a WRITE, the MT decoder gives EOS a probability
  ``>= eos_threshold`` at the position after the due tokens (the ST CTC has nothing pending);
- **cap**: the segment holds ``max_segment_s`` of source, or ``max_segment_tokens`` target tokens.

Closing a segment decodes it to EOS exactly as at the end of the source (budget
``min(max_len_a · memory frames + max_len_b, max_segment_tokens)``), flushes T2U, the unit
decoder and the vocoder, then restarts the MT decoder, T2U, the unit decoder and the token
stores. The encoder (Emformer, continuous and bounded) and the ST CTC decoder (block-causal,
bounded) keep running; so does the CTC collapse (a token spanning the boundary is not emitted
twice). The next segment's MT memory starts with the last ``context_frames`` encoder frames of
the closed one (0: nothing carried).

After a pause or an EOS, the new segment is *empty* until a CTC token arrives: meanwhile its
memory keeps only the last ``pause_ms`` of frames (800 ms without a pause rule: the lead-in
before the speech), it never closes on its own, and
an empty segment is not decoded at the end of the stream (silence produces no text). The first
segment of a stream and a segment opened by a cap are decoded at the end even if no CTC token
was heard in them, as a whole utterance is today (an untrained model whose CTC heads emit only
blanks still translates); ``decode_unheard=False`` treats them as empty too (silence in, nothing
out — but such a model then translates nothing).

So every stage's state is bounded by a segment: at most ``max_segment_s`` (+ ``pause_ms`` lead-in
+ ``context_frames``) of MT memory, ``min(max_segment_tokens, max_len_a · frames + max_len_b)``
target tokens (+ the EOS position; × ``upsample_rate`` unit frames) — the token cap applies to
the writes and to the closing decode alike. Both cores call :func:`close_segment` with
their own counts, so the recompute baseline takes the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import EchoStreamConfig
from ..models.subsampling import SUBSAMPLING_FACTOR


@dataclass(frozen=True)
class SegmenterConfig:
    """When the agent closes a sentence (see the module docstring). ``None`` disables a rule."""

    pause_ms: float | None = 800.0  # blanks on both CTC heads after speech
    max_segment_s: float | None = 20.0  # source audio per segment (lead-in not counted)
    max_segment_tokens: int | None = 100  # target tokens per segment
    eos_threshold: float | None = None  # MT EOS probability after the due tokens
    context_frames: int = 0  # encoder frames carried into the next segment's MT memory
    decode_unheard: bool = True  # decode a segment no CTC token was heard in (see above)

    def validate(self) -> SegmenterConfig:
        for name in ("pause_ms", "max_segment_s", "max_segment_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"SegmenterConfig.{name} must be > 0 or None, got {value}")
        if self.eos_threshold is not None and not 0.0 < self.eos_threshold <= 1.0:
            raise ValueError(
                f"SegmenterConfig.eos_threshold must be in (0, 1], got {self.eos_threshold}"
            )
        if self.context_frames < 0:
            raise ValueError(
                f"SegmenterConfig.context_frames must be >= 0, got {self.context_frames}"
            )
        return self

    @classmethod
    def off(cls) -> SegmenterConfig:
        """One segment per stream: the unbounded behaviour of an utterance-level agent."""
        return cls(None, None, None, None, 0, True)


@dataclass(frozen=True)
class SegmentRules:
    """A :class:`SegmenterConfig` in encoder frames (40 ms) for one model."""

    pause_frames: int | None
    max_frames: int | None
    max_tokens: int | None
    eos_threshold: float | None
    context_frames: int
    decode_unheard: bool
    lead_frames: int  # frames an empty segment (after a pause or an EOS) keeps in its memory

    @classmethod
    def build(cls, cfg: SegmenterConfig | None, model_cfg: EchoStreamConfig) -> SegmentRules:
        cfg = (cfg or SegmenterConfig.off()).validate()
        frame_ms = model_cfg.features.frame_shift_ms * SUBSAMPLING_FACTOR
        pause = None if cfg.pause_ms is None else max(1, round(cfg.pause_ms / frame_ms))
        cap = (
            None
            if cfg.max_segment_s is None
            else max(1, round(1000 * cfg.max_segment_s / frame_ms))
        )
        lead = pause if pause is not None else max(1, round(800 / frame_ms))
        return cls(
            pause,
            cap,
            cfg.max_segment_tokens,
            cfg.eos_threshold,
            cfg.context_frames,
            cfg.decode_unheard,
            lead,
        )

    def empty(self, after_pause: Tensor, spoke: Tensor) -> Tensor:
        """(B,) bool: segments that heard nothing and are not decoded (see module docstring)."""
        return ~spoke & (after_pause | (not self.decode_unheard))


def close_segment(
    rules: SegmentRules,
    seg_frames: Tensor,
    tokens: Tensor,
    spoke: Tensor,
    empty: Tensor,
    asr_blank_run: Tensor,
    st_blank_run: Tensor,
) -> tuple[Tensor, Tensor]:
    """Which streams close their segment now, all (B,) tensors: frames counted toward the cap,
    target tokens in the segment, whether it heard a CTC token, whether it is an empty segment
    after a pause (never closes), trailing blank frames of each CTC head ->
    (closes (B,) bool, closed by a pause (B,) bool)."""
    no = torch.zeros_like(spoke)
    pause = no
    if rules.pause_frames is not None:
        pause = spoke & (asr_blank_run >= rules.pause_frames) & (st_blank_run >= rules.pause_frames)
    cap = no
    if rules.max_frames is not None:
        cap = cap | (seg_frames >= rules.max_frames)
    if rules.max_tokens is not None:
        cap = cap | (tokens >= rules.max_tokens)
    return (pause | cap) & ~empty, pause & ~empty
