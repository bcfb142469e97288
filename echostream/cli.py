"""The ``echostream`` command line. Each verb imports what it needs lazily."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import CONFIG_DIR, config_path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SAMPLES_DIR = PACKAGE_DIR / "assets" / "samples"


def _config_path(name_or_path: str) -> Path:
    """:func:`echostream.config.config_path`, its error as the command's exit message."""
    try:
        return config_path(name_or_path)
    except FileNotFoundError as err:
        raise SystemExit(f"echostream: {err}") from None


# ---------------------------------------------------------------------------------- encode


def stream_encoder_table(
    config: str, audio: Path, chunk_ms: int, mode: str, threads: int, seed: int = 0, out=None
) -> list[dict]:
    """Stream a wav through a (randomly initialised) SpeechEncoder chunk by chunk; print a table.

    Returns one row per chunk: index, audio end time (s), encoder frames out, compute (ms).
    """
    import torch

    from .audio.io import load_audio
    from .config import load_config
    from .models.encoder import SpeechEncoder

    out = out or sys.stdout
    torch.set_num_threads(threads)
    cfg = load_config(_config_path(config))
    torch.manual_seed(seed)
    encoder = SpeechEncoder(cfg).eval()
    pcm = torch.from_numpy(load_audio(audio, cfg.features.sample_rate))
    step = int(cfg.features.sample_rate * chunk_ms / 1000)
    state = encoder.init_state(1, mode=mode)
    rows = []
    print(
        f"# {cfg.model} encoder ({cfg.encoder.type}, {mode}), {audio.name}, "
        f"{len(pcm) / cfg.features.sample_rate:.2f} s, chunks of {chunk_ms} ms, "
        f"{threads} thread(s), random weights (seed {seed})",
        file=out,
    )
    print(
        f"{'chunk':>5} {'audio_s':>8} {'frames_out':>10} {'total_frames':>12} {'compute_ms':>10}",
        file=out,
    )
    total = 0
    with torch.inference_mode():
        for index, start in enumerate(range(0, len(pcm), step)):
            chunk = pcm[start : start + step]
            final = start + step >= len(pcm)
            t0 = time.perf_counter()
            _, y_len, state = encoder.stream_pcm(
                chunk[None], torch.tensor([len(chunk)]), state, final=final
            )
            ms = (time.perf_counter() - t0) * 1000
            total += int(y_len[0])
            row = {
                "chunk": index,
                "audio_s": (start + len(chunk)) / cfg.features.sample_rate,
                "frames_out": int(y_len[0]),
                "total_frames": total,
                "compute_ms": ms,
            }
            rows.append(row)
            print(
                f"{index:>5} {row['audio_s']:>8.2f} {row['frames_out']:>10} {total:>12} "
                f"{ms:>10.2f}",
                file=out,
            )
    return rows


def cmd_encode(args: argparse.Namespace) -> int:
    stream_encoder_table(args.config, Path(args.audio), args.chunk_ms, args.mode, args.threads)
    return 0


