"""The simultaneous agent: incremental == recompute (StreamSpeech's way), batching, events."""

import numpy as np
import pytest
import torch
from helpers_models import assert_same_outputs, busy_model, speechlike

from echostream.streaming.core import IncrementalCore, TranslatorState
from echostream.streaming.translator import StreamingTranslator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def run(model, vocoder, pcm, mode, chunk_ms, feed=5000, rate=16000):
    tr = StreamingTranslator(model, vocoder, chunk_ms=chunk_ms, mode=mode)
    for start in range(0, len(pcm), feed):
        tr.push(pcm[start : start + feed], rate)
    tr.finish()
    return tr


@pytest.mark.parametrize(
    "kind,chunk_ms", [("emformer", 160), ("emformer", 320), ("conformer", 160)]
)
def test_incremental_equals_recompute(kind, chunk_ms):
    model, vocoder = busy_model(kind=kind)
    pcm = speechlike(2.4, seed=1)
    inc = run(model, vocoder, pcm, "incremental", chunk_ms)
    rec = run(model, vocoder, pcm, "recompute", chunk_ms)
    text_times = [e.time_s for e in inc.events if e.kind == "text"]
    # the policy must write at several steps for this to test much (the random Conformer's ASR
    # head changes its output less often: two writes, one of them mid-stream)
    assert len(text_times) >= (3 if kind == "emformer" else 2)
    assert text_times[0] < 2.4  # something was written before the end of the source
    assert inc.asr_ids == rec.asr_ids and inc.target_ids == rec.target_ids
    assert inc.units == rec.units and len(inc.units) > 0
    a, b = inc.output_audio(), rec.output_audio()
    assert a.shape == b.shape and a.size > 0
    np.testing.assert_allclose(a, b, atol=1e-5)
    key = [(e.kind, e.time_s, e.ids) for e in inc.events if e.kind != "audio"]
    assert key == [(e.kind, e.time_s, e.ids) for e in rec.events if e.kind != "audio"]
    audio_times = [(e.time_s, len(e.audio)) for e in inc.events if e.kind == "audio"]
    assert audio_times == [(e.time_s, len(e.audio)) for e in rec.events if e.kind == "audio"]


def test_push_sizes_and_sample_rates_do_not_change_the_result():
    model, vocoder = busy_model()
    pcm = speechlike(1.6, seed=2)
    ref = run(model, vocoder, pcm, "incremental", 160)
    other = run(model, vocoder, pcm, "incremental", 160, feed=777)
    assert other.target_ids == ref.target_ids and other.units == ref.units
    np.testing.assert_array_equal(other.output_audio(), ref.output_audio())
    assert [e.time_s for e in other.events] == [e.time_s for e in ref.events]
    # int16 at 48 kHz goes through the streaming resampler; still a full run with output
    import soxr

    pcm48 = (soxr.resample(pcm, 16000, 48000) * 32767).astype(np.int16)
    resampled = run(model, vocoder, pcm48, "incremental", 160, feed=4800, rate=48000)
    assert resampled.target_ids and abs(resampled.samples_in - len(pcm)) < 32


