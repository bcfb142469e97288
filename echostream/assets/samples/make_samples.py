"""Rebuild the bundled French samples: ``python echostream/assets/samples/make_samples.py``.

Text from ../shared/data/fr-en/dev.tsv (copied into data/fr-en/dev.tsv); voice espeak-ng ``fr``
(from the ``espeakng-loader`` wheel) at 160 wpm, pitch 50, resampled 22050 → 16000 Hz with soxr
(HQ), written as 16-bit PCM mono WAV. Deterministic: the same files on every run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from echostream.data.tts import Voice, synthesize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
IDS = ("ddtp-000988", "ddtp-007392", "ddtp-000999")
VOICE = Voice("espeak", "fr", rate=160, pitch=50)


def main(dev_tsv: str | None = None) -> None:
    candidates = [dev_tsv] if dev_tsv else []
    candidates += [ROOT / "data/fr-en/dev.tsv", ROOT.parent / "shared/data/fr-en/dev.tsv"]
    path = next(Path(p) for p in candidates if p and Path(p).exists())
    with open(path, encoding="utf-8", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    for utt_id in IDS:
        pcm = synthesize(rows[utt_id]["fr"], VOICE, sample_rate=16000)
        pcm16 = np.round(pcm * 32767).astype(np.int16)
        out = HERE / f"fr_dev_{utt_id.removeprefix('ddtp-')}.wav"
        sf.write(str(out), pcm16, 16000, subtype="PCM_16")
        print(f"{out.name}\t{len(pcm16) / 16000:.2f} s\t{rows[utt_id]['fr']}\t{rows[utt_id]['en']}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
