"""SimulEval 1.1.4 agents for EchoStream: simultaneous speech-to-text and speech-to-speech.

    simuleval \\
        --agent-class echostream.integrations.simuleval_agent.EchoStreamSpeechToText \\
        --source source.txt --target target.txt --source-segment-size 320 \\
        --model echostream-tiny-fr-en --chunk-ms 320 --output out/ --quality-metrics BLEU \\
        --latency-metrics AL LAAL AP DAL StartOffset EndOffset

(``EchoStreamSpeechToSpeech`` for speech output; the file form is ``--agent
echostream/integrations/simuleval_agent.py --agent-class agents.EchoStreamSpeechToText``:
SimulEval loads an agent file as the module ``agents``.) ``source.txt`` lists 16 kHz mono wav
files, ``target.txt`` the reference translations, one per line.

Each source segment SimulEval sends is pushed to a
:class:`~echostream.streaming.translator.StreamingTranslator`, which takes a decision every
``--chunk-ms`` of audio; the agent writes what that decision emitted — the new *complete*
target words (those ``StreamingTranslator.instance_log`` counts: a word is complete once
another follows it or the source ended) or the new output audio — and reads otherwise. When the
source ends it calls ``finish()`` and writes everything left with ``finished=True``.

SimulEval dates an output by the source consumed when the agent writes it. The translator's
events are dated by the source consumed when it decided, so the two agree only when every
decision falls at the end of a segment: ``--source-segment-size`` must divide ``--chunk-ms``
(equal is the fastest), and the sources must be 16 kHz (other rates are resampled inside the
translator, whose decisions then fall between SimulEval's sample counts). The agent checks both
and raises ``ValueError`` rather than let SimulEval record other delays than the translator's.
With them, ``instances.log`` holds exactly the words and delays of ``instance_log()``, so
SimulEval's AL/LAAL/AP/DAL/StartOffset/EndOffset equal ``echostream.evaluation.latency``'s
(``tests/test_simuleval_agent.py``), words completed only by the end of the source included
(both date them at the source length). One known difference with ``instance_log``:

- speech output, when the source length is a multiple of ``--chunk-ms`` and both of the last two
  decisions (the last full chunk and the flush) produce audio: SimulEval receives one segment,
  ``instance_log`` holds two with the same delay (NumChunks, AP, DAL, and LAAL or AL without
  reference lengths, then differ; StartOffset and EndOffset do not).

Computation-aware delays differ by construction: SimulEval adds its own wall-clock time since
the first segment (including its bookkeeping), the translator only its compute.
"""

# No `from __future__ import annotations`: `simuleval --agent FILE` executes this file without
# registering it in sys.modules, where dataclasses look string annotations up.
import argparse
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from simuleval.agents import ReadAction, SpeechToSpeechAgent, SpeechToTextAgent, WriteAction
from simuleval.agents.actions import Action
from simuleval.data.segments import SpeechSegment
from simuleval.utils import entrypoint

from echostream.models.echostream import EchoStreamModel
from echostream.models.unit_vocoder import UnitVocoder
from echostream.streaming.translator import Event, StreamingTranslator
from echostream.streaming.translator import load_model as load_model_by_name

DEFAULT_MODEL = "echostream-tiny-fr-en"
_DELAY_TOLERANCE_MS = 1e-6


@dataclass
class SimulEvalAgentConfig:
    """What the agents read from SimulEval's command line (see :func:`add_agent_args`)."""

    model: str | None = None  # bundled model name or folder (model.pt [+ vocoder.pt])
    checkpoint: str | None = None  # a training checkpoint .pt instead of --model
    vocoder: str | None = None  # a unit vocoder .pt (overrides the model folder's)
    chunk_ms: int = 320  # decision chunk of the translator
    mode: Literal["incremental", "recompute"] = "incremental"
    whole_word: bool | None = None  # None: the translator's rule (on for chunks >= 640 ms)
    threads: int | None = None  # torch intra-op threads; None: torch's default
    source_segment_ms: int | None = None  # SimulEval's --source-segment-size, if known

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SimulEvalAgentConfig":
        return cls(
            model=args.model,
            checkpoint=args.checkpoint,
            vocoder=args.vocoder,
            chunk_ms=args.chunk_ms,
            mode=args.mode,
            whole_word=args.whole_word,
            threads=args.threads,
            source_segment_ms=getattr(args, "source_segment_size", None),
        )


