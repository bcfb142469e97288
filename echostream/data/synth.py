"""``echostream prepare synth``: a French→English speech-to-speech corpus built from real text.

Text: the DDTP French–English pairs (``data/fr-en/{train,dev,test}.tsv``, see its README).
French source speech: several TTS voices, chosen per utterance from a hash of its id (espeak-ng
voices × variants × rate × pitch; pico2wave ``fr-FR`` and mbrola ``fr1``/``fr4`` when
installed). English target speech: one voice (pico2wave ``en-US``). Then global CMVN stats,
source/target sentencepiece models, k-means units of the target speech, and manifests in the
StreamSpeech TSV format (``tgt_audio`` = deduplicated units), so training reads synthetic and
real data through one path.

Layout of ``out_dir``::

    build.json                 settings + stats; "complete": true once everything is written
    README.md                  what this is, how it was built
    text/{split}.tsv           the text pairs used (id, fr, en), copied from data/fr-en
    voices.tsv                 id, split, French voice, English voice
    src/{split}/{id}.flac      French speech, 16 kHz mono 16-bit
    tgt/{split}/{id}.flac      English speech, 16 kHz mono 16-bit
    fbank/{split}/{id}.npy     (T, 80) float16 source fbank (FbankExtractor, 25/10 ms)
    cmvn.json                  GlobalCMVN of the train source fbank
    spm/spm_fr.model, spm/spm_en.model   unigram sentencepiece (echostream.text.tokenizer)
    units/kmeans.npz           UnitKMeans (echostream.data.units); units/{split}.tsv: id, units
    {split}.tsv                manifests (src_audio = src/{split}/{id}.flac, relative)

Every file is written to a temporary name and renamed, so an interrupted build is resumed by
running the same command again: finished files are kept, stale temporary files are deleted,
the rest is redone (one build per folder at a time). The build is
deterministic: same text, settings and installed engines → same files (``build.json`` records
the engines; resuming with other settings is refused).

Sizes: ``tiny`` (240/30/30 pairs of at most 14 French words, K=100, vocab 500: tests and
smoke runs, < 2 min on 2 cores), ``demo`` (6000 train pairs + the fixed 1000/1000 dev/test,
K=1000, vocab 2000 per side: the corpus of the bundled model and vocoder), ``full`` (all
43,301/1,000/1,000, K=1000, vocab 6000 like StreamSpeech).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echostream.data.manifest import ManifestRow, write_manifest
from echostream.data.tts import (
    Voice,
    english_target_voice,
    french_voice_for,
    french_voices,
    synthesize,
)
from echostream.files import atomic_path, atomic_write_text

SPLITS = ("train", "dev", "test")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class SizePreset:
    """How much of the text to use and the vocabulary/unit sizes for it."""

    train: int | None  # None: all
    dev: int | None
    test: int | None
    max_words: int | None  # keep pairs whose French has at most this many words
    src_vocab_size: int
    tgt_vocab_size: int
    num_units: int


# demo: 6000 train pairs ≈ 7.8 h of French speech, + the fixed 1000/1000 dev/test; K=1000 units
# (the bundled vocoder-tiny's k-means) and 2000 sentencepiece pieces per side (the bundled
# echostream-tiny-fr-en's tokenizers; the trainer takes the vocabulary sizes from the corpus).
# 48 min on the shared 2-core machine.
SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(240, 30, 30, 14, 500, 500, 100),
    "demo": SizePreset(6000, None, None, None, 2000, 2000, 1000),
    "full": SizePreset(None, None, None, None, 6000, 6000, 1000),
}


class SynthError(RuntimeError):
    """The corpus cannot be built (missing text, incompatible existing build, ...)."""


def default_text_dir() -> Path:
    """``data/fr-en`` of this checkout, else ``../shared/data/fr-en`` next to it."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "data" / "fr-en", repo.parent / "shared" / "data" / "fr-en"):
        if (candidate / "train.tsv").is_file():
            return candidate
    raise SynthError(f"no French–English text found in {repo / 'data/fr-en'}; pass text_dir")


