"""Latency metrics: hand-worked golden values, SimulEval 1.1.4 equality, log I/O, error paths."""

from __future__ import annotations

import json
import logging
import random

import pytest

from echostream.evaluation.latency import (
    SPEECH_METRICS,
    TEXT_METRICS,
    InstanceLog,
    average_lagging,
    average_token_delay,
    compute_rtf,
    corpus_latency,
    differentiable_average_lagging,
    instance_latency,
    length_adaptive_average_lagging,
    read_instances_log,
    write_instances_log,
    write_simuleval_output_dir,
)

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-9)  # noqa: E731


def text_log(reference: str = "a b c d") -> InstanceLog:
    """1000 ms of source; "I" after 200 ms, "am" after 400, "here now" at the end of source;
    cumulative compute 50, 80, 200 ms at those emissions, 260 ms in all."""
    log = InstanceLog(source_length_ms=1000.0, reference=reference)
    log.add_text("I", delay_ms=200, compute_ms=50)
    log.add_text("am", delay_ms=400, compute_ms=80)
    log.add_text("here now", delay_ms=1000, compute_ms=200)
    log.finish(compute_ms=260)
    return log


def speech_log() -> InstanceLog:
    """2000 ms of source, reference of 3 words; audio segments of 500 and 300 ms emitted after
    640 ms of source (compute 100 then 150 ms), 1000 ms emitted at the end (compute 400 ms)."""
    log = InstanceLog(source_length_ms=2000.0, reference="one two three")
    log.add_audio(8000, 16000, delay_ms=640, compute_ms=100)
    log.add_audio(0, 16000, delay_ms=640, compute_ms=120)  # empty: ignored, as SimulEval
    log.add_audio(4800, 16000, delay_ms=640, compute_ms=150)
    log.add_audio(16000, 16000, delay_ms=2000, compute_ms=400)
    return log


# ---------------------------------------------------------------------------- golden values


def test_text_golden():
    # D = [200, 400, 1000, 1000], |X| = 1000, |Y| = 4 reference words, n = 4.
    m = instance_latency(text_log(), "text")
    # AL: |X|/|Y| = 250; 200 - 0, 400 - 250, 1000 - 500 (D_3 = |X|: tau = 3) -> 850 / 3.
    assert m["AL"] == approx(850 / 3)
    assert m["LAAL"] == approx(850 / 3)  # max(|Y|, n) = 4: same as AL
    assert m["AP"] == approx(2600 / 4000)  # sum(D) / (|X| |Y|)
    # DAL: D' = 200, max(400, 450) = 450, max(1000, 700) = 1000, max(1000, 1250) = 1250;
    # minus 0, 250, 500, 750 -> (200 + 200 + 500 + 500) / 4.
    assert m["DAL"] == approx(350.0)
    # ATD: source chunks 200 | 200 | 600 -> tokens ending 200 | 400 | 700, 1000; words (length 0)
    # end at 200, 400, 1000, 1000 and map to source tokens 1, 2, 3, 4 -> lags 0, 0, 300, 0.
    assert m["ATD"] == approx(75.0)
    assert (m["StartOffset"], m["EndOffset"], m["NumChunks"], m["RTF"]) == (200, 0, 4, 1.0)


def test_text_golden_computation_aware():
    # elapsed = delay + compute = [250, 480, 1200, 1200].
    m = instance_latency(text_log(), "text", computation_aware=True)
    # AL: 250 - 0, 480 - 250, 1200 - 500 (>= |X|: tau = 3) -> 1180 / 3.
    assert m["AL"] == approx(1180 / 3)
    assert m["AP"] == approx(3130 / 4000)
    # DAL: D' = 250, max(480, 500), max(1200, 750), max(1200, 1450) = 250, 500, 1200, 1450;
    # minus 0, 250, 500, 750 -> 1900 / 4.
    assert m["DAL"] == approx(475.0)
    # ATD: compute increments 50, 30, 120, 0; word ends max(D, prev) + compute = 250, 430, 1120,
    # 1120 against source tokens ending 200, 400, 700, 1000 -> 50 + 30 + 420 + 120 = 620, / 4.
    assert m["ATD"] == approx(155.0)
    assert (m["StartOffset"], m["EndOffset"], m["RTF"]) == (250, 200, 1.2)
    assert compute_rtf([text_log()]) == approx(0.26)  # 260 ms of compute for 1 s of source


