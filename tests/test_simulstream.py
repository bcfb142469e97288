"""simulstream adapter: EchoStreamProcessor driven as simulstream drives it equals the agent."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

pytest.importorskip("simulstream")
pytest.importorskip("librosa")  # imported by simulstream's message processor

from simulstream.client.wav_reader_client import read_wav_file
from simulstream.config import yaml_config
from simulstream.metrics.logger import METRICS_LOGGER
from simulstream.metrics.readers import LogReader
from simulstream.server.message_processor import MessageProcessor
from simulstream.server.speech_processors import build_speech_processor

from echostream.audio.io import load_audio
from echostream.data.longform import LongformConfig, build_longform
from echostream.integrations.simulstream import EchoStreamProcessor, ProcessorConfig, main
from echostream.models import build_model
from echostream.models.checkpoint import save_checkpoint
from echostream.streaming.translator import StreamingTranslator
from echostream.text.tokenizer import Tokenizer
from tests.helpers_models import busy_model, tiny_config, torch_threads

TINY = Path(__file__).resolve().parents[1] / "work" / "synth-tiny"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "simulstream"


@pytest.fixture(autouse=True, scope="module")
def _tiny_corpus(synth_tiny):
    """work/synth-tiny, built on first use (tests/conftest.py)."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_the_module():
    """One thread, also for the module-scoped ``setup`` (the function-scoped ``one_thread``
    fixture cannot serve a module-scoped one)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 20 s long-form stream, a busy random model with synth-tiny's tokenizers (saved as a
    checkpoint + vocoder), and a processor YAML naming them."""
    root = tmp_path_factory.mktemp("simulstream")
    build_longform(TINY, root / "data", LongformConfig("dev", minutes=1 / 3, streams=1, seed=0))
    cfg = tiny_config()
    cfg.vocab.src_vocab_size = cfg.vocab.tgt_vocab_size = 500  # synth-tiny's spm sizes
    torch.manual_seed(2)
    model = build_model(cfg).eval()
    with torch.no_grad():  # busy CTC heads (writes at many steps), chaotic MT decoder (varied text)
        for head in (model.asr_ctc, model.st_ctc.head):
            head.proj.weight.mul_(30.0)
        model.mt_decoder.embed_tokens.weight.normal_(0, 1.0)
        for weight in model.mt_decoder.layers.parameters():
            if weight.dim() == 2:
                weight.mul_(10.0)
    model.attach_tokenizers(
        Tokenizer(TINY / "spm" / "spm_fr.model"), Tokenizer(TINY / "spm" / "spm_en.model")
    )
    _, vocoder = busy_model()
    save_checkpoint(root / "model.pt", model)
    vocoder.save(root / "vocoder.pt")
    processor_yaml = yaml.safe_load((CONFIGS / "echostream.yaml").read_text())
    processor_yaml.update(checkpoint=str(root / "model.pt"), vocoder=str(root / "vocoder.pt"))
    (root / "processor.yaml").write_text(yaml.safe_dump(processor_yaml))
    wav = root / "data" / "wavs" / "dev_00.wav"
    reference = StreamingTranslator(model, vocoder, chunk_ms=320)
    reference.push(load_audio(wav))
    reference.finish()
    return root, wav, reference


def _run_like_simulstream_inference(processor, wav: Path, log: Path, client_id: int = 0):
    """What ``simulstream_inference`` does for one file (same chunking, same metrics log)."""
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(message)s"))
    METRICS_LOGGER.handlers.clear()
    METRICS_LOGGER.addHandler(handler)
    METRICS_LOGGER.setLevel(logging.INFO)
    METRICS_LOGGER.disabled = False
    outputs = []
    try:
        sample_rate, data = read_wav_file(str(wav))
        messages = MessageProcessor(client_id, processor)
        messages.process_metadata(
            {"sample_rate": sample_rate, "metrics_metadata": {"wav_name": str(wav)},
             "source_lang": "fr", "target_lang": "en"}
        )  # fmt: skip
        step = int(sample_rate * processor.speech_chunk_size)
        for i in range(0, len(data), step):
            out = messages.process_speech(data[i : i + step].tobytes())
            if out is not None:
                outputs.append(out)
        outputs.append(messages.end_of_stream())
    finally:
        METRICS_LOGGER.removeHandler(handler)
        handler.close()
    return outputs


