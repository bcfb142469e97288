"""Long-form test streams: consecutive same-voice utterances joined into minutes-long recordings.

``echostream prepare longform --corpus work/synth-demo --split dev --minutes 3 --streams 2
--out work/longform`` reads a synthetic corpus (``{split}.tsv`` manifest, ``voices.tsv``,
``src/{split}/{id}.flac``) and writes, for long-form simultaneous evaluation (simulstream's
``simulstream_inference`` / scorers and OmniSTEval, IWSLT's layout)::

    wavs/{split}_{k:02d}.wav   16 kHz mono PCM-16 recordings (one French voice each)
    {split}.yaml               audio definition: one {wav, offset, duration, speaker_id} per
                               sentence, seconds, in recording order (``wav`` is the file name)
    {split}.en / {split}.fr    one sentence per line, aligned with the YAML: the English
                               reference and the French transcript, as in the corpus
    {split}.norm.en / .norm.fr the same, normalised like the model's output (lower-case, no
                               punctuation: :func:`echostream.text.normalize.normalize`)
    {split}.wav_list           the recordings, one path per line, relative to this folder
    {split}.segments.tsv       per sentence: recording, offset, duration, pause before, id, voice
    {split}.json               settings and per-recording durations (written last)

Selection: the split's utterances are grouped by French voice (the engine and voice of
``voices.tsv``'s ``src_voice``, without its per-utterance ``:r<rate>:p<pitch>``), each group kept
in manifest order. A recording takes the next utterances of one voice until it lasts at least
``minutes`` (pauses included); voices are used round-robin, most audio first, so that recordings
differ in voice where the corpus allows. Before every utterance, and after the last, comes a
silence of ``U(0.2, 0.8)`` s drawn from ``seed`` (whole samples). A sentence's ``offset`` is the
sample where its utterance starts / 16000 and its ``duration`` the utterance's length, so the
samples at ``[offset, offset + duration)`` are exactly the corpus utterance. Deterministic: the
same corpus, arguments and seed give byte-identical files. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from echostream.files import atomic_write_text

from ..audio.io import save_audio
from ..text.normalize import normalize
from .manifest import ManifestError, ManifestRow, read_manifest

SAMPLE_RATE = 16000
_RATE_PITCH = re.compile(r"(:r\d+|:p\d+)+$")


class LongformError(RuntimeError):
    """The long-form set cannot be built (missing corpus file, too little audio, ...)."""


@dataclass(frozen=True)
class LongformConfig:
    """What to build: ``streams`` recordings of at least ``minutes`` each from ``split``."""

    split: str = "dev"
    minutes: float = 3.0
    streams: int = 2
    seed: int = 0
    min_pause_s: float = 0.2
    max_pause_s: float = 0.8

    def __post_init__(self):
        if self.minutes <= 0:
            raise LongformError(f"minutes must be > 0, got {self.minutes}")
        if self.streams < 1:
            raise LongformError(f"streams must be >= 1, got {self.streams}")
        if not 0 <= self.min_pause_s <= self.max_pause_s:
            raise LongformError(
                f"pauses must satisfy 0 <= min <= max, got {self.min_pause_s}, {self.max_pause_s}"
            )


@dataclass(frozen=True)
class Sentence:
    """One utterance placed in a recording (samples at 16 kHz)."""

    wav: str  # recording file name
    utt_id: str
    voice: str
    src_text: str
    tgt_text: str
    source_path: Path
    pause_samples: int  # silence right before it
    offset_samples: int
    num_samples: int


def voice_of(tag: str) -> str:
    """``voices.tsv`` tag without the per-utterance rate/pitch: ``espeak:fr+f1:r175:p59`` →
    ``espeak:fr+f1``, ``mbrola:fr1:r153:p60`` → ``mbrola:fr1``, ``pico:fr-FR`` unchanged."""
    return _RATE_PITCH.sub("", tag)


def read_voices(corpus: Path, split: str) -> dict[str, str]:
    """id → French voice (see :func:`voice_of`) for ``split`` from ``corpus/voices.tsv``."""
    path = corpus / "voices.tsv"
    if not path.is_file():
        raise LongformError(f"{path}: not found (is {corpus} a corpus built by prepare synth?)")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if not {"id", "split", "src_voice"} <= set(header):
        raise LongformError(f"{path}:1: header must have id, split, src_voice; got {header}")
    col = {name: i for i, name in enumerate(header)}
    voices: dict[str, str] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        values = line.split("\t")
        if len(values) != len(header):
            raise LongformError(f"{path}:{lineno}: {len(values)} columns, expected {len(header)}")
        if values[col["split"]] == split:
            voices[values[col["id"]]] = voice_of(values[col["src_voice"]])
    return voices


def _num_samples(path: Path) -> int:
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise LongformError(f"{path}: cannot read audio: {err}") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise LongformError(
            f"{path}: expected 16 kHz mono, got {info.samplerate} Hz, {info.channels} channel(s)"
        )
    return int(info.frames)


def plan_streams(corpus: Path, cfg: LongformConfig) -> list[list[Sentence]]:
    """Choose and place the utterances of each recording (reads headers only, no samples)."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise LongformError(f"{corpus}: corpus folder not found")
    manifest_path = corpus / f"{cfg.split}.tsv"
    if not manifest_path.is_file():
        raise LongformError(f"{manifest_path}: manifest for split {cfg.split!r} not found")
    try:
        rows = read_manifest(manifest_path, check_files=True).rows
    except ManifestError as err:
        raise LongformError(str(err)) from None
    voices = read_voices(corpus, cfg.split)
    groups: dict[str, list[tuple[ManifestRow, int]]] = {}
    for row in rows:
        if row.id not in voices:
            raise LongformError(f"{corpus / 'voices.tsv'}: no {cfg.split} row for {row.id!r}")
        path = manifest_path.parent / row.src_audio
        groups.setdefault(voices[row.id], []).append((row, _num_samples(path)))

    rng = np.random.default_rng(cfg.seed)
    lo, hi = round(cfg.min_pause_s * SAMPLE_RATE), round(cfg.max_pause_s * SAMPLE_RATE)
    pauses = {
        row.id: int(p) for row, p in zip(rows, rng.integers(lo, hi + 1, len(rows)), strict=True)
    }
    target = round(cfg.minutes * 60 * SAMPLE_RATE)

    # Consecutive blocks of each voice that reach the target length (pauses included).
    blocks: dict[str, list[list[tuple[ManifestRow, int]]]] = {}
    for voice, items in groups.items():
        block, length = [], 0
        for row, n in items:
            block.append((row, n))
            length += pauses[row.id] + n
            if length + lo >= target:  # lo: the shortest possible trailing pause
                blocks.setdefault(voice, []).append(block)
                block, length = [], 0
    order = sorted(blocks, key=lambda v: (-sum(n for _, n in groups[v]), v))
    chosen: list[tuple[str, list[tuple[ManifestRow, int]]]] = []
    for round_index in range(max((len(b) for b in blocks.values()), default=0)):
        for voice in order:
            if round_index < len(blocks[voice]) and len(chosen) < cfg.streams:
                chosen.append((voice, blocks[voice][round_index]))
    if len(chosen) < cfg.streams:
        longest = max(groups, key=lambda v: sum(n for _, n in groups[v]))
        seconds = sum(n + pauses[r.id] for r, n in groups[longest]) / SAMPLE_RATE
        raise LongformError(
            f"{manifest_path}: too few utterances for {cfg.streams} recording(s) of "
            f"{cfg.minutes:g} min from consecutive same-voice utterances: only {len(chosen)} "
            f"possible (the voice with the most audio, {longest}, has {seconds:.1f} s with "
            "pauses); ask for fewer streams or minutes, or use a larger corpus"
        )

    streams = []
    for k, (voice, block) in enumerate(chosen):
        wav, cursor, sentences = f"{cfg.split}_{k:02d}.wav", 0, []
        for row, n in block:
            cursor += pauses[row.id]
            sentences.append(
                Sentence(
                    wav,
                    row.id,
                    voice,
                    row.src_text,
                    row.tgt_text,
                    manifest_path.parent / row.src_audio,
                    pauses[row.id],
                    cursor,
                    n,
                )
            )
            cursor += n
        streams.append(sentences)
    return streams