def test_over_generation_al_vs_laal():
    # Reference of 2 words, 4 output words: AL uses |X|/|Y| = 500: 200, 400 - 500, 1000 - 1000
    # -> 100 / 3; LAAL uses max(2, 4) = 4 words -> the 850 / 3 of the 4-word case.
    m = instance_latency(text_log("a b"), "text")
    assert m["AL"] == approx(100 / 3)
    assert m["LAAL"] == approx(850 / 3)
    assert m["AP"] == approx(2600 / 2000)  # AP divides by the *reference* length (SimulEval)
    # use_ref_len=False: |Y| = n = 4, as with a 4-word reference.
    assert instance_latency(text_log("a b"), "text", use_ref_len=False)["AL"] == approx(850 / 3)
    assert instance_latency(text_log(None), "text")["AL"] == approx(850 / 3)


def test_speech_golden():
    # Segments (delay, duration): (640, 500), (640, 300), (2000, 1000); |X| = 2000, |Y| = 3.
    log = speech_log()
    # Played: 640-1140, 1140-1440, then waits for 2000 (560 ms of silence), 2000-3000.
    assert log.intervals() == ([[640, 500], [1140, 300], [2000, 1000]], [560])
    m = instance_latency(log, "speech")
    # AL: |X|/|Y| = 2000/3; 640 + (640 - 2000/3) + (2000 - 4000/3) = 1280, tau = 3.
    assert m["AL"] == approx(1280 / 3)
    assert m["LAAL"] == approx(1280 / 3)
    assert m["AP"] == approx(3280 / 6000)
    # DAL (n = 3): D' = 640, max(640, 640 + 2000/3), max(2000, 640 + 4000/3) = 2000;
    # 640 + 640 + (2000 - 4000/3) = 5840/3, / 3.
    assert m["DAL"] == approx(5840 / 9)
    # ATD: source tokens 300, 300, 40 | 300 x 4, 160 end at 300, 600, 640 | 940, 1240, 1540,
    # 1840, 2000. Output chunks 800 ms -> 300, 300, 200 and 1000 ms -> 300 x 3, 100, ending at
    # 940, 1240, 1440 | 2300, 2600, 2900, 3000; token t is matched to source token t:
    # 640 + 640 + 800 + 1360 + 1360 + 1360 + 1160 = 7320, / 7.
    assert m["ATD"] == approx(7320 / 7)
    assert (m["StartOffset"], m["EndOffset"], m["NumChunks"], m["RTF"]) == (640, 1000, 3, 1.5)
    assert (m["DiscontinuitySum"], m["DiscontinuityAve"], m["DiscontinuityNum"]) == (560, 560, 1)


def test_speech_golden_computation_aware():
    # elapsed = [740, 790, 2400]; compute increments 100, 50, 250.
    m = instance_latency(speech_log(), "speech", computation_aware=True)
    # AL: 740 + (790 - 2000/3) + (2400 - 4000/3) = 1930, / 3.
    assert m["AL"] == approx(1930 / 3)
    # ATD: chunk compute 150 spread over 3 tokens (50 each), 250 over 4 (62.5 each): ends 990,
    # 1340, 1590 | 2362.5, 2725, 3087.5, 3250 -> lags 690, 740, 950, 1422.5, 1485, 1547.5, 1410.
    assert m["ATD"] == approx(8245 / 7)
    # The played timeline is built from the plain delays (SimulEval): EndOffset unchanged.
    assert (m["StartOffset"], m["EndOffset"], m["RTF"]) == (740, 1000, 1.5)


