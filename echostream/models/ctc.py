"""CTC heads, greedy CTC decoding (whole-sequence and incremental) and the ST CTC decoder.

Id convention. Class 0 of every CTC head is the blank (:data:`BLANK`).

- Text heads (ASR, ST): the tokenizer (``echostream/text/tokenizer.py``) reserves id 0,
  ``<pad>``, for the blank, so the classes *are* the token ids: ``vocab_size`` classes, no
  shift (``id_offset = 0``). Targets never contain id 0 (padding is expressed by lengths).
- Units: unit ids are k-means clusters ``0 .. num_units - 1`` with no spare id, so the blank is
  prepended: ``num_units + 1`` classes, unit ``u`` is class ``u + 1`` (``id_offset = 1``,
  ``CTCHead(..., prepend_blank=True)``).

``class = id + id_offset`` is applied in one place: :meth:`CTCHead.loss` shifts the targets and
the greedy decoders (:func:`greedy_ctc`, :func:`greedy_ctc_stream`) shift back, so callers only
ever see ids.

The ST CTC decoder (StreamSpeech's ``CTCDecoderWithTransformerLayer``) runs ``num_layers``
pre-norm transformer layers at the encoder's width over the encoder output, then a final
LayerNorm (only when ``num_layers > 0``, as StreamSpeech) and a :class:`CTCHead`. Attention is
block-causal: frame ``t`` of block ``b = t // block_size`` sees the frames of its own block and
the ``left_context_length`` frames before the block start, nothing else. ``block_size`` is the
encoder's block (Emformer segment ``L`` or Conformer chunk), so a block is processed as soon as
the encoder has produced it, and the streaming state is fixed size: per layer the keys/values of
the last ``left_context_length`` frames, plus the < ``block_size`` frames of the current
incomplete block. ``left_context_length = 0`` means "own block only". (StreamSpeech's layers
are causal frame by frame with unbounded history; ``block_size=1`` with a long left context is
the closest setting.) No positional encoding is added (as StreamSpeech): positions are already
in the encoder output, and the bounded cache is position-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.config import CTCDecoderConfig
from echostream.models.layers import (
    TransformerLayer,
    append_ragged,
    lengths_to_mask,
    shift_left_ragged,
    zero_padding,
)
from echostream.state import StreamState

BLANK = 0  # CTC blank class of every head; text: the tokenizer's <pad> id; units: prepended
NO_TOKEN = -1  # padding value of the id tensors returned by the greedy decoders


class CTCHead(nn.Module):
    """Linear from ``d_in`` to the CTC classes of a vocabulary of ``vocab_size`` ids.

    ``prepend_blank=False`` (text): id 0 is the blank, ``vocab_size`` classes, class = id.
    ``prepend_blank=True`` (units): ``vocab_size + 1`` classes, class = id + 1.
    """

    def __init__(
        self, d_in: int, vocab_size: int, prepend_blank: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.vocab_size, self.id_offset = vocab_size, int(prepend_blank)
        self.num_classes = vocab_size + self.id_offset
        self.proj = nn.Linear(d_in, self.num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d_in) -> logits (B, T, num_classes)."""
        return self.proj(x)

    def loss(
        self,
        logits: Tensor,
        lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        reduction: str = "sum",
    ) -> Tensor:
        """CTC loss of ids ``targets`` (B, N) (valid prefix ``target_lengths``; the padding
        values are ignored) under ``logits`` (B, T, num_classes) with valid ``lengths``. Empty
        targets are fine; impossible alignments (target longer than input) count as 0."""
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, C)
        valid = lengths_to_mask(target_lengths, targets.shape[1])
        classes = torch.where(valid, targets + self.id_offset, BLANK)
        if bool((valid & (classes == BLANK)).any()):
            raise ValueError(f"CTC targets contain the blank id {BLANK - self.id_offset}")
        return F.ctc_loss(
            log_probs,
            classes,
            lengths,
            target_lengths,
            blank=BLANK,
            reduction=reduction,
            zero_infinity=True,
        )


