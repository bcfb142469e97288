"""``echostream evaluate``: quality and latency of simultaneous (and offline) translation.

For every utterance of a manifest split, the source wav is streamed through a
:class:`~echostream.streaming.translator.StreamingTranslator` at each decision chunk size (or
translated whole, ``offline``). Scores:

- BLEU / chrF of the target text against the reference, both normalised as StreamSpeech
  scores (lower-case, no punctuation: the models' vocabularies are normalised text);
- source-side streaming ASR WER (the ASR CTC transcript against the normalised source text);
- ASR-BLEU of the output speech, recognised by pocketsphinx en-us (``EnglishASR``; optional),
  next to the ceiling: the same recogniser on the gold target audio;
- latency as SimulEval defines it (AL, LAAL, AP, DAL, StartOffset, EndOffset) for text and for
  speech output, plain and computation-aware, plus the compute real-time factor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio.io import load_audio
from ..data.manifest import read_manifest, resolve_path
from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from ..text.normalize import normalize
from .latency import InstanceLog, corpus_latency
from .quality import bleu, chrf, word_error_rate

LATENCY_METRICS = ("AL", "LAAL", "AP", "DAL", "StartOffset", "EndOffset")


@dataclass
class Utterance:
    id: str
    source: Path
    src_text: str
    tgt_text: str
    gold_audio: Path | None


def load_split(corpus: Path, split: str, limit: int | None = None) -> list[Utterance]:
    """Utterances of ``corpus/{split}.tsv`` (the first ``limit``), with gold target audio when
    the corpus has it (``tgt/{split}/{id}.flac`` in a synthetic corpus)."""
    manifest = read_manifest(corpus / f"{split}.tsv", check_files=True)
    rows = list(manifest)[:limit] if limit else list(manifest)
    out = []
    for row in rows:
        gold = corpus / "tgt" / split / f"{row.id}.flac"
        out.append(
            Utterance(
                row.id,
                resolve_path(row.src_audio, corpus),
                row.src_text,
                row.tgt_text,
                gold if gold.is_file() else None,
            )
        )
    return out


def run_simultaneous(
    model: EchoStreamModel,
    vocoder: UnitVocoder | None,
    utterances: list[Utterance],
    chunk_ms: int,
    mode: str = "incremental",
) -> tuple[list[str], list[str], list[np.ndarray], list[InstanceLog]]:
    from ..streaming.translator import StreamingTranslator

    texts, transcripts, audios, logs = [], [], [], []
    translator = StreamingTranslator(model, vocoder, chunk_ms=chunk_ms, mode=mode)
    for i, utt in enumerate(utterances):
        translator.reset()
        translator.push(load_audio(utt.source, translator.sample_rate))
        translator.finish()
        texts.append(translator.translation)
        transcripts.append(translator.transcript)
        audios.append(translator.output_audio())
        logs.append(translator.instance_log(normalize(utt.tgt_text), index=i))
    return texts, transcripts, audios, logs


@torch.inference_mode()
def run_offline(
    model: EchoStreamModel, vocoder: UnitVocoder | None, utterances: list[Utterance], beam: int = 1
) -> tuple[list[str], list[str], list[np.ndarray], float]:
    texts, transcripts, audios, compute = [], [], [], 0.0
    for utt in utterances:
        pcm = load_audio(utt.source, model.cfg.features.sample_rate)
        t0 = time.perf_counter()
        result = model.translate(pcm, beam=beam)
        audio = np.zeros(0, np.float32)
        if vocoder is not None and result.units:
            wav, wav_len = vocoder(torch.tensor([result.units]))
            audio = wav[0, : int(wav_len[0])].numpy()
        compute += time.perf_counter() - t0
        texts.append(result.tgt_text or "")
        transcripts.append(result.asr_text or "")
        audios.append(audio)
    return texts, transcripts, audios, compute


def score(
    utterances: list[Utterance],
    texts: list[str],
    transcripts: list[str],
    audios: list[np.ndarray],
    asr=None,
) -> dict[str, Any]:
    refs = [normalize(u.tgt_text) for u in utterances]
    hyps = [normalize(t) for t in texts]
    out: dict[str, Any] = {
        "BLEU": bleu(hyps=hyps, refs=refs),
        "chrF": chrf(hyps=hyps, refs=refs),
        "source_WER": word_error_rate(
            hyps=[normalize(t) for t in transcripts],
            refs=[normalize(u.src_text) for u in utterances],
        ),
        "examples": [
            {"id": u.id, "ref": r, "hyp": h}
            for u, r, h in list(zip(utterances, refs, hyps, strict=True))[:5]
        ],
    }
    if asr is not None:
        heard = asr.transcribe_many(a if a.size else np.zeros(160, np.float32) for a in audios)
        out["ASR_BLEU"] = bleu(hyps=[normalize(h) for h in heard], refs=refs)
        out["speech_s"] = float(sum(a.size for a in audios) / 16000)
    return out


def gold_ceiling(utterances: list[Utterance], asr) -> dict[str, float] | None:
    """ASR-BLEU / WER of the recogniser on the gold target audio: what ASR-BLEU can reach."""
    have = [u for u in utterances if u.gold_audio is not None]
    if not have or asr is None:
        return None
    heard = asr.transcribe_many(load_audio(u.gold_audio, 16000) for u in have)
    refs = [normalize(u.tgt_text) for u in have]
    return {
        "ASR_BLEU": bleu(hyps=[normalize(h) for h in heard], refs=refs),
        "WER": word_error_rate(hyps=[normalize(h) for h in heard], refs=refs),
        "utterances": len(have),
    }


def latency_table(logs: list[InstanceLog], speech: bool) -> dict[str, float]:
    out = {
        f"text_{k}": v
        for k, v in corpus_latency(
            logs, "text", computation_aware=True, metrics=LATENCY_METRICS
        ).items()
    }
    if speech and any(log.segment_durations_ms for log in logs):
        out.update(
            {
                f"speech_{k}": v
                for k, v in corpus_latency(
                    logs, "speech", computation_aware=True, metrics=LATENCY_METRICS
                ).items()
            }
        )
    return out


def evaluate(
    model: EchoStreamModel,
    vocoder: UnitVocoder | None,
    corpus: Path,
    split: str,
    chunks: list[int],
    offline: bool = True,
    mode: str = "incremental",
    limit: int | None = None,
    asr=None,
    log=print,
) -> dict[str, Any]:
    """Every configuration on the same utterances; a dict ready for JSON."""
    utterances = load_split(corpus, split, limit)
    results: dict[str, Any] = {
        "split": split,
        "utterances": len(utterances),
        "mode": mode,
        "runs": {},
    }
    results["gold_ceiling"] = gold_ceiling(utterances, asr)
    if asr is not None:  # which recogniser made the ASR-BLEU figures
        results["asr"] = {"lm": str(asr.lm), "dict": str(asr.dict)}
    for chunk in chunks:
        t0 = time.perf_counter()
        texts, transcripts, audios, logs = run_simultaneous(model, vocoder, utterances, chunk, mode)
        row = score(utterances, texts, transcripts, audios, asr)
        try:
            row.update(latency_table(logs, speech=vocoder is not None))
        except ValueError as err:  # no output at all: latency undefined
            row["latency_error"] = str(err)
        row["wall_s"] = time.perf_counter() - t0
        results["runs"][f"simul_{chunk}ms"] = row
        log(
            f"{split} chunk {chunk} ms: BLEU {row['BLEU']:.2f}"
            + (f", ASR-BLEU {row['ASR_BLEU']:.2f}" if "ASR_BLEU" in row else "")
            + (f", AL {row['text_AL']:.0f} ms" if "text_AL" in row else "")
        )
    if offline:
        texts, transcripts, audios, compute = run_offline(model, vocoder, utterances)
        row = score(utterances, texts, transcripts, audios, asr)
        row["compute_s"] = compute
        results["runs"]["offline"] = row
        log(
            f"{split} offline: BLEU {row['BLEU']:.2f}"
            + (f", ASR-BLEU {row['ASR_BLEU']:.2f}" if "ASR_BLEU" in row else "")
        )
    return results


def render_markdown(results: dict[str, Any], title: str) -> str:
    cols = [
        "BLEU",
        "chrF",
        "ASR_BLEU",
        "source_WER",
        "text_AL",
        "text_AL_CA",
        "text_LAAL",
        "text_AP",
        "text_DAL",
        "speech_AL",
        "speech_AL_CA",
        "text_compute_RTF",
    ]
    present = [c for c in cols if any(c in r for r in results["runs"].values())]
    lines = [
        f"**{title}** — {results['split']}, {results['utterances']} utterances, "
        f"mode {results['mode']}",
        "",
        "| run | " + " | ".join(present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for name, row in results["runs"].items():
        cells = []
        for c in present:
            v = row.get(c)
            cells.append(
                "—" if v is None else (f"{v:.2f}" if c.endswith(("RTF", "WER")) else f"{v:.1f}")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results.get("gold_ceiling"):
        g = results["gold_ceiling"]
        lines += [
            "",
            f"ASR-BLEU ceiling (pocketsphinx on the gold target audio, "
            f"{g['utterances']} utterances): {g['ASR_BLEU']:.1f} (WER {g['WER']:.2f})",
        ]
    return "\n".join(lines) + "\n"