@dataclass(frozen=True)
class SynthCorpus:
    """Paths inside a corpus built by :func:`prepare_synth`."""

    root: Path

    def manifest(self, split: str) -> Path:
        return self.root / f"{split}.tsv"

    def src_audio(self, split: str, utt_id: str) -> Path:
        return self.root / "src" / split / f"{utt_id}.flac"

    def tgt_audio(self, split: str, utt_id: str) -> Path:
        return self.root / "tgt" / split / f"{utt_id}.flac"

    def fbank(self, split: str, utt_id: str) -> Path:
        return self.root / "fbank" / split / f"{utt_id}.npy"

    def fbank_dir(self, split: str) -> Path:
        return self.root / "fbank" / split

    @property
    def cmvn(self) -> Path:
        return self.root / "cmvn.json"

    @property
    def src_spm(self) -> Path:
        return self.root / "spm" / "spm_fr.model"

    @property
    def tgt_spm(self) -> Path:
        return self.root / "spm" / "spm_en.model"

    @property
    def kmeans(self) -> Path:
        return self.root / "units" / "kmeans.npz"

    def units(self, split: str) -> Path:
        return self.root / "units" / f"{split}.tsv"

    @property
    def build_info(self) -> Path:
        return self.root / "build.json"


# --------------------------------------------------------------------------- text selection


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """``id fr en`` rows of a DDTP split file (UTF-8 TSV with a header)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            if header[:3] != ["id", "fr", "en"]:
                raise SynthError(f"{path}:1: expected columns id, fr, en; got {header}")
            return [(r[0], r[1], r[2]) for r in reader]
    except FileNotFoundError:
        raise SynthError(f"{path}: text pairs not found") from None


def _order_key(seed: int, utt_id: str) -> bytes:
    return hashlib.sha256(f"select\x1f{seed}\x1f{utt_id}".encode()).digest()


def select_pairs(
    pairs: Sequence[tuple[str, str, str]], n: int | None, max_words: int | None, seed: int
) -> list[tuple[str, str, str]]:
    """A deterministic subset: pairs ordered by a hash of (seed, id), filtered by length, the
    first ``n`` kept, returned in file order. ``n=None`` keeps all that pass the filter."""
    ok = [p for p in pairs if max_words is None or len(p[1].split()) <= max_words]
    if n is None or n >= len(ok):
        return list(ok)
    chosen = {p[0] for p in sorted(ok, key=lambda p: _order_key(seed, p[0]))[:n]}
    return [p for p in ok if p[0] in chosen]


# --------------------------------------------------------------------------- workers


def _quantise(pcm: np.ndarray) -> np.ndarray:
    """float [-1, 1] → int16 (what the FLAC stores; reads back as int16 / 32768)."""
    return np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)


def _write_speech(path: Path, text: str, voice: Voice) -> int:
    """Synthesise unless ``path`` exists; returns the number of samples in the file."""
    import soundfile as sf

    if path.is_file():
        return sf.info(str(path)).frames
    from echostream.audio.io import save_audio

    pcm16 = _quantise(synthesize(text, voice, SAMPLE_RATE))
    if pcm16.size < SAMPLE_RATE // 10:  # < 100 ms: TTS said nothing useful
        raise SynthError(f"{voice.tag} produced {pcm16.size} samples for {text[:60]!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_audio(path, pcm16, SAMPLE_RATE)
    return int(pcm16.size)


def _synth_job(job: tuple) -> tuple[str, str, int, int]:
    split, utt_id, fr, en, src_voice, tgt_voice, src_path, tgt_path = job
    n_src = _write_speech(Path(src_path), fr, src_voice)
    n_tgt = _write_speech(Path(tgt_path), en, tgt_voice)
    return split, utt_id, n_src, n_tgt


def _fbank_job(job: tuple[str, str]) -> int:
    """Source fbank of one FLAC to .npy (float16), unless present; returns its frame count."""
    audio_path, out_path = job
    out = Path(out_path)
    if out.is_file():
        return int(np.load(out, mmap_mode="r").shape[0])
    from echostream.audio.features import FbankExtractor
    from echostream.audio.io import load_audio

    feats = FbankExtractor()(load_audio(audio_path, SAMPLE_RATE)).numpy().astype(np.float16)
    with atomic_path(out, suffix=".tmp.npy") as tmp:
        np.save(tmp, feats)
    return int(feats.shape[0])


_KMEANS: dict[str, object] = {}


def _kmeans(path: str):
    """The unit model at ``path``, loaded once per process."""
    if path not in _KMEANS:
        from echostream.data.units import UnitKMeans

        _KMEANS[path] = UnitKMeans.load(path)
    return _KMEANS[path]


def _unit_feature_job(audio_path: str) -> np.ndarray:
    from echostream.audio.io import load_audio
    from echostream.data.units import unit_features

    return unit_features(load_audio(audio_path, SAMPLE_RATE)).astype(np.float32)


def _units_job(job: tuple[str, str, str]) -> tuple[str, list[int]]:
    utt_id, audio_path, kmeans_path = job
    from echostream.audio.io import load_audio

    return utt_id, _kmeans(kmeans_path).units(load_audio(audio_path, SAMPLE_RATE))


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported (lazily, for fbank)


class _Workers:
    """A spawn pool shared by all stages (``workers <= 1``: run in this process).

    Spawned, not forked: the TTS workers fork once per espeak utterance, which is cheap only in
    a small process, and this one may hold torch and its thread pools.
    """

    def __init__(self, workers: int, progress: bool):
        self.workers, self.progress = workers, progress
        self.pool = None
        if workers > 1:
            self.pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)

    def map(self, fn: Callable, jobs: Sequence, desc: str) -> list:
        """``[fn(j) for j in jobs]`` in job order, with a tqdm bar."""
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not self.progress, leave=False)
        try:
            if self.pool is None:
                results = []
                for job in jobs:
                    results.append(fn(job))
                    bar.update()
                return results
            chunk = max(1, min(16, len(jobs) // (self.workers * 8)))
            results = []
            for r in self.pool.imap(fn, jobs, chunksize=chunk):
                results.append(r)
                bar.update()
            return results
        finally:
            bar.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None and exc[0] is not None:
            self.pool.terminate()
        self.close()


# --------------------------------------------------------------------------- the build


def remove_stale_temp_files(root: Path) -> int:
    """Delete ``.*.tmp*`` files an interrupted build left behind (never read by anything).
    One build per folder at a time: a concurrent build's files in flight would go too."""
    stale = [p for p in root.rglob(".*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[prepare synth] {message}", file=sys.stderr, flush=True)


def _check_or_write_settings(corpus: SynthCorpus, settings: dict) -> None:
    """Refuse to resume a build made with other settings (it would mix two corpora)."""
    path = corpus.build_info
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (OSError, ValueError, KeyError) as err:
            raise SynthError(f"{path}: unreadable build record ({err}); use a new --out") from None
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise SynthError(
                f"{corpus.root} was built with other settings ({details}). Use a new output "
                "folder, or delete this one to rebuild."
            )
        return
    atomic_write_text(path, json.dumps({"settings": settings, "complete": False}, indent=1))


def prepare_synth(
    out_dir: str | os.PathLike,
    size: str = "tiny",
    *,
    text_dir: str | os.PathLike | None = None,
    num_train: int | None = None,
    num_dev: int | None = None,
    num_test: int | None = None,
    num_units: int | None = None,
    src_vocab_size: int | None = None,
    tgt_vocab_size: int | None = None,
    engines: Iterable[str] = ("espeak", "pico", "mbrola"),
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> SynthCorpus:
    """Build (or finish building) the synthetic corpus in ``out_dir``; returns its paths.

    ``size`` picks a :data:`SIZES` preset; ``num_*``, ``num_units``, ``*_vocab_size`` override
    it. ``engines``: French TTS engines to rotate among (``espeak`` always works; ``pico`` and
    ``mbrola`` are used when installed, skipped with a note otherwise). ``workers``: processes
    (default: all cores).
    """
    if size not in SIZES:
        raise SynthError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    t_start = time.time()
    preset = SIZES[size]
    counts = {
        "train": num_train if num_train is not None else preset.train,
        "dev": num_dev if num_dev is not None else preset.dev,
        "test": num_test if num_test is not None else preset.test,
    }
    num_units = num_units or preset.num_units
    src_vocab_size = src_vocab_size or preset.src_vocab_size
    tgt_vocab_size = tgt_vocab_size or preset.tgt_vocab_size
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    corpus = SynthCorpus(Path(out_dir).resolve())
    corpus.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(corpus.root)
    text_dir = Path(text_dir) if text_dir is not None else default_text_dir()

    engines = tuple(engines)
    fr_engines = french_voices(engines)
    missing = [e for e in engines if e != "espeak" and not any(u.startswith(e) for u in fr_engines)]
    if missing:
        from echostream.data.tts import APT_HINT

        warnings.warn(
            f"French TTS engine(s) {', '.join(missing)} not installed; using "
            f"{', '.join(fr_engines)}. To add them: {APT_HINT} espeak-ng",
            stacklevel=2,
        )
    tgt_voice = english_target_voice(allow_fallback=True)

    # ---- text
    pairs: dict[str, list[tuple[str, str, str]]] = {}
    for split in SPLITS:
        pairs[split] = select_pairs(
            read_pairs(text_dir / f"{split}.tsv"), counts[split], preset.max_words, seed
        )
        if not pairs[split]:
            raise SynthError(f"no {split} pairs selected from {text_dir}")
    text_hash = hashlib.sha256(
        "".join(f"{s}\t{i}\t{f}\t{e}\n" for s in SPLITS for i, f, e in pairs[s]).encode()
    ).hexdigest()
    settings = {
        "size": size,
        "counts": {s: len(pairs[s]) for s in SPLITS},
        "text_sha256": text_hash,
        "french_engines": list(fr_engines),
        "english_voice": tgt_voice.tag,
        "seed": seed,
        "num_units": num_units,
        "src_vocab_size": src_vocab_size,
        "tgt_vocab_size": tgt_vocab_size,
        "sample_rate": SAMPLE_RATE,
    }
    _check_or_write_settings(corpus, settings)
    for split in SPLITS:
        lines = ["id\tfr\ten"] + ["\t".join(p) for p in pairs[split]]
        atomic_write_text(corpus.root / "text" / f"{split}.tsv", "\n".join(lines) + "\n")
    _log(
        progress,
        f"{corpus.root}: "
        + ", ".join(f"{s} {len(pairs[s])}" for s in SPLITS)
        + f" pairs; French voices from {', '.join(fr_engines)}; English {tgt_voice.tag}",
    )

    # ---- speech
    jobs, voice_lines = [], ["id\tsplit\tsrc_voice\ttgt_voice"]
    for split in SPLITS:
        for utt_id, fr, en in pairs[split]:
            src_voice = french_voice_for(utt_id, list(fr_engines), seed)
            voice_lines.append(f"{utt_id}\t{split}\t{src_voice.tag}\t{tgt_voice.tag}")
            src_path, tgt_path = corpus.src_audio(split, utt_id), corpus.tgt_audio(split, utt_id)
            jobs.append((split, utt_id, fr, en, src_voice, tgt_voice, str(src_path), str(tgt_path)))
    atomic_write_text(corpus.root / "voices.tsv", "\n".join(voice_lines) + "\n")
    with _Workers(workers, progress) as pool:
        return _build(corpus, pairs, jobs, settings, text_dir, pool, t_start)


def _build(
    corpus: SynthCorpus,
    pairs: dict[str, list[tuple[str, str, str]]],
    jobs: list[tuple],
    settings: dict,
    text_dir: Path,
    pool: _Workers,
    t_start: float,
) -> SynthCorpus:
    progress = pool.progress
    t0 = time.time()
    synth = pool.map(_synth_job, jobs, "speech")
    n_samples = {(s, i): (a, b) for s, i, a, b in synth}
    timings = {"speech_s": round(time.time() - t0, 2)}

    # ---- source features
    t0 = time.time()
    fbank_jobs = [(j[6], str(corpus.fbank(j[0], j[1]))) for j in jobs]
    n_frames = pool.map(_fbank_job, fbank_jobs, "fbank")
    src_frames = {(j[0], j[1]): n for j, n in zip(jobs, n_frames, strict=True)}
    timings["fbank_s"] = round(time.time() - t0, 2)
    if not corpus.cmvn.is_file():
        import torch

        from echostream.audio.features import GlobalCMVN

        train_feats = (
            torch.from_numpy(np.load(corpus.fbank("train", i)).astype(np.float32))
            for i, _, _ in pairs["train"]
        )
        GlobalCMVN.fit(train_feats).save(corpus.cmvn)

    # ---- tokenizers
    from echostream.text.tokenizer import Tokenizer, train_tokenizer

    vocab_sizes = ((corpus.src_spm, 1, settings["src_vocab_size"]),
                   (corpus.tgt_spm, 2, settings["tgt_vocab_size"]))  # fmt: skip
    for path, column, vocab in vocab_sizes:
        if not path.is_file():
            train_tokenizer([p[column] for p in pairs["train"]], path.with_suffix(""), vocab)
    src_tok, tgt_tok = Tokenizer(corpus.src_spm), Tokenizer(corpus.tgt_spm)

    # ---- units
    t0 = time.time()
    units = _build_units(corpus, pairs, settings["num_units"], settings["seed"], pool)
    timings["units_s"] = round(time.time() - t0, 2)

    # ---- manifests
    for split in SPLITS:
        rows = []
        for utt_id, fr, en in pairs[split]:
            u = units[split][utt_id]
            rows.append(ManifestRow(
                id=utt_id,
                src_audio=f"src/{split}/{utt_id}.flac",
                src_n_frames=src_frames[(split, utt_id)],
                src_text=fr,
                tgt_text=en,
                tgt_audio=" ".join(map(str, u)),
                tgt_n_frames=len(u),
            ))  # fmt: skip
        write_manifest(corpus.manifest(split), rows)

    stats = {
        s: {
            "utterances": len(pairs[s]),
            "src_hours": round(
                sum(n_samples[(s, i)][0] for i, _, _ in pairs[s]) / SAMPLE_RATE / 3600, 3
            ),
            "tgt_hours": round(
                sum(n_samples[(s, i)][1] for i, _, _ in pairs[s]) / SAMPLE_RATE / 3600, 3
            ),
            "units_per_second": round(
                sum(len(units[s][i]) for i, _, _ in pairs[s])
                / max(1e-9, sum(n_samples[(s, i)][1] for i, _, _ in pairs[s]) / SAMPLE_RATE),
                2,
            ),
        }
        for s in SPLITS
    }
    timings["total_s"] = round(time.time() - t_start, 2)
    info = {
        "settings": settings,
        "complete": True,
        "src_vocab_size": src_tok.vocab_size,
        "tgt_vocab_size": tgt_tok.vocab_size,
        "stats": stats,
        "timings_last_run": timings,
        "workers": pool.workers,
    }
    atomic_write_text(corpus.build_info, json.dumps(info, indent=1) + "\n")
    _write_readme(corpus, info, text_dir)
    _log(progress, f"done in {timings['total_s']:.1f} s: {json.dumps(stats)}")
    return corpus


def _build_units(
    corpus: SynthCorpus,
    pairs: dict[str, list[tuple[str, str, str]]],
    num_units: int,
    seed: int,
    pool: _Workers,
    tgt_audio: Callable[[str, str], Path] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Fit k-means on train target speech (if not done), then units for every split.

    The fit uses the first 4000 train utterances in a fixed hash order (~1M frames at 50 Hz,
    capped at 1M); their units are assigned from the features already in memory.
    """
    from echostream.data.units import UnitKMeans, dedup

    tgt_audio = tgt_audio or corpus.tgt_audio
    result: dict[str, dict[str, list[int]]] = {}
    todo = []
    for split in SPLITS:
        cached = _read_units(corpus.units(split))
        if (
            cached is not None
            and corpus.kmeans.is_file()
            and set(cached) == {i for i, _, _ in pairs[split]}
        ):
            result[split] = cached
        else:
            result[split] = {}
            todo += [(split, i) for i, _, _ in pairs[split]]
    if not todo:
        return result
    known: dict[tuple[str, str], np.ndarray] = {}
    if not corpus.kmeans.is_file():
        order = sorted(pairs["train"], key=lambda p: _order_key(seed, p[0]))[:4000]
        paths = [str(tgt_audio("train", i)) for i, _, _ in order]
        feats = pool.map(_unit_feature_job, paths, "unit features")
        km = UnitKMeans.fit(feats, num_units, seed=seed, max_frames=1_000_000)
        km.save(corpus.kmeans)
        known = {("train", i): f for (i, _, _), f in zip(order, feats, strict=True)}
        for key, f in known.items():
            known[key] = dedup(km.assign(f))
    rest = [key for key in todo if key not in known]
    jobs = [(i, str(tgt_audio(s, i)), str(corpus.kmeans)) for s, i in rest]
    for (split, _), (utt_id, units) in zip(rest, pool.map(_units_job, jobs, "units"), strict=True):
        known[(split, utt_id)] = units
    for split in {s for s, _ in todo}:
        result[split] = {i: known[(split, i)] for i, _, _ in pairs[split]}
        text = "".join(f"{i}\t{' '.join(map(str, result[split][i]))}\n" for i, _, _ in pairs[split])
        atomic_write_text(corpus.units(split), text)
    return result


def _read_units(path: Path) -> dict[str, list[int]] | None:
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        utt_id, units = line.split("\t")
        out[utt_id] = [int(u) for u in units.split()]
    return out


def _write_readme(corpus: SynthCorpus, info: dict, text_dir: Path) -> None:
    s = info["settings"]
    lines = [
        "# Synthetic French→English speech corpus (EchoStream `prepare synth`)",
        "",
        f"Size preset `{s['size']}`: "
        + ", ".join(f"{k} {v}" for k, v in s["counts"].items())
        + " pairs.",
        f"Text: real DDTP French–English pairs from `{text_dir}` (provenance: data/fr-en/README.md"
        " in the EchoStream repository); the pairs used are in `text/`.",
        f"French speech: synthetic, voices rotated per utterance among {s['french_engines']} "
        "(see `voices.tsv`). English speech: synthetic, one voice, " + s["english_voice"] + ".",
        f"Units: k-means K={s['num_units']} over 80-d log-mel (25 ms / 20 ms) of the English "
        "speech, deduplicated; `units/kmeans.npz`.",
        f"Vocabularies: unigram sentencepiece, fr {info['src_vocab_size']}, en "
        f"{info['tgt_vocab_size']} pieces (`spm/`); ids: 0 pad/CTC blank, 1 unk, 2 bos, 3 eos.",
        "",
        "Statistics: `build.json`. Rebuild: `echostream prepare synth --size "
        f"{s['size']} --out <this folder>` (resumes; deterministic).",
        "",
    ]
    atomic_write_text(corpus.root / "README.md", "\n".join(lines))


# --------------------------------------------------------------------------- CLI


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="echostream prepare synth",
        description="Build the synthetic French→English speech corpus (resumable).",
    )
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--out", required=True, help="output folder (created; re-run to resume)")
    p.add_argument("--text-dir", default=None, help="folder with train/dev/test.tsv "
                   "(default: data/fr-en of this checkout)")  # fmt: skip
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-dev", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--num-units", type=int, default=None, help="k-means K")
    p.add_argument("--src-vocab-size", type=int, default=None)
    p.add_argument("--tgt-vocab-size", type=int, default=None)
    p.add_argument("--engines", default="espeak,pico,mbrola",
                   help="French TTS engines to rotate among (comma-separated)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main_prepare_synth(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``echostream prepare synth --size tiny --out DIR``."""
    args = build_arg_parser().parse_args(argv)
    try:
        prepare_synth(
            args.out,
            args.size,
            text_dir=args.text_dir,
            num_train=args.num_train,
            num_dev=args.num_dev,
            num_test=args.num_test,
            num_units=args.num_units,
            src_vocab_size=args.src_vocab_size,
            tgt_vocab_size=args.tgt_vocab_size,
            engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
            seed=args.seed,
            workers=args.workers,
            progress=not args.quiet,
        )
    except SynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_prepare_synth())
