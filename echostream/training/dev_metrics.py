"""Dev-set metrics of ``echostream train``: greedy decoding, corpus WER and BLEU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from echostream.evaluation.quality import edit_distance


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate in percent: total edits / total reference words."""
    words = sum(len(r.split()) for r in refs)
    edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True))
    return 100.0 * edits / max(words, 1)


def corpus_bleu(refs: Sequence[str], hyps: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def decode_for_eval(model: nn.Module, batch: dict) -> tuple[list | None, list | None]:
    """Greedy ASR (CTC head) and ST (MT decoder) token ids of a batch, when the model can.

    :class:`~echostream.models.EchoStreamModel`: one batched encoder pass
    (``outputs(need=("asr_ctc",))``), greedy CTC on the ASR head (unk/bos/eos suppressed, as
    ``translate``) and the MT decoder's batched ``greedy_decode``. Other models may define
    ``greedy_asr(batch)`` / ``greedy_st(batch)`` (each ``-> list[list[int]]``); a model with
    neither gets no WER/BLEU.
    """
    if hasattr(model, "greedy_asr") or hasattr(model, "greedy_st"):
        asr = model.greedy_asr(batch) if hasattr(model, "greedy_asr") else None
        st = model.greedy_st(batch) if hasattr(model, "greedy_st") else None
        return asr, st
    if hasattr(model, "outputs") and hasattr(model, "mt_decoder"):
        from echostream.models.ctc import greedy_ctc, ids_to_lists
        from echostream.models.echostream import TEXT_CTC_SUPPRESS

        out = model.outputs(batch, need=("asr_ctc",))
        ids, counts = greedy_ctc(out.asr_logits, out.enc_len, suppress=TEXT_CTC_SUPPRESS)
        tokens, lengths = model.mt_decoder.greedy_decode(out.enc, out.enc_len)
        st = [row[: int(n)] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]
        return ids_to_lists(ids, counts), st
    return None, None
