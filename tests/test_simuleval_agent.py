"""SimulEval 1.1.4 runs EchoStream's agents and scores exactly what our own evaluation scores.

A tiny random model (whose policy writes at many steps) is saved as a checkpoint with a tiny
sentencepiece tokenizer; ``simuleval`` (its real runner, in a subprocess) evaluates the agent on
short wavs, and the same wavs go through ``StreamingTranslator.instance_log`` +
``corpus_latency`` + ``bleu``. The outputs and per-word/per-segment delays in SimulEval's
``instances.log`` must equal ours, its scorers must give our numbers, and ``scores.tsv`` must
hold them rounded as SimulEval rounds.
"""

import csv
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers_models import busy_model, speechlike

from echostream.audio.io import load_audio, save_audio
from echostream.evaluation.latency import corpus_latency
from echostream.evaluation.quality import bleu
from echostream.models.checkpoint import load_checkpoint, save_checkpoint
from echostream.models.unit_vocoder import UnitVocoder
from echostream.streaming.translator import StreamingTranslator
from echostream.text.tokenizer import train_tokenizer

simuleval = pytest.importorskip("simuleval")
if version("simuleval") != "1.1.4":
    pytest.skip("these checks pin SimulEval 1.1.4", allow_module_level=True)

from simuleval import options  # noqa: E402
from simuleval.data.segments import SpeechSegment  # noqa: E402
from simuleval.evaluator.instance import LogInstance  # noqa: E402
from simuleval.evaluator.scorers.latency_scorer import LATENCY_SCORERS_DICT  # noqa: E402
from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer  # noqa: E402

from echostream.integrations import simuleval_agent  # noqa: E402
from echostream.integrations.simuleval_agent import (  # noqa: E402
    EchoStreamSpeechToSpeech,
    EchoStreamSpeechToText,
    check_segment_size,
)

