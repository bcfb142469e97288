"""Train, evaluate and export :class:`~echostream.models.unit_vocoder.UnitVocoder`.

Data: a corpus built by ``echostream prepare synth`` (English target speech ``tgt/{split}/*.flac``,
its k-means model ``units/kmeans.npz``, manifests ``{split}.tsv`` whose ``tgt_audio`` holds the
deduplicated units). For every utterance the frame-level units are recomputed from the target
audio with the corpus' k-means (they must deduplicate to the manifest's units; rows that do not
are dropped and counted), which gives each unit its duration (run length, in 20 ms frames) and
aligns the waveform with the units: unit frame ``i`` (Kaldi frame centred on sample
``320·i + 200``) is synthesised as output samples ``[320·i, 320·i + 320)``, so the training
target is ``audio[40 : 40 + 320·T]``. The result is cached in ``<out>/data-{split}-*.pt``.

Losses (no discriminator: the model is trained in well under an hour on 2 CPU cores):
log-mel L1 (80 bins, 1024/160) + multi-resolution STFT (spectral convergence + log-magnitude L1
at 512/1024/2048) on the waveform, MSE on log durations, and optionally phase losses (APNet's
anti-wrapped instantaneous-phase, group-delay and instantaneous-frequency errors on the
predicted phases, weighted by the target magnitude).

Commands (all resumable/idempotent)::

    python -m echostream.training.train_vocoder train --corpus work/synth-demo \\
        --out work/vocoder/run --minutes 55 --threads 2
    python -m echostream.training.train_vocoder eval --corpus work/synth-demo \\
        --checkpoint work/vocoder/run/last.pt --num 50 --out work/vocoder/run/eval.json
    python -m echostream.training.train_vocoder export --checkpoint work/vocoder/run/last.pt \\
        --corpus work/synth-demo --out echostream/pretrained/vocoder-tiny

``train`` checkpoints to ``<out>/last.pt`` every ``--save-minutes`` and at the end; running the
same command again resumes (model, optimiser, schedule, data order, elapsed time) and stops when
the cumulative ``--minutes`` budget is spent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from echostream.files import atomic_torch_save
from echostream.models.unit_vocoder import UnitVocoder, UnitVocoderConfig

SAMPLE_RATE = 16000
UNIT_HOP = 320
ALIGN_OFFSET = 40  # Kaldi frame i is centred on 320·i + 200; our unit frame i on 320·i + 160
DATA_FORMAT = "echostream-vocoder-data-v1"


def _log(msg: str) -> None:
    print(f"[train_vocoder {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------- data


def run_lengths(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) frame-level units -> (deduplicated units (U,), durations (U,)), sum = T."""
    if frame_units.size == 0:
        return frame_units[:0], frame_units[:0]
    change = np.flatnonzero(np.diff(frame_units)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [frame_units.size]])
    return frame_units[starts], ends - starts


def prepare_data(corpus: Path, split: str, cache_dir: Path, limit: int | None = None) -> dict:
    """Units, durations and aligned int16 audio of the first ``limit`` utterances of ``split``
    (cached in ``cache_dir/data-{split}-{limit or "all"}.pt``)."""
    from echostream.audio.io import load_audio
    from echostream.data.manifest import read_manifest
    from echostream.data.units import UnitKMeans, unit_features

    km_path = corpus / "units" / "kmeans.npz"
    km_sha = file_sha256(km_path)
    cache = cache_dir / f"data-{split}-{limit or 'all'}.pt"
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        if data.get("format") == DATA_FORMAT and data.get("kmeans_sha256") == km_sha:
            return data
    km = UnitKMeans.load(km_path)
    rows = list(read_manifest(corpus / f"{split}.tsv"))[:limit]
    ids, units, durs, audio, mismatched = [], [], [], [], 0
    for row in rows:
        pcm = load_audio(corpus / "tgt" / split / f"{row.id}.flac", SAMPLE_RATE)
        u, d = run_lengths(km.assign(unit_features(pcm, km.feature_cfg)))
        if u.tolist() != row.units:
            mismatched += 1
            continue
        n = int(d.sum()) * UNIT_HOP
        seg = pcm[ALIGN_OFFSET : ALIGN_OFFSET + n]
        seg = np.pad(seg, (0, n - seg.size))
        ids.append(row.id)
        units.append(torch.from_numpy(u.astype(np.int64)))
        durs.append(torch.from_numpy(d.astype(np.int64)))
        audio.append(torch.from_numpy(np.round(seg * 32767).clip(-32768, 32767).astype(np.int16)))
    if mismatched:
        _log(f"{split}: {mismatched} utterances whose recomputed units differ were dropped")
    data = {
        "format": DATA_FORMAT,
        "kmeans_sha256": km_sha,
        "num_units": km.num_units,
        "ids": ids,
        "units": torch.cat(units),
        "durations": torch.cat(durs),
        "unit_offsets": torch.tensor([0, *np.cumsum([len(u) for u in units])]),
        "audio": torch.cat(audio),
        "audio_offsets": torch.tensor([0, *np.cumsum([len(a) for a in audio])]),
    }
    atomic_torch_save(data, cache)
    return data


