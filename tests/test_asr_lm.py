"""The ASR-BLEU recogniser's domain LM: built from training targets only, read by pocketsphinx."""

from __future__ import annotations

import pytest

from echostream.evaluation.asr import EnglishASR, word_error_rate
from echostream.evaluation.asr_lm import arpabet, build_asr_lm, main

pytest.importorskip("pocketsphinx")

HEADER = "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\ttgt_n_frames\n"
TRAIN = [
    "Library for reading Debian package control files with libgnomeui.",
    "The daemon rotates the kernel log files every night.",
    "Command line tools for the Debian package archive.",
]


def write_corpus(root, train=TRAIN, dev=("A zyzzyva sentence only the dev split has.",)):
    root.mkdir(parents=True, exist_ok=True)
    for split, texts in (("train", train), ("dev", dev)):
        rows = [
            f"{split}-{i}\tsrc/{i}.flac\t100\tdu texte\t{text}\t1 2 3\t3\n"
            for i, text in enumerate(texts)
        ]
        (root / f"{split}.tsv").write_text(HEADER + "".join(rows))
    return root


def test_lm_holds_the_normalised_training_targets_only(tmp_path):
    path, stats = build_asr_lm(write_corpus(tmp_path / "corpus"))
    assert path == tmp_path / "corpus" / "asr_lm.arpa"
    text = path.read_text()
    grams = {n: int(text.split(f"ngram {n}=")[1].split()[0]) for n in (1, 2, 3)}
    assert grams == {int(k): v for k, v in stats["ngrams"].items()}
    unigrams = text.split("\\1-grams:\n")[1].split("\n\n")[0].splitlines()
    words = {line.split()[1] for line in unigrams}
    assert {"<s>", "</s>", "debian", "daemon", "kernel"} <= words
    assert "zyzzyva" not in words  # dev text never enters the LM
    assert not any(w != w.lower() or w.endswith(".") for w in words)  # normalised like the refs
    assert "<s> library for" in text and "</s>" in text.split("\\3-grams:")[0]
    assert stats["sentences"] == 3 and stats["tokens"] == sum(len(t.split()) for t in TRAIN)


def test_dictionary_adds_espeak_pronunciations_in_the_recognisers_phones(tmp_path):
    path, stats = build_asr_lm(write_corpus(tmp_path / "corpus"))
    lines = path.with_suffix(".dict").read_text().splitlines()
    base = [line for line in lines if line.startswith("hello ")]
    assert base == ["hello HH AH L OW"]  # CMUdict kept as it is
    phones = {p for line in lines[: -stats["pronunciations_added"]] for p in line.split()[1:]}
    assert len(phones) == 39  # ARPAbet without stress: the en-us acoustic model's phones
    added = dict(line.split(" ", 1) for line in lines[-stats["pronunciations_added"] :])
    assert "libgnomeui" in added and stats["words_without_pronunciation"] == len(added)
    assert all(set(p.split()) <= phones for p in added.values()), added
    assert arpabet("h@l'oU") == "HH AH L OW" and arpabet("dZ'VdZ") == "JH AH JH"
    assert arpabet("n'i@3") == "N IH R"  # longest match first
    assert arpabet("h@\u0283") is None  # an unknown symbol: no pronunciation, not a wrong one


def test_domain_lm_helps_the_recogniser_on_in_domain_speech(tmp_path):
    from echostream.data.tts import pico_available, pico_synth

    if not pico_available():
        pytest.skip("pico2wave (the English target voice) is not installed")
    path, _ = build_asr_lm(write_corpus(tmp_path / "corpus"))
    audio = [pico_synth(text)[0] for text in TRAIN]
    generic, domain = EnglishASR(), EnglishASR(lm=path)
    assert domain.dict == path.with_suffix(".dict")  # the LM's own dictionary comes with it
    generic, domain = [generic.transcribe(a) for a in audio], [domain.transcribe(a) for a in audio]
    assert word_error_rate(TRAIN, domain) < word_error_rate(TRAIN, generic), (domain, generic)


def test_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"train\.tsv: no training manifest"):
        build_asr_lm(tmp_path)
    assert main(["--data", str(tmp_path)]) == 1
    assert "train.tsv: no training manifest" in capsys.readouterr().err
    corpus = write_corpus(tmp_path / "empty", train=["...", "!"])
    with pytest.raises(ValueError, match="no English target text"):
        build_asr_lm(corpus)
    with pytest.raises(ValueError, match="discount_mass"):
        build_asr_lm(write_corpus(tmp_path / "ok"), discount_mass=1.0)
    assert not (tmp_path / "ok" / "asr_lm.arpa").exists()


def test_measure_prints_the_ceiling_of_each_recogniser(synth_tiny, tmp_path, capsys):
    lm = str(tmp_path / "lm.arpa")
    assert main(["--data", str(synth_tiny), "--out", lm, "--measure", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| generic LM, CMUdict",
        "| training-target trigram, CMUdict",
        "| training-target trigram + its dictionary",
    ], out
    assert (tmp_path / "lm.dict").is_file()
