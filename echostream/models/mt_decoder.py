"""MT decoder: a pre-norm transformer decoder over target tokens, cross-attending to the encoder.

Token ids are the target tokenizer's (``echostream/text/tokenizer.py``, imported here so there
is one source of truth): :data:`PAD_ID` 0 (also the CTC blank), :data:`UNK_ID` 1, :data:`BOS_ID`
2, :data:`EOS_ID` 3, pieces from 4; ``vocab_size`` counts them all. The decoder input is
``[BOS] + target`` and it is trained to predict ``target + [EOS]``; BOS and PAD are never
generated. The constructor takes other ids where needed (fairseq/StreamSpeech feed ``</s>`` as
the first decoder input: an imported model wants ``bos_id=EOS_ID``).

Layout as fairseq's ``TransformerDecoder`` with ``normalize_before``: token embedding scaled by
``sqrt(d_model)`` + sinusoidal positions (first position :data:`POSITION_OFFSET`), dropout,
pre-norm layers (causal self-attention, cross-attention whose key/value projections read the
encoder output at its own width ``d_enc``, ReLU FFN), final LayerNorm -> ``hidden``, tied output
projection (``logits = hidden @ embed_tokens.weight.T``). ``hidden`` is what T2U reads.

Simultaneous decoding in parallel: ``forward(..., enc_visible)`` gives, per target position, how
many encoder frames it may attend to — the training-time mirror of decoding a token when only
that many frames had arrived. Incrementally, :class:`MTDecoderState` holds per layer the
self-attention keys/values of the tokens fed so far and the cross-attention keys/values of the
encoder frames received so far; :meth:`MTDecoder.extend_memory` projects only new frames, and
each token sees exactly the frames in the state when it is fed. For long streams the agent
bounds both caches per sentence with :meth:`MTDecoderState.restart_tokens` and
:meth:`MTDecoderState.memory_tail`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.config import TransformerDecoderConfig
from echostream.models.layers import (
    POSITION_OFFSET,
    append_ragged,
    causal_visibility,
    lengths_to_mask,
    shift_left_ragged,
    sinusoidal_positions,
    transformer_layers,
    zero_padding,
)
from echostream.state import StreamState
from echostream.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "MTDecoder", "MTDecoderState"]


@dataclass(frozen=True)
class MTDecoderState(StreamState):
    """Incremental state; both caches are left-aligned with per-stream valid lengths."""

    self_k: Tensor  # (B, L, H, U, Dh) self-attention keys of the tokens fed so far
    self_v: Tensor  # (B, L, H, U, Dh)
    num_tokens: Tensor  # (B,) tokens fed so far
    mem_k: Tensor  # (B, L, H, S, Dh) cross-attention keys of the encoder frames so far
    mem_v: Tensor  # (B, L, H, S, Dh)
    mem_len: Tensor  # (B,) encoder frames received so far

    def restart_tokens(self, restart: Tensor) -> MTDecoderState:
        """Forget the tokens fed to the streams ``restart`` (B,) bool (a new sentence starts
        at position 0); the self-attention cache keeps only what some stream still uses."""
        num = torch.where(restart, 0, self.num_tokens)
        width = int(num.max()) if num.numel() else 0
        return self.replace(
            self_k=self.self_k[..., :width, :], self_v=self.self_v[..., :width, :], num_tokens=num
        )

    def memory_tail(self, keep: Tensor) -> MTDecoderState:
        """Keep only the last ``keep`` (B,) encoder frames of each stream's cross-attention
        memory (``keep`` is clipped to ``mem_len``): a bounded memory for long streams."""
        keep = torch.minimum(keep, self.mem_len)
        width = int(keep.max()) if keep.numel() else 0
        shift = self.mem_len - keep
        return self.replace(
            mem_k=shift_left_ragged(self.mem_k, shift, width),
            mem_v=shift_left_ragged(self.mem_v, shift, width),
            mem_len=keep,
        )


class MTDecoder(nn.Module):
    """forward(prev_tokens (B, U), tok_len (B,), enc (B, S, d_enc), enc_len (B,),
    enc_visible (B, U) | None) -> logits (B, U, V), hidden (B, U, d_model)."""

    def __init__(
        self,
        cfg: TransformerDecoderConfig,
        vocab_size: int,
        d_enc: int,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
        pad_id: int = PAD_ID,
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model, self.vocab_size = d, vocab_size
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.num_heads, self.head_dim = cfg.num_heads, d // cfg.num_heads
        self.embed_tokens = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        nn.init.normal_(self.embed_tokens.weight, std=d**-0.5)
        with torch.no_grad():
            self.embed_tokens.weight[pad_id].zero_()
        self.embed_scale = math.sqrt(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = transformer_layers(cfg, d_memory=d_enc)
        self.layer_norm = nn.LayerNorm(d)

    # ------------------------------------------------------------------ pieces

    def _embed(self, tokens: Tensor, tok_len: Tensor, positions: Tensor) -> Tensor:
        """tokens (B, U) (padding replaced by PAD), positions (B, U) -> (B, U, D)."""
        tokens = torch.where(lengths_to_mask(tok_len, tokens.shape[1]), tokens, self.pad_id)
        pos = sinusoidal_positions(positions + POSITION_OFFSET, self.d_model)
        return self.dropout(self.embed_scale * self.embed_tokens(tokens) + pos.to(self.dtype))

    def _outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.layer_norm(x)
        return F.linear(hidden, self.embed_tokens.weight), hidden

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # ------------------------------------------------------------------ parallel

    def forward(
        self,
        prev_tokens: Tensor,
        tok_len: Tensor,
        enc: Tensor,
        enc_len: Tensor,
        enc_visible: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced. prev_tokens (B, U) = [BOS] + target (padded), tok_len (B,),
        enc (B, S, d_enc), enc_len (B,), enc_visible (B, U) int: frames target position u may
        attend to (clipped to enc_len; None = all) -> logits (B, U, V), hidden (B, U, D)."""
        batch, length = prev_tokens.shape
        pos = torch.arange(length, device=prev_tokens.device).expand(batch, length)
        x = self._embed(prev_tokens, tok_len, pos)
        self_visible = causal_visibility(pos, pos, lengths_to_mask(tok_len, length))
        frames = torch.arange(enc.shape[1], device=enc.device)
        limit = (
            enc_len.unsqueeze(1)
            if enc_visible is None
            else torch.minimum(enc_visible, enc_len.unsqueeze(1))
        )  # (B, U or 1)
        memory_visible = frames.view(1, 1, -1) < limit.unsqueeze(-1)  # (B, U|1, S)
        memory_visible = memory_visible.expand(batch, length, enc.shape[1])
        enc = zero_padding(enc, enc_len)
        for layer in self.layers:
            memory_kv = layer.encoder_attn.project_kv(enc)
            x, _ = layer(x, self_visible, memory_kv=memory_kv, memory_visible=memory_visible)
        return self._outputs(x)

    # ------------------------------------------------------------------ incremental

    def init_state(self, batch_size: int) -> MTDecoderState:
        w = self.embed_tokens.weight
        empty = w.new_zeros(batch_size, len(self.layers), self.num_heads, 0, self.head_dim)
        count = torch.zeros(batch_size, dtype=torch.long, device=w.device)
        return MTDecoderState(
            empty, empty.clone(), count, empty.clone(), empty.clone(), count.clone()
        )

    def extend_memory(
        self, enc_new: Tensor, enc_new_len: Tensor, state: MTDecoderState
    ) -> MTDecoderState:
        """Append new encoder frames enc_new (B, N, d_enc) (enc_new_len (B,) valid) to the
        cross-attention memory: projects only these frames, once per layer."""
        enc_new = zero_padding(enc_new, enc_new_len)
        if not self.layers:
            return state.replace(mem_len=state.mem_len + enc_new_len)
        kv = [layer.encoder_attn.project_kv(enc_new) for layer in self.layers]
        new_k = torch.stack([k for k, _ in kv], 1)  # (B, L, H, N, Dh)
        new_v = torch.stack([v for _, v in kv], 1)
        return state.replace(
            mem_k=append_ragged(state.mem_k, state.mem_len, new_k, enc_new_len),
            mem_v=append_ragged(state.mem_v, state.mem_len, new_v, enc_new_len),
            mem_len=state.mem_len + enc_new_len,
        )

    def stream(
        self, tokens: Tensor, tok_len: Tensor, state: MTDecoderState
    ) -> tuple[Tensor, Tensor, MTDecoderState]:
        """Feed tokens (B, N) (tok_len (B,) valid, may be 0 for streams that wait) after those
        already in the state -> logits (B, N, V), hidden (B, N, D), state. Every new token sees
        the ``mem_len`` frames of the state."""
        batch, n = tokens.shape
        steps = torch.arange(n, device=tokens.device)
        pos = state.num_tokens.unsqueeze(1) + steps  # (B, N)
        x = self._embed(tokens, tok_len, pos)
        past = state.self_k.shape[3]
        key_pos = torch.cat([torch.arange(past, device=tokens.device).expand(batch, past), pos], 1)
        key_valid = torch.cat(
            [lengths_to_mask(state.num_tokens, past), lengths_to_mask(tok_len, n)], 1
        )
        self_visible = causal_visibility(pos, key_pos, key_valid)
        memory_visible = lengths_to_mask(state.mem_len, state.mem_k.shape[3])
        memory_visible = memory_visible.unsqueeze(1).expand(batch, n, -1)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(
                x,
                self_visible,
                past_kv=(state.self_k[:, i], state.self_v[:, i]),
                memory_kv=(state.mem_k[:, i], state.mem_v[:, i]),
                memory_visible=memory_visible,
            )
            new_k.append(k)
            new_v.append(v)
        logits, hidden = self._outputs(x)
        if self.layers:
            state = state.replace(
                self_k=append_ragged(
                    state.self_k, state.num_tokens, torch.stack(new_k, 1), tok_len
                ),
                self_v=append_ragged(
                    state.self_v, state.num_tokens, torch.stack(new_v, 1), tok_len
                ),
            )
        return logits, hidden, state.replace(num_tokens=state.num_tokens + tok_len)

    def step(self, tokens: Tensor, state: MTDecoderState) -> tuple[Tensor, Tensor, MTDecoderState]:
        """One token per stream: tokens (B,) -> logits (B, V), hidden (B, D), state."""
        ones = torch.ones_like(tokens)
        logits, hidden, state = self.stream(tokens.unsqueeze(1), ones, state)
        return logits[:, 0], hidden[:, 0], state

    # ------------------------------------------------------------------ offline search

    def _next_log_probs(self, logits: Tensor) -> Tensor:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs[..., [self.bos_id, self.pad_id]] = float("-inf")  # never generated
        return log_probs

    @staticmethod
    def _max_len(enc_len: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
        return (enc_len.float() * max_len_a).long() + max_len_b

    @torch.no_grad()
    def greedy_decode(
        self, enc: Tensor, enc_len: Tensor, max_len_a: float = 0.5, max_len_b: int = 10
    ) -> tuple[Tensor, Tensor]:
        """Whole-utterance greedy decoding. enc (B, S, d_enc), enc_len (B,) -> tokens (B, N)
        (without BOS/EOS, padded with PAD), lengths (B,). At most
        ``max_len_a * enc_len + max_len_b`` tokens per stream."""
        batch = enc.shape[0]
        state = self.extend_memory(enc, enc_len, self.init_state(batch))
        max_len = self._max_len(enc_len, max_len_a, max_len_b)
        token = torch.full((batch,), self.bos_id, dtype=torch.long, device=enc.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=enc.device)
        done = torch.zeros(batch, dtype=torch.bool, device=enc.device)
        out = []
        for t in range(int(max_len.max()) + 1):
            logits, _, state = self.step(token, state)
            token = self._next_log_probs(logits).argmax(-1)
            token = torch.where(max_len <= t, self.eos_id, token)  # out of budget: stop
            done = done | (token == self.eos_id)
            out.append(torch.where(done, self.pad_id, token))
            lengths = lengths + (~done).long()
            if bool(done.all()):
                break
        tokens = torch.stack(out, 1)[:, : int(lengths.max())]
        return tokens, lengths

    @torch.no_grad()
    def beam_search(
        self,
        enc: Tensor,
        enc_len: Tensor,
        beam: int = 4,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
        len_penalty: float = 1.0,
    ) -> tuple[list[list[int]], list[float]]:
        """Whole-utterance beam search, one utterance at a time (as fairseq: an EOS counts
        when it ranks among the best ``beam`` candidates; search ends with ``beam`` finished
        hypotheses; score = sum of log-probs (EOS included) / length**len_penalty, length
        counting the EOS). Returns the best ids per utterance (without BOS/EOS) and scores."""
        best, scores = [], []
        for b in range(enc.shape[0]):
            n = int(enc_len[b])
            tokens, score = self._beam_one(
                enc[b : b + 1, :n],
                enc_len[b : b + 1],
                beam,
                int(self._max_len(enc_len[b], max_len_a, max_len_b)),
                len_penalty,
            )
            best.append(tokens)
            scores.append(score)
        return best, scores

    def _beam_one(
        self, enc: Tensor, enc_len: Tensor, beam: int, max_len: int, len_penalty: float
    ) -> tuple[list[int], float]:
        state = self.extend_memory(enc, enc_len, self.init_state(1))
        hyps: list[list[int]] = [[]]
        sums = torch.zeros(1, device=enc.device)
        token = torch.full((1,), self.bos_id, dtype=torch.long, device=enc.device)
        finished: list[tuple[float, list[int]]] = []
        for t in range(max_len + 1):
            logits, _, state = self.step(token, state)
            log_probs = self._next_log_probs(logits)
            if t == max_len:  # out of budget: only EOS remains
                eos = log_probs[:, self.eos_id].clone()
                log_probs.fill_(float("-inf"))
                log_probs[:, self.eos_id] = eos
            total = (sums.unsqueeze(1) + log_probs).flatten()
            top = total.topk(min(2 * beam, total.numel()))
            origin, words, live_sums = [], [], []
            for rank, (value, index) in enumerate(
                zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ):
                if value == float("-inf"):
                    break
                h, w = divmod(index, self.vocab_size)
                if w == self.eos_id:
                    if rank < beam:
                        finished.append((value / (t + 1) ** len_penalty, hyps[h]))
                elif len(words) < beam:
                    origin.append(h)
                    words.append(w)
                    live_sums.append(value)
            if len(finished) >= beam or not words:
                break
            hyps = [hyps[h] + [w] for h, w in zip(origin, words, strict=True)]
            state = state.select(origin)
            token = torch.tensor(words, dtype=torch.long, device=enc.device)
            sums = torch.tensor(live_sums, device=enc.device)
        score, tokens = max(finished, key=lambda f: f[0])
        return tokens, score