def _word_delays(translator: StreamingTranslator) -> list[float]:
    """Per word of the translation: source time of the last text event that changed it."""
    delays, words, start, segment = [], [], 0, 0
    for event in (e for e in translator.events if e.kind == "text"):
        if event.segment != segment:  # a new sentence: its words follow the closed ones
            start, words, segment = len(delays), [], event.segment
        new = event.text.split()  # the sentence so far
        for i, word in enumerate(new):
            if i >= len(words):
                delays.append(event.time_s)
            elif words[i] != word:
                delays[start + i] = event.time_s
        words = new
    return delays


def test_processor_outputs_equal_the_translator(setup, tmp_path):
    root, wav, reference = setup
    words = reference.translation.split()
    assert len(words) >= 5 and len(set(words)) >= 3  # varied text: a real check
    processor = build_speech_processor(yaml_config(str(root / "processor.yaml")))
    assert isinstance(processor, EchoStreamProcessor)
    assert processor.speech_chunk_size == 0.32
    log = tmp_path / "metrics.jsonl"
    outputs = _run_like_simulstream_inference(processor, wav, log)
    assert all(o.deleted_tokens == [] and o.deleted_string == "" for o in outputs)
    tokens = [t for o in outputs for t in o.new_tokens]
    assert processor.tokens_to_string(tokens).split() == reference.translation.split()
    segments = {getattr(e, "segment", 0) for e in reference.events}
    assert len(segments) >= 2, "the stream should cross a sentence boundary of the segmenter"
    steps = [o for o in outputs[:-1] if o.new_tokens]
    assert len(steps) >= 2  # text arrives during the stream, not only at its end

    # simulstream's reader rebuilds the same text, with the agent's word delays
    reader = LogReader(yaml_config(str(root / "processor.yaml")), str(log), latency_unit="word")
    final = reader.final_outputs_and_latencies()[wav.stem]
    assert final.final_text.split() == reference.translation.split()
    assert final.ideal_delays == pytest.approx(_word_delays(reference), abs=1e-9)
    assert all(
        ca >= cu
        for ca, cu in zip(final.computational_aware_delays, final.ideal_delays, strict=True)
    )

    # clear() (called by end_of_stream) makes the processor reusable: same output again
    again = _run_like_simulstream_inference(processor, wav, tmp_path / "again.jsonl", 1)
    assert [t for o in again for t in o.new_tokens] == tokens

    # the BLEU scorer runs on this log without unbabel-comet
    data = root / "data"
    argv = ["score-quality", "--eval-config", str(root / "processor.yaml"), "--log-file",
            str(log), "--audio-definition", str(data / "dev.yaml"), "--references",
            str(data / "dev.norm.en"), "--scorer", "sacrebleu"]  # fmt: skip
    assert main(argv) == 0


def test_languages_and_config_errors(setup):
    root, _, _ = setup
    config = yaml_config(str(root / "processor.yaml"))
    processor = EchoStreamProcessor(config)
    processor.set_source_language("fr")
    processor.set_target_language("en")
    with pytest.raises(ValueError, match="French speech"):
        processor.set_source_language("de")
    with pytest.raises(ValueError, match="into English"):
        processor.set_target_language("it")
    config.mode = "bogus"
    with pytest.raises(ValueError, match="mode: must be incremental or recompute"):
        EchoStreamProcessor(config)
    config.mode = "incremental"
    config.translator = SimpleNamespace(nope=1)
    with pytest.raises(ValueError, match=r"translator\.nope: not a StreamingTranslator argument"):
        EchoStreamProcessor(config)
    config.translator = SimpleNamespace(segmenter=SimpleNamespace(max_segment_s=5.0))
    kwargs = ProcessorConfig.from_namespace(config).translator_kwargs()
    assert kwargs["segmenter"].max_segment_s == 5.0  # the other fields keep their defaults
    assert kwargs["segmenter"].pause_ms == type(kwargs["segmenter"])().pause_ms
    config.translator = SimpleNamespace(segmenter=SimpleNamespace(max_len=5))
    with pytest.raises(ValueError, match=r"translator\.segmenter: unknown field\(s\) max_len"):
        ProcessorConfig.from_namespace(config).translator_kwargs()
    config.translator, config.checkpoint = None, str(root / "missing.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        EchoStreamProcessor(config)


@pytest.mark.slow
def test_recompute_baseline_config_gives_the_same_text(setup, tmp_path):
    root, wav, reference = setup
    baseline = yaml.safe_load((CONFIGS / "recompute-baseline.yaml").read_text())
    assert baseline["mode"] == "recompute"
    baseline.update(checkpoint=str(root / "model.pt"), speech_output=False)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(baseline))
    processor = build_speech_processor(yaml_config(str(tmp_path / "b.yaml")))
    outputs = _run_like_simulstream_inference(processor, wav, tmp_path / "b.jsonl")
    tokens = [t for o in outputs for t in o.new_tokens]
    assert processor.tokens_to_string(tokens).split() == reference.translation.split()


