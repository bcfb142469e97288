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

Sentences (:mod:`~echostream.streaming.segmenter`): the encoder and the CTC heads are recomputed
over the whole stream (the Emformer and the ST CTC decoder run on across sentences), but the MT
decoder, T2U, the unit decoder and the vocoder are recomputed *within the current segment*
only, from its memory start; the segment decisions are taken by the same
:func:`~echostream.streaming.segmenter.close_segment` on counts recomputed from scratch, so
both cores cut the stream at the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.ctc import greedy_ctc, trailing_blanks
from ..models.echostream import TEXT_CTC_SUPPRESS
from ..models.emformer import Emformer
from ..models.subsampling import output_length
from ..text.tokenizer import BOS_ID, EOS_ID, PAD_ID
from .core import AgentCore, StepOutput
from .segmenter import close_segment


@dataclass
class RecomputeState:
    """The whole history of one stream (it grows: that is the point of this baseline); the
    text and unit stages restart at each segment (``target`` … ``samples_out`` are the current
    segment's)."""

    pcm: Tensor = field(default_factory=lambda: torch.zeros(0))
    asr: list[int] = field(default_factory=list)  # the whole stream's transcript
    target: list[int] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)  # encoder frames seen by each position
    asr_at_write: int = 0
    st_at_write: int = 0
    units: list[int] = field(default_factory=list)
    samples_out: int = 0
    mem_start: int = 0  # first encoder frame of the segment's MT memory
    seg_start: int = 0  # first encoder frame counted toward the segment's cap
    asr_base: int = 0  # ASR / ST CTC tokens of the stream before the segment
    st_base: int = 0
    after_pause: bool = False  # the segment was opened by a pause or an EOS

    def nbytes(self) -> int:
        return self.pcm.numel() * 4 + 8 * (
            len(self.asr) + len(self.target) + len(self.visible) + len(self.units)
        )