class UtteranceSet:
    """Indexable view of :func:`prepare_data`'s dict: ``item(i)`` -> (units, durations, wav)."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.ids = data["ids"]
        self.num_frames = (data["audio_offsets"][1:] - data["audio_offsets"][:-1]) // UNIT_HOP

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        d = self.data
        a, b = int(d["unit_offsets"][i]), int(d["unit_offsets"][i + 1])
        s, e = int(d["audio_offsets"][i]), int(d["audio_offsets"][i + 1])
        return d["units"][a:b], d["durations"][a:b], d["audio"][s:e].float() / 32768.0

    def batch(self, index: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> units (B, U), unit_len (B,), durations (B, U), wav (B, N), wav_len (B,)."""
        items = [self.item(i) for i in index]
        unit_len = torch.tensor([len(u) for u, _, _ in items])
        wav_len = torch.tensor([len(w) for _, _, w in items])
        units = torch.zeros(len(items), int(unit_len.max()), dtype=torch.long)
        durs = torch.ones_like(units)
        wav = torch.zeros(len(items), int(wav_len.max()))
        for k, (u, d, w) in enumerate(items):
            units[k, : len(u)], durs[k, : len(d)], wav[k, : len(w)] = u, d, w
        return units, unit_len, durs, wav, wav_len


def make_batches(num_frames: Tensor, max_frames: int, seed: int) -> list[list[int]]:
    """Length-sorted batches of at most ``max_frames`` unit frames (padded), in a seeded order."""
    order = sorted(range(len(num_frames)), key=lambda i: (int(num_frames[i]), i))
    batches, cur, longest = [], [], 0
    for i in order:
        n = int(num_frames[i])
        if cur and max(longest, n) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


# ----------------------------------------------------------------------------------- losses


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters (0 Hz .. Nyquist), Slaney-normed."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(fb.astype(np.float32))