CHUNK_MS = 320
# (seconds, seed, reference). 1.6 s is 5 chunks exactly: the last SimulEval segment then runs
# a full decision and the flush at once.
UTTERANCES = [
    (1.6, 1, "ab ab ab ab ab ab abcc"),
    (1.8, 2, "ab ab ab ab abccc ba"),
    (2.2, 3, "ab ab ab ab ab ab ab abccc ba ba"),
    (2.6, 4, "ab ab abccc ba ba ba ba"),
]
TEXT_METRICS = ["AL", "LAAL", "AP", "DAL", "StartOffset", "EndOffset"]
# Speech output scored from instances.log (what `simuleval --output` does): SimulEval's ATD and
# RTF treat a logged instance as text and its Discontinuity scorers refuse it (see latency.py).
SPEECH_METRICS = [*TEXT_METRICS, "NumChunks"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Checkpoint, vocoder, wavs, source list and references in a temporary folder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("simuleval")
    texts = ["ab ba cab", "abc ba ca", "cab cab ab", "bac ab ca ba"] * 3
    tok = train_tokenizer(texts, root / "spm", 12)  # 4 specials + 8 pieces: the model's vocab
    assert [tok.id_to_piece(i) for i in (4, 5, 11)] == ["▁ba", "▁ab", "c"]
    model, vocoder = busy_model(0)
    with torch.no_grad():
        # Small embeddings let positions drive the random MT decoder (otherwise it repeats one
        # token); relabel its favourite tokens 9 and 6 as the pieces "▁ab" and "c" (a row swap
        # of the tied embedding is an exact relabelling), so that words span several tokens.
        torch.manual_seed(100)
        emb = model.mt_decoder.embed_tokens.weight
        emb.normal_(0, 0.02)
        emb[[9, 5, 6, 11]] = emb[[5, 9, 11, 6]].clone()
    model.attach_tokenizers(tok, tok)
    save_checkpoint(root / "model.pt", model)
    vocoder.save(root / "vocoder.pt")
    wavs = []
    for i, (seconds, seed, _) in enumerate(UTTERANCES):
        wavs.append(root / f"utt{i}.wav")
        save_audio(wavs[-1], speechlike(seconds, seed))
    return root, wavs, [ref for *_, ref in UTTERANCES]


def write_lists(folder: Path, wavs: list[Path], refs: list[str]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.txt").write_text("".join(f"{w}\n" for w in wavs))
    (folder / "target.txt").write_text("".join(f"{r}\n" for r in refs))
    return folder / "source.txt", folder / "target.txt"


def run_simuleval(agent_args: list[str], source: Path, target: Path, out: Path, extra=()):
    """The real `simuleval` runner (the venv's console script) in a subprocess."""
    argv = [
        *agent_args,
        *["--source", str(source), "--target", str(target), "--output", str(out)],
        *["--source-segment-size", str(CHUNK_MS), "--chunk-ms", str(CHUNK_MS), "--threads", "1"],
        "--no-progress-bar",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).with_name("simuleval")
    entry = "import sys; from simuleval.cli import main; sys.exit(main())"  # what it runs
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", entry]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "instances.log").read_text().splitlines()]
    with open(out / "scores.tsv") as f:
        header, values = list(csv.reader(f, delimiter="\t"))
    return records, {k: float(v) for k, v in zip(header, values, strict=True)}


def ours(root: Path, wavs: list[Path], refs: list[str], speech: bool):
    """Our built-in path on the same files: translator per utterance, then instance_log."""
    model, _ = load_checkpoint(root / "model.pt")
    vocoder = UnitVocoder.load(root / "vocoder.pt") if speech else None
    translator = StreamingTranslator(model, vocoder, chunk_ms=CHUNK_MS)
    logs, audio_events = [], []
    for i, (wav, ref) in enumerate(zip(wavs, refs, strict=True)):
        translator.reset()
        translator.push(load_audio(wav), 16000)
        translator.finish()
        logs.append(translator.instance_log(reference=ref, index=i))
        audio_events.append([(e.time_s, e.audio) for e in translator.events if e.kind == "audio"])
    return logs, audio_events


def simuleval_scores(records: list[dict], names: list[str]) -> dict[str, float]:
    """SimulEval's own scorers, full precision, on its logged instances."""
    instances = {r["index"]: LogInstance(json.dumps(r)) for r in records}
    table = {
        n: LATENCY_SCORERS_DICT[n](computation_aware=False, use_ref_len=True)(instances)
        for n in names
    }
    return table | {"BLEU": SacreBLEUScorer("13a")(instances)}


def test_text_output_agrees_with_builtin_evaluation(corpus, tmp_path):
    root, wavs, refs = corpus
    source, target = write_lists(tmp_path, wavs, refs)
    agent = ["--agent-class", "echostream.integrations.simuleval_agent.EchoStreamSpeechToText"]
    records, tsv = run_simuleval(
        [*agent, "--checkpoint", str(root / "model.pt")],
        source,
        target,
        tmp_path / "out",
        ["--quality-metrics", "BLEU", "--latency-metrics", *TEXT_METRICS],
    )
    logs, _ = ours(root, wavs, refs, speech=False)
    # the scenario is not trivial: writes at several source times, before the end of the source
    delays = {d for g in logs for d in g.word_delays_ms}
    assert len(delays) >= 6 and min(delays) < min(g.source_length_ms for g in logs)
    assert any(len(w) > 2 for g in logs for w in g.words)  # words of several pieces
    assert len(records) == len(logs)
    for record, log in zip(records, logs, strict=True):
        assert record["prediction"] == log.text
        assert record["delays"] == log.word_delays_ms  # exactly, word by word
        assert record["source_length"] == log.source_length_ms
        assert record["reference"] == log.reference
    expected = corpus_latency(logs, "text", computation_aware=False, metrics=TEXT_METRICS)
    expected["BLEU"] = bleu(hyps=[g.text for g in logs], refs=refs)
    assert expected["BLEU"] > 1.0
    theirs = simuleval_scores(records, TEXT_METRICS)
    assert theirs["BLEU"] == expected["BLEU"]
    for name in TEXT_METRICS:
        assert theirs[name] == pytest.approx(expected[name], rel=1e-6, abs=0), name
    assert tsv == {k: round(expected[k], 3) for k in ["BLEU", *TEXT_METRICS]}


def test_speech_output_agrees_with_builtin_evaluation(corpus, tmp_path):
    root, wavs, refs = corpus
    # 1.6 s is a whole number of chunks: its last two decisions may reach SimulEval as one audio
    # segment and instance_log as two (see the agent's module docstring); leave it out here.
    wavs, refs = wavs[1:], refs[1:]
    source, target = write_lists(tmp_path, wavs, refs)
    agent_file = Path(simuleval_agent.__file__)  # the file form: SimulEval loads it as `agents`
    agent = ["--agent", str(agent_file), "--agent-class", "agents.EchoStreamSpeechToSpeech"]
    model_args = ["--checkpoint", str(root / "model.pt"), "--vocoder", str(root / "vocoder.pt")]
    records, tsv = run_simuleval(
        [*agent, *model_args],
        source,
        target,
        tmp_path / "out",
        ["--latency-metrics", *SPEECH_METRICS],
    )
    logs, audio_events = ours(root, wavs, refs, speech=True)
    assert sum(len(g.segment_delays_ms) for g in logs) >= 6
    for record, log, events in zip(records, logs, audio_events, strict=True):
        mine = log.to_simuleval("speech")
        for key in ("delays", "durations", "intervals", "source_length", "prediction_offset"):
            assert record[key] == mine[key], key
        # the wav SimulEval wrote: our audio on the played timeline (16-bit PCM)
        played, _ = soundfile.read(record["prediction"], dtype="float32")
        timeline, end = [], events[0][0] * 1000
        for (_, audio), (start, _) in zip(events, record["intervals"], strict=True):
            timeline += [np.zeros(int(16000 * (start - end) / 1000), np.float32), audio]
            end = start + 1000 * len(audio) / 16000
        timeline = np.concatenate(timeline)
        assert len(played) == len(timeline)
        inside = np.abs(timeline) < 0.99  # (16-bit clipping aside)
        assert inside.mean() > 0.9
        np.testing.assert_allclose(played[inside], timeline[inside], atol=1.01 / 32768)
    expected = corpus_latency(logs, "speech", computation_aware=False, metrics=SPEECH_METRICS)
    theirs = simuleval_scores(records, SPEECH_METRICS)
    for name in SPEECH_METRICS:
        assert theirs[name] == pytest.approx(expected[name], rel=1e-6, abs=0), name
    assert {k: tsv[k] for k in SPEECH_METRICS} == {k: round(expected[k], 3) for k in SPEECH_METRICS}


def simuleval_args(argv: list[str]):
    """SimulEval's parser with the agents' options, as `simuleval` builds it."""
    parser = options.general_parser()
    options.add_evaluator_args(parser)
    options.add_dataloader_args(parser, argv)
    EchoStreamSpeechToText.add_args(parser)
    return parser.parse_args(argv)


def test_options_and_their_errors(corpus):
    root, _, _ = corpus
    ckpt = ["--checkpoint", str(root / "model.pt")]
    agent = EchoStreamSpeechToText.from_args(
        simuleval_args([*ckpt, "--chunk-ms", "640", "--source-segment-size", "160", "--mode",
                        "recompute", "--no-whole-word"])
    )  # fmt: skip
    tr = agent.translator
    assert (tr.chunk_ms, tr.mode, tr.core.whole_word, tr.core.vocoder) == (
        640,
        "recompute",
        False,
        None,
    )
    with pytest.raises(ValueError, match="--model or --checkpoint, not both"):
        EchoStreamSpeechToText.from_args(simuleval_args([*ckpt, "--model", "x"]))
    with pytest.raises(ValueError, match="does not divide --chunk-ms 320"):
        EchoStreamSpeechToText.from_args(simuleval_args([*ckpt, "--source-segment-size", "100"]))
    with pytest.raises(ValueError, match="needs a unit vocoder"):
        EchoStreamSpeechToSpeech.from_args(simuleval_args(ckpt))
    with pytest.raises(FileNotFoundError, match="no model 'nothing-here'"):
        EchoStreamSpeechToText.from_args(simuleval_args(["--model", "nothing-here"]))


@pytest.mark.parametrize(
    ("segment_ms", "chunk_ms", "ok"),
    [(320, 320, True), (160, 320, True), (1, 320, True), (40, 640, True), (100, 320, False),
     (640, 320, False), (30, 320, False)],
)  # fmt: skip
def test_segment_size_must_divide_the_chunk(segment_ms, chunk_ms, ok):
    if ok:
        check_segment_size(segment_ms, chunk_ms, 16000)
    else:
        with pytest.raises(ValueError, match="SimulEval would date outputs later"):
            check_segment_size(segment_ms, chunk_ms, 16000)


def test_resampled_source_is_refused_instead_of_misdated():
    """At 48 kHz the translator's decisions fall between SimulEval's segment ends."""
    model, _ = busy_model(0)
    agent = EchoStreamSpeechToText(translator=StreamingTranslator(model, chunk_ms=CHUNK_MS))
    pcm = np.repeat(speechlike(2.0, 5), 3)  # 48 kHz
    step = 48 * CHUNK_MS
    with pytest.raises(ValueError, match="SimulEval dates this write at"):
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step].tolist()
            agent.pushpop(SpeechSegment(content=piece, sample_rate=48000, finished=False))


def feed(agent, pcm: np.ndarray, segment: int = 16 * CHUNK_MS) -> list[tuple[float, str, bool]]:
    """Drive an agent as SimulEval does (one pushpop per 16 kHz segment); its writes as
    (source ms read when written, text, finished)."""
    agent.reset()
    writes = []
    for start in range(0, len(pcm), segment):
        end = min(start + segment, len(pcm))
        piece = pcm[start:end].tolist()
        out = agent.pushpop(
            SpeechSegment(content=piece, sample_rate=16000, finished=end == len(pcm))
        )
        if not out.is_empty:
            writes.append((1000 * end / 16000, out.content, out.finished))
    return writes


def test_words_are_written_once_complete_and_all_at_the_end():
    """In-process: the agent's writes, concatenated, are the translation; only the last write
    is finished; a reset starts a fresh stream."""
    model, _ = busy_model(0)
    agent = EchoStreamSpeechToText(translator=StreamingTranslator(model, chunk_ms=CHUNK_MS))
    pcm = speechlike(1.8, 2)
    for _ in range(2):  # the second pass checks reset()
        writes = feed(agent, pcm)
        assert len(writes) >= 3 and [f for *_, f in writes] == [False] * (len(writes) - 1) + [True]
        written = " ".join(text for _, text, _ in writes if text).split()
        assert written == agent.translator.translation.split()
        assert written == agent.translator.instance_log().words


def capped_agent():
    """A translator whose final decision adds no token (max_len 1), so that the last word is
    completed by the end of the source alone."""
    model, _ = busy_model(0)
    translator = StreamingTranslator(model, chunk_ms=CHUNK_MS, max_len_a=0.0, max_len_b=1)
    return EchoStreamSpeechToText(translator=translator)


def test_a_word_completed_by_the_end_of_the_source_is_written_then():
    agent, pcm = capped_agent(), speechlike(1.8, 2)
    writes = feed(agent, pcm)
    texts = [e for e in agent.translator.events if e.kind == "text"]
    assert texts[-1].time_s < 1.8  # no text event at the end: the last word was decided before
    last_word = agent.translator.translation.split()[-1]
    assert writes[-1] == (1800.0, last_word, True)  # ... but complete only at the end


def test_instance_log_dates_words_completed_by_the_end_like_simuleval():
    agent, pcm = capped_agent(), speechlike(1.8, 2)
    delays = [ms for ms, text, _ in feed(agent, pcm) for _ in text.split()]
    assert delays == agent.translator.instance_log().word_delays_ms
