"""Checkpoints: EchoStream save/load round trip and every error path; StreamSpeech (fairseq)
import from a synthetic checkpoint laid out with StreamSpeech's key names and shapes, unpickled
without fairseq, checked against a hand-written fairseq-style forward."""

from __future__ import annotations

import argparse
import math
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_models import KIND_OF, tiny_config

from echostream.config import EchoStreamConfig
from echostream.data.sampler import S2STItem, collate
from echostream.models import build_model
from echostream.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from echostream.models.streamspeech_import import (
    import_streamspeech,
    load_fairseq_checkpoint,
    mt_vocab_index,
    text_ctc_index,
    unit_ctc_index,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# Tiny dims shared by the EchoStream configs and the synthetic StreamSpeech checkpoint.
D_ENC, H_ENC, FFN_ENC, KERNEL, ENC_LAYERS = 16, 2, 32, 5, 2
D_DEC, H_DEC, FFN_DEC, MT_LAYERS = 24, 2, 48, 2
SRC_V, TGT_V, UNITS = 14, 12, 10  # fairseq: 4 specials + 10 / 8 pieces; units + <blank>


def config(model: str = "streamspeech", src_v: int = SRC_V, tgt_v: int = TGT_V) -> EchoStreamConfig:
    return tiny_config(
        KIND_OF[model],
        channels=4,
        d_model=D_ENC,
        num_heads=H_ENC,
        ffn_dim=FFN_ENC,
        decoder_dims=(D_DEC, H_DEC, FFN_DEC),
        mt_layers=MT_LAYERS,
        upsample_rate=2,
        vocab=(src_v, tgt_v, UNITS),
        label_smoothing=0.1,
        emformer={"num_layers": 1, "left_context_length": 4},
        conformer={"num_layers": ENC_LAYERS, "conv_kernel_size": KERNEL},
    )


def batch_of(n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    items = [
        S2STItem(
            id=str(i),
            fbank=torch.randn(20 + 7 * i, 80, generator=g),
            src_tokens=torch.randint(4, SRC_V, (3,), generator=g),
            tgt_tokens=torch.randint(4, TGT_V, (2 + i,), generator=g),
            units=torch.randint(0, UNITS, (4,), generator=g),
        )
        for i in range(n)
    ]
    return collate(items)


# =========================================================================== EchoStream format


def make_model(model: str = "echostream", vocab: tuple[int, int] = (SRC_V, TGT_V)):
    torch.manual_seed(0)
    m = build_model(config(model, *vocab))
    with torch.no_grad():  # non-trivial CMVN so that the buffers are checked too
        m.encoder.cmvn.mean.uniform_(-1, 1)
        m.encoder.cmvn.std.uniform_(0.5, 2)
    m.encoder.cmvn.count = 1234
    return m.eval()


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
    from echostream.text.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("spm")
    words = ["le", "chat", "noir", "dort", "sur", "la", "chaise", "bleue", "que", "le", "chien"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    src = train_tokenizer(texts, folder / "src", vocab_size=40)
    tgt = train_tokenizer(texts[::-1], folder / "tgt", vocab_size=36)
    return src, tgt


@pytest.mark.parametrize("arch", ["echostream", "streamspeech"])
def test_round_trip_gives_identical_outputs(tmp_path, arch, spm_models):
    model = make_model(arch, vocab=(spm_models[0].vocab_size, spm_models[1].vocab_size))
    model.attach_tokenizers(*spm_models)
    path = tmp_path / "sub" / "model.pt"
    extra = {"step": 7, "lr": 1e-3, "history": [1.5, {"a": torch.ones(2)}], "name": "x"}
    assert save_checkpoint(path, model, extra=extra) == path
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left

    loaded, info = load_checkpoint(path, tokenizer_dir=tmp_path / "tok")
    assert not loaded.training
    assert info.version == 1 and info.config == model.cfg and loaded.cfg == model.cfg
    assert loaded.cfg.features.cmvn_path is None
    assert info.extra["step"] == 7 and torch.equal(info.extra["history"][1]["a"], torch.ones(2))
    assert info.src_spm == Path(spm_models[0].path).read_bytes()
    assert loaded.encoder.cmvn.count == 1234 == info.cmvn_count
    own, new = model.state_dict(), loaded.state_dict()
    assert own.keys() == new.keys() and all(torch.equal(own[k], new[k]) for k in own)
    batch = batch_of()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fbank = batch["fbank"][1, : batch["fbank_len"][1]]
    ra, rb = model.translate(fbank, beam=2), loaded.translate(fbank, beam=2)
    assert (ra.asr_ids, ra.tgt_ids, ra.units) == (rb.asr_ids, rb.tgt_ids, rb.units)
    assert rb.tgt_text == spm_models[1].decode(rb.tgt_ids) and rb.asr_text is not None


def test_save_rejects_non_plain_extra_and_leaves_nothing(tmp_path):
    model = make_model()
    with pytest.raises(TypeError, match=r"extra\['obj'\]"):
        save_checkpoint(tmp_path / "m.pt", model, extra={"obj": object()})
    with pytest.raises(TypeError, match="EchoStreamModel"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.pt"
    model = make_model()
    save_checkpoint(path, model, extra={"step": 1})
    save_checkpoint(path, model, extra={"step": 2})
    assert load_checkpoint(path)[1].extra == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_load_errors_not_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_load_errors_not_echostream(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="not an EchoStream checkpoint"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=r"not an EchoStream checkpoint$"):
        load_checkpoint(other)
    fairseq_like = tmp_path / "fairseq.pt"
    torch.save({"args": None, "cfg": {"model": {}}, "model": {}}, fairseq_like)
    with pytest.raises(CheckpointError, match="import_streamspeech"):
        load_checkpoint(fairseq_like)
    pickled = tmp_path / "pickled.pt"  # a real fairseq file holds argparse.Namespace objects
    torch.save({"args": argparse.Namespace(arch="x"), "model": {}}, pickled)
    with pytest.raises(CheckpointError, match="import_streamspeech"):
        load_checkpoint(pickled)


def _tamper(tmp_path: Path, change) -> Path:
    path = tmp_path / "m.pt"
    save_checkpoint(path, make_model())
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, path)
    return path


def test_load_errors_newer_version(tmp_path):
    path = _tamper(tmp_path, lambda d: d.update(version=2))
    with pytest.raises(CheckpointError, match=r"newer EchoStream.*version 2"):
        load_checkpoint(path)
    path = _tamper(tmp_path, lambda d: d.update(version="1"))
    with pytest.raises(CheckpointError, match="invalid checkpoint version"):
        load_checkpoint(path)


def test_load_errors_invalid_config(tmp_path):
    path = _tamper(tmp_path, lambda d: d["config"]["mt_decoder"].update(num_heads=5))
    with pytest.raises(CheckpointError, match=r"invalid config.*mt_decoder\.num_heads"):
        load_checkpoint(path)


def test_load_errors_architecture_mismatch(tmp_path):
    def change(data):
        data["config"]["mt_decoder"]["num_layers"] = MT_LAYERS + 1  # missing layer 2
        data["config"]["vocab"]["src_vocab_size"] = SRC_V + 1  # shape mismatch
        data["state_dict"]["bogus.weight"] = torch.zeros(1)  # unexpected

    path = _tamper(tmp_path, change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "architecture mismatch" in message
    assert "missing in checkpoint (26): mt_decoder.layers.2.self_attn.q_proj.weight" in message
    assert "(+6 more)" in message  # long lists are cut at 20 names
    assert "unexpected in checkpoint (1): bogus.weight" in message
    assert f"asr_ctc.proj.weight ({SRC_V}, {D_ENC}) vs model ({SRC_V + 1}, {D_ENC})" in message


# =========================================================================== StreamSpeech import


def _ln(sd: dict, key: str, d: int, g: torch.Generator) -> None:
    sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    sd[f"{key}.bias"] = 0.1 * torch.randn(d, generator=g)


def _linear(sd: dict, key: str, d_out: int, d_in: int, g, bias: bool = True) -> None:
    sd[f"{key}.weight"] = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
    if bias:
        sd[f"{key}.bias"] = 0.1 * torch.randn(d_out, generator=g)


def _fairseq_layer(sd, key, d, ffn, g, d_mem: int | None = None) -> None:
    """fairseq TransformerEncoderLayer / TransformerDecoderLayer (ctc_unity/modules/
    transformer_layer.py, MultiheadAttention: k_proj, v_proj, q_proj, out_proj)."""
    for proj, d_in in (("k_proj", d), ("v_proj", d), ("q_proj", d), ("out_proj", d)):
        _linear(sd, f"{key}.self_attn.{proj}", d, d_in, g)
    _ln(sd, f"{key}.self_attn_layer_norm", d, g)
    if d_mem is not None:
        for proj, d_in in (("k_proj", d_mem), ("v_proj", d_mem), ("q_proj", d), ("out_proj", d)):
            _linear(sd, f"{key}.encoder_attn.{proj}", d, d_in, g)
        _ln(sd, f"{key}.encoder_attn_layer_norm", d, g)
    _linear(sd, f"{key}.fc1", ffn, d, g)
    _linear(sd, f"{key}.fc2", d, ffn, g)
    _ln(sd, f"{key}.final_layer_norm", d, g)


def streamspeech_state_dict(seed: int = 0) -> OrderedDict:
    """StreamSpeech's ``StreamSpeechModel`` state dict (keys and shapes as in its code, tiny
    dims): chunk Conformer encoder, ASR CTC (source_unigram), ST CTC decoder with layers
    (ctc_target_unigram), MT decoder (target_unigram), T2U (synthesizer_encoder), CTC unit
    decoder (decoder)."""
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict = OrderedDict()
    d, hd = D_ENC, D_ENC // H_ENC
    # encoder (researches/chunk_unity/models/s2t_conformer.py)
    mid = 32  # Conv1dSubsampler(80, conv_channels, 2·d, kernels 5,5)
    sd["encoder.subsample.conv_layers.0.weight"] = torch.randn(mid, 80, 5, generator=g)
    sd["encoder.subsample.conv_layers.0.bias"] = torch.randn(mid, generator=g)
    sd["encoder.subsample.conv_layers.1.weight"] = torch.randn(2 * d, mid // 2, 5, generator=g)
    sd["encoder.subsample.conv_layers.1.bias"] = torch.randn(2 * d, generator=g)
    _linear(sd, "encoder.linear", d, d, g)
    for i in range(ENC_LAYERS):
        p = f"encoder.conformer_layers.{i}"
        for ffn in ("ffn1", "ffn2"):
            _ln(sd, f"{p}.{ffn}.layer_norm", d, g)
            _linear(sd, f"{p}.{ffn}.w_1", FFN_ENC, d, g)
            _linear(sd, f"{p}.{ffn}.w_2", d, FFN_ENC, g)
        _ln(sd, f"{p}.self_attn_layer_norm", d, g)
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            _linear(sd, f"{p}.self_attn.{proj}", d, d, g)
        _linear(sd, f"{p}.self_attn.linear_pos", d, d, g, bias=False)
        sd[f"{p}.self_attn.pos_bias_u"] = torch.randn(H_ENC, hd, generator=g)
        sd[f"{p}.self_attn.pos_bias_v"] = torch.randn(H_ENC, hd, generator=g)
        _ln(sd, f"{p}.conv_module.layer_norm", d, g)
        sd[f"{p}.conv_module.pointwise_conv1.weight"] = torch.randn(2 * d, d, 1, generator=g)
        sd[f"{p}.conv_module.depthwise_conv.weight"] = torch.randn(d, 1, KERNEL, generator=g)
        _ln(sd, f"{p}.conv_module.batch_norm", d, g)
        sd[f"{p}.conv_module.batch_norm.running_mean"] = torch.randn(d, generator=g)
        sd[f"{p}.conv_module.batch_norm.running_var"] = torch.rand(d, generator=g) + 0.5
        sd[f"{p}.conv_module.batch_norm.num_batches_tracked"] = torch.tensor(100)
        sd[f"{p}.conv_module.pointwise_conv2.weight"] = torch.randn(d, d, 1, generator=g)
        _ln(sd, f"{p}.final_layer_norm", d, g)
    # unit decoder (ctc_unity/modules/ctc_transformer_unit_decoder.py), shared embeddings
    sd["decoder.version"] = torch.tensor([3.0])
    unit_rows = UNITS + 5  # <s> <pad> </s> <unk>, "0".."K-1", <blank>
    sd["decoder.embed_tokens.weight"] = torch.randn(unit_rows, D_DEC, generator=g) * 0.2
    _fairseq_layer(sd, "decoder.layers.0", D_DEC, FFN_DEC, g, d_mem=D_DEC)
    _ln(sd, "decoder.layer_norm", D_DEC, g)
    sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
    # multitask decoders (configs/fr-en/config_mtl_asr_st_ctcst.yaml task names)
    _linear(sd, "source_unigram_decoder.proj", SRC_V, d, g)
    _fairseq_layer(sd, "ctc_target_unigram_decoder.layers.0", d, FFN_ENC, g)
    _ln(sd, "ctc_target_unigram_decoder.layer_norm", d, g)
    _linear(sd, "ctc_target_unigram_decoder.proj", TGT_V, d, g)
    sd["target_unigram_decoder.version"] = torch.tensor([3.0])
    embed = torch.randn(TGT_V, D_DEC, generator=g) * D_DEC**-0.5
    embed[1] = 0  # padding_idx row
    sd["target_unigram_decoder.embed_tokens.weight"] = embed
    sd["target_unigram_decoder.embed_positions._float_tensor"] = torch.zeros(1)  # old fairseq
    for i in range(MT_LAYERS):
        _fairseq_layer(sd, f"target_unigram_decoder.layers.{i}", D_DEC, FFN_DEC, g, d_mem=d)
    _ln(sd, "target_unigram_decoder.layer_norm", D_DEC, g)
    sd["target_unigram_decoder.output_projection.weight"] = embed
    # T2U (ctc_unity/modules/transformer_encoder.py UniTransformerEncoderNoEmb)
    _fairseq_layer(sd, "synthesizer_encoder.layers.0", D_DEC, FFN_DEC, g)
    _ln(sd, "synthesizer_encoder.layer_norm", D_DEC, g)
    return sd


class _Evil:
    """Must never run when a checkpoint is imported."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_fairseq_checkpoint(path: Path, sd: dict, nesting: str, marker: Path) -> None:
    """Save as fairseq does: {'args' | 'cfg', 'model', 'optimizer_history', 'extra_state', ...}
    with objects of fairseq/omegaconf-like classes that do not exist when loading."""
    names = ("fairseq", "fairseq.dataclass", "fairseq.dataclass.configs")
    fakes = {name: types.ModuleType(name) for name in names}  # pickle imports the parents
    fake = fakes["fairseq.dataclass.configs"]

    class FairseqConfig:  # stands for omegaconf.DictConfig / fairseq's dataclass config
        def __init__(self, **kw):
            self.__dict__.update(kw)

    FairseqConfig.__module__, FairseqConfig.__qualname__ = fake.__name__, "FairseqConfig"
    fake.FairseqConfig = FairseqConfig
    sys.modules.update(fakes)
    try:
        args = argparse.Namespace(arch="streamspeech", encoder_layers=ENC_LAYERS, chunk_size=8)
        payload = {
            "model": sd,
            "optimizer_history": [{"criterion_name": "x", "num_updates": 10}],
            "extra_state": {"train_iterator": {"epoch": 3}, "hook": _Evil(marker)},
            "last_optimizer_state": None,
        }
        if nesting in ("args", "legacy"):
            payload["args"] = args
        else:
            payload["args"] = None
            payload["cfg"] = FairseqConfig(model=args, task={"_name": "speech_to_speech_ctc"})
        # old fairseq checkpoints predate torch's zip format
        torch.save(payload, path, _use_new_zipfile_serialization=nesting != "legacy")
    finally:
        for name in names:
            del sys.modules[name]


# ---- a fairseq-style reference forward (written from fairseq's code, fairseq ids)


def _ref_ln(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"])


def _ref_mha(x, mem, sd, key, heads, mask):
    """fairseq MultiheadAttention: q scaled by head_dim**-0.5, additive -inf mask."""

    def lin(t, name):
        return t @ sd[f"{key}.{name}.weight"].T + sd[f"{key}.{name}.bias"]

    b, tq, d = x.shape
    hd = d // heads
    q = lin(x, "q_proj") * hd**-0.5
    k, v = lin(mem, "k_proj"), lin(mem, "v_proj")
    q, k, v = (t.view(b, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, tq, d)
    return lin(out, "out_proj")


def _ref_layer(x, sd, key, heads, mem=None, causal=True):
    """Pre-norm fairseq layer with (causal) self-attention (+ full cross-attention)."""
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril() if causal else None
    h = _ref_ln(x, sd, f"{key}.self_attn_layer_norm")
    x = x + _ref_mha(h, h, sd, f"{key}.self_attn", heads, causal)
    if mem is not None:
        h = _ref_ln(x, sd, f"{key}.encoder_attn_layer_norm")
        x = x + _ref_mha(h, mem, sd, f"{key}.encoder_attn", heads, None)
    h = _ref_ln(x, sd, f"{key}.final_layer_norm")
    h = F.relu(h @ sd[f"{key}.fc1.weight"].T + sd[f"{key}.fc1.bias"])
    return x + h @ sd[f"{key}.fc2.weight"].T + sd[f"{key}.fc2.bias"]


def _ref_sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """fairseq SinusoidalPositionalEmbedding.get_embedding rows."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angle = positions.float()[:, None] * freq[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def reference_mt_decoder(sd, fs_tokens, enc):
    """fairseq TransformerDecoder (pre-norm, tied output) on fairseq ids (1, U) -> logits,
    hidden. Positions start at padding_idx + 1 = 2."""
    p = "target_unigram_decoder"
    emb = sd[f"{p}.embed_tokens.weight"]
    u = fs_tokens.shape[1]
    x = math.sqrt(D_DEC) * emb[fs_tokens] + _ref_sinusoid(torch.arange(2, 2 + u), D_DEC)
    for i in range(MT_LAYERS):
        x = _ref_layer(x, sd, f"{p}.layers.{i}", H_DEC, mem=enc)
    hidden = _ref_ln(x, sd, f"{p}.layer_norm")
    return hidden @ sd[f"{p}.output_projection.weight"].T, hidden


# ---- tests


@pytest.fixture(scope="module")
def fairseq_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fairseq")
    sd = streamspeech_state_dict()
    files = {}
    for nesting in ("args", "cfg", "legacy"):
        files[nesting] = folder / f"streamspeech_{nesting}.pt"
        write_fairseq_checkpoint(files[nesting], sd, nesting, folder / "PWNED")
    return sd, files, folder / "PWNED"


@pytest.mark.parametrize("nesting", ["args", "cfg", "legacy"])
def test_fairseq_checkpoint_unpickles_without_running_anything(fairseq_files, nesting):
    sd, files, marker = fairseq_files
    data = load_fairseq_checkpoint(files[nesting])
    assert not marker.exists()  # os.system was replaced by an inert stand-in
    assert "fairseq" not in sys.modules and "fairseq.dataclass.configs" not in sys.modules
    assert "system" in repr(data["extra_state"]["hook"])
    args = data["cfg"].model if nesting == "cfg" else data["args"]
    assert (args.arch, args.encoder_layers, args.chunk_size) == ("streamspeech", ENC_LAYERS, 8)
    assert data["model"].keys() == sd.keys()
    assert all(torch.equal(data["model"][k], sd[k]) for k in sd)
    assert data["optimizer_history"][0]["num_updates"] == 10


def test_import_streamspeech_baseline_maps_every_counterpart(fairseq_files):
    sd, files, marker = fairseq_files
    model, report = import_streamspeech(files["args"], config("streamspeech"))
    assert not marker.exists()
    text = str(report)
    for section in (
        "mapped:",
        "without counterpart",
        "shape mismatches",
        "left at init",
        "id permutations",
    ):
        assert section in text

    no_counterpart = {k for k in sd if ".subsample." in k or ".batch_norm." in k}
    ignored = {k for k in sd if k.endswith((".version", "._float_tensor"))}
    mapped_src = {src for src, _, _ in report.mapped}
    assert mapped_src == set(sd) - no_counterpart - ignored
    assert {src for src, _ in report.unmapped_source} == no_counterpart
    assert set(report.ignored) == ignored and report.shape_mismatches == []
    left = set(report.left_at_init)
    assert left == {
        n
        for n, _ in model.named_parameters()
        if n.startswith("encoder.subsampling.") or ".conv_module.norm." in n
    }
    assert any("tied" in note for src, _, note in report.mapped if "output_projection" in src)

    own = model.state_dict()
    # plain copies
    assert torch.equal(
        own["mt_decoder.layers.1.encoder_attn.k_proj.weight"],
        sd["target_unigram_decoder.layers.1.encoder_attn.k_proj.weight"],
    )
    assert torch.equal(
        own["encoder.body.layers.1.self_attn.pos_bias_u"],
        sd["encoder.conformer_layers.1.self_attn.pos_bias_u"],
    )
    assert torch.equal(own["encoder.body.input_proj.weight"], sd["encoder.linear.weight"])
    assert torch.equal(
        own["st_ctc.layers.0.fc2.bias"], sd["ctc_target_unigram_decoder.layers.0.fc2.bias"]
    )
    # Conv1d(k=1) -> Linear; centred depthwise kernel -> causal (future taps dropped)
    p = "encoder.conformer_layers.0.conv_module"
    q = "encoder.body.layers.0.conv_module"
    assert torch.equal(
        own[f"{q}.pointwise_conv1.weight"], sd[f"{p}.pointwise_conv1.weight"][..., 0]
    )
    dw, src = own[f"{q}.depthwise_conv.weight"], sd[f"{p}.depthwise_conv.weight"]
    half = KERNEL // 2
    assert torch.equal(dw[..., half:], src[..., : half + 1])
    assert torch.all(dw[..., :half] == 0)
    # vocabulary rows
    mt = own["mt_decoder.embed_tokens.weight"]
    assert torch.equal(mt[2], sd["target_unigram_decoder.embed_tokens.weight"][2])  # BOS <- </s>
    assert torch.equal(mt[0], torch.zeros(D_DEC)) and torch.equal(
        mt[4:], sd["target_unigram_decoder.embed_tokens.weight"][4:]
    )
    unit = own["unit_decoder.head.proj.weight"]
    assert torch.equal(unit[0], sd["decoder.output_projection.weight"][UNITS + 4])  # <blank>
    assert torch.equal(unit[1:], sd["decoder.output_projection.weight"][4 : 4 + UNITS])


def test_imported_modules_reproduce_fairseq_outputs(fairseq_files):
    """After the id permutations, EchoStream's modules compute what fairseq's would."""
    sd, files, _ = fairseq_files
    model, _ = import_streamspeech(files["cfg"], config("streamspeech"))
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(1, 7, D_ENC, generator=g)
    enc_len = torch.tensor([7])
    with torch.no_grad():
        # MT decoder: fairseq feeds </s> (2) first; EchoStream feeds BOS (2); pieces unchanged.
        fs_tokens = torch.tensor([[2, 5, 9, 4, 11]])
        ours_tokens = torch.tensor([[2, 5, 9, 4, 11]])
        ref_logits, ref_hidden = reference_mt_decoder(sd, fs_tokens, enc)
        logits, hidden = model.mt_decoder(ours_tokens, torch.tensor([5]), enc, enc_len)
        torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            logits, ref_logits[..., mt_vocab_index(TGT_V)], atol=1e-5, rtol=1e-5
        )
        # T2U over the MT hidden states: causal pre-norm layer + final LayerNorm
        ref_t2u = _ref_ln(
            _ref_layer(ref_hidden, sd, "synthesizer_encoder.layers.0", H_DEC),
            sd,
            "synthesizer_encoder.layer_norm",
        )
        t2u, _ = model.t2u(hidden, torch.tensor([5]))
        torch.testing.assert_close(t2u, ref_t2u, atol=1e-5, rtol=1e-5)
        # CTC heads: EchoStream class c = fairseq row text_ctc_index[c] (blank = <s> = 0)
        ref_asr = (
            enc @ sd["source_unigram_decoder.proj.weight"].T
            + sd["source_unigram_decoder.proj.bias"]
        )
        torch.testing.assert_close(model.asr_ctc(enc), ref_asr[..., text_ctc_index(SRC_V)])
        # ST CTC decoder layers: fairseq's are bidirectional (uni_encoder off in decoder_args),
        # EchoStream's block-causal: equal when one block covers the utterance.
        h = _ref_layer(enc, sd, "ctc_target_unigram_decoder.layers.0", H_ENC, causal=False)
        h = _ref_ln(h, sd, "ctc_target_unigram_decoder.layer_norm")
        ref_st = (
            h @ sd["ctc_target_unigram_decoder.proj.weight"].T
            + sd["ctc_target_unigram_decoder.proj.bias"]
        )
        st, _ = model.st_ctc(enc, enc_len, block_size=7)
        torch.testing.assert_close(st, ref_st[..., text_ctc_index(TGT_V)], atol=1e-5, rtol=1e-5)
        # unit head: class 0 (blank) <- <blank> row, unit u <- row 4 + u
        x = torch.randn(1, 3, D_DEC, generator=g)
        ref_units = x @ sd["decoder.output_projection.weight"].T
        torch.testing.assert_close(
            model.unit_decoder.head(x), ref_units[..., unit_ctc_index(UNITS, UNITS + 5)]
        )


def test_import_into_echostream_maps_decoders_only(tmp_path):
    sd = streamspeech_state_dict()
    mean, std = torch.linspace(-1, 1, 80), torch.linspace(0.5, 2, 80)
    np.savez(tmp_path / "gcmvn.npz", mean=mean.numpy(), std=std.numpy())
    model, report = import_streamspeech(
        {"args": None, "model": sd}, config("echostream"), gcmvn=tmp_path / "gcmvn.npz"
    )
    assert torch.equal(model.encoder.cmvn.mean, mean) and torch.equal(model.encoder.cmvn.std, std)
    encoder_keys = {k for k in sd if k.startswith("encoder.")}
    reasons = dict(report.unmapped_source)
    assert set(reasons) == encoder_keys
    assert all("Emformer" in r for r in reasons.values())
    assert set(report.left_at_init) == {
        n for n, _ in model.named_parameters() if n.startswith("encoder.")
    }
    assert not any(dst.startswith("encoder.") for _, dst, _ in report.mapped)
    _, report2 = import_streamspeech(sd, config("echostream"))  # a bare state dict
    assert report2.mapped == report.mapped


def test_import_reports_shape_mismatches_and_unknown_keys():
    sd = streamspeech_state_dict()
    sd["some_new_module.weight"] = torch.zeros(3)
    cfg = config("streamspeech")
    cfg.vocab.tgt_vocab_size = TGT_V + 2  # another target dictionary
    cfg.vocab.num_units = UNITS + 2  # (UNITS + 1 would read as a dictionary without <blank>)
    _, report = import_streamspeech(sd, cfg)
    bad = {src: (dst, have, want) for src, dst, have, want in report.shape_mismatches}
    assert bad["target_unigram_decoder.embed_tokens.weight"][0] == "mt_decoder.embed_tokens.weight"
    assert bad["ctc_target_unigram_decoder.proj.weight"][1:] == ((TGT_V, D_ENC), (TGT_V + 2, D_ENC))
    assert "decoder.output_projection.weight" in bad
    assert ("some_new_module.weight", "no counterpart in EchoStream") in report.unmapped_source
    assert "mt_decoder.embed_tokens.weight" in report.left_at_init
    assert "unit_decoder.head.proj.weight" in report.left_at_init
    assert "shape mismatches (not mapped): 4" in str(report)


def test_unit_index_without_blank_symbol():
    assert unit_ctc_index(3, 3 + 5) == [7, 4, 5, 6]  # <blank> appended (StreamSpeech)
    assert unit_ctc_index(3, 3 + 4) == [0, 4, 5, 6]  # no <blank>: <s>
    assert unit_ctc_index(3, 9) is None
    assert sorted(text_ctc_index(8)) == list(range(8))  # a permutation
    assert mt_vocab_index(6) == [1, 3, 2, 2, 4, 5]


def test_import_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        import_streamspeech(tmp_path / "nope.pt", config())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        import_streamspeech(bad, config())
    torch.save({"weights": 1}, tmp_path / "nomodel.pt")
    with pytest.raises(CheckpointError, match="no 'model'"):
        import_streamspeech(tmp_path / "nomodel.pt", config())
    with pytest.raises(TypeError):
        import_streamspeech(42, config())