class SpectralLosses(torch.nn.Module):
    """Log-mel L1 + multi-resolution STFT losses between waveforms (B, N)."""

    RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.register_buffer("mel_fb", mel_filterbank(1024, 80, sample_rate), persistent=False)
        for _, _, win in (*self.RESOLUTIONS, (1024, 160, 1024)):
            self.register_buffer(f"win{win}", torch.hann_window(win), persistent=False)

    def _mag(self, x: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
        spec = torch.stft(x, n_fft, hop, win, getattr(self, f"win{win}"), return_complex=True)
        return spec.abs().clamp(min=1e-5)  # (B, F, T)

    def log_mel(self, x: Tensor) -> Tensor:
        return torch.log(torch.clamp(self.mel_fb @ self._mag(x, 1024, 160, 1024), min=1e-5))

    def forward(self, y_hat: Tensor, y: Tensor) -> dict[str, Tensor]:
        losses = {"mel": F.l1_loss(self.log_mel(y_hat), self.log_mel(y))}
        sc = mag = 0.0
        for n_fft, hop, win in self.RESOLUTIONS:
            m_hat, m = self._mag(y_hat, n_fft, hop, win), self._mag(y, n_fft, hop, win)
            sc = sc + torch.linalg.norm(m - m_hat) / torch.linalg.norm(m)
            mag = mag + F.l1_loss(torch.log(m_hat), torch.log(m))
        losses["stft"] = (sc + mag) / len(self.RESOLUTIONS)
        return losses


def _anti_wrap(x: Tensor) -> Tensor:
    return torch.abs(x - 2 * math.pi * torch.round(x / (2 * math.pi)))


def phase_loss(phase: Tensor, wav: Tensor, valid: Tensor, cfg: UnitVocoderConfig) -> Tensor:
    """APNet-style anti-wrapped phase losses of the predicted phases (B, T, bins) against the
    target STFT on the same frames (frame j centred on sample hop·j + hop/2), weighted by the
    target's normalised magnitude; valid (B, T) marks real frames."""
    hop, n_fft = cfg.hop_length, cfg.n_fft
    pad = (n_fft - hop) // 2
    spec = torch.stft(
        F.pad(wav, (pad, pad)), n_fft, hop, n_fft, torch.hann_window(n_fft),
        center=False, return_complex=True,
    ).transpose(1, 2)[:, : phase.shape[1]]  # (B, T, bins)  # fmt: skip
    weight = spec.abs() * valid.unsqueeze(-1)
    weight = weight / weight.sum().clamp(min=1e-8)
    target = torch.angle(spec)
    ip = (_anti_wrap(phase - target) * weight).sum()
    gd = (_anti_wrap(torch.diff(phase, dim=2) - torch.diff(target, dim=2)) * weight[:, :, 1:]).sum()
    iaf = (_anti_wrap(torch.diff(phase, dim=1) - torch.diff(target, dim=1)) * weight[:, 1:]).sum()
    return ip + gd + iaf


# ----------------------------------------------------------------------------------- training


def _lr_at(step: int, base: float, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``base / 20`` as
    ``progress`` goes 0 → 1 (progress: the larger of steps done / steps planned and minutes
    spent / minutes budgeted, so a time-limited run still ends at the low learning rate)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_training(path: Path, model, optimizer, meta: dict) -> None:
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "config": asdict(model.cfg), **meta}, path)  # fmt: skip