def add_agent_args(parser: argparse.ArgumentParser) -> None:
    """The agents' options, added to SimulEval's parser."""
    group = parser.add_argument_group("EchoStream agent")
    group.add_argument(
        "--model",
        default=None,
        help=f"bundled model name or folder with model.pt (default: {DEFAULT_MODEL})",
    )
    group.add_argument(
        "--checkpoint", default=None, help="an EchoStream training checkpoint (.pt) instead"
    )
    group.add_argument(
        "--vocoder", default=None, help="unit vocoder .pt (default: the model folder's)"
    )
    group.add_argument("--chunk-ms", type=int, default=320, help="decision chunk (ms)")
    group.add_argument("--mode", choices=["incremental", "recompute"], default="incremental")
    group.add_argument(
        "--whole-word",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write whole words only (default: on for chunks of 640 ms or more)",
    )
    group.add_argument("--threads", type=int, default=None, help="torch threads")


def load_model(cfg: SimulEvalAgentConfig) -> tuple[EchoStreamModel, UnitVocoder | None]:
    """The model (bundled/folder or checkpoint) and the vocoder (``--vocoder`` wins)."""
    if cfg.model is not None and cfg.checkpoint is not None:
        raise ValueError("give --model or --checkpoint, not both")
    return load_model_by_name(cfg.model or DEFAULT_MODEL, cfg.checkpoint, cfg.vocoder)


def check_segment_size(segment_ms: int | None, chunk_ms: int, sample_rate: int) -> None:
    """Raise ``ValueError`` unless SimulEval's segments (``ceil(ms * rate / 1000)`` samples
    each, as SimulEval cuts them) end at every decision point of the translator."""
    if segment_ms is None:
        return
    if segment_ms < 1:
        raise ValueError(f"--source-segment-size must be >= 1 ms, got {segment_ms}")
    segment = math.ceil(segment_ms / 1000 * sample_rate)
    chunk = round(chunk_ms * sample_rate / 1000)
    if chunk % segment:
        raise ValueError(
            f"--source-segment-size {segment_ms} ms ({segment} samples at {sample_rate} Hz) does "
            f"not divide --chunk-ms {chunk_ms} ({chunk} samples): SimulEval would date outputs "
            f"later than the translator decided them; use --source-segment-size {chunk_ms}"
        )