def _best_classes(logits: Tensor, id_offset: int, suppress: Sequence[int]) -> Tensor:
    """logits (B, T, C) -> argmax classes (B, T), never choosing the ids in ``suppress``."""
    if suppress:
        banned = [t + id_offset for t in suppress]
        if BLANK in banned:
            raise ValueError("cannot suppress the blank")
        logits = logits.clone()
        logits[..., banned] = float("-inf")
    return logits.argmax(-1)


def _collapse(
    classes: Tensor, lengths: Tensor, previous: Tensor, id_offset: int
) -> tuple[Tensor, Tensor]:
    """Greedy CTC collapse of classes (B, T) (valid ``lengths``) given the class of the frame
    before them (B,) -> ids (B, N) padded with ``NO_TOKEN``, counts (B,)."""
    batch, frames = classes.shape
    before = torch.cat([previous.unsqueeze(1), classes[:, :-1]], dim=1)
    emit = (classes != BLANK) & (classes != before) & lengths_to_mask(lengths, frames)
    counts = emit.sum(1)
    width = int(counts.max()) if batch else 0
    order = torch.argsort((~emit).to(torch.int8), dim=1, stable=True)[:, :width]
    ids = classes.gather(1, order) - id_offset
    return torch.where(lengths_to_mask(counts, width), ids, NO_TOKEN), counts


def greedy_ctc(
    logits: Tensor, lengths: Tensor, id_offset: int = 0, suppress: Sequence[int] = ()
) -> tuple[Tensor, Tensor]:
    """Best path, repeats merged, blanks removed.

    logits (B, T, C), lengths (B,) -> ids (B, N) int64 padded with ``NO_TOKEN``, counts (B,).
    ``id_offset``: the head's (0 text, 1 units). ``suppress``: ids never chosen (StreamSpeech
    bans unk at inference).
    """
    classes = _best_classes(logits, id_offset, suppress)
    start = classes.new_full((classes.shape[0],), BLANK)
    return _collapse(classes, lengths, start, id_offset)


def ids_to_lists(ids: Tensor, counts: Tensor) -> list[list[int]]:
    """(B, N) padded ids + counts (B,) -> one Python list per stream."""
    return [row[:n].tolist() for row, n in zip(ids, counts.tolist(), strict=True)]


@dataclass(frozen=True)
class CTCGreedyState(StreamState):
    """Incremental greedy CTC: enough to continue the collapse across calls."""

    last_class: Tensor  # (B,) int64: best class of the last frame seen (BLANK before any)
    tokens: Tensor  # (B, N) int64: every id emitted so far, left-aligned
    num_tokens: Tensor  # (B,) int64: valid entries of ``tokens``

    @classmethod
    def initial(cls, batch_size: int, device: torch.device | str | None = None) -> CTCGreedyState:
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return cls(
            zeros.clone(),
            torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            zeros.clone(),
        )