# ---------------------------------------------------------------- the eval-longform driver

LAAL_OUT = (
    "Latency scores (in seconds): LatencyScores(ideal_latency=16.750319444444457, "
    "computational_aware_latency=27.540404018402114)\n"
)
BLEU_OUT = "sacrebleu score: 1.1726916815494268\n"
BLEU_ERR = (
    "AS-WER (automatic segmentation mWER): 93.1818\n2026-11-25 05:58:21 | INFO | x | y\n"
    "AS-WER (automatic segmentation mWER): 94.6721\n"
)
STATS_OUT = (
    'Stats: {\n    "normalized_erasure": {\n        "description": "x",\n        "value": 0.0\n'
    '    },\n    "real_time_factor": {\n        "description": "y",\n        "value": 0.619\n'
    "    }\n}\n"
)


def test_parsers_read_the_tools_output(tmp_path):
    from echostream.evaluation import longform as lf

    assert lf.parse_stream_laal(LAAL_OUT) == {
        "StreamLAAL_s": 16.750319444444457,
        "StreamLAAL_CA_s": 27.540404018402114,
    }
    assert lf.parse_sacrebleu(BLEU_OUT, BLEU_ERR) == {
        "BLEU": 1.1726916815494268,
        "AS_WER_per_recording": [93.1818, 94.6721],
    }
    assert lf.parse_stats(STATS_OUT) == {"real_time_factor": 0.619, "normalized_erasure": 0.0}
    (tmp_path / "scores.tsv").write_text("metric\tvalue\nBLEU\t1.6688\nLongYAAL (CU)\tnan\n")
    assert lf.parse_omnisteval(tmp_path) == {"BLEU": 1.6688, "LongYAAL (CU)": None}
    with pytest.raises(ValueError, match="Latency scores"):
        lf.parse_stream_laal("no numbers")
    with pytest.raises(ValueError, match="sacrebleu score"):
        lf.parse_sacrebleu("BLEU = 3")


@pytest.mark.slow
def test_eval_longform_runs_every_tool(setup, tmp_path):
    pytest.importorskip("omnisteval")
    pytest.importorskip("mweralign")
    from echostream.evaluation import longform as lf

    root, _, reference = setup
    argv = [
        "--data",
        str(root / "data"),
        "--out",
        str(tmp_path),
        "--checkpoint",
        str(root / "model.pt"),
        "--vocoder",
        str(root / "vocoder.pt"),
        "--skip-baseline",
    ]
    assert lf.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    record = results["systems"]["echostream"]
    assert record["errors"] == []
    assert set(record["simulstream"]) == {"StreamLAAL_s", "StreamLAAL_CA_s", "BLEU",
                                          "AS_WER_per_recording", "real_time_factor",
                                          "normalized_erasure"}  # fmt: skip
    assert len(record["simulstream"]["AS_WER_per_recording"]) == 1  # one recording
    assert record["simulstream"]["normalized_erasure"] == 0.0
    assert record["simulstream"]["StreamLAAL_CA_s"] >= record["simulstream"]["StreamLAAL_s"]
    assert {"BLEU", "chrF", "LongYAAL (CU)", "LongYAAL (CA)"} <= set(record["omnisteval"])
    log = tmp_path / "echostream" / "metrics.jsonl"
    tokens = [t for line in log.read_text().splitlines() for t in json.loads(line).get(
        "generated_tokens", [])]  # fmt: skip
    assert "".join(tokens).replace("▁", " ").split() == reference.translation.split()
    assert "| echostream: EchoStream" in (tmp_path / "results.md").read_text()
