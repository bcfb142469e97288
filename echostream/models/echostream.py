"""The whole model: speech encoder, ASR/ST CTC, MT decoder, T2U encoder, unit decoder; multitask
loss; offline (whole-utterance) translation.

``cfg.model`` picks the encoder body — ``echostream``: Emformer, ``streamspeech``: StreamSpeech's
chunk Conformer — and everything after the encoder is identical, so a comparison is a one-line
config change::

    fbank (B, T, 80) ─► encoder ─► enc (B, S, d_enc)
        ├─► asr_ctc       CTCHead, source vocab                   → ASR CTC loss
        ├─► st_ctc        STCTCDecoder, target vocab              → ST CTC loss
        └─► mt_decoder    [BOS] + target, cross-attends to enc   → label-smoothed CE
              └─► hidden (B, L+1, d_mt) ─► t2u (B, L+1, d_t2u)
                    └─► unit_decoder: each position ×rate, CTC over units → unit CTC loss

Training (``forward``) follows StreamSpeech's ``StreamSpeechModel.forward``:

- The MT decoder is teacher-forced on ``prev_output_tokens`` = ``[BOS] + target`` and
  cross-attends to the *whole* encoder output (StreamSpeech does the same; its optional
  ASR/ST-CTC-driven streaming mask is not used here). Simultaneous behaviour comes from the
  policy at inference, the encoder being streaming in both training and inference.
- T2U reads the MT decoder's final hidden states (after its final LayerNorm) at all ``L + 1``
  teacher-forced positions (the BOS position included, as StreamSpeech); the unit decoder
  upsamples every T2U position ×``upsample_rate`` and is trained with CTC on the units.
- Baseline multi-chunk training: pass ``chunk_size`` (e.g. :meth:`EchoStreamModel.
  sample_chunk_size`) to ``forward``; it reaches the Conformer (0 = full attention) and sets the
  ST CTC decoder's block to the same chunk. The Emformer ignores it (its segment is fixed).

Loss normalisation (a deliberate choice, documented here): every loss is a *per-token mean over
the batch* — the sum over utterances divided by the number of target tokens of that task in the
batch (fairseq's sum-then-divide, but each task by its own count):

- ``asr_ctc``: Σ CTC / Σ ``src_len``; ``st_ctc``: Σ CTC / Σ ``tgt_len``;
- ``mt_ce``: Σ over target positions (EOS included) / Σ (``tgt_len`` + 1), label smoothing
  ``cfg.loss.label_smoothing`` (``(1 - ε)·nll + ε·mean(-log p)``, as ``F.cross_entropy``);
- ``unit_ctc``: Σ CTC / Σ ``unit_len``.

Divisors are clamped to >= 1, so a batch whose targets are all empty gives a finite loss (a CTC
loss of an empty target is the cost of emitting only blanks; it still counts). The values do
not depend on the batch size and are comparable between tasks. StreamSpeech instead divides
the weighted sum of all summed losses by the number of *unit* tokens; with per-task means the
same weights (1, 8, 4, 4) give the text tasks somewhat more weight relative to the unit CTC.
CTC uses ``zero_infinity`` (impossible alignments — target longer than input — count 0).
``total`` = Σ weight·loss with ``cfg.loss`` weights. A branch whose weight is 0 is not run (its
loss is a zero tensor), except that the MT decoder runs when the unit CTC needs its hidden
states (its CE is then reported, with weight 0 in ``total``).
``mt_nll`` (un-smoothed CE, for perplexity) is returned for monitoring and is not in ``total``.

Padding never leaks: encoder inputs beyond ``fbank_len`` are masked by every encoder stage,
decoder token positions beyond their lengths are replaced by PAD and masked, and every loss
reads only valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.config import EchoStreamConfig, validate_config
from echostream.models.ctc import CTCHead, STCTCDecoder, greedy_ctc, ids_to_lists
from echostream.models.encoder import SpeechEncoder
from echostream.models.layers import lengths_to_mask
from echostream.models.mt_decoder import MTDecoder
from echostream.models.t2u import T2UEncoder
from echostream.models.unit_decoder import UnitDecoder
from echostream.text.tokenizer import BOS_ID, EOS_ID, UNK_ID

__all__ = ["LOSS_NAMES", "EchoStreamModel", "ModelOutputs", "TranslationResult", "build_model"]

LOSS_NAMES = ("asr_ctc", "st_ctc", "mt_ce", "unit_ctc")  # the weighted terms of ``total``
TEXT_CTC_SUPPRESS = (UNK_ID, BOS_ID, EOS_ID)  # never emitted by greedy text CTC (as StreamSpeech)


@dataclass
class ModelOutputs:
    """Everything :meth:`EchoStreamModel.outputs` computes (``None``: branch not run)."""

    enc: Tensor  # (B, S, d_enc) encoder frames, zero beyond enc_len
    enc_len: Tensor  # (B,)
    asr_logits: Tensor | None = None  # (B, S, src_vocab)
    st_logits: Tensor | None = None  # (B, S, tgt_vocab)
    mt_logits: Tensor | None = None  # (B, L+1, tgt_vocab)
    mt_hidden: Tensor | None = None  # (B, L+1, d_mt)
    mt_len: Tensor | None = None  # (B,) = tgt_len + 1
    t2u_out: Tensor | None = None  # (B, L+1, d_t2u)
    unit_logits: Tensor | None = None  # (B, (L+1)·rate, num_units + 1)
    unit_frame_len: Tensor | None = None  # (B,) = (tgt_len + 1)·rate


@dataclass
class TranslationResult:
    """Offline translation of one utterance. Ids exclude BOS/EOS; units are deduplicated
    (greedy CTC collapse). Texts are set when the model has tokenizers attached."""

    asr_ids: list[int]
    st_ids: list[int]  # greedy ST CTC (what the simultaneous policy counts)
    tgt_ids: list[int]  # MT decoder output (greedy or beam)
    units: list[int]
    asr_text: str | None = None
    tgt_text: str | None = None
    extra: dict = field(default_factory=dict)


class EchoStreamModel(nn.Module):
    """EchoStream (Emformer) or the StreamSpeech baseline (chunk Conformer), by ``cfg.model``.

    Submodules: ``encoder`` (:class:`SpeechEncoder`), ``asr_ctc`` (:class:`CTCHead`),
    ``st_ctc`` (:class:`STCTCDecoder`), ``mt_decoder`` (:class:`MTDecoder`), ``t2u``
    (:class:`T2UEncoder`), ``unit_decoder`` (:class:`UnitDecoder`). ``src_tokenizer`` /
    ``tgt_tokenizer`` (plain attributes, not saved in ``state_dict``) turn ids into text in
    :meth:`translate`.
    """

    def __init__(self, cfg: EchoStreamConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg)
        d_enc = cfg.encoder.d_model
        self.asr_ctc = CTCHead(d_enc, cfg.vocab.src_vocab_size)
        self.st_ctc = STCTCDecoder(
            d_enc, cfg.st_ctc_decoder, cfg.vocab.tgt_vocab_size, self.encoder.block_frames
        )
        self.mt_decoder = MTDecoder(cfg.mt_decoder, cfg.vocab.tgt_vocab_size, d_enc)
        self.t2u = T2UEncoder(cfg.t2u_encoder, cfg.mt_decoder.d_model)
        self.unit_decoder = UnitDecoder(
            cfg.unit_decoder, cfg.vocab.num_units, cfg.t2u_encoder.d_model
        )
        self.src_tokenizer = None
        self.tgt_tokenizer = None

    # ------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return self.asr_ctc.proj.weight.device

    def attach_tokenizers(self, src=None, tgt=None) -> EchoStreamModel:
        """Attach source/target :class:`~echostream.text.tokenizer.Tokenizer` s (for texts)."""
        for name, tok, size in (
            ("source", src, self.cfg.vocab.src_vocab_size),
            ("target", tgt, self.cfg.vocab.tgt_vocab_size),
        ):
            if tok is not None and tok.vocab_size != size:
                raise ValueError(
                    f"{name} tokenizer has {tok.vocab_size} ids, the model's vocab has {size}"
                )
        self.src_tokenizer, self.tgt_tokenizer = src, tgt
        return self

    def sample_chunk_size(self, rng=None) -> int | None:
        """Multi-chunk training (baseline): a chunk size for this batch (0 = full attention),
        drawn from ``encoder.conformer.train_chunk_sizes``; ``None`` for the Emformer."""
        body = self.encoder.body
        return body.sample_chunk_size(rng) if hasattr(body, "sample_chunk_size") else None

    def _st_block(self, chunk_size: int | None, frames: int) -> int | None:
        """ST CTC decoder block for this forward: the sampled chunk (0 = whole utterance)."""
        if chunk_size is None or self.cfg.model != "streamspeech":
            return None
        return chunk_size if chunk_size > 0 else max(frames, 1)

    def parameter_report(self) -> dict[str, int]:
        """Parameters per component (the encoder's front end has none) and in total."""
        parts = {
            "subsampling": self.encoder.subsampling,
            "encoder body": self.encoder.body,
            "ASR CTC head": self.asr_ctc,
            "ST CTC decoder": self.st_ctc,
            "MT decoder": self.mt_decoder,
            "T2U encoder": self.t2u,
            "unit decoder": self.unit_decoder,
        }
        report = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        report["total"] = sum(p.numel() for p in self.parameters())
        return report

    # ------------------------------------------------------------------ training

    def outputs(
        self,
        batch: dict,
        chunk_size: int | None = None,
        need: tuple[str, ...] = LOSS_NAMES,
    ) -> ModelOutputs:
        """Teacher-forced outputs of the branches in ``need`` (names of :data:`LOSS_NAMES`).

        ``batch``: :func:`echostream.data.sampler.collate`'s dict (``fbank``, ``fbank_len``,
        ``prev_output_tokens``, ``tgt_len`` are read here).
        """
        device = self.device
        fbank = batch["fbank"].to(device)  # (B, T, 80)
        fbank_len = batch["fbank_len"].to(device)  # (B,)
        enc, enc_len = self.encoder(fbank, fbank_len, chunk_size=chunk_size)  # (B, S, d_enc)
        out = ModelOutputs(enc=enc, enc_len=enc_len)
        if "asr_ctc" in need:
            out.asr_logits = self.asr_ctc(enc)
        if "st_ctc" in need:
            out.st_logits, _ = self.st_ctc(enc, enc_len, self._st_block(chunk_size, enc.shape[1]))
        if "mt_ce" in need or "unit_ctc" in need:
            prev = batch["prev_output_tokens"].to(device)  # (B, L+1) = [BOS] + target
            mt_len = batch["tgt_len"].to(device) + 1
            out.mt_logits, out.mt_hidden = self.mt_decoder(prev, mt_len, enc, enc_len)
            out.mt_len = mt_len
        if "unit_ctc" in need:
            out.t2u_out, _ = self.t2u(out.mt_hidden, out.mt_len)  # (B, L+1, d_t2u)
            out.unit_logits, out.unit_frame_len = self.unit_decoder(out.t2u_out, out.mt_len)
        return out

    def losses(self, out: ModelOutputs, batch: dict) -> dict[str, Tensor]:
        """Per-token losses (see the module docstring) and their weighted ``total``."""
        device, w = self.device, self.cfg.loss
        zero = out.enc.new_zeros(())
        result: dict[str, Tensor] = {}

        def per_token(total: Tensor, lengths: Tensor) -> Tensor:
            return total / lengths.sum().clamp(min=1).to(total.dtype)

        result["asr_ctc"] = zero
        if out.asr_logits is not None:
            src, src_len = batch["src_tokens"].to(device), batch["src_len"].to(device)
            ctc = self.asr_ctc.loss(out.asr_logits, out.enc_len, src, src_len)
            result["asr_ctc"] = per_token(ctc, src_len)
        result["st_ctc"] = zero
        if out.st_logits is not None:
            tgt, tgt_len = batch["tgt_tokens"].to(device), batch["tgt_len"].to(device)
            ctc = self.st_ctc.head.loss(out.st_logits, out.enc_len, tgt, tgt_len)
            result["st_ctc"] = per_token(ctc, tgt_len)
        result["mt_ce"] = result["mt_nll"] = zero
        if out.mt_logits is not None:
            target = batch["tgt_out"].to(device)  # (B, L+1) = target + [EOS]
            valid = lengths_to_mask(out.mt_len, target.shape[1])
            log_probs = F.log_softmax(out.mt_logits.float(), dim=-1)  # (B, L+1, V)
            nll = -log_probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            eps = w.label_smoothing
            ce = (1.0 - eps) * nll - eps * log_probs.mean(-1) if eps > 0 else nll
            result["mt_ce"] = per_token(torch.where(valid, ce, 0.0).sum(), out.mt_len)
            result["mt_nll"] = per_token(torch.where(valid, nll, 0.0).sum(), out.mt_len).detach()
        result["unit_ctc"] = zero
        if out.unit_logits is not None:
            units, unit_len = batch["units"].to(device), batch["unit_len"].to(device)
            ctc = self.unit_decoder.head.loss(out.unit_logits, out.unit_frame_len, units, unit_len)
            result["unit_ctc"] = per_token(ctc, unit_len)
        result["total"] = (
            w.asr_ctc_weight * result["asr_ctc"]
            + w.st_ctc_weight * result["st_ctc"]
            + w.mt_ce_weight * result["mt_ce"]
            + w.unit_ctc_weight * result["unit_ctc"]
        )
        return result

    def forward(self, batch: dict, chunk_size: int | None = None) -> dict[str, Tensor]:
        """Multitask losses of a collated batch: ``asr_ctc``, ``st_ctc``, ``mt_ce``,
        ``unit_ctc``, ``total`` (weighted sum) and ``mt_nll`` (monitoring only).

        ``chunk_size``: the baseline's attention chunk for this batch (multi-chunk training;
        0 = full attention; None = the config's); ignored by the Emformer.
        """
        w = self.cfg.loss
        weights = {
            "asr_ctc": w.asr_ctc_weight,
            "st_ctc": w.st_ctc_weight,
            "mt_ce": w.mt_ce_weight,
            "unit_ctc": w.unit_ctc_weight,
        }
        need = tuple(name for name, weight in weights.items() if weight > 0)
        return self.losses(self.outputs(batch, chunk_size, need), batch)

    # ------------------------------------------------------------------ offline inference

    def _as_features(self, pcm_or_feats) -> Tensor:
        """1-D PCM (S,) at ``cfg.features.sample_rate`` -> fbank; 2-D (T, mel) fbank as is."""
        x = pcm_or_feats
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"translate expects a numpy array or tensor, got {type(x).__name__}")
        mel = self.cfg.features.num_mel_bins
        if x.dim() == 1:
            x = self.encoder.features(x.float())
        elif x.dim() != 2 or x.shape[1] != mel:
            raise ValueError(
                f"translate expects PCM (S,) or fbank (T, {mel}), got {tuple(x.shape)}"
            )
        return x.to(self.device, torch.float32)

    def units_for_text(self, tgt_ids: list[int], enc: Tensor, enc_len: Tensor) -> list[int]:
        """Units for target ids of one utterance: the MT decoder is re-run teacher-forced on
        ``[BOS] + tgt_ids`` over ``enc`` (1, S, d_enc) to get its hidden states, then T2U and
        the unit decoder; greedy CTC collapse (deduplicated units)."""
        prev = torch.tensor([[BOS_ID, *tgt_ids]], dtype=torch.long, device=enc.device)
        length = torch.tensor([prev.shape[1]], device=enc.device)
        _, hidden = self.mt_decoder(prev, length, enc, enc_len)  # (1, L+1, d_mt)
        t2u_out, _ = self.t2u(hidden, length)
        logits, frame_len = self.unit_decoder(t2u_out, length)
        units, counts = self.unit_decoder.units(logits, frame_len)
        return ids_to_lists(units, counts)[0]

    @torch.no_grad()
    def translate(
        self,
        pcm_or_feats: np.ndarray | Tensor,
        beam: int = 1,
        chunk_size: int | None = None,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
    ) -> TranslationResult:
        """Offline translation of one whole utterance (PCM (S,) or fbank (T, 80)).

        ASR: greedy CTC; MT: greedy (``beam=1``) or beam search (StreamSpeech: 4), at most
        ``max_len_a·S + max_len_b`` tokens; units: T2U over the hidden states of the decoded
        target, unit decoder, greedy CTC. Runs in eval mode (the mode is restored after).
        ``chunk_size``: the baseline's attention chunk (None = config, 0 = full attention).
        """
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        was_training = self.training
        self.eval()
        try:
            feats = self._as_features(pcm_or_feats)  # (T, 80)
            feat_len = torch.tensor([feats.shape[0]], device=self.device)
            enc, enc_len = self.encoder(feats[None], feat_len, chunk_size=chunk_size)
            asr, asr_n = greedy_ctc(self.asr_ctc(enc), enc_len, suppress=TEXT_CTC_SUPPRESS)
            st_logits, _ = self.st_ctc(enc, enc_len, self._st_block(chunk_size, enc.shape[1]))
            st, st_n = greedy_ctc(st_logits, enc_len, suppress=TEXT_CTC_SUPPRESS)
            if beam == 1:
                tokens, lengths = self.mt_decoder.greedy_decode(enc, enc_len, max_len_a, max_len_b)
                tgt_ids = tokens[0, : int(lengths[0])].tolist()
            else:
                best, _ = self.mt_decoder.beam_search(
                    enc, enc_len, beam=beam, max_len_a=max_len_a, max_len_b=max_len_b
                )
                tgt_ids = best[0]
            units = self.units_for_text(tgt_ids, enc, enc_len)
        finally:
            self.train(was_training)
        result = TranslationResult(
            asr_ids=ids_to_lists(asr, asr_n)[0],
            st_ids=ids_to_lists(st, st_n)[0],
            tgt_ids=tgt_ids,
            units=units,
        )
        if self.src_tokenizer is not None:
            result.asr_text = self.src_tokenizer.decode(result.asr_ids)
        if self.tgt_tokenizer is not None:
            result.tgt_text = self.tgt_tokenizer.decode(result.tgt_ids)
        return result


def build_model(cfg: EchoStreamConfig) -> EchoStreamModel:
    """The model ``cfg.model`` names (``echostream`` or ``streamspeech``), freshly initialised."""
    return EchoStreamModel(cfg)