def test_al_when_first_output_is_after_the_source():
    # Only the computation-aware delays can exceed |X|: AL is then D_1 itself.
    log = InstanceLog(source_length_ms=1000.0, reference="a b")
    log.add_text("a b", delay_ms=1000, compute_ms=300)
    assert instance_latency(log, "text")["AL"] == 1000  # D_1 = |X|: 1000 - 0, tau = 1
    assert instance_latency(log, "text", computation_aware=True)["AL"] == 1300
    assert average_lagging([1300, 1400], 1000, 2) == 1300
    assert length_adaptive_average_lagging([1300], 1000, 5) == 1300
    assert differentiable_average_lagging([100, 100], 1000) == approx((100 + 600 - 500) / 2)
    assert average_token_delay([300, 600]) == 0.0  # each word exactly when its 300 ms is read


def test_corpus_means_and_skips_empty(caplog):
    empty = InstanceLog(source_length_ms=500.0, reference="x", index=7)
    empty.finish(compute_ms=40)
    with caplog.at_level(logging.WARNING):
        scores = corpus_latency([text_log(), text_log("a b"), empty], "text")
    assert "instance 7 has no text output" in caplog.text
    assert scores["AL"] == approx((850 / 3 + 100 / 3) / 2)
    # AL_CA: 1180 / 3 (above) and, with |X|/|Y| = 500: 250, 480 - 500, 1200 - 1000 -> 430 / 3.
    assert scores["AL_CA"] == approx((1180 / 3 + 430 / 3) / 2)
    # compute RTF counts every instance: (260 + 260 + 40) / (1000 + 1000 + 500).
    assert scores["compute_RTF"] == approx(560 / 2500)
    assert set(corpus_latency([text_log()], "text", computation_aware=False)) == {
        "AL", "LAAL", "AP", "DAL", "ATD", "StartOffset", "EndOffset", "NumChunks", "RTF",
        "compute_RTF",
    }  # fmt: skip


# ---------------------------------------------------------------------------- error paths


def test_errors():
    with pytest.raises(ValueError, match="no text output"):
        instance_latency(InstanceLog(source_length_ms=1000.0, reference="a"), "text")
    with pytest.raises(ValueError, match="no instance has speech output"):
        corpus_latency([text_log()], "speech")
    bad = InstanceLog(source_length_ms=1000.0)
    bad.add_text("b", delay_ms=400, compute_ms=10)
    bad.add_text("a", delay_ms=200, compute_ms=20)
    with pytest.raises(ValueError, match="not monotonic"):
        instance_latency(bad, "text")
    late = InstanceLog(source_length_ms=1000.0)
    late.add_text("a", delay_ms=1200, compute_ms=0)
    with pytest.raises(ValueError, match="beyond the source"):
        corpus_latency([late], "text")
    negative = text_log()
    negative.word_elapsed_ms[0] = 100.0  # < its delay of 200
    with pytest.raises(ValueError, match="compute time is negative"):
        instance_latency(negative, "text", computation_aware=True)
    silent = speech_log()
    silent.segment_durations_ms[1] = 0.0
    with pytest.raises(ValueError, match="durations must be > 0"):
        instance_latency(silent, "speech")
    uneven = text_log()
    uneven.words.pop()
    with pytest.raises(ValueError, match="3 words, 4 delays"):
        instance_latency(uneven, "text")
    with pytest.raises(ValueError, match="source_length_ms must be > 0"):
        instance_latency(InstanceLog(source_length_ms=0.0), "text")
    with pytest.raises(ValueError, match="unknown latency metrics"):
        instance_latency(text_log(), "text", metrics=["AL", "BLEU"])
    with pytest.raises(ValueError, match="output must be"):
        instance_latency(text_log(), "audio")
    no_elapsed = text_log()
    no_elapsed.word_elapsed_ms = []
    with pytest.raises(ValueError, match="no elapsed times"):
        instance_latency(no_elapsed, "text", computation_aware=True)
    assert instance_latency(no_elapsed, "text")["AL"] == approx(850 / 3)


# ---------------------------------------------------------------------------- instances.log