def _trailing_pauses(cfg: LongformConfig) -> list[int]:
    lo, hi = round(cfg.min_pause_s * SAMPLE_RATE), round(cfg.max_pause_s * SAMPLE_RATE)
    return [int(p) for p in np.random.default_rng([cfg.seed, 1]).integers(lo, hi + 1, cfg.streams)]


def _read_pcm16(path: Path, expected: int) -> np.ndarray:
    pcm, sr = sf.read(str(path), dtype="int16", always_2d=False)
    if sr != SAMPLE_RATE or pcm.ndim != 1 or len(pcm) != expected:
        raise LongformError(f"{path}: changed while reading ({sr} Hz, shape {pcm.shape})")
    return pcm


def build_longform(corpus: str | Path, out: str | Path, cfg: LongformConfig) -> dict:
    """Write the long-form set (see module doc) and return its summary (``{split}.json``)."""
    corpus, out = Path(corpus), Path(out)
    streams = plan_streams(corpus, cfg)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    recordings = []
    for sentences, tail in zip(streams, _trailing_pauses(cfg), strict=True):
        parts = []
        for s in sentences:
            parts += [
                np.zeros(s.pause_samples, np.int16),
                _read_pcm16(s.source_path, s.num_samples),
            ]
        parts.append(np.zeros(tail, np.int16))
        pcm = np.concatenate(parts)  # (N,) int16, written as is (PCM-16: lossless)
        save_audio(out / "wavs" / sentences[0].wav, pcm, SAMPLE_RATE, subtype="PCM_16")
        recordings.append(
            {
                "wav": sentences[0].wav,
                "voice": sentences[0].voice,
                "sentences": len(sentences),
                "seconds": len(pcm) / SAMPLE_RATE,
                "speech_seconds": sum(s.num_samples for s in sentences) / SAMPLE_RATE,
            }
        )
    every = [s for sentences in streams for s in sentences]
    definition = [
        {
            "wav": s.wav,
            "offset": s.offset_samples / SAMPLE_RATE,
            "duration": s.num_samples / SAMPLE_RATE,
            "speaker_id": s.voice,
        }
        for s in every
    ]
    split = cfg.split
    atomic_write_text(out / f"{split}.yaml", yaml.safe_dump(definition, sort_keys=False))
    for name, texts in (
        (f"{split}.en", [s.tgt_text for s in every]),
        (f"{split}.fr", [s.src_text for s in every]),
        (f"{split}.norm.en", [normalize(s.tgt_text) for s in every]),
        (f"{split}.norm.fr", [normalize(s.src_text) for s in every]),
    ):
        atomic_write_text(out / name, "".join(t + "\n" for t in texts))
    atomic_write_text(out / f"{split}.wav_list", "".join(f"wavs/{r['wav']}\n" for r in recordings))
    segments = ["wav\toffset\tduration\tpause_before\tid\tvoice"] + [
        f"{s.wav}\t{s.offset_samples / SAMPLE_RATE}\t{s.num_samples / SAMPLE_RATE}\t"
        f"{s.pause_samples / SAMPLE_RATE}\t{s.utt_id}\t{s.voice}"
        for s in every
    ]
    atomic_write_text(out / f"{split}.segments.tsv", "\n".join(segments) + "\n")
    summary = {
        "corpus": str(corpus),
        "settings": asdict(cfg),
        "sample_rate": SAMPLE_RATE,
        "recordings": recordings,
        "sentences": len(every),
        "files": {
            "audio_definition": f"{split}.yaml",
            "reference": f"{split}.en",
            "reference_normalized": f"{split}.norm.en",
            "transcript": f"{split}.fr",
            "transcript_normalized": f"{split}.norm.fr",
            "wav_list": f"{split}.wav_list",
            "segments": f"{split}.segments.tsv",
        },
    }
    atomic_write_text(out / f"{split}.json", json.dumps(summary, indent=1) + "\n")
    return summary


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echostream prepare longform",
        description="Join consecutive same-voice utterances of a synthetic corpus into long "
        "16 kHz recordings with references and a YAML audio definition (simulstream/OmniSTEval).",
    )
    p.add_argument("--corpus", required=True, help="corpus folder built by `prepare synth`")
    p.add_argument("--split", default="dev", help="dev | test | train")
    p.add_argument("--minutes", type=float, default=3.0, help="length of each recording (min.)")
    p.add_argument("--streams", type=int, default=2, help="number of recordings")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the pauses")
    return p


def main_prepare_longform(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``echostream prepare longform --corpus C --split dev --out DIR``."""
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = LongformConfig(args.split, args.minutes, args.streams, args.seed)
        summary = build_longform(args.corpus, args.out, cfg)
    except LongformError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for r in summary["recordings"]:
        print(f"{Path(args.out) / 'wavs' / r['wav']}: {r['seconds']:.1f} s, {r['sentences']} "
              f"sentences, voice {r['voice']}")  # fmt: skip
    print(f"{Path(args.out) / (args.split + '.yaml')}: {summary['sentences']} sentences")
    return 0


main = main_prepare_longform

if __name__ == "__main__":
    raise SystemExit(main())