class _EchoStreamAgent:
    """The policy shared by both agents (mixed in before SimulEval's agent class)."""

    speech_output = False

    def __init__(
        self, args: argparse.Namespace | None = None, translator: StreamingTranslator | None = None
    ) -> None:
        """``args``: SimulEval's parsed options; or ``translator``: a ready translator (tests,
        scripts)."""
        if translator is None:
            if args is None:
                raise ValueError("give SimulEval's args or a StreamingTranslator")
            cfg = SimulEvalAgentConfig.from_args(args)
            translator = self._build_translator(cfg)
            check_segment_size(cfg.source_segment_ms, cfg.chunk_ms, translator.sample_rate)
        elif self.speech_output and translator.core.vocoder is None:
            raise ValueError("speech output needs a translator with a vocoder")
        self.translator: StreamingTranslator = translator
        super().__init__(args)  # SimulEval's GenericAgent: builds states, calls reset()

    def _build_translator(self, cfg: SimulEvalAgentConfig) -> StreamingTranslator:
        if cfg.threads is not None:
            if cfg.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
            torch.set_num_threads(cfg.threads)
        model, vocoder = load_model(cfg)
        if self.speech_output:
            if vocoder is None:
                where = cfg.checkpoint or cfg.model or DEFAULT_MODEL
                raise ValueError(
                    f"speech output needs a unit vocoder: {where} has none; pass --vocoder PATH"
                )
            if vocoder.cfg.num_units != model.cfg.vocab.num_units:
                raise ValueError(
                    f"--vocoder has {vocoder.cfg.num_units} units, the model "
                    f"{model.cfg.vocab.num_units}"
                )
            if vocoder.cfg.sample_rate != model.cfg.features.sample_rate:
                raise ValueError(
                    f"vocoder writes {vocoder.cfg.sample_rate} Hz, the model reads "
                    f"{model.cfg.features.sample_rate} Hz: output durations would be wrong"
                )
        else:
            vocoder = None  # text output: no waveform to compute
        return StreamingTranslator(
            model, vocoder, chunk_ms=cfg.chunk_ms, mode=cfg.mode, whole_word=cfg.whole_word
        )

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        add_agent_args(parser)

    def to(self, device: str, *args, **kwargs) -> None:
        if kwargs.get("fp16"):
            raise ValueError("the EchoStream agent runs in fp32 (drop --fp16 / --dtype fp16)")
        if str(device) != "cpu":
            raise ValueError(f"the EchoStream agent runs on the CPU (--device cpu), not {device}")

    def reset(self) -> None:
        super().reset()
        self.translator.reset()
        self.samples_read = 0  # samples of states.source already pushed to the translator
        self.words_written = 0

    def policy(self) -> Action:
        states = self.states
        new = states.source[self.samples_read :]
        self.samples_read = len(states.source)
        events: list[Event] = []
        if new:
            events += self.translator.push(np.asarray(new, np.float32), states.source_sample_rate)
        if states.source_finished:
            events += self.translator.finish()
        self._check_delays(events)
        if self.speech_output:
            return self._write_speech(events, states.source_finished)
        return self._write_text(states.source_finished)

    def _check_delays(self, events: list[Event]) -> None:
        """What is written now, SimulEval dates at the source read so far (its
        ``len_sample_to_ms``); the translator's decisions must have been taken exactly then."""
        if not events:
            return
        rate = self.states.source_sample_rate
        simuleval_ms = self.samples_read * 1000 / rate if rate else 0.0
        for event in events:
            if abs(1000 * event.time_s - simuleval_ms) > _DELAY_TOLERANCE_MS:
                raise ValueError(
                    f"the translator decided at {1000 * event.time_s:.3f} ms of source but "
                    f"SimulEval dates this write at {simuleval_ms:.3f} ms: use 16 kHz sources "
                    f"and a --source-segment-size that divides --chunk-ms "
                    f"{self.translator.chunk_ms} (source rate here: {rate} Hz)"
                )

    def _write_text(self, finished: bool) -> Action:
        # The words instance_log() counts as complete (so both always apply the same rule):
        # every word followed by another, and after finish() all of them.
        words = self.translator.instance_log().words
        new = words[self.words_written :]
        self.words_written = len(words)
        if new or finished:
            return WriteAction(" ".join(new), finished=finished)
        return ReadAction()

    def _write_speech(self, events: list[Event], finished: bool) -> Action:
        pieces = [e.audio for e in events if e.kind == "audio" and e.audio is not None]
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if audio.size or finished:
            segment = SpeechSegment(
                content=audio.tolist(), sample_rate=self.translator.sample_rate, finished=finished
            )
            return WriteAction(segment, finished=finished)
        return ReadAction()


@entrypoint
class EchoStreamSpeechToText(_EchoStreamAgent, SpeechToTextAgent):
    """Simultaneous speech-to-text: writes complete target words as they are decided."""


@entrypoint
class EchoStreamSpeechToSpeech(_EchoStreamAgent, SpeechToSpeechAgent):
    """Simultaneous speech-to-speech: writes each new piece of output audio (16 kHz)."""

    speech_output = True
