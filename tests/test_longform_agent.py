"""Long streams: sentence segmentation keeps every stage bounded; incremental == recompute;
batched streams that reset at different steps equal single runs; hard inputs."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers_models import assert_same_outputs, busy_model, speechlike
from torch.utils.flop_counter import FlopCounterMode

from echostream.bench.longstream import count_cpu_attention_flops
from echostream.streaming.core import IncrementalCore, TranslatorState
from echostream.streaming.segmenter import SegmenterConfig
from echostream.streaming.translator import StreamingTranslator

RATE = 16000


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def talk_layout(seconds: float, seed: int, burst=(1.0, 3.4), pause=(0.6, 1.6)):
    """Bursts of speechlike audio separated by digital-silence pauses, ``seconds`` long ->
    (pcm (N,), [(start s, end s) of each pause])."""
    rng = np.random.default_rng(seed)
    parts, pauses, total, k = [], [], 0, 0
    while total < seconds * RATE:
        b = speechlike(float(rng.uniform(*burst)), seed=seed * 1000 + k)
        p = np.zeros(int(RATE * rng.uniform(*pause)), np.float32)
        pauses.append(((total + len(b)) / RATE, (total + len(b) + len(p)) / RATE))
        parts += [b, p]
        total += len(b) + len(p)
        k += 1
    return np.concatenate(parts)[: int(seconds * RATE)], pauses


def talk(seconds: float, seed: int, burst=(1.0, 3.4), pause=(0.6, 1.6)) -> np.ndarray:
    return talk_layout(seconds, seed, burst, pause)[0]


_MODELS: dict = {}


def pause_model():
    """``busy_model`` whose two CTC heads also output blank on silence (so pauses are heard):
    their blank rows are set to the direction separating silence frames from speechlike ones
    (difference of the class means of the heads' inputs on a calibration stream)."""
    if "pause" in _MODELS:
        return _MODELS["pause"]
    model, vocoder = busy_model()
    pcm, silent = [], []
    for i in range(8):
        sp = speechlike(1.0 + 0.6 * (i % 3), seed=100 + i)
        pcm += [sp, np.zeros(int(RATE * (0.6 + 0.3 * (i % 3))), np.float32)]
        silent += [np.zeros(len(sp)), np.ones(len(pcm[-1]))]
    pcm, silent = np.concatenate(pcm), np.concatenate(silent)
    captured = {}
    hook = model.st_ctc.head.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        feats = model.encoder.features(torch.from_numpy(pcm))
        enc, enc_len = model.encoder(feats[None], torch.tensor([feats.shape[0]]))
        model.st_ctc(enc, enc_len)
        hook.remove()
        frames = enc.shape[1]
        is_silent = torch.tensor(
            [silent[min(len(silent) - 1, 640 * t + 320)] for t in range(frames)]
        )
        for head, x in ((model.asr_ctc, enc[0]), (model.st_ctc.head, captured["x"][0])):
            sil, sp = x[is_silent == 1].mean(0), x[is_silent == 0].mean(0)
            w = sil - sp
            head.proj.weight[0] = 20 * w
            head.proj.bias[0] = -20 * (w @ (sil + sp)) / 2
    _MODELS["pause"] = (model, vocoder)
    return model, vocoder


def run(model, vocoder, pcm, mode="incremental", chunk_ms=320, feed=5120, **kwargs):
    tr = StreamingTranslator(model, vocoder, chunk_ms=chunk_ms, mode=mode, **kwargs)
    for start in range(0, len(pcm), feed):
        tr.push(pcm[start : start + feed], RATE)
    tr.finish()
    return tr


VARIANTS = {
    "reset": SegmenterConfig(),
    "context+cap": SegmenterConfig(max_segment_s=3.0, context_frames=6),
    # the busy model gives EOS ~1e-13 (1.2e-13 to 2e-13 at the probed positions): a threshold
    # among those values makes the EOS rule fire at some writes and not at others
    "eos": SegmenterConfig(eos_threshold=1.5e-13, max_segment_tokens=20),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_segmented_incremental_equals_recompute(variant):
    model, vocoder = pause_model()
    pcm = talk(9.0, seed=1)
    seg = VARIANTS[variant]
    inc = run(model, vocoder, pcm, segmenter=seg)
    rec = run(model, vocoder, pcm, "recompute", segmenter=seg)
    # several sentences were closed before the end of the stream
    assert len(inc.segment_ends) >= 3 and inc.segment_ends[-2] < 9.0
    assert inc.segment_ends == rec.segment_ends
    assert inc.asr_ids == rec.asr_ids and inc.target_ids == rec.target_ids
    assert inc.units == rec.units and len(inc.units) > 0
    np.testing.assert_allclose(inc.output_audio(), rec.output_audio(), atol=1e-5)
    key = [(e.kind, e.time_s, e.ids, e.segment) for e in inc.events if e.kind != "audio"]
    assert key == [(e.kind, e.time_s, e.ids, e.segment) for e in rec.events if e.kind != "audio"]
    texts = [e for e in inc.events if e.kind == "text"]
    assert {e.segment for e in texts} >= {0, 1, 2}
    # an event carries its sentence; per sentence the deltas add up to its last text, and the
    # sentences joined are the translation
    sentences = {}
    for e in texts:
        assert e.text == sentences.get(e.segment, "") + e.delta
        sentences[e.segment] = e.text
    assert " ".join(sentences[s] for s in sorted(sentences)) == inc.translation


def test_closing_a_sentence_completes_its_last_word():
    """instance_log: a word is complete once followed by another in its sentence, or when its
    sentence closes (not when the next sentence's first text arrives)."""
    model, vocoder = pause_model()
    tr = run(model, vocoder, talk(9.0, seed=1))
    last = {}  # sentence -> its final text
    for e in tr.events:
        if e.kind == "text":
            last[e.segment] = e.text
    log = tr.instance_log()
    assert log.words == " ".join(last[s] for s in sorted(last)).split()
    checked, end = 0, 0
    for s in sorted(last):
        end += len(last[s].split())
        if s + 1 < len(tr.segment_ends) and last[s]:  # closed before the end of the stream
            # before: the next sentence's first text, or the end of the stream (both later)
            assert tr.segment_ends[s] < tr.segment_ends[-1]
            assert log.word_delays_ms[end - 1] == pytest.approx(1000 * tr.segment_ends[s])
            checked += 1
    assert checked >= 1


def test_the_eos_rule_closes_sentences_the_other_rules_do_not():
    model, vocoder = pause_model()
    pcm = talk(9.0, seed=1)
    no_eos = run(model, vocoder, pcm, segmenter=SegmenterConfig(max_segment_tokens=20))
    eos = run(model, vocoder, pcm, segmenter=VARIANTS["eos"])
    assert len(eos.segment_ends) > len(no_eos.segment_ends)
    # a sentence closed by EOS ends with a write (no pause: the CTC heads were still busy)
    writes = {e.time_s for e in eos.events if e.kind == "text"}
    extra = sorted(set(eos.segment_ends) - set(no_eos.segment_ends))
    assert extra and any(t in writes for t in extra)


def test_without_segmenter_a_short_utterance_is_unchanged_and_a_long_one_grows():
    model, vocoder = pause_model()
    short = speechlike(2.4, seed=1)
    on, off = (run(model, vocoder, short, segmenter=s) for s in (SegmenterConfig(), None))
    assert on.target_ids == off.target_ids and on.units == off.units and on.target_ids
    np.testing.assert_array_equal(on.output_audio(), off.output_audio())
    assert on.segment_ends == off.segment_ends == [len(short) / RATE]
    # on a long stream, the state of the unsegmented agent grows, the segmented one's does not
    pcm = talk(40.0, seed=2)
    sizes = {}
    for name, seg in (("on", SegmenterConfig()), ("off", None)):
        tr = StreamingTranslator(model, vocoder, segmenter=seg)
        sizes[name] = []
        for start in range(0, len(pcm), RATE * 10):
            tr.push(pcm[start : start + RATE * 10])
            sizes[name].append(tr.state_bytes())
    assert sizes["off"][-1] > 3 * sizes["off"][0]
    assert max(sizes["on"]) < sizes["off"][-1] / 2


def test_silence_after_a_sentence_is_not_translated():
    model, vocoder = pause_model()
    pcm = np.concatenate([speechlike(2.0, seed=3), np.zeros(RATE * 6, np.float32)])
    tr = run(model, vocoder, pcm)
    texts = [e for e in tr.events if e.kind == "text"]
    assert texts and len(tr.segment_ends) == 2  # closed at the pause, the end adds nothing
    assert tr.segment_ends[0] < 3.5 and all(e.time_s <= tr.segment_ends[0] for e in texts)
    assert tr.state.mt.mem_len.item() <= 20  # the empty segment keeps only its lead-in


def test_batched_streams_with_different_reset_times_equal_single_runs():
    model, vocoder = pause_model()
    seg = SegmenterConfig(max_segment_s=2.5, context_frames=5)
    core = IncrementalCore(model, vocoder, segmenter=seg)
    chunk = 5120
    pcms = [talk(7.0, seed=s, pause=(0.9, 1.4)) for s in (4, 5, 6)]

    def step(pcm_list, states, final=False):
        width = max(len(p) for p in pcm_list)
        pcm = torch.zeros(len(pcm_list), width)
        for j, p in enumerate(pcm_list):
            pcm[j, : len(p)] = torch.from_numpy(p)
        lengths = torch.tensor([len(p) for p in pcm_list])
        return core.step(pcm, lengths, TranslatorState.stack(states), final)

    singles = []
    for pcm in pcms:
        state, outs = core.init_state(1), []
        for start in range(0, len(pcm), chunk):
            out, state = step([pcm[start : start + chunk]], [state])
            outs += out
        out, state = step([np.zeros(0, np.float32)], [state], final=True)
        singles.append(outs + out)
    offsets = [0, 3, 7]  # streams 1 and 2 join later (stacked states)
    states = [core.init_state(1) for _ in pcms]
    got: list[list] = [[], [], []]
    steps = max(len(p) // chunk + 1 + o for p, o in zip(pcms, offsets, strict=True))
    for k in range(steps):
        live = [i for i in range(3) if k >= offsets[i] and (k - offsets[i]) * chunk < len(pcms[i])]
        if not live:
            continue
        pieces = [pcms[i][(k - offsets[i]) * chunk : (k - offsets[i] + 1) * chunk] for i in live]
        outs, batch = step(pieces, [states[i] for i in live])
        for j, i in enumerate(live):
            states[i] = batch.select([j])
            got[i].append(outs[j])
    for i in range(3):
        out, states[i] = step([np.zeros(0, np.float32)], [states[i]], final=True)
        got[i] += out
    ends = [[k for k, o in enumerate(g) if o.segment_end] for g in got]
    assert all(len(e) >= 3 for e in ends)
    assert len({tuple(e) for e in ends}) == 3  # the streams reset at different steps
    for i in range(3):
        assert [o.segment_end for o in got[i]] == [o.segment_end for o in singles[i]]
    assert_same_outputs(got, singles)


def test_history_off_keeps_nothing_but_the_current_sentence():
    model, vocoder = pause_model()
    pcm = talk(9.0, seed=1)
    full = run(model, vocoder, pcm)
    lean = StreamingTranslator(model, vocoder, history=False)
    events = []
    for start in range(0, len(pcm), 5120):
        events += lean.push(pcm[start : start + 5120])
    events += lean.finish()
    assert [e.ids for e in events] == [e.ids for e in full.events]
    assert lean.events == [] and lean.target_ids == [] and lean.audio == []
    # a text event carries the current sentence only
    last = {e.segment: e.text for e in events if e.kind == "text"}
    assert " ".join(last[s] for s in sorted(last)) == full.translation


# ---------------------------------------------------------------------------- long streams


def per_minute(values, times, minutes, fn):
    return [fn([v for v, t in zip(values, times, strict=True) if m * 60 <= t < (m + 1) * 60])
            for m in range(minutes)]  # fmt: skip


def stream_stats(model, vocoder, pcm, segmenter=SegmenterConfig(), count_flops=None, chunk=5120):  # noqa: B008
    """Per step: source time, FLOPs (0 where not counted: ``count_flops(step, start_s)`` says
    where; FlopCounterMode makes a step ~10x slower), state bytes, new target tokens, whether
    the sentence closed. Ends with the final (flush) step."""
    count_cpu_attention_flops()
    core = IncrementalCore(model, vocoder, segmenter=segmenter)
    state, rows = core.init_state(1), []
    for step, start in enumerate(range(0, len(pcm), chunk)):
        piece = torch.from_numpy(pcm[start : start + chunk])[None]
        counter = None
        if count_flops is not None and count_flops(step, start / RATE):
            counter = FlopCounterMode(display=False)
        if counter is not None:
            with counter:
                out, state = core.step(piece, torch.tensor([piece.shape[1]]), state)
        else:
            out, state = core.step(piece, torch.tensor([piece.shape[1]]), state)
        flops = counter.get_total_flops() if counter is not None else 0
        end = (start + piece.shape[1]) / RATE
        rows.append((end, flops, state.nbytes(), len(out[0].target_ids), out[0].segment_end))
    out, state = core.step(torch.zeros(1, 0), torch.zeros(1, dtype=torch.long), state, final=True)
    rows.append((len(pcm) / RATE, 0, state.nbytes(), len(out[0].target_ids), out[0].segment_end))
    return rows


HARD = {
    "silence": lambda n, g: np.zeros(n, np.float32),
    "white_noise": lambda n, g: (0.3 * g.standard_normal(n)).astype(np.float32),
    "pure_tone": lambda n, g: (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(
        np.float32
    ),
    "clipping": lambda n, g: np.clip(20 * talk(n / RATE, seed=7), -1, 1).astype(np.float32),
    "cut_mid_word": lambda n, g: speechlike(n / RATE + 0.2, seed=8)[: n - 1234],
}


def state_bytes_bound(model, segmenter: SegmenterConfig, chunk_frames: int = 8) -> int:
    """The most bytes a one-stream TranslatorState can hold under ``segmenter``: the fixed-size
    parts (encoder, ST CTC decoder, vocoder: those of a fresh state) plus, per segment, at most
    ``max_frames + one step + lead-in + context`` memory frames and CTC tokens, and
    ``max_segment_tokens`` target positions (+ a tentative one and the EOS position) through the
    MT decoder, T2U and the unit decoder (× upsample rate unit frames and units)."""
    core = IncrementalCore(model, None, segmenter=segmenter)
    rules, cfg = core.rules, model.cfg
    fixed = IncrementalCore(model, busy_model()[1], segmenter=segmenter).init_state(1).nbytes()
    frames = rules.max_frames + chunk_frames + rules.lead_frames + rules.context_frames
    positions = rules.max_tokens + 2
    kv = {name: 2 * 4 * c.num_layers * c.d_model
          for name, c in (("mt", cfg.mt_decoder), ("t2u", cfg.t2u_encoder),
                          ("units", cfg.unit_decoder))}  # fmt: skip
    rate = cfg.unit_decoder.upsample_rate
    return (
        fixed
        + kv["mt"] * (frames + positions)
        + kv["t2u"] * positions
        + kv["units"] * (positions * rate + positions)
        + 8 * (2 * frames + positions + positions * rate)  # ASR, ST, target and unit ids
    )


def check_hard_input(kind: str, seconds: float, segmenter=SegmenterConfig()):  # noqa: B008
    """Run a hard input through the pause model (ending with a flush): returns the tokens and
    the per-step rows after checking the runaway guard and that the state stays bounded."""
    model, vocoder = pause_model()
    pcm = HARD[kind](int(seconds * RATE), np.random.default_rng(0))
    rows = stream_stats(model, vocoder, pcm, segmenter)
    tokens = sum(r[3] for r in rows)
    segments = sum(r[4] for r in rows)
    # runaway guard: a segment has at most a·(its memory frames) + b tokens; its memory holds
    # its source frames plus at most a lead-in (20 frames) and the carried context (0)
    frames = len(pcm) / RATE * 25
    assert tokens <= 0.5 * (frames + 20 * segments) + 10 * segments, (kind, tokens, segments)
    assert tokens / seconds <= 20, (kind, tokens / seconds)
    # state bytes bounded by the segment limits, whatever the input and the stream's length
    bound = state_bytes_bound(model, segmenter)
    assert max(r[2] for r in rows) <= bound, (kind, max(r[2] for r in rows), bound)
    return tokens, rows


@pytest.mark.parametrize("kind", list(HARD))
def test_hard_input_30s(kind):
    check_hard_input(kind, 30.0)


def test_silence_from_the_start_yields_nothing_when_unheard_segments_are_skipped():
    tokens, rows = check_hard_input("silence", 30.0, SegmenterConfig(decode_unheard=False))
    assert tokens == 0 and rows[-1][2] == rows[len(rows) // 2][2]


def test_the_state_bound_is_tight_enough_to_fail_without_segmentation():
    model, vocoder = pause_model()
    bound = state_bytes_bound(model, SegmenterConfig())
    tr = StreamingTranslator(model, vocoder, segmenter=None)
    tr.push(talk(40.0, seed=2))
    assert tr.state_bytes() > bound


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(HARD))
def test_hard_input_5min(kind):
    check_hard_input(kind, 300.0)


@pytest.mark.slow
def test_ten_minute_talk_runs_at_constant_cost_and_state():
    """The same minute of talk (bursts and pauses) ten times: with every stage bounded, minute
    10 costs and holds what minute 1 did (without segmentation the state and the per-step
    cost would grow with every minute, see the test above and docs/longform.md)."""
    model, vocoder = pause_model()
    pcm = np.tile(talk(60.0, seed=11, pause=(0.6, 2.0)), 10)
    # 300 ms steps (200 a minute: minute m is steps 200m … 200m + 199, the same audio); FLOPs
    # of every 4th step of minutes 1 and 10
    rows = stream_stats(
        model,
        vocoder,
        pcm,
        count_flops=lambda k, t: k % 4 == 0 and (t < 60 or t >= 540),
        chunk=4800,
    )
    rows = rows[:-1]  # the flush is not a minute-10 step
    times = [r[0] for r in rows]
    counted = [(r[1], r[0]) for k, r in enumerate(rows) if k % 4 == 0]
    flops = per_minute(*zip(*counted, strict=True), 10, lambda v: np.mean(v) if v else 0.0)
    peak = per_minute([r[2] for r in rows], times, 10, max)
    tokens = per_minute([r[3] for r in rows], times, 10, sum)
    ends = per_minute([int(r[4]) for r in rows], times, 10, sum)
    kb, mflops = [round(p / 1024, 1) for p in peak], [round(f / 1e6, 2) for f in flops]
    print(f"\nper minute: state KB max {kb}, MFLOP/step {mflops}, tokens {tokens}, ends {ends}")
    assert peak[9] <= peak[0] + 8192, peak
    assert max(peak) <= peak[0] + 8192, peak
    assert flops[0] > 0 and flops[9] / flops[0] < 1.2, flops
    assert min(tokens) > 0, tokens
    assert min(ends) >= 1, ends


def test_segmenter_config_errors():
    model, vocoder = pause_model()
    for bad in (
        SegmenterConfig(pause_ms=0),
        SegmenterConfig(max_segment_s=-1),
        SegmenterConfig(eos_threshold=1.5),
        SegmenterConfig(context_frames=-2),
    ):
        with pytest.raises(ValueError, match="SegmenterConfig"):
            StreamingTranslator(model, vocoder, segmenter=bad)
    assert dataclasses.asdict(SegmenterConfig.off())["pause_ms"] is None


@pytest.mark.slow
def test_compare_segmentation_variants():
    """The measured comparison of docs/longform.md (``pytest -s`` prints the table): a 2-minute
    talk with known pauses through the pause-hearing random model, per variant."""
    model, vocoder = pause_model()
    seconds = 120.0
    pcm, pauses = talk_layout(seconds, seed=21, pause=(0.4, 2.0))
    variants = {
        "off (one segment)": None,
        "a: reset": SegmenterConfig(),
        "b: reset + 1 s context": SegmenterConfig(context_frames=25),
        "c: fixed 5 s segments": SegmenterConfig(pause_ms=None, max_segment_s=5.0),
    }
    long_pauses = [p for p in pauses if p[1] - p[0] >= 0.8 + 0.32 and p[1] < seconds]
    print(
        "\n| variant | sentences closed | in a pause | long pauses closed | delay after pause "
        "start (s) | tokens/s | state KB max | MFLOP/step mean | max |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    stats = {}
    for name, seg in variants.items():
        rows = stream_stats(model, vocoder, pcm, seg, lambda k, t: k % 5 == 0)[:-1]
        closes = [r[0] for r in rows if r[4]]
        in_pause = [t for t in closes if any(a <= t <= b + 0.32 for a, b in pauses)]
        found = [p for p in long_pauses if any(p[0] <= t <= p[1] + 0.32 for t in closes)]
        delays = [min(t - a for t in closes if a <= t <= b + 0.32) for a, b in found]
        flops = [r[1] for k, r in enumerate(rows) if k % 5 == 0]
        stats[name] = dict(closes=len(closes), state=max(r[2] for r in rows), flops=flops)
        print(f"| {name} | {len(closes)} | {len(in_pause)} | {len(found)}/{len(long_pauses)} "
              f"| {np.mean(delays) if delays else float('nan'):.2f} "
              f"| {sum(r[3] for r in rows) / seconds:.1f} | {stats[name]['state'] / 1024:.0f} "
              f"| {np.mean(flops) / 1e6:.2f} | {max(flops) / 1e6:.1f} |")  # fmt: skip
    a, b = stats["a: reset"], stats["b: reset + 1 s context"]
    off = stats["off (one segment)"]
    assert off["closes"] == 0 and a["closes"] >= len(long_pauses) // 2
    assert off["state"] > 4 * a["state"]
    assert b["state"] >= a["state"]  # the carried frames cost memory


def test_longstream_bench_writes_its_results(tmp_path):
    import json

    from echostream.bench import longstream

    out = tmp_path / "ls"
    argv = ["--minutes", "0.1", "--flops-every", "100", "--pause", "0.5", "0.5", "--out", str(out)]
    assert longstream.main(argv) == 0
    result = json.loads((out / "longstream.json").read_text())
    (row,) = result["minutes"]
    assert result["complete"] and row["steps"] == 19 and row["state_kb"] > 0
    assert row["step_mflops_mean"] > 0 and row["rss_mb"] > 0
    assert (out / "longstream.png").stat().st_size > 0
    assert (out / "longstream.md").read_text().count("\n") == 3
    with pytest.raises(SystemExit):
        longstream.main(["--minutes", "0", "--out", str(out)])


def test_trailing_blanks_chained_equals_whole():
    from echostream.models.ctc import trailing_blanks

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 5, generator=g)
    logits[:, :, 0] += torch.where(torch.rand(3, 40, generator=g) < 0.7, 5.0, -5.0)
    lengths = torch.tensor([40, 31, 0])
    whole = trailing_blanks(logits, lengths, torch.zeros(3, dtype=torch.long))
    classes = logits.argmax(-1)
    for b in range(3):  # reference: count from the end of the valid frames
        run = 0
        for t in reversed(range(int(lengths[b]))):
            if classes[b, t] != 0:
                break
            run += 1
        assert int(whole[b]) == run
    run = torch.zeros(3, dtype=torch.long)
    for a, b in ((0, 7), (7, 7), (7, 25), (25, 40)):
        part = (lengths - a).clamp(min=0, max=b - a)
        run = trailing_blanks(logits[:, a:b], part, run)
    assert run.tolist() == whole.tolist()


def test_restarted_decoder_states_equal_fresh_ones():
    """After restart/memory_tail, the MT decoder, T2U and unit decoder compute exactly what fresh
    states fed the same (kept) inputs compute — per stream, in a batch."""
    model, _ = busy_model()
    dec, t2u, units = model.mt_decoder, model.t2u, model.unit_decoder
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(2, 12, 32, generator=g)
    enc_len = torch.tensor([12, 9])
    state = dec.extend_memory(enc, enc_len, dec.init_state(2))
    _, hidden, state = dec.stream(torch.tensor([[2, 5, 6], [2, 7, 0]]), torch.tensor([3, 2]), state)
    restart = torch.tensor([True, False])
    keep = torch.where(restart, 4, state.mem_len)
    cut = state.restart_tokens(restart).memory_tail(keep)
    assert cut.mem_len.tolist() == [4, 9] and cut.num_tokens.tolist() == [0, 2]
    tokens, tok_len = torch.tensor([[2, 8], [9, 4]]), torch.tensor([2, 2])
    got, got_hidden, _ = dec.stream(tokens, tok_len, cut)
    fresh = dec.extend_memory(enc[:1, 8:12], torch.tensor([4]), dec.init_state(1))
    want, _, _ = dec.stream(tokens[:1], tok_len[:1], fresh)
    torch.testing.assert_close(got[:1], want, atol=1e-5, rtol=0)
    stream1 = state.select([1])
    want1, _, _ = dec.stream(tokens[1:], tok_len[1:], stream1)
    torch.testing.assert_close(got[1:], want1, atol=1e-5, rtol=0)
    # T2U and unit decoder: a restarted stream restarts at position / frame 0
    h_len = torch.tensor([3, 2])
    _, _, t_state = t2u.stream(hidden, h_len, t2u.init_state(2))
    _, _, u_state = units.stream(hidden, h_len, units.init_state(2))
    t_state, u_state = t_state.restart(restart), u_state.restart(restart, units.rate)
    assert t_state.length.tolist() == [0, 2] and u_state.num_positions.tolist() == [0, 2]
    new = got_hidden
    out, _, _ = t2u.stream(new, tok_len, t_state)
    torch.testing.assert_close(out[:1], t2u.stream(new[:1], tok_len[:1], t2u.init_state(1))[0])
    logits, _, _ = units.stream(new, tok_len, u_state)
    first = units.stream(new[:1], tok_len[:1], units.init_state(1))[0]
    torch.testing.assert_close(logits[:1], first, atol=1e-5, rtol=0)
