"""StreamSpeech's simultaneous policy with every stage incremental, for a batch of streams.

One :meth:`IncrementalCore.step` takes the new 16 kHz samples of each stream (any number, 0
included) and runs, on the new data only::

    online fbank ─► encoder.stream ─► ASR CTC head ─► greedy CTC (incremental)
                                  ├─► ST CTC decoder.stream ─► greedy CTC (incremental)
                                  └─► MT decoder: cross-attention memory *extended* by new frames
    policy (StreamSpeech): READ unless both the ASR and the ST CTC outputs grew since the last
    WRITE; WRITE decodes greedily until the target has as many tokens as the ST CTC output
    (whole words only, if asked: the trailing partial word is held back); at the end of the
    source, decode to EOS.
    committed MT positions ─► T2U.stream ─► unit decoder.stream ─► greedy unit CTC ─► vocoder.stream

The MT decoder is fed lazily: the last committed token is fed only when its successor is wanted,
so it sees the encoder frames available at that moment. A tentative position whose successor is
not committed (EOS before the end of the source, or the partial word cut by the whole-word rule)
is rolled back by resetting the stream's token count — states are values, nothing else to undo.
So position *i* of the decoder sees exactly ``enc_visible[i]`` frames, which is what
:class:`~echostream.streaming.recompute.RecomputeCore` reproduces by re-running everything from
scratch (StreamSpeech's way) and what the equivalence test compares.

Long streams are cut into sentences (``segmenter``, see :mod:`echostream.streaming.segmenter`):
per stream, a pause, an EOS or a cap closes the segment — it is decoded to EOS as at the end of
the source, T2U, the unit decoder and the vocoder are flushed, and the MT decoder, T2U, the unit
decoder and the token stores restart, while the encoder runs on. Every field of
:class:`TranslatorState` is then bounded by one segment, whatever the stream's length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.ctc import (
    CTCGreedyState,
    STCTCState,
    greedy_ctc_stream,
    restart_tokens,
    trailing_blanks,
)
from ..models.echostream import TEXT_CTC_SUPPRESS, EchoStreamModel
from ..models.encoder import SpeechEncoderState
from ..models.layers import append_ragged
from ..models.mt_decoder import MTDecoderState
from ..models.t2u import T2UState
from ..models.unit_decoder import UNIT_ID_OFFSET, UnitDecoderState
from ..models.unit_vocoder import UnitVocoder, UnitVocoderState
from ..state import StreamState
from ..text.tokenizer import BOS_ID, EOS_ID, PAD_ID
from .segmenter import SegmenterConfig, SegmentRules, close_segment


@dataclass(frozen=True)
class TranslatorState(StreamState):
    """Everything one stream carries between steps (batch-first; stackable)."""

    encoder: SpeechEncoderState
    asr: CTCGreedyState  # source tokens so far
    st: STCTCState
    st_greedy: CTCGreedyState  # ST CTC tokens so far (their count drives the policy)
    mt: MTDecoderState
    pending_token: Tensor  # (B,) the last committed token (BOS at start), fed when needed
    target: CTCGreedyState  # committed target tokens (reusing the ragged token store)
    asr_at_write: Tensor  # (B,) ASR token count at the last WRITE
    st_at_write: Tensor  # (B,) ST CTC token count at the last WRITE
    t2u: T2UState
    units: UnitDecoderState
    unit_greedy: CTCGreedyState  # committed units
    vocoder: UnitVocoderState | None
    samples_in: Tensor  # (B,) source samples received
    asr_blank_run: Tensor  # (B,) trailing blank frames of the ASR CTC
    st_blank_run: Tensor  # (B,) trailing blank frames of the ST CTC
    seg_frames: Tensor  # (B,) source frames of the current segment (toward its cap)
    after_pause: Tensor  # (B,) bool: the segment was opened by a pause or an EOS
    segments: Tensor  # (B,) segments closed before the end of the stream


@dataclass
class StepOutput:
    """What one step produced for one stream (ids are vocabulary ids / unit ids)."""

    asr_ids: list[int] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    audio: Tensor = field(default_factory=lambda: torch.zeros(0))
    segment_end: bool = False  # this step closed the stream's sentence (always at the end)


def _append(state: CTCGreedyState, ids: Tensor, counts: Tensor) -> CTCGreedyState:
    """Append new ids (B, N) (``counts`` valid) to a token store."""
    tokens = append_ragged(
        state.tokens.unsqueeze(-1), state.num_tokens, ids.clamp(min=0).unsqueeze(-1), counts
    ).squeeze(-1)
    return dataclasses.replace(state, tokens=tokens, num_tokens=state.num_tokens + counts)


def _rows(ids: Tensor, counts: Tensor) -> list[list[int]]:
    return [ids[b, : int(counts[b])].tolist() for b in range(ids.shape[0])]


def word_start_table(model: EchoStreamModel) -> Tensor:
    """(V,) bool: which target ids begin a word (sentencepiece's ▁), for the whole-word rule."""
    tok = model.tgt_tokenizer
    if tok is None:
        raise ValueError("whole_word needs the model's target tokenizer (attach_tokenizers)")
    return torch.tensor([tok.sp.id_to_piece(i).startswith("▁") for i in range(tok.vocab_size)])


class AgentCore:
    """What both agents share: the model and vocoder (in eval mode), the policy's options and the
    sentence rules. ``whole_word``: only commit whole target words before the end of the source
    (StreamSpeech does this for large chunks); needs the model's target tokenizer.
    ``max_len_a/b``: at most ``a·frames + b`` target tokens per segment (runaway guard, as
    offline decoding). ``segmenter``: when to close a sentence on a long stream (default
    :class:`SegmenterConfig()`; ``None``: one segment per stream, the state grows with it).
    """

    def __init__(
        self,
        model: EchoStreamModel,
        vocoder: UnitVocoder | None = None,
        whole_word: bool = False,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
        segmenter: SegmenterConfig | None = SegmenterConfig(),  # noqa: B008 - frozen values
    ):
        self.model = model.eval()
        self.vocoder = vocoder.eval() if vocoder is not None else None
        self.whole_word = whole_word
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self.sample_rate = model.cfg.features.sample_rate
        self.word_start = word_start_table(model) if whole_word else None  # (V,) bool
        self.segmenter = segmenter
        self.rules = SegmentRules.build(segmenter, model.cfg)


class IncrementalCore(AgentCore):
    """Batched incremental simultaneous translation with StreamSpeech's policy (options: see
    :class:`AgentCore`)."""

    # ------------------------------------------------------------------ state

    def init_state(self, batch_size: int) -> TranslatorState:
        m = self.model
        device = m.device
        empty_tokens = CTCGreedyState.initial(batch_size, device)
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return TranslatorState(
            encoder=m.encoder.init_state(batch_size),
            asr=empty_tokens,
            st=m.st_ctc.init_state(batch_size),
            st_greedy=empty_tokens,
            mt=m.mt_decoder.init_state(batch_size),
            pending_token=torch.full((batch_size,), BOS_ID, dtype=torch.long, device=device),
            target=empty_tokens,
            asr_at_write=zeros,
            st_at_write=zeros,
            t2u=m.t2u.init_state(batch_size),
            units=m.unit_decoder.init_state(batch_size),
            unit_greedy=empty_tokens,
            vocoder=self.vocoder.init_state(batch_size) if self.vocoder is not None else None,
            samples_in=zeros,
            asr_blank_run=zeros,
            st_blank_run=zeros,
            seg_frames=zeros,
            after_pause=torch.zeros(batch_size, dtype=torch.bool, device=device),
            segments=zeros,
        )

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(
        self, pcm: Tensor, pcm_len: Tensor, state: TranslatorState, final: bool = False
    ) -> tuple[list[StepOutput], TranslatorState]:
        """pcm (B, S) float32 16 kHz, pcm_len (B,) new samples per stream (0 allowed).

        ``final=True`` ends every stream of the batch (flush all stages, decode to EOS); to end
        some streams only, ``select`` them and step that sub-batch.
        """
        m, rules = self.model, self.rules
        batch = pcm.shape[0]
        # 1. encoder on the new samples only
        enc, enc_len, enc_state = m.encoder.stream_pcm(pcm, pcm_len, state.encoder, final=final)
        # 2. ASR CTC (streaming transcript) and ST CTC (how many target tokens are due)
        asr_logits = m.asr_ctc(enc)
        asr_ids, asr_n, asr = greedy_ctc_stream(
            asr_logits, enc_len, state.asr, suppress=TEXT_CTC_SUPPRESS
        )
        st_logits, st_len, st = m.st_ctc.stream(enc, enc_len, state.st, final=final)
        _, _, st_greedy = greedy_ctc_stream(
            st_logits, st_len, state.st_greedy, suppress=TEXT_CTC_SUPPRESS
        )
        asr_run = trailing_blanks(
            asr_logits, enc_len, state.asr_blank_run, suppress=TEXT_CTC_SUPPRESS
        )
        st_run = trailing_blanks(st_logits, st_len, state.st_blank_run, suppress=TEXT_CTC_SUPPRESS)
        mt = m.mt_decoder.extend_memory(enc, enc_len, state.mt)
        # 3. segment: an empty one (after a pause) keeps only its lead-in; does this one close?
        seg_frames = state.seg_frames + enc_len
        spoke = (asr.num_tokens > 0) | (st_greedy.num_tokens > 0)
        empty = rules.empty(state.after_pause, spoke)
        if bool(empty.any()):
            mt = mt.memory_tail(torch.where(empty, rules.lead_frames, mt.mem_len))
            seg_frames = torch.where(empty, seg_frames.clamp(max=rules.lead_frames), seg_frames)
        have = state.target.num_tokens
        closes, paused = close_segment(rules, seg_frames, have, spoke, empty, asr_run, st_run)
        closing = closes | final
        # 4. policy (StreamSpeech): READ unless both CTC outputs grew since the last decision to
        # write; then write up to the ST CTC length (+1 with whole words: the last word is cut).
        # Closing a segment decodes it to EOS, unless it is empty. At most a·frames + b tokens
        # (and max_segment_tokens) per segment.
        grew = (asr.num_tokens > state.asr_at_write) & (st_greedy.num_tokens > state.st_at_write)
        cap = (mt.mem_len.float() * self.max_len_a).long() + self.max_len_b
        if rules.max_tokens is not None:
            cap = cap.clamp(max=rules.max_tokens)
        close_budget = torch.where(empty, 0, (cap - have).clamp(min=0) + 1)  # + EOS position
        due = torch.minimum(st_greedy.num_tokens + int(self.whole_word), cap)  # runaway guard
        write_budget = torch.where(grew, (due - have).clamp(min=0), torch.zeros_like(have))
        budget = torch.where(closing, close_budget, write_budget)
        probe = torch.zeros_like(closing)
        if rules.eos_threshold is not None:  # one more position: does the sentence end here?
            probe = ~closing & (budget > 0)
        state = dataclasses.replace(
            state,
            encoder=enc_state,
            asr=asr,
            st=st,
            st_greedy=st_greedy,
            asr_at_write=torch.where(grew, asr.num_tokens, state.asr_at_write),
            st_at_write=torch.where(grew, st_greedy.num_tokens, state.st_at_write),
            samples_in=state.samples_in + pcm_len.to(state.samples_in.device),
            asr_blank_run=asr_run,
            st_blank_run=st_run,
            seg_frames=seg_frames,
        )
        new_tokens, new_n, hidden, hidden_n, mt, pending, said_eos = self._write(
            mt, state.pending_token, budget, closing, probe
        )
        ended = closing | said_eos
        target = _append(state.target, new_tokens, new_n)
        # 5. committed positions → T2U → unit decoder → units → vocoder (flushed at a boundary)
        t2u_out, t2u_len, t2u = m.t2u.stream(hidden, hidden_n, state.t2u, final=final)
        unit_logits, frame_len, units_state = m.unit_decoder.stream(
            t2u_out, t2u_len, state.units, final=final
        )
        unit_ids, unit_n, unit_greedy = greedy_ctc_stream(
            unit_logits, frame_len, state.unit_greedy, id_offset=UNIT_ID_OFFSET
        )
        audio = torch.zeros(batch, 0)
        audio_len = torch.zeros(batch, dtype=torch.long)
        vocoder_state = state.vocoder
        if self.vocoder is not None:
            audio, audio_len, vocoder_state = self._vocode(
                unit_ids.clamp(min=0).cpu(), unit_n.cpu(), state.vocoder, ended.cpu(), final
            )
        state = dataclasses.replace(
            state,
            mt=mt,
            pending_token=pending,
            target=target,
            t2u=t2u,
            units=units_state,
            unit_greedy=unit_greedy,
            vocoder=vocoder_state,
        )
        if not final and bool(ended.any()):
            state = self._restart(state, ended, paused | said_eos)
        asr_rows, tgt_rows, unit_rows = (
            _rows(asr_ids, asr_n),
            _rows(new_tokens, new_n),
            _rows(unit_ids, unit_n),
        )
        ends = ended.tolist()
        outputs = [
            StepOutput(
                asr_rows[b],
                tgt_rows[b],
                unit_rows[b],
                audio[b, : int(audio_len[b])].clone(),
                ends[b],
            )
            for b in range(batch)
        ]
        return outputs, state

    def _vocode(
        self, units: Tensor, unit_n: Tensor, state: UnitVocoderState, flush: Tensor, final: bool
    ) -> tuple[Tensor, Tensor, UnitVocoderState]:
        """Vocoder step; the streams ``flush`` (B,) bool end their sentence (flushed)."""
        vocoder = self.vocoder
        if final or not bool(flush.any()):
            return vocoder.stream(units, unit_n, state, final=final)
        parts = []  # (stream indices, samples, lengths, states), flushed and not
        for flag in (True, False):
            index = torch.nonzero(flush == flag).flatten()
            if index.numel():
                sub = state.select(index)
                wav, wav_len, sub = vocoder.stream(units[index], unit_n[index], sub, final=flag)
                parts.append((index.tolist(), wav, wav_len, sub.unstack()))
        width = max(p[1].shape[1] for p in parts)
        audio = torch.zeros(units.shape[0], width)
        audio_len = torch.zeros(units.shape[0], dtype=torch.long)
        states: list = [None] * units.shape[0]
        for index, wav, wav_len, subs in parts:
            for j, b in enumerate(index):
                audio[b, : wav.shape[1]] = wav[j]
                audio_len[b] = wav_len[j]
                states[b] = subs[j]
        return audio, audio_len, UnitVocoderState.stack(states)

    def _restart(self, state: TranslatorState, restart: Tensor, by_pause: Tensor):
        """New segment for the streams ``restart`` (B,) bool: the MT decoder keeps only the last
        ``context_frames`` of its memory, the text/unit stages and the token stores start
        empty, the vocoder starts afresh; the encoder and the ST CTC decoder run on."""
        m, rules = self.model, self.rules
        mt = state.mt.restart_tokens(restart)
        mt = mt.memory_tail(torch.where(restart, rules.context_frames, mt.mem_len))
        zero = torch.zeros_like(state.asr_at_write)
        vocoder = state.vocoder
        if vocoder is not None:
            fresh = self.vocoder.init_state(restart.shape[0])
            vocoder = _where_state(restart.to(fresh.samples_out.device), fresh, vocoder)
        return dataclasses.replace(
            state,
            asr=restart_tokens(state.asr, restart),
            st_greedy=restart_tokens(state.st_greedy, restart),
            mt=mt,
            pending_token=torch.where(restart, BOS_ID, state.pending_token),
            target=restart_tokens(state.target, restart),
            asr_at_write=torch.where(restart, zero, state.asr_at_write),
            st_at_write=torch.where(restart, zero, state.st_at_write),
            t2u=state.t2u.restart(restart),
            units=state.units.restart(restart, m.unit_decoder.rate),
            unit_greedy=restart_tokens(state.unit_greedy, restart, forget_last=True),
            vocoder=vocoder,
            seg_frames=torch.where(restart, zero, state.seg_frames),
            after_pause=torch.where(restart, by_pause, state.after_pause),
            segments=state.segments + restart.long(),
        )

    def _write(
        self, mt: MTDecoderState, pending: Tensor, budget: Tensor, closing: Tensor, probe: Tensor
    ):
        """Greedy MT decoding of up to ``budget`` (B,) positions per stream; ``closing`` (B,)
        streams decode to EOS (their last position, EOS or the last allowed, is committed);
        ``probe`` (B,) streams decode one more position: if EOS has probability
        ``>= eos_threshold`` there, the sentence ends (the position is committed as the one
        predicting EOS at the end); otherwise it is rolled back.

        Returns the committed new tokens (B, N) + counts, the hidden states of the committed
        positions (B, P, D) + counts (the inputs of T2U), the decoder state rolled back to the
        committed positions, the new pending token, and which streams said EOS at the probe.
        """
        dec = self.model.mt_decoder
        batch = pending.shape[0]
        start = mt.num_tokens
        limit = budget + probe.long()
        steps = int(limit.max()) if batch else 0
        active = limit > 0
        tokens, hiddens = [], []
        committed = torch.zeros(batch, dtype=torch.long, device=pending.device)
        ended = torch.zeros(batch, dtype=torch.bool, device=pending.device)  # EOS committed
        said_eos = torch.zeros_like(ended)
        feed = pending
        for i in range(steps):
            logits, hidden, mt = dec.stream(feed.unsqueeze(1), active.long(), mt)
            logits = logits[:, 0]
            logits[:, [BOS_ID, PAD_ID]] = float("-inf")
            nxt = logits.argmax(-1)
            is_eos = nxt == EOS_ID
            last_allowed = closing & (i == budget - 1)
            at_probe = probe & (i == budget)
            end_here = active & at_probe
            if bool(end_here.any()):
                p_eos = logits.float().softmax(-1)[:, EOS_ID]
                end_here &= p_eos >= self.rules.eos_threshold
            # before the end, EOS (or the probe) is not committed; closing, the position
            # predicting EOS (or the last allowed) is, and so is a probe that ends the sentence
            keep = (active & torch.where(closing, True, ~is_eos & ~at_probe)) | end_here
            ended |= (active & closing & (is_eos | last_allowed)) | end_here
            said_eos |= end_here
            emit = keep & ~is_eos & ~last_allowed & ~end_here
            tokens.append(torch.where(emit, nxt, torch.zeros_like(nxt)))
            hiddens.append(hidden[:, 0])
            committed += keep.long()
            feed = torch.where(emit, nxt, feed)
            active = active & emit & (i + 1 < limit)
        if steps == 0:
            empty = torch.zeros(batch, 0, dtype=torch.long, device=pending.device)
            d = dec.embed_tokens.weight.shape[1]
            hidden = dec.embed_tokens.weight.new_zeros(batch, 0, d)
            return empty, committed, hidden, committed, mt, pending, said_eos
        tokens_t = torch.stack(tokens, 1)  # (B, steps)
        hidden_t = torch.stack(hiddens, 1)  # (B, steps, D)
        n_tokens = committed - ended.long()  # tokens = committed positions, minus EOS's
        if self.whole_word:  # a write that does not end the sentence commits whole words
            whole = closing | ended
            cut = self._whole_words(tokens_t, n_tokens)
            n_tokens = torch.where(whole, n_tokens, cut)
            committed = torch.where(whole, committed, cut)
        mt = mt.replace(num_tokens=start + committed)
        last = tokens_t.gather(1, (n_tokens - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        pending = torch.where(n_tokens > 0, last, pending)
        return tokens_t, n_tokens, hidden_t, committed, mt, pending, said_eos

    def _whole_words(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """Keep the tokens before the last word-initial one (StreamSpeech's whole-word rule)."""
        starts = self.word_start.to(tokens.device)[tokens]  # (B, N)
        idx = torch.arange(tokens.shape[1], device=tokens.device)
        starts &= idx < counts.unsqueeze(1)
        last_start = torch.where(starts, idx, torch.full_like(idx, -1)).amax(1)
        return last_start.clamp(min=0)


def _where_state(mask: Tensor, new: StreamState, old: StreamState) -> StreamState:
    """Per stream, ``new`` where ``mask`` (B,) else ``old`` (fixed-size states of one shape)."""
    fields = {}
    for f in dataclasses.fields(old):
        a, b = getattr(new, f.name), getattr(old, f.name)
        if isinstance(b, StreamState):
            fields[f.name] = _where_state(mask, a, b)
        else:
            fields[f.name] = torch.where(mask.view(-1, *[1] * (b.dim() - 1)), a.to(b.dtype), b)
    return type(old)(**fields)