class RecomputeCore(AgentCore):
    """Same interface as :class:`IncrementalCore` (``init_state`` / ``step``) for one stream;
    same options (:class:`~echostream.streaming.core.AgentCore`)."""

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
        m, rules, st = self.model, self.rules, state
        enc_model = m.encoder
        whole = torch.cat([st.pcm, pcm[0, : int(pcm_len[0])].cpu()])
        feats = enc_model.features(whole)  # (T, 80), recomputed from sample 0
        n = torch.tensor([feats.shape[0]])
        enc, enc_len = enc_model(feats[None].to(m.device), n.to(m.device))  # whole prefix
        frames = self._final_frames(int(output_length(feats.shape[0])), final)
        enc, enc_len = enc[:, :frames], torch.tensor([frames], device=m.device)
        asr_logits = m.asr_ctc(enc)
        asr_ids, asr_n = greedy_ctc(asr_logits, enc_len, suppress=TEXT_CTC_SUPPRESS)
        st_logits, st_len = m.st_ctc(enc, enc_len)
        _, st_n = greedy_ctc(st_logits, st_len, suppress=TEXT_CTC_SUPPRESS)
        zero = torch.zeros(1, dtype=torch.long)
        asr_run = int(trailing_blanks(asr_logits, enc_len, zero, suppress=TEXT_CTC_SUPPRESS)[0])
        st_run = int(trailing_blanks(st_logits, st_len, zero, suppress=TEXT_CTC_SUPPRESS)[0])
        asr = asr_ids[0, : int(asr_n[0])].tolist()
        new_asr = asr[len(st.asr) :]
        n_asr, n_st = len(asr) - st.asr_base, int(st_n[0]) - st.st_base  # in the segment
        # the segment: an empty one (after a pause) keeps only its lead-in; does it close?
        mem_start, seg_start = st.mem_start, st.seg_start
        spoke = n_asr > 0 or n_st > 0
        empty = bool(rules.empty(torch.tensor(st.after_pause), torch.tensor(spoke)))
        if empty:
            mem_start = max(mem_start, frames - rules.lead_frames)
            seg_start = max(seg_start, frames - rules.lead_frames)
        have = len(st.target)
        closes, paused = (
            bool(x[0])
            for x in close_segment(
                rules,
                *(torch.tensor([v]) for v in (frames - seg_start, have, spoke, empty)),
                torch.tensor([asr_run]),
                torch.tensor([st_run]),
            )
        )
        closing = closes or final
        grew = n_asr > st.asr_at_write and n_st > st.st_at_write
        cap = int((frames - mem_start) * self.max_len_a) + self.max_len_b
        cap = min(cap, rules.max_tokens) if rules.max_tokens is not None else cap
        if closing:
            budget = 0 if empty else max(0, cap - have) + 1
        else:
            budget = max(0, min(n_st + int(self.whole_word), cap) - have) if grew else 0
        probe = rules.eos_threshold is not None and not closing and budget > 0
        asr_at_write = n_asr if grew else st.asr_at_write
        st_at_write = n_st if grew else st.st_at_write
        memory = enc[:, mem_start:frames]  # the segment's MT memory
        new_tokens, positions, said_eos = self._write(
            st, memory, frames - mem_start, budget, closing, probe
        )
        ended = closing or said_eos
        target = st.target + new_tokens
        visible = st.visible + [frames - mem_start] * positions
        units, audio, samples_out = st.units, torch.zeros(0), st.samples_out
        new_units: list[int] = []
        if visible:
            units = self._units(target, visible, memory)
            new_units = units[len(st.units) :]
            if self.vocoder is not None and units:
                wav, wav_len, _ = self.vocoder.stream(
                    torch.tensor([units]), None, self.vocoder.init_state(1), final=ended
                )
                audio = wav[0, samples_out : int(wav_len[0])].clone()
                samples_out = int(wav_len[0])
        new_state = RecomputeState(
            whole, asr, target, visible, asr_at_write, st_at_write, units, samples_out,
            mem_start, seg_start, st.asr_base, st.st_base, st.after_pause,
        )  # fmt: skip
        if ended and not final:  # a new segment: the text and unit stages restart
            context = max(mem_start, frames - rules.context_frames)
            new_state = RecomputeState(
                whole, asr, mem_start=context, seg_start=frames, asr_base=len(asr),
                st_base=int(st_n[0]), after_pause=paused or said_eos,
            )  # fmt: skip
        out = StepOutput(new_asr, new_tokens, new_units, audio, ended)
        return [out], new_state

    def _decoder(self, prefix: list[int], visible: list[int], enc: Tensor):
        """Teacher-forced MT decoder over [BOS] + prefix; position i sees visible[i] frames."""
        prev = torch.tensor([[BOS_ID, *prefix]], device=enc.device)
        length = torch.tensor([prev.shape[1]], device=enc.device)
        vis = torch.tensor([visible], device=enc.device)
        return self.model.mt_decoder(prev, length, enc, torch.tensor([enc.shape[1]]), vis)

    def _write(
        self,
        state: RecomputeState,
        enc: Tensor,
        frames: int,
        budget: int,
        closing: bool,
        probe: bool,
    ) -> tuple[list[int], int, bool]:
        """New committed tokens, the number of committed decoder positions, and whether the
        probe position (one past the budget) said EOS with enough probability."""
        tokens: list[int] = []
        positions = 0  # decoder positions committed (tokens, plus the one predicting EOS)
        for i in range(budget + int(probe)):
            prefix = state.target + tokens
            visible = state.visible + [frames] * (len(tokens) + 1)
            logits, _ = self._decoder(prefix, visible, enc)  # the whole prefix, again
            logits = logits[0, -1].clone()
            logits[[BOS_ID, PAD_ID]] = float("-inf")
            nxt = int(logits.argmax())
            if i == budget:  # the probe: a likely EOS here ends the sentence
                p_eos = float(logits.float().softmax(-1)[EOS_ID])
                if p_eos >= self.rules.eos_threshold:
                    return tokens, positions + 1, True
                break
            if nxt == EOS_ID and not closing:
                break
            positions += 1  # noqa: SIM113 - counts committed positions, not iterations
            if nxt == EOS_ID or (closing and i == budget - 1):
                break
            tokens.append(nxt)
        if self.whole_word and not closing:
            is_start = self.word_start[tokens].tolist()  # (N,) bool
            starts = [j for j, start in enumerate(is_start) if start]
            tokens = tokens[: starts[-1]] if starts else []
            positions = len(tokens)
        return tokens, positions, False

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