@torch.no_grad()
def validate(model: UnitVocoder, data: UtteranceSet, losses: SpectralLosses, n: int = 24) -> dict:
    """Mean dev losses on the first ``n`` utterances (gold durations) + duration error."""
    model.eval()
    mel = dur_err = 0.0
    for i in range(min(n, len(data))):
        units, unit_len, durs, wav, _ = data.batch([i])
        y, _, log_d, _ = model.synthesize(units, unit_len, durs)
        mel += float(losses(y, wav)["mel"])
        dur_err += float((model.durations_from_log(log_d) - durs).abs().float().mean())
    model.train()
    k = min(n, len(data))
    return {"dev_mel": mel / k, "dev_dur_abs_err": dur_err / k}


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    cache_dir = Path(args.cache) if args.cache else out
    train_set = UtteranceSet(prepare_data(corpus, "train", cache_dir, args.limit))
    dev_set = UtteranceSet(prepare_data(corpus, "dev", cache_dir, 200))
    num_units = int(train_set.data["num_units"])
    last = out / "last.pt"
    overrides = {f.name: getattr(args, f.name) for f in fields(UnitVocoderConfig)
                 if getattr(args, f.name, None) is not None}  # fmt: skip
    cfg = UnitVocoderConfig(**{**overrides, "num_units": num_units})
    meta = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed_s": 0.0, "log": []}
    ckpt = None
    if last.is_file():
        ckpt = torch.load(last, weights_only=True)
        cfg = UnitVocoderConfig(**ckpt["config"])
        meta = {k: ckpt[k] for k in meta}
        _log(f"resuming {last} at step {meta['step']} ({meta['elapsed_s'] / 60:.1f} min done)")
    torch.manual_seed(args.seed + meta["step"])
    model = UnitVocoder(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98),
                                  weight_decay=0.01)  # fmt: skip
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    losses = SpectralLosses()
    model.train()
    _log(f"{len(train_set)} train utterances ({float(train_set.num_frames.sum()) / 50 / 3600:.2f}"
         f" h), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
         f"{args.steps} steps planned, budget {args.minutes} min")  # fmt: skip
    budget_s = args.minutes * 60.0
    t_last_save = t_start = time.time()
    elapsed0 = meta["elapsed_s"]
    running: dict[str, float] = {}
    while meta["step"] < args.steps:
        batches = make_batches(train_set.num_frames, args.batch_frames, args.seed + meta["epoch"])
        while meta["batch_in_epoch"] < len(batches) and meta["step"] < args.steps:
            elapsed = elapsed0 + time.time() - t_start
            if elapsed >= budget_s:
                break
            units, unit_len, durs, wav, _ = train_set.batch(batches[meta["batch_in_epoch"]])
            y, y_len, log_d, spec = model.synthesize(units, unit_len, durs)
            parts = losses(y, wav)
            umask = torch.arange(units.shape[1]) < unit_len.unsqueeze(1)
            parts["dur"] = ((log_d - durs.float().log()) ** 2)[umask].mean()
            if args.phase_weight > 0:
                n_frames = y_len // cfg.hop_length
                valid = torch.arange(spec.shape[1]) < n_frames.unsqueeze(1)
                parts["phase"] = phase_loss(spec.chunk(2, -1)[1], wav, valid, cfg)
            loss = (args.mel_weight * parts["mel"] + parts["stft"] + parts["dur"]
                    + args.phase_weight * parts.get("phase", torch.zeros(())))  # fmt: skip
            for g in optimizer.param_groups:
                progress = max(meta["step"] / args.steps, elapsed / budget_s)
                g["lr"] = _lr_at(meta["step"], args.lr, args.warmup, progress)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            meta["step"] += 1
            meta["batch_in_epoch"] += 1
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running["n"] = running.get("n", 0) + 1
            if meta["step"] % args.log_every == 0:
                n = running.pop("n")
                msg = " ".join(f"{k} {v / n:.4f}" for k, v in running.items())
                _log(f"step {meta['step']} ep {meta['epoch']} {msg} "
                     f"({(elapsed0 + time.time() - t_start) / 60:.1f} min)")  # fmt: skip
                running = {}
            if time.time() - t_last_save > args.save_minutes * 60:
                meta["elapsed_s"] = elapsed0 + time.time() - t_start
                val = validate(model, dev_set, losses)
                meta["log"].append({"step": meta["step"], "minutes": meta["elapsed_s"] / 60, **val})
                _log(f"step {meta['step']} validation {val}")
                _save_training(last, model, optimizer, meta)
                t_last_save = time.time()
        else:
            meta["epoch"] += 1
            meta["batch_in_epoch"] = 0
            continue
        break
    meta["elapsed_s"] = elapsed0 + time.time() - t_start
    val = validate(model, dev_set, losses)
    meta["log"].append({"step": meta["step"], "minutes": meta["elapsed_s"] / 60, **val})
    _log(f"stopped at step {meta['step']} after {meta['elapsed_s'] / 60:.1f} min: {val}")
    _save_training(last, model, optimizer, meta)
    return last


