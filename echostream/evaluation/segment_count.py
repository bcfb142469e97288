"""Sentences the translator's segmenter closes on each recording of a long-form set.

simulstream's metrics log does not record sentence boundaries, so the long-form tables count
them here: the bundled model under :class:`StreamingTranslator` with the same keyword handling
as the simulstream processor (``ProcessorConfig.translator_kwargs``), the recording pushed in
320 ms pieces; per recording ``segment_ends`` (source seconds), how many closed before its end,
and the words written.

usage: python -m echostream.evaluation.segment_count DATA_DIR '{"segmenter": {...}}' [OUT_JSON]
(DATA_DIR: a set from ``echostream prepare longform``, with ``dev.wav_list``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

from ..integrations.simulstream import ProcessorConfig
from ..streaming.translator import StreamingTranslator, load_pretrained


def count(data: Path, translator_kwargs: dict, model_name: str = "echostream-tiny-fr-en") -> dict:
    kwargs = ProcessorConfig(translator=translator_kwargs).translator_kwargs()
    model, vocoder = load_pretrained(model_name)
    rows = []
    for line in (data / "dev.wav_list").read_text().split():
        audio, rate = sf.read(data / line, dtype="float32")
        tr = StreamingTranslator(model, vocoder, chunk_ms=320, mode="incremental", **kwargs)
        start, piece = time.perf_counter(), int(0.32 * rate)
        for i in range(0, len(audio), piece):
            tr.push(audio[i : i + piece], rate)
        tr.finish()
        seconds = len(audio) / rate
        rows.append(
            {
                "wav": line,
                "audio_s": seconds,
                "segment_ends": tr.segment_ends,
                "sentences_closed": len(tr.segment_ends),
                "closed_before_end": sum(e < seconds for e in tr.segment_ends),
                "words": len(tr.translation.split()),
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "translator": translator_kwargs,
        "recordings": rows,
        "sentences_closed": sum(r["sentences_closed"] for r in rows),
        "closed_before_end": sum(r["closed_before_end"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    result = count(Path(args[0]), json.loads(args[1]))
    print(json.dumps({k: result[k] for k in ("sentences_closed", "closed_before_end")}))
    if len(args) == 3:
        Path(args[2]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
