"""StreamSpeech's agent as it runs: at every step, recompute everything from the start.

At each decision step the whole source prefix is re-featurised and re-encoded (O(T²) over an
utterance), the CTC heads re-run over all frames, the MT decoder re-runs teacher-forced over the
whole target prefix for every new token, and T2U, the unit decoder and the vocoder re-run over
the whole output so far; new output is what lies beyond what was already emitted. This is the
cost model the EchoStream paper measures against, kept for A/B comparisons. One stream at a time.

The decisions are StreamSpeech's policy, identical to :class:`~echostream.streaming.core.
IncrementalCore`; each MT position attends to the encoder frames that were final when it was
fed (``enc_visible``), so both cores produce the same text, units and audio — the equivalence
test checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.ctc import greedy_ctc
from ..models.echostream import TEXT_CTC_SUPPRESS, EchoStreamModel
from ..models.emformer import Emformer
from ..models.subsampling import output_length
from ..models.unit_vocoder import UnitVocoder
from ..text.tokenizer import BOS_ID, EOS_ID, PAD_ID
from .core import StepOutput, word_start_table


@dataclass
class RecomputeState:
    """The whole history of one stream (it grows: that is the point of this baseline)."""

    pcm: Tensor = field(default_factory=lambda: torch.zeros(0))
    asr: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)  # encoder frames seen by each position
    asr_at_write: int = 0
    st_at_write: int = 0
    units: list[int] = field(default_factory=list)
    samples_out: int = 0

    def nbytes(self) -> int:
        return self.pcm.numel() * 4 + 8 * (
            len(self.asr) + len(self.target) + len(self.visible) + len(self.units)
        )


class RecomputeCore:
    """Same interface as :class:`IncrementalCore` (``init_state`` / ``step``) for one stream."""

    def __init__(
        self,
        model: EchoStreamModel,
        vocoder: UnitVocoder | None = None,
        whole_word: bool = False,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
    ):
        self.model = model.eval()
        self.vocoder = vocoder.eval() if vocoder is not None else None
        self.whole_word = whole_word
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        if whole_word:
            self._is_word_start = word_start_table(model).tolist()

    def init_state(self, batch_size: int = 1) -> RecomputeState:
        if batch_size != 1:
            raise ValueError("the recompute baseline runs one stream at a time")
        return RecomputeState()

    def _final_frames(self, frames: int, final: bool) -> int:
        """Encoder frames the streaming encoder would have made final by now."""
        if final:
            return frames
        body = self.model.encoder.body
        if isinstance(body, Emformer):
            seg, right = body.cfg.segment_length, body.cfg.right_context_length
            return max(0, (frames - right) // seg) * seg
        chunk = body.cfg.chunk_size
        return frames // chunk * chunk

    @torch.inference_mode()
    def step(
        self, pcm: Tensor, pcm_len: Tensor, state: RecomputeState, final: bool = False
    ) -> tuple[list[StepOutput], RecomputeState]:
        m = self.model
        enc_model = m.encoder
        whole = torch.cat([state.pcm, pcm[0, : int(pcm_len[0])].cpu()])
        feats = enc_model.features(whole)  # (T, 80), recomputed from sample 0
        n = torch.tensor([feats.shape[0]])
        enc, enc_len = enc_model(feats[None].to(m.device), n.to(m.device))  # whole prefix
        frames = self._final_frames(int(output_length(feats.shape[0])), final)
        enc, enc_len = enc[:, :frames], torch.tensor([frames], device=m.device)
        asr_ids, asr_n = greedy_ctc(m.asr_ctc(enc), enc_len, suppress=TEXT_CTC_SUPPRESS)
        st_logits, st_len = m.st_ctc(enc, enc_len)
        _, st_n = greedy_ctc(st_logits, st_len, suppress=TEXT_CTC_SUPPRESS)
        asr = asr_ids[0, : int(asr_n[0])].tolist()
        new_asr = asr[len(state.asr) :]
        n_asr, n_st = len(asr), int(st_n[0])
        grew = n_asr > state.asr_at_write and n_st > state.st_at_write
        have = len(state.target)
        if final:
            budget = max(0, int(frames * self.max_len_a) + self.max_len_b - have) + 1
        else:
            budget = max(0, n_st + int(self.whole_word) - have) if grew else 0
        asr_at_write = n_asr if grew else state.asr_at_write
        st_at_write = n_st if grew else state.st_at_write
        new_tokens, positions = self._write(state, enc, frames, budget, final)
        target = state.target + new_tokens
        visible = state.visible + [frames] * positions
        units, audio, samples_out = state.units, torch.zeros(0), state.samples_out
        new_units: list[int] = []
        if visible:
            units = self._units(target, visible, enc)
            new_units = units[len(state.units) :]
            if self.vocoder is not None and units:
                wav, wav_len, _ = self.vocoder.stream(
                    torch.tensor([units]), None, self.vocoder.init_state(1), final=final
                )
                audio = wav[0, samples_out : int(wav_len[0])].clone()
                samples_out = int(wav_len[0])
        new_state = RecomputeState(
            whole, asr, target, visible, asr_at_write, st_at_write, units, samples_out
        )
        return [StepOutput(new_asr, new_tokens, new_units, audio)], new_state

    def _decoder(self, prefix: list[int], visible: list[int], enc: Tensor):
        """Teacher-forced MT decoder over [BOS] + prefix; position i sees visible[i] frames."""
        prev = torch.tensor([[BOS_ID, *prefix]], device=enc.device)
        length = torch.tensor([prev.shape[1]], device=enc.device)
        vis = torch.tensor([visible], device=enc.device)
        return self.model.mt_decoder(prev, length, enc, torch.tensor([enc.shape[1]]), vis)

    def _write(
        self, state: RecomputeState, enc: Tensor, frames: int, budget: int, final: bool
    ) -> tuple[list[int], int]:
        """New committed tokens and the number of committed decoder positions."""
        tokens: list[int] = []
        positions = 0  # decoder positions committed (tokens, plus the one predicting EOS)
        for i in range(budget):
            prefix = state.target + tokens
            visible = state.visible + [frames] * (len(tokens) + 1)
            logits, _ = self._decoder(prefix, visible, enc)  # the whole prefix, again
            logits = logits[0, -1].clone()
            logits[[BOS_ID, PAD_ID]] = float("-inf")
            nxt = int(logits.argmax())
            if nxt == EOS_ID and not final:
                break
            positions += 1  # noqa: SIM113 - counts committed positions, not iterations
            if nxt == EOS_ID or (final and i == budget - 1):
                break
            tokens.append(nxt)
        if self.whole_word and not final:
            starts = [j for j, t in enumerate(tokens) if self._is_word_start[t]]
            tokens = tokens[: starts[-1]] if starts else []
            positions = len(tokens)
        return tokens, positions

    def _units(self, target: list[int], visible: list[int], enc: Tensor) -> list[int]:
        """All units so far: T2U + unit decoder over every committed position, from scratch."""
        m = self.model
        positions = len(visible)
        _, hidden = self._decoder(target[: positions - 1], visible, enc)  # (1, P, D)
        length = torch.tensor([positions], device=enc.device)
        t2u_out, _ = m.t2u(hidden, length)
        logits, frame_len = m.unit_decoder(t2u_out, length)
        units, counts = m.unit_decoder.units(logits, frame_len)
        return units[0, : int(counts[0])].tolist()