def simulate_stream(
    translator,
    audio: Path,
    out_wav: Path | None,
    reference: str | None = None,
    feed_ms: int = 40,
    out=None,
) -> dict:
    """Feed a wav to a StreamingTranslator as a live source would (``feed_ms`` pieces), print
    what is emitted with its source time, write the English speech, print a latency summary."""
    import numpy as np

    from .audio.io import load_audio, save_audio
    from .evaluation.latency import instance_latency

    out = out or sys.stdout
    sr = translator.sample_rate
    pcm = load_audio(audio, sr)
    step = max(1, sr * feed_ms // 1000)
    print(
        f"# {audio.name}: {len(pcm) / sr:.2f} s, decision chunks of {translator.chunk_ms} ms, "
        f"mode {translator.mode}",
        file=out,
    )

    def show(events) -> None:
        for e in events:
            if e.kind == "asr":
                print(f"[{e.time_s:6.2f} s] FR  {e.text}", file=out)
            elif e.kind == "text":
                print(f"[{e.time_s:6.2f} s] EN  {e.text}", file=out)

    for start in range(0, len(pcm), step):
        show(translator.push(pcm[start : start + step], sr))
    show(translator.finish())
    speech = translator.output_audio()
    if out_wav is not None and speech.size:
        save_audio(out_wav, speech, sr)
    log = translator.instance_log(reference)
    summary = {
        "source_s": len(pcm) / sr,
        "compute_s": translator.compute_s,
        "rtf": translator.compute_s / (len(pcm) / sr),
        "chunk_ms": [ms for _, ms in translator.step_times],
        "transcript": translator.transcript,
        "translation": translator.translation,
        "speech_s": speech.size / sr,
    }
    print(f"\nFR transcript: {translator.transcript}", file=out)
    print(f"EN translation: {translator.translation}", file=out)
    if speech.size:
        print(
            f"EN speech: {speech.size / sr:.2f} s" + (f" -> {out_wav}" if out_wav else ""), file=out
        )
    if log.words:
        lat = instance_latency(
            log,
            "text",
            metrics=("AL", "LAAL", "AP", "DAL", "StartOffset"),
            use_ref_len=reference is not None,
        )
        lat_ca = instance_latency(
            log,
            "text",
            computation_aware=True,
            metrics=("AL", "LAAL"),
            use_ref_len=reference is not None,
        )
        summary["latency"] = lat
        print(
            "text latency (ms of source): "
            + ", ".join(f"{k} {v:.0f}" for k, v in lat.items())
            + f"; computation-aware AL {lat_ca['AL']:.0f}, LAAL {lat_ca['LAAL']:.0f}",
            file=out,
        )
    ms = np.array(summary["chunk_ms"])
    print(
        f"compute: {len(ms)} steps, median {np.median(ms):.1f} ms, max {ms.max():.1f} ms per "
        f"{translator.chunk_ms} ms chunk; real-time factor {summary['rtf']:.3f}",
        file=out,
    )
    return summary


def _translator(args: argparse.Namespace):
    from .models.checkpoint import load_checkpoint
    from .models.unit_vocoder import UnitVocoder
    from .streaming.translator import StreamingTranslator, load_pretrained

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        vocoder = UnitVocoder.load(args.vocoder) if args.vocoder else None
    else:
        model, vocoder = load_pretrained(args.model)
        if args.vocoder:
            vocoder = UnitVocoder.load(args.vocoder)
    return StreamingTranslator(model, vocoder, chunk_ms=args.chunk_ms, mode=args.mode)


def cmd_stream(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    simulate_stream(
        _translator(args),
        Path(args.audio),
        Path(args.out) if args.out else None,
        reference=args.reference,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from .evaluation.runner import evaluate, render_markdown

    torch.set_num_threads(args.threads)
    translator = _translator(args)
    asr = None
    if not args.no_asr:
        from .evaluation.asr import EnglishASR

        asr = EnglishASR(lm=args.asr_lm)
    chunks = [int(c) for c in args.chunks.split(",") if c]
    results = evaluate(
        translator.model,
        translator.core.vocoder,
        Path(args.data),
        args.split,
        chunks,
        offline=not args.no_offline,
        mode=args.mode,
        limit=args.limit,
        asr=asr,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    text = render_markdown(results, args.title or (args.checkpoint or args.model))
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
    return 0


def _sample_reference(audio: Path) -> tuple[str, str] | None:
    """(French, English) of a bundled sample ``fr_<split>_<n>.wav`` from data/fr-en/."""
    parts = audio.stem.split("_")
    table = REPO_DIR / "data" / "fr-en" / f"{parts[1]}.tsv" if len(parts) == 3 else None
    if table is None or not table.is_file():
        return None
    for line in table.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if cols[0] == f"ddtp-{parts[2]}":
            return cols[1], cols[2]
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .streaming.translator import StreamingTranslator

    torch.set_num_threads(args.threads)
    samples = sorted(SAMPLES_DIR.glob("*.wav"))
    audio = Path(args.audio) if args.audio else samples[0]
    translator = StreamingTranslator.from_pretrained(args.model, chunk_ms=320)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav = out / f"{audio.stem}.en.wav"
    print(
        f"EchoStream demo: {args.model} (bundled, CPU, {args.threads} thread), streaming "
        f"{audio.name} in 320 ms decision chunks as it would arrive live.\n"
    )
    reference = _sample_reference(audio)
    simulate_stream(translator, audio, wav, reference=None)
    if reference:
        print(f"\nreference  FR: {reference[0]}\n           EN: {reference[1]}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters per component and streaming-state bytes per stream, for each config.

    States are measured on a randomly initialised model fed 2 s of silence in two 1 s calls
    (sizes do not depend on the values); a state that grows shows its growth per second.
    """
    import torch

    from .config import load_config
    from .models import build_model

    torch.set_num_threads(1)  # small streamed steps: one thread is fastest
    for name in args.config:
        short = CONFIG_DIR / f"config_{name}.yaml"  # a name wins over a same-named folder
        path = short if not Path(name).is_file() and short.is_file() else _config_path(name)
        cfg = load_config(path)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        print(f"{path} ({cfg.model}, encoder {cfg.encoder.type})")
        for part, count in model.parameter_report().items():
            print(f"  {part:<16} {count:>12,d} parameters")
        frames = int(1000 / cfg.features.frame_shift_ms)  # fbank frames per second
        feats = torch.zeros(1, frames, cfg.features.num_mel_bins)
        feat_len = torch.tensor([frames])
        modes = ["cached", "recompute"] if cfg.encoder.type == "conformer" else ["cached"]
        print("  stream state, bytes per stream: fresh / after 1 s / after 2 s of audio")

        def row(label: str, sizes: list[int]) -> None:
            growth = sizes[2] - sizes[1]
            grows = f"  (+{growth:,d} per s)" if growth else "  (fixed size)"
            print(f"  {label:<28}" + " / ".join(f"{n:,d}" for n in sizes) + grows)

        with torch.inference_mode():
            for mode in modes:
                state = model.encoder.init_state(1, mode=mode)
                sizes, enc, enc_len = [state.nbytes()], [], []
                for _ in range(2):
                    out, out_len, state = model.encoder.stream(feats, feat_len, state)
                    sizes.append(state.nbytes())
                    enc.append(out)
                    enc_len.append(out_len)
                row("encoder" + (f" ({mode})" if len(modes) > 1 else ""), sizes)
            st = model.st_ctc.init_state(1)
            mt = model.mt_decoder.init_state(1)
            st_sizes, mt_sizes = [st.nbytes()], [mt.nbytes()]
            for out, out_len in zip(enc, enc_len, strict=True):
                _, _, st = model.st_ctc.stream(out, out_len, st)
                mt = model.mt_decoder.extend_memory(out, out_len, mt)
                st_sizes.append(st.nbytes())
                mt_sizes.append(mt.nbytes())
            row("ST CTC decoder", st_sizes)
            row("MT cross-attention memory", mt_sizes)
            _, hidden, mt_tok = model.mt_decoder.step(torch.tensor([2]), mt)
            one = torch.tensor([1])
            t2u0 = model.t2u.init_state(1)
            t2u_out, _, t2u1 = model.t2u.stream(hidden[:, None], one, t2u0)
            unit0 = model.unit_decoder.init_state(1)
            _, _, unit1 = model.unit_decoder.stream(t2u_out, one, unit0)
            per_token = mt_tok.nbytes() - mt.nbytes() + t2u1.nbytes() - t2u0.nbytes()
            per_token += unit1.nbytes() - unit0.nbytes()
            print(
                f"  {'decoders, per target token':<28}{per_token:,d} (MT self-attention, T2U, "
                f"unit decoder: {cfg.unit_decoder.upsample_rate} frames + cross-attention)"
            )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench.encoder import run_benchmark
    from .bench.report import plot, render_doc, render_markdown

    log = (
        (lambda *a, **k: None)
        if args.json == "-"
        else (lambda msg: print(msg, file=sys.stderr, flush=True))
    )
    results = run_benchmark(
        quick=args.quick,
        echostream_config=_opt_config(args.echostream),
        streamspeech_config=_opt_config(args.streamspeech),
        log=log,
        threads=[int(t) for t in args.threads.split(",")] if args.threads else None,
    )
    text = render_markdown(results)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "results.md").write_text(text)
        plots = plot(results, out)
        for path in plots:
            print(f"wrote {path}", file=sys.stderr)
        if args.doc:
            command = (
                "echostream bench encoder " + " ".join(sys.argv[3:])
                if len(sys.argv) > 3
                else "echostream bench encoder"
            )
            Path(args.doc).write_text(render_doc(results, command, plots, Path(args.doc)))
    if args.json == "-":
        print(json.dumps(results, indent=1, default=str))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(text)
    return 0


def _opt_config(name: str | None) -> Path | None:
    return _config_path(name) if name else None


# ---------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echostream", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("encode", help="stream a wav through the encoder, print a per-chunk table")
    p.add_argument("--config", default="echostream", help="config path or name")
    p.add_argument("--audio", required=True)
    p.add_argument("--chunk-ms", type=int, default=320)
    p.add_argument(
        "--mode",
        choices=["cached", "recompute"],
        default="cached",
        help="Conformer streaming mode (recompute = StreamSpeech's agent)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("stream", help="simulate a live stream of a wav file through the agent")
    p.add_argument(
        "--model",
        default="echostream-tiny-fr-en",
        help="bundled model name or folder with model.pt [+ vocoder.pt]",
    )
    p.add_argument("--checkpoint", help="an EchoStream checkpoint instead of --model")
    p.add_argument("--vocoder", help="a unit vocoder checkpoint (vocoder.pt)")
    p.add_argument("--audio", required=True)
    p.add_argument("--chunk-ms", type=int, default=320)
    p.add_argument("--mode", choices=["incremental", "recompute"], default="incremental")
    p.add_argument("--out", help="write the English speech here (wav)")
    p.add_argument("--reference", help="reference translation (for length-adaptive latency)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("evaluate", help="BLEU, ASR-BLEU, WER and latency on a corpus split")
    p.add_argument("--model", default="echostream-tiny-fr-en")
    p.add_argument("--checkpoint")
    p.add_argument("--vocoder")
    p.add_argument("--data", required=True, help="corpus folder with {split}.tsv")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, help="first N utterances")
    p.add_argument("--chunks", default="160,320,640", help="decision chunks in ms")
    p.add_argument("--mode", choices=["incremental", "recompute"], default="incremental")
    p.add_argument("--no-offline", action="store_true")
    p.add_argument("--no-asr", action="store_true", help="skip ASR-BLEU (pocketsphinx)")
    p.add_argument("--asr-lm", help="LM for pocketsphinx (built from training targets only)")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--title")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_evaluate, chunk_ms=320)

    p = sub.add_parser("demo", help="the main job: translate a bundled recording live")
    p.add_argument("--audio", help="a wav file instead of the bundled sample")
    p.add_argument("--model", default="echostream-tiny-fr-en")
    p.add_argument("--out", default="out/demo", help="folder for the English speech")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="benchmarks: `bench encoder` (recompute vs cached vs Emformer), `bench pipeline` "
        "(whole agent, per-chunk compute vs position), `bench serve` (server load/faults), "
        "`bench longstream` (one-hour stream: memory and per-chunk cost)",
    )
    p.add_argument(
        "what",
        choices=["encoder", "pipeline", "serve", "longstream"],
        help="the options below are `bench encoder`'s; the others have their own "
        "(echostream bench pipeline --help)",
    )
    p.add_argument("--quick", action="store_true", help="a subset that runs in < 60 s (CI)")
    p.add_argument("--json", help="write results as JSON to this path ('-' = stdout only)")
    p.add_argument("--out", help="folder for results.json, results.md and PNG plots")
    p.add_argument("--doc", help="also write a documentation page (needs --out for its plots)")
    p.add_argument(
        "--threads",
        help="thread counts for the latency table, e.g. 1,2 (default: 1 and all cores; quick: 1)",
    )
    p.add_argument("--echostream", help="EchoStream config (default: reference)")
    p.add_argument("--streamspeech", help="baseline config (default: reference)")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("train", help="train a model (echostream train --help)", add_help=False)
    sub.add_parser(
        "export", help="bundle a trained checkpoint + vocoder for from_pretrained", add_help=False
    )
    p = sub.add_parser(
        "prepare",
        help="build corpora: `prepare synth` (synthetic Fr→En speech), `prepare cvss-c`, "
        "`prepare longform` (minutes-long streams from a corpus split), `prepare asr-lm` "
        "(the ASR-BLEU recogniser's LM, from training targets)",
    )
    p.add_argument(
        "what",
        choices=["synth", "cvss-c", "longform", "asr-lm"],
        help="each has its own options (echostream prepare synth --help)",
    )

    sub.add_parser(
        "results",
        help="regenerate the docs/results tables and quality-latency curves",
        add_help=False,
    )
    sub.add_parser(
        "eval-longform",
        help="long-form evaluation with simulstream and OmniSTEval (pip install .[simulstream])",
        add_help=False,
    )
    sub.add_parser(
        "serve", help="WebSocket streaming server with a microphone page", add_help=False
    )

    p = sub.add_parser("info", help="parameters per component")
    p.add_argument("--config", nargs="+", default=["echostream", "streamspeech"])
    p.set_defaults(func=cmd_info)
    return parser


# Verbs whose own modules own their arguments: the rest of the command line is handed over.
PASS_THROUGH = {
    ("train",): ("echostream.training.trainer", "main_train"),
    ("prepare", "synth"): ("echostream.data.synth", "main_prepare_synth"),
    ("prepare", "cvss-c"): ("echostream.data.cvss", "main_prepare_cvss_c"),
    ("export",): ("echostream.training.export", "main_export"),
    ("prepare", "longform"): ("echostream.data.longform", "main_prepare_longform"),
    ("prepare", "asr-lm"): ("echostream.evaluation.asr_lm", "main"),
    ("eval-longform",): ("echostream.evaluation.longform", "main"),
    ("bench", "pipeline"): ("echostream.bench.pipeline", "main"),
    ("bench", "serve"): ("echostream.bench.serve_load", "main"),
    ("bench", "longstream"): ("echostream.bench.longstream", "main"),
    ("results",): ("echostream.evaluation.results", "main"),
    ("serve",): ("echostream.serve.app", "main"),
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    for words, (module, func) in PASS_THROUGH.items():
        if tuple(argv[: len(words)]) == words:
            return getattr(importlib.import_module(module), func)(argv[len(words) :])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