def test_batched_streams_started_at_different_times_equal_single_runs():
    model, vocoder = busy_model()
    core = IncrementalCore(model, vocoder)
    chunk = 2560
    pcms = [speechlike(1.6, seed=s) for s in (3, 4, 5)]
    singles = []
    for pcm in pcms:
        state, outs = core.init_state(1), []
        for start in range(0, len(pcm), chunk):
            piece = torch.from_numpy(pcm[start : start + chunk])[None]
            out, state = core.step(piece, torch.tensor([piece.shape[1]]), state)
            outs += out
        out, state = core.step(torch.zeros(1, 0), torch.zeros(1, dtype=torch.long), state, True)
        outs += out
        singles.append(outs)
    # stream 0 starts alone; streams 1 and 2 join one and two chunks later (stacked states)
    states = [core.init_state(1) for _ in pcms]
    got = [[], [], []]
    offsets = [0, 1, 2]
    steps = max(len(p) // chunk + 1 + o for p, o in zip(pcms, offsets, strict=True))
    for k in range(steps):
        live = [i for i in range(3) if k >= offsets[i]]
        batch = TranslatorState.stack([states[i] for i in live])
        pieces = [pcms[i][(k - offsets[i]) * chunk : (k - offsets[i] + 1) * chunk] for i in live]
        pcm = torch.zeros(len(live), chunk)
        for j, p in enumerate(pieces):
            pcm[j, : len(p)] = torch.from_numpy(p)
        outs, batch = core.step(pcm, torch.tensor([len(p) for p in pieces]), batch)
        for j, i in enumerate(live):
            states[i] = batch.select([j])
            got[i].append(outs[j])
    for i in range(3):
        out, states[i] = core.step(
            torch.zeros(1, 0), torch.zeros(1, dtype=torch.long), states[i], final=True
        )
        got[i] += out
    assert_same_outputs(got, singles)


class _FakeTokenizer:
    """Pieces named by letter; ids in WORD_STARTS begin a word (▁)."""

    vocab_size = 12
    WORD_STARTS = frozenset({4, 6, 9})

    class sp:  # mimics SentencePieceProcessor's method name
        @staticmethod
        def id_to_piece(i: int) -> str:
            return ("▁" if i in _FakeTokenizer.WORD_STARTS else "") + chr(ord("a") + i)

    def decode(self, ids):
        return "".join(self.sp.id_to_piece(i) for i in ids if i >= 4).replace("▁", " ").strip()


def test_whole_word_holds_back_the_last_word_until_it_is_complete(monkeypatch):
    model, vocoder = busy_model()
    model.attach_tokenizers(None, _FakeTokenizer())
    pcm = speechlike(3.2, seed=1)
    trs = {
        mode: StreamingTranslator(model, vocoder, chunk_ms=640, mode=mode)
        for mode in ("incremental", "recompute")
    }
    for tr in trs.values():
        tr.push(pcm, 16000)
    inc, rec = trs["incremental"], trs["recompute"]
    mid = list(inc.target_ids)
    mid_events = [e for e in inc.events if e.kind == "text"]
    assert mid and len(mid_events) >= 2, "whole-word commits must happen before the end"
    for tr in trs.values():
        tr.finish()
    assert inc.target_ids == rec.target_ids and inc.units == rec.units
    np.testing.assert_allclose(inc.output_audio(), rec.output_audio(), atol=1e-5)
    # every mid-stream commit ends at a word boundary: the token after it starts a word
    done = 0
    for e in mid_events:
        done += len(e.ids)
        assert inc.target_ids[done] in _FakeTokenizer.WORD_STARTS
    # when the decoder's tokens (all 9 here) never start a word, a word is never complete:
    # nothing is committed before the end, while without the rule the same stream writes
    monkeypatch.setattr(_FakeTokenizer, "WORD_STARTS", frozenset({4, 6}))
    held = StreamingTranslator(model, vocoder, chunk_ms=640)
    held.push(pcm, 16000)
    plain = StreamingTranslator(model, vocoder, chunk_ms=640, whole_word=False)
    plain.push(pcm, 16000)
    assert held.target_ids == [] and len(plain.target_ids) == len(mid)


def test_errors():
    model, vocoder = busy_model()
    with pytest.raises(ValueError, match="chunk_ms"):
        StreamingTranslator(model, vocoder, chunk_ms=0)
    with pytest.raises(ValueError, match="mode"):
        StreamingTranslator(model, vocoder, mode="fast")
    tr = StreamingTranslator(model, vocoder)
    tr.push(np.zeros(1000, np.float32), 16000)
    with pytest.raises(ValueError, match="sample rate changed"):
        tr.push(np.zeros(1000, np.float32), 8000)
    tr.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        tr.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError):
        tr2 = StreamingTranslator(model, vocoder)
        tr2.push(np.full(100, np.nan, np.float32))