def test_instances_log_round_trip(tmp_path):
    logs = [text_log(), text_log("a b")]
    write_instances_log(tmp_path / "text.log", logs, "text")
    assert read_instances_log(tmp_path / "text.log") == logs
    speech = speech_log()
    speech.prediction_wav = "wavs/0_pred.wav"
    speech.finish(compute_ms=420)
    write_instances_log(tmp_path / "speech.log", [speech], "speech")
    record = json.loads((tmp_path / "speech.log").read_text())
    assert record["intervals"] == [[640, 500], [1140, 300], [2000, 1000]]
    assert record["prediction_offset"] == 640
    assert record["prediction_length"] == pytest.approx(2.36)  # 1.8 s of audio + 0.56 s silence
    assert read_instances_log(tmp_path / "speech.log") == [speech]


def test_reads_simuleval_own_speech_record():
    # SimulEval 1.1.4 writes speech output with "elapsed": [] and no compute_ms.
    record = {
        "index": 3, "prediction": "/out/wavs/3_pred.wav", "delays": [640.0, 2000.0],
        "durations": [500.0, 1000.0], "prediction_offset": 640.0, "elapsed": [],
        "intervals": [[640.0, 500.0], [2000.0, 1000.0]], "prediction_length": 1.5,
        "source_length": 2000.0, "reference": "one two three", "source": "/in/3.wav",
    }  # fmt: skip
    log = InstanceLog.from_simuleval(record)
    assert (log.index, log.prediction_wav, log.compute_ms) == (3, "/out/wavs/3_pred.wav", 0.0)
    assert instance_latency(log, "speech")["EndOffset"] == 1000
    scores = corpus_latency([log], "speech", computation_aware=False)
    assert scores["StartOffset"] == 640
    with pytest.raises(ValueError, match="no elapsed times"):
        corpus_latency([log], "speech")


# ---------------------------------------------------------------------------- vs SimulEval


def random_logs(seed: int, output: str, n: int = 12) -> list[InstanceLog]:
    """Random but valid agent runs: chunks of 160-640 ms, emissions at some steps, compute
    time growing by 0-400 ms per step (so the computation-aware delays can pass the source)."""
    rng = random.Random(seed)
    logs = []
    for index in range(n):
        src = rng.choice([960.0, 2560.0, 4321.5, 7000.0])
        reference = " ".join(rng.choice("abcdefg") for _ in range(rng.randint(1, 15)))
        log = InstanceLog(source_length_ms=src, reference=reference, index=index)
        consumed = compute = 0.0
        while consumed < src or not log.delays(output):
            consumed = min(src, consumed + rng.choice([160, 320, 640]))
            compute += rng.uniform(0, 400)
            for _ in range(rng.choice([0, 0, 1, 2])):  # several emissions per step, sometimes
                if output == "text":
                    words = " ".join("w" for _ in range(rng.randint(1, 3)))
                    log.add_text(words, consumed, compute)
                else:
                    log.add_audio(rng.randint(1, 24000), 16000, consumed, compute)
                compute += rng.uniform(0, 30)
        log.finish(compute)
        logs.append(log)
    return logs


SIMULEVAL_INSTALL = "pip install --no-deps simuleval==1.1.4 pandas textgrid requests tornado"


def import_simuleval():
    """SimulEval 1.1.4's evaluator modules, or skip (it is an optional, test-only reference)."""
    try:
        from importlib.metadata import version

        from simuleval.evaluator import instance, scorers
    except ImportError as err:
        pytest.skip(f"SimulEval not importable ({err}); for this check: {SIMULEVAL_INSTALL}")
    if version("simuleval") != "1.1.4":
        pytest.skip(f"SimulEval {version('simuleval')} installed; these checks pin 1.1.4")
    return instance, scorers.latency_scorer


@pytest.fixture(scope="module")
def simuleval():
    return import_simuleval()


