"""The synthetic corpus end to end (a very small build), TTS determinism, units, dataset."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from echostream.audio.features import FbankExtractor, GlobalCMVN
from echostream.audio.io import load_audio
from echostream.data.manifest import read_manifest
from echostream.data.sampler import UNIT_PAD, BucketBatchSampler, S2STDataset, collate
from echostream.data.synth import SynthError, main_prepare_synth, prepare_synth, select_pairs
from echostream.data.tts import Voice, french_voice_for, pico_available, synthesize
from echostream.data.units import UnitKMeans, dedup
from echostream.text.tokenizer import Tokenizer

K = 16
SIZES = {"train": 12, "dev": 4, "test": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pico2wave may be missing here: espeak fallback
        built = prepare_synth(
            out, "tiny", num_train=12, num_dev=4, num_test=4, num_units=K,
            src_vocab_size=80, tgt_vocab_size=80, engines=("espeak",), workers=1,
            progress=False,
        )  # fmt: skip
    return built


def test_build_end_to_end(corpus):
    info = json.loads(corpus.build_info.read_text())
    assert info["complete"] is True and info["settings"]["counts"] == SIZES
    src_tok, tgt_tok = Tokenizer(corpus.src_spm), Tokenizer(corpus.tgt_spm)
    assert info["src_vocab_size"] == src_tok.vocab_size <= 80
    km = UnitKMeans.load(corpus.kmeans)
    assert km.num_units == K and km.centroids.shape == (K, 80)
    cmvn = GlobalCMVN.load(corpus.cmvn)
    assert cmvn.dim == 80 and cmvn.count > 0
    text_ids = {}
    for split, n in SIZES.items():
        m = read_manifest(corpus.manifest(split), num_units=K)  # validates every row
        assert len(m) == n
        text = (corpus.root / "text" / f"{split}.tsv").read_text("utf-8").splitlines()
        assert text[0] == "id\tfr\ten" and len(text) == n + 1
        text_ids[split] = {line.split("\t")[0] for line in text[1:]}
        assert {r.id for r in m} == text_ids[split]
        for row in m:
            assert row.src_audio == f"src/{split}/{row.id}.flac"
            for path in (corpus.src_audio(split, row.id), corpus.tgt_audio(split, row.id)):
                info_ = sf.info(str(path))
                assert (info_.samplerate, info_.channels, info_.format) == (16000, 1, "FLAC")
            units = row.units
            assert all(0 <= u < K for u in units) and units == dedup(units)
            assert row.tgt_n_frames == len(units) > 0
            feats = np.load(corpus.fbank(split, row.id))
            assert feats.dtype == np.float16 and feats.shape == (row.src_n_frames, 80)
            assert src_tok.encode(row.src_text) and tgt_tok.encode(row.tgt_text)
    assert not (text_ids["train"] & text_ids["dev"]) and not (text_ids["dev"] & text_ids["test"])
    # stored features are the front end's features of the stored audio (to float16 precision)
    row = read_manifest(corpus.manifest("dev"))[0]
    ref = FbankExtractor()(load_audio(corpus.src_audio("dev", row.id))).numpy()
    np.testing.assert_allclose(np.load(corpus.fbank("dev", row.id)), ref, rtol=2e-3, atol=2e-2)
    # units are those of the k-means model on the stored target audio
    assert km.units(load_audio(corpus.tgt_audio("dev", row.id))) == row.units
    assert not list(corpus.root.rglob("*.tmp*"))


def test_resume_is_identical_and_refuses_other_settings(corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(corpus.root, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    victim = next(iter((copy / "src" / "dev").glob("*.flac")))
    victim.unlink()  # an interrupted build: one audio file, its features and a manifest lost
    (copy / "fbank" / "dev" / f"{victim.stem}.npy").unlink()
    (copy / "dev.tsv").unlink()
    (copy / "src" / "dev" / f".{victim.name}.abc123.tmp").write_bytes(b"half a file")
    kwargs = dict(num_train=12, num_dev=4, num_test=4, num_units=K, src_vocab_size=80,
                  tgt_vocab_size=80, engines=("espeak",), workers=1, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_synth(copy, "tiny", **kwargs)
        after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        assert set(after) == set(before)
        changed = [str(k) for k in before if before[k] != after[k] and k.name != "build.json"]
        assert changed == []  # re-synthesised audio and features are bit-identical
        with pytest.raises(SynthError, match=r"other settings \(num_units: 16 -> 17\)"):
            prepare_synth(copy, "tiny", **(kwargs | {"num_units": 17}))
    args = ["--out", str(tmp_path / "x"), "--text-dir", str(tmp_path / "none"), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main_prepare_synth(args) == 1  # "error: .../train.tsv: text pairs not found"


def test_dataset_and_collate(corpus):
    src_tok, tgt_tok = Tokenizer(corpus.src_spm), Tokenizer(corpus.tgt_spm)
    ds = S2STDataset(corpus.manifest("train"), src_tok, tgt_tok,
                     feature_dir=corpus.fbank_dir("train"), num_units=K)  # fmt: skip
    from_audio = S2STDataset(corpus.manifest("train"), src_tok, tgt_tok)
    item, item_audio = ds[0], from_audio[0]
    assert item.fbank.dtype == torch.float32 and item.fbank.shape[1] == 80
    torch.testing.assert_close(item.fbank, item_audio.fbank, rtol=2e-3, atol=2e-2)
    sampler = BucketBatchSampler(ds.lengths, max_frames=3000, seed=1)
    batch_idx = next(iter(sampler))
    batch = collate([ds[i] for i in batch_idx])
    b = len(batch_idx)
    assert batch["fbank"].shape == (b, int(batch["fbank_len"].max()), 80)
    for i, j in enumerate(batch_idx):
        it = ds[j]
        n = it.fbank.shape[0]
        assert batch["fbank_len"][i] == n and torch.equal(batch["fbank"][i, :n], it.fbank)
        assert batch["fbank"][i, n:].abs().sum() == 0
        L = len(it.tgt_tokens)
        assert batch["tgt_len"][i] == L
        assert batch["prev_output_tokens"][i, 0] == 2 and batch["tgt_out"][i, L] == 3
        assert torch.equal(batch["prev_output_tokens"][i, 1 : L + 1], it.tgt_tokens)
        assert torch.equal(batch["units"][i, : len(it.units)], it.units)
        assert (batch["units"][i, len(it.units) :] == UNIT_PAD).all()
    assert batch["src_tokens"].dtype == torch.int64 and batch["unit_len"].dtype == torch.int64


def test_espeak_is_deterministic_and_voices_rotate():
    voice = Voice("espeak", "fr-ch+f2", 170, 60)
    a = synthesize("Ce paquet fournit la documentation.", voice)
    synthesize("Une autre phrase, entre les deux.", Voice("espeak", "fr-be+m3", 150, 40))
    b = synthesize("Ce paquet fournit la documentation.", voice)
    assert a.dtype == np.float32 and 1.0 < len(a) / 16000 < 4.0
    assert np.array_equal(a, b)
    voices = {french_voice_for(f"ddtp-{i:06d}", ["espeak"]).tag for i in range(50)}
    assert len(voices) > 30  # names × variants × rates × pitches
    assert french_voice_for("ddtp-000001", ["espeak"]) == french_voice_for(
        "ddtp-000001", ["espeak"]
    )
    assert {french_voice_for(f"x{i}", ["espeak", "pico"]).engine for i in range(20)} == {
        "espeak",
        "pico",
    }


@pytest.mark.skipif(not pico_available(), reason="pico2wave not installed")
def test_pico_english():
    pcm = synthesize("This package contains the documentation.", Voice("pico", "en-US"))
    assert 1.0 < len(pcm) / 16000 < 4.0 and np.abs(pcm).max() > 0.05


def test_select_pairs_is_deterministic():
    pairs = [(f"id{i}", " ".join(["mot"] * (i % 20 + 1)), "x") for i in range(100)]
    a = select_pairs(pairs, 10, 14, seed=0)
    assert a == select_pairs(pairs, 10, 14, seed=0) and len(a) == 10
    assert all(len(p[1].split()) <= 14 for p in a)
    assert [p[0] for p in a] == sorted((p[0] for p in a), key=lambda s: int(s[2:]))  # file order
    assert a != select_pairs(pairs, 10, 14, seed=1)


def test_prepare_cvss_c_on_a_fake_tree(corpus, tmp_path):
    from echostream.audio.io import resample
    from echostream.data.cvss import prepare_cvss_c

    cv, cvss = tmp_path / "cv", tmp_path / "cvss" / "fr-en"
    (cv / "clips").mkdir(parents=True)
    validated = ["client_id\tpath\tsentence"]
    for split in ("train", "dev", "test"):
        (cvss / split).mkdir(parents=True)
        lines = []
        for k, row in enumerate(read_manifest(corpus.manifest(split))):
            clip = f"common_voice_fr_{split}{k}.mp3"
            src = load_audio(corpus.src_audio(split, row.id))
            sf.write(str(cv / "clips" / clip), resample(src, 16000, 48000), 48000, format="MP3")
            tgt = resample(load_audio(corpus.tgt_audio(split, row.id)), 16000, 24000)
            sf.write(str(cvss / split / f"{clip}.wav"), tgt, 24000)
            validated.append(f"c{k}\t{clip}\t{row.src_text}")
            lines.append(f"{clip}\t{row.tgt_text}")
        (cvss / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (cv / "validated.tsv").write_text("\n".join(validated) + "\n", encoding="utf-8")
    out = prepare_cvss_c(cvss, cv, tmp_path / "out", num_units=8, src_vocab_size=60,
                         tgt_vocab_size=60, workers=1, progress=False)  # fmt: skip
    m = read_manifest(out.manifest("dev"), num_units=8)
    assert [r.id for r in m] == [f"common_voice_fr_dev{k}" for k in range(SIZES["dev"])]
    assert m[0].src_audio == str(cv / "clips" / "common_voice_fr_dev0.mp3")
    ds = S2STDataset(m, Tokenizer(out.src_spm), Tokenizer(out.tgt_spm),
                     feature_dir=out.fbank_dir("dev"))  # fmt: skip
    assert ds[0].fbank.shape == (m[0].src_n_frames, 80) and len(ds[0].units) == m[0].tgt_n_frames