def greedy_ctc_stream(
    logits_new: Tensor,
    new_len: Tensor,
    state: CTCGreedyState,
    id_offset: int = 0,
    suppress: Sequence[int] = (),
) -> tuple[Tensor, Tensor, CTCGreedyState]:
    """Greedy CTC on new frames only. logits_new (B, T, C), new_len (B,) ->
    new ids (B, N) (``NO_TOKEN``-padded), new counts (B,), state. Concatenating the new ids of
    successive calls equals :func:`greedy_ctc` on all frames at once."""
    classes = _best_classes(logits_new, id_offset, suppress)
    ids, counts = _collapse(classes, new_len, state.last_class, id_offset)
    last = (
        classes.gather(1, (new_len - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        if classes.shape[1]
        else state.last_class
    )
    last = torch.where(new_len > 0, last, state.last_class)
    tokens = append_ragged(
        state.tokens.unsqueeze(-1), state.num_tokens, ids.clamp(min=0).unsqueeze(-1), counts
    ).squeeze(-1)
    return ids, counts, CTCGreedyState(last, tokens, state.num_tokens + counts)


# --------------------------------------------------------------------------- ST CTC decoder


@dataclass(frozen=True)
class STCTCState(StreamState):
    """Fixed-size streaming state of :class:`STCTCDecoder`."""

    pending: Tensor  # (B, P, d_enc) frames of the current incomplete block, left-aligned
    pending_len: Tensor  # (B,) valid pending frames (< block_size)
    cache_k: Tensor  # (B, L, H, C, Dh) per-layer keys of the last C frames, right-aligned
    cache_v: Tensor  # (B, L, H, C, Dh) values, same layout
    cache_len: Tensor  # (B,) valid cache slots: the last ``cache_len`` of C
    num_frames: Tensor  # (B,) frames output so far


class STCTCDecoder(nn.Module):
    """Block-causal transformer layers over the encoder output + CTC head over the target vocab.

    forward(enc (B, T, d_enc), enc_len (B,)) -> logits (B, T, tgt_vocab), enc_len
    stream(enc_new, enc_new_len, state, final) -> logits of the frames now final, lengths, state
    """

    def __init__(
        self, d_enc: int, cfg: CTCDecoderConfig, tgt_vocab: int, block_size: int = 1
    ) -> None:
        super().__init__()
        if d_enc % cfg.num_heads:
            raise ValueError(
                f"st_ctc_decoder.num_heads={cfg.num_heads} must divide the encoder width {d_enc}"
            )
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.d_enc, self.block_size = d_enc, block_size
        self.left_context = cfg.left_context_length
        self.num_heads, self.head_dim = cfg.num_heads, d_enc // cfg.num_heads
        self.layers = nn.ModuleList(
            TransformerLayer(d_enc, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.layer_norm = nn.LayerNorm(d_enc) if cfg.num_layers else None
        self.head = CTCHead(d_enc, tgt_vocab)

    def _visible(self, query_pos: Tensor, key_pos: Tensor, key_valid: Tensor, block: int) -> Tensor:
        """query_pos (Tq,), key_pos (Tk,) positions, key_valid (B, Tk) -> (B, Tq, Tk)."""
        start = torch.div(query_pos, block, rounding_mode="floor") * block  # (Tq,)
        kp = key_pos.unsqueeze(0)
        rule = (kp >= start.unsqueeze(1) - self.left_context) & (kp < start.unsqueeze(1) + block)
        return rule.unsqueeze(0) & key_valid.unsqueeze(1)

    def _output(self, x: Tensor) -> Tensor:
        return self.head(self.layer_norm(x) if self.layer_norm is not None else x)

    def forward(
        self, enc: Tensor, enc_len: Tensor, block_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """enc (B, T, d_enc), enc_len (B,) -> logits (B, T, V), enc_len. ``block_size``
        overrides the constructor's (e.g. the chunk sampled in multi-chunk training)."""
        block = block_size or self.block_size
        x = zero_padding(enc, enc_len)
        pos = torch.arange(x.shape[1], device=x.device)
        visible = self._visible(pos, pos, lengths_to_mask(enc_len, x.shape[1]), block)
        for layer in self.layers:
            x, _ = layer(x, visible)
        return self._output(x), enc_len

    def init_state(self, batch_size: int) -> STCTCState:
        p = self.head.proj.weight
        layers, c = len(self.layers), self.left_context
        count = torch.zeros(batch_size, dtype=torch.long, device=p.device)
        cache = p.new_zeros(batch_size, layers, self.num_heads, c, self.head_dim)
        return STCTCState(
            p.new_zeros(batch_size, 0, self.d_enc),
            count,
            cache,
            cache.clone(),
            count.clone(),
            count.clone(),
        )

    def stream(
        self, enc_new: Tensor, enc_new_len: Tensor, state: STCTCState, final: bool | Tensor = False
    ) -> tuple[Tensor, Tensor, STCTCState]:
        """enc_new (B, N, d_enc) new encoder frames, enc_new_len (B,) ->
        logits (B, M, V) of the frames whose block is complete (all pending ones when
        ``final``), their counts (B,), new state. ``final`` may be a (B,) bool tensor (flush
        some streams only). After a stream's final call, that stream is over."""
        block, c = self.block_size, self.left_context
        x = append_ragged(
            state.pending, state.pending_len, zero_padding(enc_new, enc_new_len), enc_new_len
        )  # (B, Tx, d)
        total = state.pending_len + enc_new_len
        whole = torch.div(total, block, rounding_mode="floor") * block
        ready = torch.where(torch.as_tensor(final, device=total.device), total, whole)
        rest = total - ready
        pending = shift_left_ragged(x, ready, int(rest.max()) if rest.numel() else 0)
        width = int(ready.max()) if ready.numel() else 0
        if width == 0:
            logits = x.new_zeros(x.shape[0], 0, self.head.num_classes)
            return logits, ready, state.replace(pending=pending, pending_len=rest)

        x = x[:, :width]
        slots = torch.arange(c, device=x.device)
        key_valid = torch.cat(
            [slots.unsqueeze(0) >= c - state.cache_len.unsqueeze(1), lengths_to_mask(ready, width)],
            dim=1,
        )  # (B, C + width)
        pos = torch.arange(width, device=x.device)
        visible = self._visible(pos, torch.cat([slots - c, pos]), key_valid, block)
        cache_len = torch.clamp(state.cache_len + ready, max=c)
        keep = (slots.unsqueeze(0) >= c - cache_len.unsqueeze(1)).view(x.shape[0], 1, c, 1)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            past = (state.cache_k[:, i], state.cache_v[:, i])
            x, (k, v) = layer(x, visible, past_kv=past)
            for new, old, out in ((k, past[0], new_k), (v, past[1], new_v)):
                tail = shift_left_ragged(torch.cat([old, new], dim=2), ready, c)
                out.append(torch.where(keep, tail, 0.0))
        cache_k = torch.stack(new_k, 1) if new_k else state.cache_k
        cache_v = torch.stack(new_v, 1) if new_v else state.cache_v
        new_state = STCTCState(pending, rest, cache_k, cache_v, cache_len, state.num_frames + ready)
        return self._output(x), ready, new_state


def trailing_blanks(
    logits_new: Tensor,
    new_len: Tensor,
    run: Tensor,
    id_offset: int = 0,
    suppress: Sequence[int] = (),
) -> Tensor:
    """Trailing run of blank frames after new frames: logits_new (B, T, C) (``new_len`` (B,)
    valid), run (B,) blank frames at the end of what came before -> (B,) the run now. Chained
    over calls it equals the trailing blank run of all frames at once (greedy best classes, as
    :func:`greedy_ctc`)."""
    classes = _best_classes(logits_new, id_offset, suppress)  # (B, T)
    frames = classes.shape[1]
    spoken = (classes != BLANK) & lengths_to_mask(new_len, frames)
    index = torch.arange(frames, device=classes.device)
    last = torch.where(spoken, index, -1).amax(1) if frames else new_len.new_full(run.shape, -1)
    return torch.where(last >= 0, new_len - 1 - last, run + new_len)


def restart_tokens(
    state: CTCGreedyState, restart: Tensor, forget_last: bool = False
) -> CTCGreedyState:
    """Empty the token store of the streams ``restart`` (B,) bool (a new segment). The collapse
    continues (a token spanning the boundary is not emitted twice) unless ``forget_last``."""
    num = torch.where(restart, 0, state.num_tokens)
    last = torch.where(restart, BLANK, state.last_class) if forget_last else state.last_class
    width = int(num.max()) if num.numel() else 0
    return CTCGreedyState(last, state.tokens[:, :width], num)