def simuleval_scores(scorer_module, instances, names, computation_aware, use_ref_len=True):
    table = scorer_module.LATENCY_SCORERS_DICT
    return {
        name: table[name](computation_aware=computation_aware, use_ref_len=use_ref_len)(instances)
        for name in names
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_equals_simuleval_scorers(simuleval, tmp_path, seed):
    instance, scorer = simuleval
    logs = random_logs(seed, "text")
    write_instances_log(tmp_path / "instances.log", logs, "text")
    with open(tmp_path / "instances.log") as f:  # SimulEval's --score-only reads it this way
        instances = {i: instance.LogInstance(line.strip()) for i, line in enumerate(f)}
    for use_ref_len in (True, False):
        ours = corpus_latency(logs, "text", True, use_ref_len)
        for ca in (False, True):
            theirs = simuleval_scores(scorer, instances, TEXT_METRICS, ca, use_ref_len)
            suffix = "_CA" if ca else ""
            assert {k: ours[k + suffix] for k in TEXT_METRICS} == theirs  # bit for bit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speech_equals_simuleval_scorers(simuleval, seed):
    instance, scorer = simuleval

    class InMemory(instance.SpeechToSpeechInstance):
        """SimulEval's speech-output instance after a run (what StreamSpeech scores)."""

        source_length = None  # a plain attribute instead of the audio-file property

        def __init__(self, log: InstanceLog):
            self.index, self.reference, self.metrics = log.index, log.reference, {}
            self.latency_unit, self.source_length = "word", log.source_length_ms
            self.delays, self.elapsed = log.segment_delays_ms, log.segment_elapsed_ms
            self.durations = log.segment_durations_ms
            self.intervals, self.silences = log.intervals()

    logs = random_logs(seed, "speech")
    ours = corpus_latency(logs, "speech")
    in_memory = {i: InMemory(g) for i, g in enumerate(logs)}
    from_log = {i: instance.LogInstance(json.dumps(g.to_simuleval("speech"))) for i, g in
                enumerate(logs)}  # fmt: skip
    for ca in (False, True):
        theirs = simuleval_scores(scorer, in_memory, SPEECH_METRICS, ca)
        assert {k: ours[k + ("_CA" if ca else "")] for k in SPEECH_METRICS} == theirs
        # Scored from instances.log, SimulEval treats speech like text in ATD and uses the
        # last delay in RTF; the other metrics are the same.
        common = ["AL", "LAAL", "AP", "DAL", "StartOffset", "EndOffset", "NumChunks"]
        theirs = simuleval_scores(scorer, from_log, common, ca)
        assert {k: ours[k + ("_CA" if ca else "")] for k in common} == theirs


def test_simuleval_score_only_reads_our_log(simuleval, tmp_path):
    from simuleval import options
    from simuleval.evaluator import SentenceLevelEvaluator

    logs = random_logs(5, "text", n=6)
    write_simuleval_output_dir(tmp_path, logs, "text")
    names = ["AL", "LAAL", "AP", "DAL", "ATD", "StartOffset", "EndOffset"]

    def score_only(*extra):  # what `simuleval --score-only --output DIR ...` computes
        parser = options.general_parser()
        options.add_evaluator_args(parser)
        options.add_scorer_args(parser)
        options.add_dataloader_args(parser)
        argv = ["--score-only", "--output", str(tmp_path), "--latency-metrics", *names]
        args = parser.parse_args([*argv, "--quality-metrics", "BLEU", *extra])
        return SentenceLevelEvaluator.from_args(args).results.to_dict("records")[0]

    ours = {k: round(v, 3) for k, v in corpus_latency(logs, "text").items()}
    plain = score_only()
    assert {k: plain[k] for k in names} == {k: ours[k] for k in names}
    # With --computation-aware, SimulEval 1.1.4 also makes its plain columns computation-aware
    # (from_args passes the flag to both scorers): only its _CA columns are meaningful.
    aware = score_only("--computation-aware")
    assert {k: aware[k + "_CA"] for k in names} == {k: ours[k + "_CA"] for k in names}
    assert aware["AL"] == aware["AL_CA"]
