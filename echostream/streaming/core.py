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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.ctc import CTCGreedyState, STCTCState, greedy_ctc_stream
from ..models.echostream import TEXT_CTC_SUPPRESS, EchoStreamModel
from ..models.encoder import SpeechEncoderState
from ..models.layers import append_ragged
from ..models.mt_decoder import MTDecoderState
from ..models.t2u import T2UState
from ..models.unit_decoder import UNIT_ID_OFFSET, UnitDecoderState
from ..models.unit_vocoder import UnitVocoder, UnitVocoderState
from ..state import StreamState
from ..text.tokenizer import BOS_ID, EOS_ID, PAD_ID


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


@dataclass
class StepOutput:
    """What one step produced for one stream (ids are vocabulary ids / unit ids)."""

    asr_ids: list[int] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    audio: Tensor = field(default_factory=lambda: torch.zeros(0))


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


class IncrementalCore:
    """Batched incremental simultaneous translation with StreamSpeech's policy.

    ``whole_word``: only commit whole target words before the end of the source (StreamSpeech
    does this for large chunks); needs the model's target tokenizer. ``max_len_a/b``: at most
    ``a·frames + b`` target tokens per stream (runaway guard, as offline decoding).
    """

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
        self.sample_rate = model.cfg.features.sample_rate
        self._word_start = word_start_table(model) if whole_word else None

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
        m = self.model
        batch = pcm.shape[0]
        # 1. encoder on the new samples only
        enc, enc_len, enc_state = m.encoder.stream_pcm(pcm, pcm_len, state.encoder, final=final)
        # 2. ASR CTC (streaming transcript) and ST CTC (how many target tokens are due)
        asr_ids, asr_n, asr = greedy_ctc_stream(
            m.asr_ctc(enc), enc_len, state.asr, suppress=TEXT_CTC_SUPPRESS
        )
        st_logits, st_len, st = m.st_ctc.stream(enc, enc_len, state.st, final=final)
        _, _, st_greedy = greedy_ctc_stream(
            st_logits, st_len, state.st_greedy, suppress=TEXT_CTC_SUPPRESS
        )
        mt = m.mt_decoder.extend_memory(enc, enc_len, state.mt)
        # 3. policy: how many target tokens each stream may write now
        have = state.target.num_tokens
        # StreamSpeech: READ unless both CTC outputs grew since the last decision to write;
        # then write up to the ST CTC length (+1 with whole words: the last word is cut).
        grew = (asr.num_tokens > state.asr_at_write) & (st_greedy.num_tokens > state.st_at_write)
        if final:
            cap = (mt.mem_len.float() * self.max_len_a).long() + self.max_len_b
            budget = (cap - have).clamp(min=0) + 1  # + the position that predicts EOS
        else:
            due = st_greedy.num_tokens + int(self.whole_word)
            budget = torch.where(grew, (due - have).clamp(min=0), torch.zeros_like(have))
        state = dataclasses.replace(
            state,
            encoder=enc_state,
            asr=asr,
            st=st,
            st_greedy=st_greedy,
            asr_at_write=torch.where(grew, asr.num_tokens, state.asr_at_write),
            st_at_write=torch.where(grew, st_greedy.num_tokens, state.st_at_write),
            samples_in=state.samples_in + pcm_len.to(state.samples_in.device),
        )
        new_tokens, new_n, hidden, hidden_n, mt, pending = self._write(
            mt, state.pending_token, budget, final
        )
        target = _append(state.target, new_tokens, new_n)
        # 4. committed positions → T2U → unit decoder → units → vocoder
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
            audio, audio_len, vocoder_state = self.vocoder.stream(
                unit_ids.clamp(min=0).cpu(), unit_n.cpu(), state.vocoder, final=final
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
        asr_rows, tgt_rows, unit_rows = (
            _rows(asr_ids, asr_n),
            _rows(new_tokens, new_n),
            _rows(unit_ids, unit_n),
        )
        outputs = [
            StepOutput(
                asr_rows[b], tgt_rows[b], unit_rows[b], audio[b, : int(audio_len[b])].clone()
            )
            for b in range(batch)
        ]
        return outputs, state

    def _write(self, mt: MTDecoderState, pending: Tensor, budget: Tensor, final: bool):
        """Greedy MT decoding of up to ``budget`` (B,) positions per stream.

        Returns the committed new tokens (B, N) + counts, the hidden states of the committed
        positions (B, P, D) + counts (the inputs of T2U), the decoder state rolled back to the
        committed positions, and the new pending token.
        """
        dec = self.model.mt_decoder
        batch = pending.shape[0]
        start = mt.num_tokens
        steps = int(budget.max()) if batch else 0
        active = budget > 0
        tokens, hiddens = [], []
        committed = torch.zeros(batch, dtype=torch.long, device=pending.device)
        ended = torch.zeros(batch, dtype=torch.bool, device=pending.device)  # EOS at final
        feed = pending
        for i in range(steps):
            logits, hidden, mt = dec.stream(feed.unsqueeze(1), active.long(), mt)
            logits = logits[:, 0]
            logits[:, [BOS_ID, PAD_ID]] = float("-inf")
            nxt = logits.argmax(-1)
            is_eos = nxt == EOS_ID
            if not final:  # EOS before the end of the source: stop, don't commit the position
                keep = active & ~is_eos
            else:  # at the end the position predicting EOS (or the last allowed) is committed
                keep = active
                ended |= active & (is_eos | (i == budget - 1))
            emit = keep & ~is_eos & ~(final & (i == budget - 1))
            tokens.append(torch.where(emit, nxt, torch.zeros_like(nxt)))
            hiddens.append(hidden[:, 0])
            committed += keep.long()
            feed = torch.where(emit, nxt, feed)
            active = active & emit & (i + 1 < budget)
        if steps == 0:
            empty = torch.zeros(batch, 0, dtype=torch.long, device=pending.device)
            d = dec.embed_tokens.weight.shape[1]
            hidden = dec.embed_tokens.weight.new_zeros(batch, 0, d)
            return empty, committed, hidden, committed, mt, pending
        tokens_t = torch.stack(tokens, 1)  # (B, steps)
        hidden_t = torch.stack(hiddens, 1)  # (B, steps, D)
        n_tokens = committed - ended.long()  # tokens = committed positions, minus EOS's
        if self.whole_word and not final:
            n_tokens = self._whole_words(tokens_t, n_tokens)
            committed = n_tokens
        mt = mt.replace(num_tokens=start + committed)
        last = tokens_t.gather(1, (n_tokens - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        pending = torch.where(n_tokens > 0, last, pending)
        return tokens_t, n_tokens, hidden_t, committed, mt, pending

    def _whole_words(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """Keep the tokens before the last word-initial one (StreamSpeech's whole-word rule)."""
        starts = self._word_start.to(tokens.device)[tokens]  # (B, N)
        idx = torch.arange(tokens.shape[1], device=tokens.device)
        starts &= idx < counts.unsqueeze(1)
        last_start = torch.where(starts, idx, torch.full_like(idx, -1)).amax(1)
        return last_start.clamp(min=0)
