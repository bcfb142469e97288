"""Latency of simultaneous translation, as SimulEval 1.1.4 defines it, without SimulEval.

Units are milliseconds of *source* audio. One sentence (an "instance") is an :class:`InstanceLog`:
the source length, the reference text, and what the agent emitted — target words (text output)
and/or audio segments (speech output) — each with

- its **delay**: how much source audio (ms) had been consumed when it was emitted;
- its **elapsed** time (SimulEval's name): delay + cumulative compute time (ms) the agent had
  spent on this instance up to that emission (SimulEval measures wall-clock time since the first
  source chunk, while feeding the source as fast as the agent consumes it, so that time is all
  compute). The ``*_CA`` ("computation-aware") metrics are the same formulas on ``elapsed``.

Per-instance metrics (``delays`` D_1..D_n, source length |X|, target length |Y|; ``use_ref_len``:
|Y| is the reference's word count ``len(reference.split(" "))``, else n):

- AL (STACL): ``mean_{i<=tau} D_i - (i-1)|X|/|Y|`` with tau the first i with ``D_i >= |X|``
  (``D_1`` itself if ``D_1 > |X|``, which only ``elapsed`` can do).
- LAAL: AL with |Y| replaced by ``max(|Y|, n)`` (over-generation cannot lower it).
- AP: ``sum(D) / (|X| |Y|)`` (a fraction; with ``use_ref_len`` |Y| is the reference length).
- DAL: ``D'_1 = D_1``, ``D'_i = max(D_i, D'_{i-1} + |X|/n)``, ``mean_i D'_i - (i-1)|X|/n``
  (always n = number of outputs).
- ATD (Average Token Delay): source split into 300 ms tokens per chunk, target words as tokens of
  length 0 (text) or output audio split into 300 ms tokens (speech); see
  :func:`average_token_delay`.
- StartOffset ``D_1``; EndOffset ``D_n - |X|`` (speech: end of the last played segment - |X|);
  NumChunks n; RTF (SimulEval's, *not* compute): ``D_n / |X|`` (speech: end of playback / |X|).
- Speech only: Discontinuity{Sum,Ave,Num} — the silences inserted in the played output while it
  waits for the next segment (see :meth:`InstanceLog.intervals`).
- ``compute_RTF`` (ours): total measured compute time / source duration.

Speech output is scored the way SimulEval scores it: D_i is the delay of the i-th emitted *audio
segment* (not of words), |Y| is still the reference's word count, and the played timeline puts
segment i at ``start_i = max(D_i, end_{i-1})`` (no overlap, silence in gaps). EndOffset, RTF and
the Discontinuity metrics use that timeline, which is built from the plain delays in both the
plain and the computation-aware variants (so ``EndOffset_CA == EndOffset`` for speech, as in
SimulEval and StreamSpeech's published tables).

Corpus scores are the mean of per-instance scores (``statistics.mean``, as SimulEval), skipping
instances without output (with a warning, as SimulEval); ``compute_RTF`` is total compute / total
source time. Every number here equals, bit for bit, SimulEval 1.1.4's scorer classes on the
same instances as SimulEval holds them after a run (``tests/test_latency.py`` checks it).
:func:`write_instances_log` / :func:`read_instances_log` speak its ``instances.log`` JSON-lines
format, so ``simuleval --score-only`` can score our logs, with three SimulEval 1.1.4 caveats:

- scored from a log, a speech-output instance is a ``LogInstance``, which its ATD treats as
  *text* output (segments as zero-length words) and its RTF as ``D_n / |X|``; the other metrics
  agree (StreamSpeech, whose SimulEval fork scores the in-memory instances, gets ours);
- ``--computation-aware`` also turns its *plain* columns computation-aware (``from_args`` hands
  the flag to both scorers; StreamSpeech's fork fixes it): run it twice, or read only ``_CA``;
- its own speech logs hold ``"elapsed": []``, so they have no computation-aware information
  (ours keep it).

Stricter than SimulEval (which never validates): delays must be finite, non-negative,
non-decreasing and at most the source length (SimulEval's own instances cannot produce anything
else, so a violation is an agent bug), elapsed must be non-decreasing and >= delays, and audio
segments must be non-empty (SimulEval drops empty ones; its ATD divides by zero on them). Each
violation raises ``ValueError``. SimulEval quirks kept for comparability: ``reference.split(" ")``
counts words (an empty reference counts 1); AP uses the reference length; speech-output AL/AP use
segment delays against the reference's word count.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Output = Literal["text", "speech"]
ATD_TOKEN_MS = 300.0  # SimulEval's ATD: source speech and target speech tokens of 300 ms
_EPS_MS = 1e-6  # tolerance for delay <= source length (float round-off of ms conversions)

# Metric names, as SimulEval's scores.tsv columns (``_CA`` appended for computation-aware).
TEXT_METRICS = ("AL", "LAAL", "AP", "DAL", "ATD", "StartOffset", "EndOffset", "NumChunks", "RTF")
SPEECH_METRICS = (
    *TEXT_METRICS,
    "DiscontinuitySum",
    "DiscontinuityAve",
    "DiscontinuityNum",
)


# --------------------------------------------------------------------------------------------
# Per-instance metrics on plain lists (delays in ms, lengths in ms / tokens)
# --------------------------------------------------------------------------------------------


def average_lagging(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """AL (Ma et al., 2019) as SimulEval: ``mean_{i<=tau} (D_i - (i-1) |X|/|Y|)``."""
    if delays[0] > source_length:
        return delays[0]
    gamma = target_length / source_length
    total, tau = 0.0, 0
    for i, d in enumerate(delays):
        total += d - i / gamma
        tau = i + 1
        if d >= source_length:
            break
    return total / tau


def length_adaptive_average_lagging(
    delays: Sequence[float], source_length: float, target_length: int
) -> float:
    """LAAL (Papi et al., 2022): AL with |Y| = max(reference length, hypothesis length)."""
    return average_lagging(delays, source_length, max(len(delays), target_length))


def average_proportion(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """AP (Cho & Esipova, 2016): ``sum(D) / (|X| |Y|)``."""
    return sum(delays) / (source_length * target_length)


def differentiable_average_lagging(delays: Sequence[float], source_length: float) -> float:
    """DAL (Arivazhagan et al., 2019), |Y| = number of outputs."""
    gamma = len(delays) / source_length  # (divisions by gamma as SimulEval: same round-off)
    total, prev = 0.0, 0.0
    for i, d in enumerate(delays):
        prev = d if i == 0 else max(d, prev + 1 / gamma)
        total += prev - i / gamma
    return total / len(delays)


def average_token_delay(
    delays: Sequence[float],
    compute_ms: Sequence[float] | None = None,
    durations: Sequence[float] | None = None,
) -> float:
    """ATD (Kano et al., 2023) for speech input, as SimulEval 1.1.4 computes it.

    delays: per output (word, or audio segment when ``durations`` is given), non-decreasing.
    compute_ms: compute time spent *for* each output (increments, not cumulative); None: zeros.
    durations: audio segment lengths (ms) for speech output; None: text output.

    Outputs with equal delays form a chunk; chunk k reads the source between the previous delay
    and its own, cut into 300 ms source tokens (plus a shorter remainder). Text words are target
    tokens of length 0; speech chunks are cut into 300 ms target tokens, each carrying an equal
    share of the chunk's compute. Target token t ends at ``max(delay, end_{t-1}) + length +
    compute``; it is matched to source token ``s = min(t - max(0, Y_<k - X_<k), X_<=k)`` (token
    counts before/through its chunk) and ATD is the mean of ``end_t - source_end_s``.
    """
    n = len(delays)
    compute_ms = [0.0] * n if compute_ms is None else list(compute_ms)
    chunks: list[list[int]] = []  # output indices per chunk (consecutive equal delays)
    for i, d in enumerate(delays):
        if chunks and delays[chunks[-1][0]] == d:
            chunks[-1].append(i)
        else:
            chunks.append([i])

    def split(length: float) -> list[float]:  # 300 ms tokens and the remainder, as SimulEval
        count, rest = divmod(length, ATD_TOKEN_MS)
        return [ATD_TOKEN_MS] * int(count) + ([rest] if rest != 0 else [])

    src_end, src_count = [0.0], []  # source token end times (src_end[0] = 0), tokens per chunk
    tgt: list[tuple[int, float, float, float]] = []  # (chunk, delay, length, compute) per token
    prev_delay = 0.0
    for k, members in enumerate(chunks):
        delay = delays[members[0]]
        tokens = split(delay - prev_delay)
        prev_delay = delay
        for length in tokens:
            src_end.append(src_end[-1] + length)
        src_count.append(len(tokens))
        if durations is None:
            tgt += [(k, delay, 0.0, compute_ms[i]) for i in members]
        else:
            duration, compute = durations[members[0]], compute_ms[members[0]]
            for i in members[1:]:
                duration += durations[i]
                compute += compute_ms[i]
            pieces = split(duration)
            tgt += [(k, delay, length, compute / len(pieces)) for length in pieces]

    tgt_count = [0] * len(chunks)
    for k, *_ in tgt:
        tgt_count[k] += 1
    src_before = [sum(src_count[:k]) for k in range(len(chunks))]
    tgt_before = [sum(tgt_count[:k]) for k in range(len(chunks))]
    lags, end = [], 0.0
    for t, (k, delay, length, compute) in enumerate(tgt, 1):
        end = max(delay, end) + length + compute
        s = t - max(0, tgt_before[k] - src_before[k])
        s = min(s, src_before[k] + src_count[k])
        lags.append(end - src_end[s])
    return float(statistics.mean(lags))


def playback_intervals(
    delays: Sequence[float], durations: Sequence[float]
) -> tuple[list[list[float]], list[float]]:
    """Played timeline of speech output, as SimulEval's ``SpeechOutputInstance.summarize``:
    segment i starts at ``max(delay_i, end of segment i-1)``. Returns ``[[start, duration], ...]``
    and the silences (ms) inserted before segments that had to wait for their delay."""
    intervals: list[list[float]] = []
    silences: list[float] = []
    prev_end = delays[0] if delays else 0.0
    for delay, duration in zip(delays, durations, strict=True):
        start = max(prev_end, delay)
        if start > prev_end:
            silences.append(start - prev_end)
        intervals.append([start, duration])
        prev_end = start + duration
    return intervals, silences


# --------------------------------------------------------------------------------------------
# One instance
# --------------------------------------------------------------------------------------------


@dataclass
class InstanceLog:
    """What an agent emitted for one source utterance, with timings (all in ms).

    Fill it while streaming::

        log = InstanceLog(source_length_ms=1000 * n_samples / 16000, reference=ref, index=i)
        ...  # after each source chunk, with the source consumed so far and the compute so far
        log.add_text("new words", delay_ms=consumed_ms, compute_ms=compute_so_far_ms)
        log.add_audio(len(new_pcm), 16000, delay_ms=consumed_ms, compute_ms=compute_so_far_ms)
        ...
        log.finish(compute_ms=total_compute_ms)  # includes compute after the last emission

    ``compute_ms`` is *cumulative* compute time spent on this instance (e.g. sum of
    ``time.perf_counter()`` differences around the agent's calls); ``elapsed = delay + compute``.
    """

    source_length_ms: float
    reference: str | None = None
    index: int = 0
    source: str | None = None  # source audio path (informational)
    words: list[str] = field(default_factory=list)
    word_delays_ms: list[float] = field(default_factory=list)
    word_elapsed_ms: list[float] = field(default_factory=list)
    segment_durations_ms: list[float] = field(default_factory=list)
    segment_delays_ms: list[float] = field(default_factory=list)
    segment_elapsed_ms: list[float] = field(default_factory=list)
    prediction_wav: str | None = None  # where the output audio was written (informational)
    compute_ms: float = 0.0  # total compute time for this instance

    # -- filling ------------------------------------------------------------------------------
    def add_text(self, text: str | Sequence[str], delay_ms: float, compute_ms: float) -> None:
        """Append target words emitted after ``delay_ms`` of source, ``compute_ms`` of compute
        (cumulative). A string is split on whitespace, as SimulEval does with word latency."""
        words = text.split() if isinstance(text, str) else [w for w in text if w]
        self.words += words
        self.word_delays_ms += [float(delay_ms)] * len(words)
        self.word_elapsed_ms += [float(delay_ms) + float(compute_ms)] * len(words)
        self.compute_ms = max(self.compute_ms, float(compute_ms))

    def add_audio(
        self, num_samples: int, sample_rate: int, delay_ms: float, compute_ms: float
    ) -> None:
        """Append an output audio segment of ``num_samples`` at ``sample_rate`` (empty segments
        are ignored, as SimulEval does)."""
        if num_samples <= 0:
            return
        self.segment_durations_ms.append(1000 * num_samples / sample_rate)
        self.segment_delays_ms.append(float(delay_ms))
        self.segment_elapsed_ms.append(float(delay_ms) + float(compute_ms))
        self.compute_ms = max(self.compute_ms, float(compute_ms))

    def finish(self, compute_ms: float) -> None:
        """Record the total compute time of the instance (needed for ``compute_RTF``)."""
        self.compute_ms = max(self.compute_ms, float(compute_ms))

    # -- views --------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def reference_length(self) -> int | None:
        """Reference words as SimulEval counts them (``len(reference.split(" "))``)."""
        return None if self.reference is None else len(self.reference.split(" "))

    def delays(self, output: Output, computation_aware: bool = False) -> list[float]:
        """Per-output delays (``computation_aware``: elapsed) of the text or speech output."""
        if output == "text":
            return self.word_elapsed_ms if computation_aware else self.word_delays_ms
        if output == "speech":
            return self.segment_elapsed_ms if computation_aware else self.segment_delays_ms
        raise ValueError(f"output must be 'text' or 'speech', not {output!r}")

    def intervals(self) -> tuple[list[list[float]], list[float]]:
        """Speech output as played: ``[[start_ms, duration_ms], ...]`` and silences (ms)."""
        return playback_intervals(self.segment_delays_ms, self.segment_durations_ms)

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` on timings no simultaneous agent can produce (see module doc)."""
        where = f"instance {self.index}"
        if not (math.isfinite(self.source_length_ms) and self.source_length_ms > 0):
            raise ValueError(f"{where}: source_length_ms must be > 0, got {self.source_length_ms}")
        if len(self.words) != len(self.word_delays_ms):
            raise ValueError(f"{where}: {len(self.words)} words, {len(self.word_delays_ms)} delays")
        n_seg = len(self.segment_delays_ms)
        if len(self.segment_durations_ms) != n_seg:
            raise ValueError(f"{where}: {n_seg} segment delays, but durations for another count")
        if any(not (d > 0 and math.isfinite(d)) for d in self.segment_durations_ms):
            raise ValueError(f"{where}: audio segment durations must be > 0 ms")
        for kind, delays, elapsed in (
            ("word", self.word_delays_ms, self.word_elapsed_ms),
            ("segment", self.segment_delays_ms, self.segment_elapsed_ms),
        ):
            _check_delays(f"{where}: {kind} delays", delays, self.source_length_ms)
            if not elapsed:
                continue
            if len(elapsed) != len(delays):
                raise ValueError(f"{where}: {len(elapsed)} {kind} elapsed for {len(delays)} delays")
            if any(not math.isfinite(e) for e in elapsed):
                raise ValueError(f"{where}: {kind} elapsed times must be finite")
            if any(e < d - _EPS_MS for e, d in zip(elapsed, delays, strict=True)):
                raise ValueError(f"{where}: {kind} elapsed < delay (compute time is negative)")
            if any(b < a for a, b in itertools.pairwise(elapsed)):
                raise ValueError(f"{where}: {kind} elapsed times are not monotonic")

    # -- SimulEval's instances.log ------------------------------------------------------------
    def to_simuleval(self, output: Output) -> dict:
        """One ``instances.log`` record, as SimulEval 1.1.4's ``summarize()`` writes it (plus
        ``compute_ms``). Speech records keep ``elapsed`` (SimulEval 1.1.4 writes ``[]`` there,
        losing the computation-aware information)."""
        info = {"index": self.index, "reference": self.reference}
        info["source"] = self.source
        info["source_length"] = self.source_length_ms
        if output == "text":
            info |= {
                "prediction": self.text,
                "delays": self.word_delays_ms,
                "elapsed": self.word_elapsed_ms,
                "prediction_length": len(self.words),
            }
        elif output == "speech":
            intervals, silences = self.intervals()
            info |= {
                "prediction": self.prediction_wav or "",
                "delays": self.segment_delays_ms,
                "durations": self.segment_durations_ms,
                "prediction_offset": (
                    self.segment_delays_ms[0] if self.segment_delays_ms else self.source_length_ms
                ),
                "elapsed": self.segment_elapsed_ms,
                "intervals": intervals,
                "prediction_length": (sum(self.segment_durations_ms) + sum(silences)) / 1000,
            }
        else:
            raise ValueError(f"output must be 'text' or 'speech', not {output!r}")
        info["compute_ms"] = self.compute_ms
        return info

    @classmethod
    def from_simuleval(cls, info: dict) -> InstanceLog:
        """Read one ``instances.log`` record (text output, or speech output when it has
        ``durations``). Without ``compute_ms`` (SimulEval's own logs), total compute is taken as
        the last output's ``elapsed - delay`` (a lower bound)."""
        delays = [float(d) for d in info.get("delays", [])]
        elapsed = [float(e) for e in info.get("elapsed") or []]
        log = cls(
            source_length_ms=float(info["source_length"]),
            reference=info.get("reference"),
            index=int(info.get("index", 0)),
            source=info.get("source") if isinstance(info.get("source"), str) else None,
        )
        if "durations" in info:
            log.segment_delays_ms, log.segment_elapsed_ms = delays, elapsed
            log.segment_durations_ms = [float(d) for d in info["durations"]]
            log.prediction_wav = info.get("prediction") or None
        else:
            log.words = str(info.get("prediction", "")).split()
            log.word_delays_ms, log.word_elapsed_ms = delays, elapsed
        fallback = elapsed[-1] - delays[-1] if elapsed and delays else 0.0
        log.compute_ms = float(info.get("compute_ms", fallback))
        return log


def _check_delays(what: str, delays: Sequence[float], source_length: float) -> None:
    if any(not math.isfinite(d) or d < 0 for d in delays):
        raise ValueError(f"{what} must be finite and >= 0")
    for a, b in itertools.pairwise(delays):
        if b < a:
            raise ValueError(f"{what} are not monotonic ({a} then {b})")
    if delays and delays[-1] > source_length + _EPS_MS:
        raise ValueError(
            f"{what} go beyond the source ({delays[-1]} > {source_length} ms): an output cannot "
            "depend on source that has not been read"
        )


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def instance_latency(
    log: InstanceLog,
    output: Output = "text",
    computation_aware: bool = False,
    use_ref_len: bool = True,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Latency metrics of one instance (names as SimulEval's; no ``_CA`` suffix here).

    Raises ``ValueError`` if the instance has no output of that kind (latency is undefined), if
    ``computation_aware`` and it has no elapsed times, or if its timings are invalid.
    """
    log.validate()
    names = metrics or (TEXT_METRICS if output == "text" else SPEECH_METRICS)
    plain = log.delays(output)
    if not plain:
        raise ValueError(f"instance {log.index}: no {output} output, latency is undefined")
    delays = log.delays(output, computation_aware)
    if not delays:
        raise ValueError(
            f"instance {log.index}: no elapsed times for computation-aware {output} latency"
        )
    src = log.source_length_ms
    tgt = len(delays) if not use_ref_len or log.reference is None else log.reference_length
    intervals, silences = log.intervals() if output == "speech" else ([], [])
    end = intervals[-1][0] + intervals[-1][1] if intervals else delays[-1]

    def atd() -> float:
        compute = None
        if computation_aware:  # per-output compute increments, as SimulEval derives them
            spent = [e - d for e, d in zip(delays, plain, strict=True)]
            compute = [b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True)]
        durations = log.segment_durations_ms if output == "speech" else None
        return average_token_delay(plain, compute, durations)

    table = {
        "AL": lambda: average_lagging(delays, src, tgt),
        "LAAL": lambda: length_adaptive_average_lagging(delays, src, tgt),
        "AP": lambda: average_proportion(delays, src, tgt),
        "DAL": lambda: differentiable_average_lagging(delays, src),
        "ATD": atd,
        "StartOffset": lambda: delays[0],
        "EndOffset": lambda: end - src,
        "NumChunks": lambda: len(delays),
        "RTF": lambda: end / src,
        "DiscontinuitySum": lambda: sum(silences),
        "DiscontinuityAve": lambda: sum(silences) / len(silences) if silences else 0,
        "DiscontinuityNum": lambda: len(silences),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown latency metrics {unknown}; known: {list(table)}")
    return {name: table[name]() for name in names}


def corpus_latency(
    logs: Iterable[InstanceLog],
    output: Output = "text",
    computation_aware: bool = True,
    use_ref_len: bool = True,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Corpus latency: each metric averaged over instances (SimulEval's ``scores.tsv``), the
    computation-aware ones as ``NAME_CA`` when ``computation_aware``, plus ``compute_RTF``.

    Instances without output are skipped with a warning (as SimulEval); if none has output,
    ``ValueError``.
    """
    logs = list(logs)
    scored = []
    for log in logs:
        log.validate()
        if log.delays(output):
            scored.append(log)
        else:
            logger.warning("instance %s has no %s output: skipped in latency", log.index, output)
    if not scored:
        raise ValueError(f"no instance has {output} output: latency is undefined")
    names = list(metrics or (TEXT_METRICS if output == "text" else SPEECH_METRICS))
    variants = [False, True] if computation_aware else [False]
    result: dict[str, float] = {}
    for ca in variants:
        per = [instance_latency(g, output, ca, use_ref_len, names) for g in scored]
        for name in names:
            result[name + ("_CA" if ca else "")] = statistics.mean(p[name] for p in per)
    result["compute_RTF"] = compute_rtf(logs)
    return result


def compute_rtf(logs: Iterable[InstanceLog]) -> float:
    """Real compute real-time factor: total compute time / total source duration (< 1: faster
    than real time)."""
    logs = list(logs)
    if not logs:
        raise ValueError("compute_rtf: no instances")
    return sum(g.compute_ms for g in logs) / sum(g.source_length_ms for g in logs)


# --------------------------------------------------------------------------------------------
# SimulEval instances.log I/O
# --------------------------------------------------------------------------------------------


def write_instances_log(
    path: str | os.PathLike, logs: Iterable[InstanceLog], output: Output = "text"
) -> None:
    """Write SimulEval's ``instances.log`` (one JSON object per line). To score it with
    SimulEval itself, put it in a directory with ``config.yaml`` (see
    :func:`write_simuleval_output_dir`) and run ``simuleval --score-only --output DIR``."""
    with open(path, "w", encoding="utf-8") as f:
        for log in logs:
            f.write(json.dumps(log.to_simuleval(output), ensure_ascii=False) + "\n")


def read_instances_log(path: str | os.PathLike) -> list[InstanceLog]:
    """Read SimulEval's ``instances.log`` (ours or SimulEval's own)."""
    with open(path, encoding="utf-8") as f:
        return [InstanceLog.from_simuleval(json.loads(line)) for line in f if line.strip()]


def write_simuleval_output_dir(
    directory: str | os.PathLike, logs: Iterable[InstanceLog], output: Output = "text"
) -> Path:
    """``DIR/instances.log`` + ``DIR/config.yaml`` (speech input), the layout that
    ``simuleval --score-only --output DIR --latency-metrics AL ... [--computation-aware]``
    reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_instances_log(directory / "instances.log", logs, output)
    (directory / "config.yaml").write_text(f"source_type: speech\ntarget_type: {output}\n")
    return directory
