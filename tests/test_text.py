"""Text normalisation and sentencepiece tokenizers."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from echostream.text.normalize import normalize, streamspeech_normalize
from echostream.text.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerError,
    train_tokenizer,
)

CASES = [
    ("L'API, c'est-à-dire…", "l'api c'est à dire", "lapi cestàdire"),
    ("Il s’agit du dictionnaire anglais-français.", "il s'agit du dictionnaire anglais français",
     "il sagit du dictionnaire anglaisfrançais"),
    ("readbuffer/writebuffer : empêcher, etc.", "readbuffer writebuffer empêcher etc",
     "readbufferwritebuffer empêcher etc"),
    ("This mailer's 'quoted' v2.0 foo_bar", "this mailer's quoted v2 0 foo bar",
     "this mailers quoted v20 foo_bar"),
    ("  Été\u00a0\tÀ   l'ÉCOLE  ", "été à l'école", "été à lécole"),
    ("rock'n'roll 3' 'x", "rock'n'roll 3 x", "rocknroll 3 x"),
    ("!!!", "", ""),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "ours", "streamspeech"), CASES)
def test_normalize_golden(raw, ours, streamspeech):
    assert normalize(raw) == ours
    assert streamspeech_normalize(raw) == streamspeech
    assert normalize(ours) == ours  # idempotent


TEXTS = [
    "Ce paquet fournit la documentation.",
    "Ce paquet fournit les bibliothèques de développement.",
    "Il s'agit d'une interface graphique pour le système.",
    "Cette bibliothèque permet de lire et d'écrire des fichiers.",
    "Le principal usage connu d'Ant est la compilation d'applications Java.",
] * 4


def test_tokenizer_ids_roundtrip_and_determinism(tmp_path):
    tok = train_tokenizer(TEXTS, tmp_path / "a" / "spm_fr", 60)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert 4 < tok.vocab_size <= 60
    text = "Ce paquet fournit l'interface, la documentation !"
    ids = tok.encode(text)
    assert all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == normalize(text)
    assert tok.encode(text, bos=True, eos=True) == [BOS_ID, *ids, EOS_ID]
    assert tok.decode([0, *ids, 0, 3]) == normalize(text)  # blanks/specials dropped
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size + 5])
    again = train_tokenizer(TEXTS, tmp_path / "b" / "spm_fr", 60)
    a = (tmp_path / "a" / "spm_fr.model").read_bytes()
    assert a == (tmp_path / "b" / "spm_fr.model").read_bytes()
    assert again.encode(text) == ids
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["spm_fr.model", "spm_fr.vocab"]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match=r"spm_missing\.model: sentencepiece model not found"):
        Tokenizer(tmp_path / "spm_missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=r"junk\.model: not a readable"):
        Tokenizer(tmp_path / "junk.model")
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    spm.SentencePieceTrainer.Train(  # sentencepiece defaults: unk=0, bos=1, eos=2, no pad
        input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "plain"), vocab_size=40,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    with pytest.raises(TokenizerError, match=r"special ids .* expected \(0, 1, 2, 3\)"):
        Tokenizer(tmp_path / "plain.model")
    with pytest.raises(ValueError, match="no non-empty text"):
        train_tokenizer(["...", ""], tmp_path / "e", 50)