def load_trained(path: str | os.PathLike) -> UnitVocoder:
    """A model from a training checkpoint (``last.pt``) or an exported ``vocoder.pt``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") is not None:
        return UnitVocoder.load(path)
    model = UnitVocoder(UnitVocoderConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ----------------------------------------------------------------------------------- evaluation


def evaluate(args: argparse.Namespace) -> dict:
    """ASR-WER / ASR-BLEU (pocketsphinx en-us, generic LM unless --lm) of (a) the corpus' target
    audio and (b) the vocoded gold units (manifest units, predicted durations) of the first
    ``--num`` utterances of ``--split``; also (c) vocoded with gold durations."""
    from echostream.audio.io import load_audio, save_audio
    from echostream.data.manifest import read_manifest
    from echostream.evaluation.asr import EnglishASR, asr_bleu, word_error_rate

    torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    rows = list(read_manifest(corpus / f"{args.split}.tsv"))[: args.num]
    model = load_trained(args.checkpoint)
    asr = EnglishASR(lm=args.lm)
    cache_dir = Path(args.cache) if args.cache else Path(args.checkpoint).parent
    data = UtteranceSet(prepare_data(corpus, args.split, cache_dir, args.num))
    gold_durations = {i: k for k, i in enumerate(data.ids)}
    names = {"a": "a_target_audio", "b": "b_vocoded_units", "c": "c_vocoded_gold_durations"}
    wanted = {names[c] for c in args.conditions.split(",")}
    refs: list[str] = []
    hyps: dict[str, list[str]] = {n: [] for n in names.values() if n in wanted}
    synth_s = audio_s = 0.0
    wav_dir = Path(args.wav_dir) if args.wav_dir else None
    for row in rows:
        refs.append(row.tgt_text)
        if "a_target_audio" in hyps:
            pcm = load_audio(corpus / "tgt" / args.split / f"{row.id}.flac", SAMPLE_RATE)
            hyps["a_target_audio"].append(asr.transcribe(pcm))
        units = torch.tensor([row.units])
        t0 = time.perf_counter()
        with torch.inference_mode():
            wav, wav_len = model(units)
        synth_s += time.perf_counter() - t0
        audio_s += int(wav_len[0]) / SAMPLE_RATE
        if "b_vocoded_units" in hyps:
            hyps["b_vocoded_units"].append(asr.transcribe(wav[0, : wav_len[0]].numpy()))
        if "c_vocoded_gold_durations" in hyps:
            text = ""  # (an utterance whose recomputed units differ has no gold durations)
            if row.id in gold_durations:
                _, durs, _ = data.item(gold_durations[row.id])
                with torch.inference_mode():
                    wav_g, len_g = model(units, durations=durs.unsqueeze(0))
                text = asr.transcribe(wav_g[0, : len_g[0]].numpy())
            hyps["c_vocoded_gold_durations"].append(text)
        if wav_dir is not None:
            wav_dir.mkdir(parents=True, exist_ok=True)
            save_audio(wav_dir / f"{row.id}.wav", wav[0, : wav_len[0]].numpy())
    result = {
        "split": args.split,
        "utterances": len(rows),
        "asr": "pocketsphinx en-us, " + (f"LM {args.lm}" if args.lm else "generic en-us LM"),
        "checkpoint": str(args.checkpoint),
        "vocoder_rtf_threads": args.threads,
        "vocoder_rtf": synth_s / max(audio_s, 1e-9),
    }
    for name, h in hyps.items():
        result[name] = {"wer": word_error_rate(refs, h), "asr_bleu": asr_bleu(refs, h)}
    if "a_target_audio" in hyps and "b_vocoded_units" in hyps:
        result["b_over_a_wer"] = result["b_vocoded_units"]["wer"] / result["a_target_audio"]["wer"]
    result["examples"] = [
        {"ref": r, **{k: hyps[k][i] for k in hyps}} for i, r in enumerate(refs[:10])
    ]
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


def export(args: argparse.Namespace) -> None:
    """Write ``vocoder.pt`` (+ a copy of the corpus' ``kmeans.npz``) for shipping."""
    import shutil

    model = load_trained(args.checkpoint)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    km = Path(args.corpus) / "units" / "kmeans.npz"
    meta = {"kmeans_sha256": file_sha256(km), "trained_steps": int(ckpt.get("step", 0)),
            "trained_minutes": round(float(ckpt.get("elapsed_s", 0.0)) / 60, 1)}  # fmt: skip
    model.save(out / "vocoder.pt", **meta)
    shutil.copyfile(km, out / "kmeans.npz")
    _log(f"exported to {out}: {meta}")


def bench(args: argparse.Namespace) -> dict:
    """CPU cost of unit vocoders on the same units (random ids, 2 frames each): real-time
    factor of whole-sequence synthesis for UnitVocoder (``--checkpoint`` or the default config)
    and CodeHiFiGAN at 512 (the official size), 128 and 64 initial channels, plus UnitVocoder
    streaming cost per chunk of ``--chunk-units`` units. Median of ``--repeats`` runs."""
    from echostream.models.vocoder import CodeHiFiGAN, CodeHiFiGANConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_trained(args.checkpoint) if args.checkpoint else UnitVocoder().eval()
    n_units = int(args.seconds * 25)
    units = torch.randint(0, model.cfg.num_units, (1, n_units))
    durs = torch.full((1, n_units), 2)
    audio_s = n_units * 2 * UNIT_HOP / SAMPLE_RATE

    def median_time(fn) -> float:
        with torch.inference_mode():
            fn()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return float(np.median(times))

    rows = {}
    params = sum(p.numel() for p in model.parameters())
    rows["UnitVocoder"] = {"params_M": params / 1e6, "rtf": median_time(
        lambda: model(units, durations=durs)) / audio_s}  # fmt: skip
    for channels in (512, 128, 64):
        gen = CodeHiFiGAN(CodeHiFiGANConfig(upsample_initial_channel=channels)).eval()
        params = sum(p.numel() for p in gen.parameters())
        rows[f"CodeHiFiGAN ch{channels}"] = {"params_M": params / 1e6, "rtf": median_time(
            lambda gen=gen: gen(units, durations=durs)) / audio_s}  # fmt: skip
    k = args.chunk_units

    def run_stream() -> None:
        state = model.init_state(1)
        for start in range(0, n_units, k):
            _, _, state = model.stream(units[:, start : start + k], None, state)
        model.stream(units[:, :0], None, state, final=True)

    per_chunk = median_time(run_stream) / math.ceil(n_units / k)
    rows["UnitVocoder stream"] = {"chunk_units": k, "ms_per_chunk": per_chunk * 1000}
    result = {"threads": args.threads, "audio_seconds": audio_s, "results": rows}
    print(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------------- CLI


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m echostream.training.train_vocoder")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (resumes from <out>/last.pt)")
    t.add_argument("--corpus", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=55.0, help="cumulative wall-time budget")
    t.add_argument("--steps", type=int, default=100000, help="at most this many steps")
    t.add_argument("--batch-frames", type=int, default=800, help="padded unit frames/batch")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--mel-weight", type=float, default=1.0)
    t.add_argument("--phase-weight", type=float, default=0.0)
    t.add_argument("--limit", type=int, default=None, help="use the first N train utterances")
    t.add_argument("--cache", default=None, help="folder for the prepared data (default: --out)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a "
                   "loaded machine)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--save-minutes", type=float, default=5.0)
    for f in fields(UnitVocoderConfig):
        if f.name != "num_units" and f.type in ("int", int):
            t.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None)
    e = sub.add_parser("eval", help="ASR-WER/BLEU of target audio vs vocoded units")
    e.add_argument("--corpus", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="dev")
    e.add_argument("--num", type=int, default=50)
    e.add_argument("--cache", default=None, help="prepared-data folder (default: beside the "
                   "checkpoint)")  # fmt: skip
    e.add_argument("--lm", default=None, help="LM for pocketsphinx (default: its generic en-us)")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--conditions", default="a,b,c", help="a: target audio, b: vocoded units "
                   "(predicted durations), c: vocoded units with gold durations")  # fmt: skip
    e.add_argument("--out", default=None, help="write the result JSON here")
    e.add_argument("--wav-dir", default=None, help="also save the vocoded wavs here")
    x = sub.add_parser("export", help="write vocoder.pt + kmeans.npz for shipping")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--corpus", required=True)
    x.add_argument("--out", required=True)
    b = sub.add_parser("bench", help="CPU real-time factors of the unit vocoders")
    b.add_argument("--checkpoint", default=None)
    b.add_argument("--seconds", type=float, default=6.0)
    b.add_argument("--chunk-units", type=int, default=8)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    {"train": train, "eval": evaluate, "export": export, "bench": bench}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
