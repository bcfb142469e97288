"""The assembled model: multitask loss wiring (overfitting 8 utterances, both architectures),
ragged batches and padding, empty targets, loss normalisation, multi-chunk pass-through,
offline translation and the parameter report."""

from __future__ import annotations

import math

import helpers_models
import numpy as np
import pytest
import torch

from echostream.config import EchoStreamConfig
from echostream.data.sampler import S2STItem, collate
from echostream.models import EchoStreamModel, TranslationResult, build_model

SRC_V, TGT_V, UNITS = 20, 20, 12
MODELS = ["echostream", "streamspeech"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_config(model: str = "echostream", label_smoothing: float = 0.0) -> EchoStreamConfig:
    """A very small system (~80k parameters), no dropout."""
    return helpers_models.tiny_config(
        helpers_models.KIND_OF[model],
        channels=4,
        num_heads=2,
        mt_layers=2,
        vocab=(SRC_V, TGT_V, UNITS),
        ctc_left_context=8,
        label_smoothing=label_smoothing,
        conformer={"train_chunk_sizes": [2, 4, 0]},
    )


def synthetic_items(n: int = 8, seed: int = 0, frames=(24, 56)) -> list[S2STItem]:
    """Random fbank (T, 80) + random source/target ids (>= 4) + random units."""
    g = torch.Generator().manual_seed(seed)

    def randint(lo, hi, size=()):
        return torch.randint(lo, hi, size, generator=g)

    items = []
    for i in range(n):
        t = int(randint(*frames))
        items.append(
            S2STItem(
                id=f"utt{i}",
                fbank=torch.randn(t, 80, generator=g),
                src_tokens=randint(4, SRC_V, (int(randint(2, 7)),)),
                tgt_tokens=randint(4, TGT_V, (int(randint(2, 6)),)),
                units=randint(0, UNITS, (int(randint(3, 10)),)),
            )
        )
    return items


def make_model(model: str = "echostream", seed: int = 0, **kw) -> EchoStreamModel:
    torch.manual_seed(seed)
    return build_model(tiny_config(model, **kw))


# --------------------------------------------------------------------------- training signal


@pytest.mark.parametrize("arch", MODELS)
def test_tiny_model_overfits_eight_utterances(arch):
    """Proof that every loss and gradient is wired: total falls below 5% of its initial value
    and greedy MT decoding reproduces all 8 targets (label smoothing off: it bounds CE > 0)."""
    items = synthetic_items()
    batch = collate(items)
    model = make_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first, exact, step = None, 0, 0
    for step in range(250):  # noqa: B007
        losses = model(batch)
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
            initial = first["total"]
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        if float(losses["total"].detach()) < 0.05 * initial:
            exact = sum(model.translate(it.fbank).tgt_ids == it.tgt_tokens.tolist() for it in items)
            if exact == len(items):
                break
    assert model.training  # translate restored the mode
    with torch.no_grad():
        final = {k: float(v) for k, v in model(batch).items()}
    assert final["total"] < 0.05 * initial, (step, final, first)
    assert exact == len(items), f"{exact}/8 targets reproduced after {step + 1} steps"
    print(f"{arch}: {step + 1} steps, total {initial:.2f} -> {final['total']:.4f}")
    for name in ("asr_ctc", "st_ctc", "mt_ce", "unit_ctc"):  # every task learned
        assert final[name] < 0.2 * first[name], (name, final, first)


def test_loss_dict_and_weights():
    model = make_model(label_smoothing=0.1).eval()
    batch = collate(synthetic_items(4))
    out = model(batch)
    assert set(out) == {"asr_ctc", "st_ctc", "mt_ce", "mt_nll", "unit_ctc", "total"}
    w = model.cfg.loss
    expected = (
        w.asr_ctc_weight * out["asr_ctc"]
        + w.st_ctc_weight * out["st_ctc"]
        + w.mt_ce_weight * out["mt_ce"]
        + w.unit_ctc_weight * out["unit_ctc"]
    )
    torch.testing.assert_close(out["total"], expected, rtol=0, atol=0)
    assert (w.unit_ctc_weight, w.mt_ce_weight, w.asr_ctc_weight, w.st_ctc_weight) == (1, 8, 4, 4)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert not out["mt_nll"].requires_grad and float(out["mt_nll"]) > 0  # monitoring only


def test_losses_match_hand_computation():
    """Per-token normalisation, label smoothing and each head's CTC, recomputed from outputs."""
    import torch.nn.functional as F

    model = make_model(label_smoothing=0.1).eval()
    batch = collate(synthetic_items(3, seed=3))
    with torch.no_grad():
        out = model.outputs(batch)
        losses = model.losses(out, batch)
    enc_len = out.enc_len

    def ctc(logits, lengths, targets, target_len, offset=0):
        total = 0.0
        for b in range(logits.shape[0]):
            lp = F.log_softmax(logits[b, : lengths[b]], -1)[:, None]
            tgt = targets[b, : target_len[b]][None] + offset
            total += F.ctc_loss(
                lp,
                tgt,
                lengths[b : b + 1],
                target_len[b : b + 1],
                reduction="sum",
                zero_infinity=True,
            )
        return total / target_len.sum()

    torch.testing.assert_close(
        losses["asr_ctc"],
        ctc(out.asr_logits, enc_len, batch["src_tokens"], batch["src_len"]),
    )
    torch.testing.assert_close(
        losses["st_ctc"], ctc(out.st_logits, enc_len, batch["tgt_tokens"], batch["tgt_len"])
    )
    torch.testing.assert_close(
        losses["unit_ctc"],
        ctc(out.unit_logits, out.unit_frame_len, batch["units"], batch["unit_len"], offset=1),
    )
    ce, n = 0.0, 0
    for b in range(3):
        m = int(batch["tgt_len"][b]) + 1
        ce += F.cross_entropy(
            out.mt_logits[b, :m], batch["tgt_out"][b, :m], label_smoothing=0.1, reduction="sum"
        )
        n += m
    torch.testing.assert_close(losses["mt_ce"], ce / n)


def test_loss_normalisation_is_batch_size_invariant():
    """The same utterances twice in a batch give the same losses as once."""
    model = make_model().eval()
    items = synthetic_items(3, seed=5)
    with torch.no_grad():
        once = model(collate(items))
        twice = model(collate(items + items))
    for k in once:
        torch.testing.assert_close(once[k], twice[k], rtol=1e-5, atol=1e-6)


def test_zero_weight_skips_branch():
    cfg = tiny_config()
    cfg.loss.asr_ctc_weight = cfg.loss.st_ctc_weight = cfg.loss.mt_ce_weight = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(collate(synthetic_items(2)))
    assert float(out["asr_ctc"]) == 0 and float(out["st_ctc"]) == 0
    assert float(out["unit_ctc"]) > 0 and float(out["mt_ce"]) > 0  # MT still runs for T2U
    torch.testing.assert_close(out["total"], out["unit_ctc"], rtol=0, atol=0)
    cfg.loss.mt_ce_weight, cfg.loss.unit_ctc_weight = 1.0, 0.0
    with torch.no_grad():
        out = model(collate(synthetic_items(2)))
    assert float(out["unit_ctc"]) == 0 and float(out["mt_ce"]) > 0


# --------------------------------------------------------------------------- ragged batches


@pytest.mark.parametrize("arch", MODELS)
def test_ragged_batch_equals_single_utterances(arch):
    """Each utterance's outputs in a ragged batch equal its outputs alone (valid positions)."""
    model = make_model(arch).eval()
    items = synthetic_items(4, seed=1, frames=(9, 70))
    with torch.no_grad():
        full = model.outputs(collate(items))
        assert full.enc.shape[:2] == (4, math.ceil(max(len(i.fbank) for i in items) / 4))
        assert full.mt_logits.shape == (4, max(len(i.tgt_tokens) for i in items) + 1, TGT_V)
        assert full.unit_logits.shape[2] == UNITS + 1
        for b, item in enumerate(items):
            one = model.outputs(collate([item]))
            s, u = int(one.enc_len[0]), int(one.mt_len[0])
            f = int(one.unit_frame_len[0])
            assert (s, u, f) == (math.ceil(len(item.fbank) / 4), len(item.tgt_tokens) + 1, 3 * u)
            assert int(full.enc_len[b]) == s
            for name, n in (
                ("enc", s),
                ("asr_logits", s),
                ("st_logits", s),
                ("mt_logits", u),
                ("mt_hidden", u),
                ("t2u_out", u),
                ("unit_logits", f),
            ):
                torch.testing.assert_close(
                    getattr(full, name)[b, :n], getattr(one, name)[0, :n], atol=1e-5, rtol=1e-5
                )
            assert torch.all(full.enc[b, s:] == 0)


@pytest.mark.parametrize("arch", MODELS)
def test_padding_never_leaks(arch):
    """Garbage in padded fbank frames and padded token/unit slots changes no loss, no output."""
    model = make_model(arch, label_smoothing=0.1).eval()
    batch = collate(synthetic_items(4, seed=2, frames=(9, 70)))
    dirty = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    g = torch.Generator().manual_seed(7)
    pad = ~(torch.arange(dirty["fbank"].shape[1]) < dirty["fbank_len"][:, None])
    dirty["fbank"][pad] = 1e4 * torch.randn(int(pad.sum()), 80, generator=g)
    for key, length, extra in (
        ("src_tokens", "src_len", 0),
        ("tgt_tokens", "tgt_len", 0),
        ("prev_output_tokens", "tgt_len", 1),
        ("tgt_out", "tgt_len", 1),
        ("units", "unit_len", 0),
    ):
        t = dirty[key]
        mask = ~(torch.arange(t.shape[1]) < (dirty[length] + extra)[:, None])
        hi = UNITS if key == "units" else TGT_V
        t[mask] = torch.randint(1, hi, (int(mask.sum()),), generator=g)
        assert mask.any()
    with torch.no_grad():
        clean_loss, dirty_loss = model(batch), model(dirty)
        clean_out, dirty_out = model.outputs(batch), model.outputs(dirty)
    for k in clean_loss:
        assert torch.equal(clean_loss[k], dirty_loss[k]), k
    for name in ("enc", "asr_logits", "st_logits", "mt_logits", "t2u_out", "unit_logits"):
        c, d = getattr(clean_out, name), getattr(dirty_out, name)
        valid = (
            torch.arange(c.shape[1])
            < {
                "enc": clean_out.enc_len,
                "asr_logits": clean_out.enc_len,
                "st_logits": clean_out.enc_len,
                "unit_logits": clean_out.unit_frame_len,
            }.get(name, clean_out.mt_len)[:, None]
        )
        assert torch.equal(c[valid], d[valid]), name


# --------------------------------------------------------------------------- empty targets


@pytest.mark.parametrize("arch", MODELS)
def test_empty_targets_give_finite_losses_and_gradients(arch):
    model = make_model(arch, label_smoothing=0.1)
    items = synthetic_items(3, seed=4)
    empty = torch.zeros(0, dtype=torch.long)
    items[0].src_tokens, items[0].tgt_tokens, items[0].units = empty, empty, empty
    items[1].units = empty
    for batch in (collate(items), collate(items[:1])):  # some empty; all empty
        out = model(batch)
        assert all(torch.isfinite(v) for v in out.values()), out
        model.zero_grad()
        out["total"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert float(out["total"].detach()) > 0  # blanks-only CTC and the EOS still cost something


def test_impossible_ctc_alignment_counts_zero():
    """A target longer than the input (zero_infinity) must not produce inf."""
    model = make_model().eval()
    item = synthetic_items(1, frames=(8, 9))[0]  # 2 encoder frames
    item.src_tokens = torch.arange(4, 14)
    with torch.no_grad():
        out = model(collate([item]))
    assert float(out["asr_ctc"]) == 0.0 and torch.isfinite(out["total"])


# --------------------------------------------------------------------------- baseline chunks


def test_chunk_size_reaches_the_conformer_only():
    items = synthetic_items(2, seed=6, frames=(60, 70))
    batch = collate(items)
    base = make_model("streamspeech").eval()
    with torch.no_grad():
        default = base.outputs(batch)
        small = base.outputs(batch, chunk_size=2)
        full = base.outputs(batch, chunk_size=0)
        direct, _ = base.encoder(batch["fbank"], batch["fbank_len"], chunk_size=2)
        cfg_chunk, _ = base.encoder(batch["fbank"], batch["fbank_len"], chunk_size=4)
    torch.testing.assert_close(small.enc, direct, rtol=0, atol=0)
    torch.testing.assert_close(default.enc, cfg_chunk, rtol=0, atol=0)
    assert not torch.allclose(small.enc, full.enc)
    assert not torch.allclose(small.st_logits, default.st_logits)  # ST CTC block follows
    assert base.sample_chunk_size() in (2, 4, 0)

    echo = make_model("echostream").eval()
    with torch.no_grad():
        a, b = echo.outputs(batch), echo.outputs(batch, chunk_size=2)
    assert torch.equal(a.enc, b.enc) and torch.equal(a.st_logits, b.st_logits)
    assert echo.sample_chunk_size() is None


# --------------------------------------------------------------------------- inference


def test_translate_offline():
    model = make_model("echostream")
    item = synthetic_items(1, seed=8)[0]
    greedy = model.translate(item.fbank)
    assert isinstance(greedy, TranslationResult) and model.training
    assert greedy.asr_text is None and greedy.tgt_text is None
    for ids, vocab in ((greedy.asr_ids, SRC_V), (greedy.st_ids, TGT_V)):
        assert all(4 <= i < vocab for i in ids)  # CTC: unk/bos/eos suppressed
    assert all(i == 1 or 4 <= i < TGT_V for i in greedy.tgt_ids)  # MT: never pad/bos/eos
    assert all(0 <= u < UNITS for u in greedy.units)
    # beam 4 (numpy input) within the length budget; same ASR as greedy
    beam = model.translate(item.fbank.numpy(), beam=4)
    assert len(beam.tgt_ids) <= int(0.5 * math.ceil(len(item.fbank) / 4)) + 10
    assert all(i == 1 or 4 <= i < TGT_V for i in beam.tgt_ids) and beam.asr_ids == greedy.asr_ids
    # units are those of the decoded target re-run teacher-forced
    model.eval()
    with torch.no_grad():
        enc, enc_len = model.encoder(item.fbank[None], torch.tensor([len(item.fbank)]))
        assert model.units_for_text(greedy.tgt_ids, enc, enc_len) == greedy.units
    # PCM input goes through the front end
    pcm = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    assert isinstance(model.translate(pcm), TranslationResult)
    with pytest.raises(ValueError, match="PCM"):
        model.translate(torch.zeros(3, 10, 80))
    with pytest.raises(ValueError, match="beam"):
        model.translate(item.fbank, beam=0)


def test_units_are_greedy_ctc_collapse():
    """Greedy CTC collapse of the unit logits: no blanks, merged repeats."""
    from echostream.models.unit_decoder import UnitDecoder

    logits = torch.full((1, 6, UNITS + 1), -10.0)
    for t, c in enumerate([0, 3, 3, 0, 3, 5]):  # class c = unit c - 1, 0 = blank
        logits[0, t, c] = 0.0
    units, counts = UnitDecoder.units(logits, torch.tensor([6]))
    assert units[0, : counts[0]].tolist() == [2, 2, 4]


def test_parameter_report():
    model = make_model("streamspeech")
    report = model.parameter_report()
    assert list(report) == [
        "subsampling",
        "encoder body",
        "ASR CTC head",
        "ST CTC decoder",
        "MT decoder",
        "T2U encoder",
        "unit decoder",
        "total",
    ]
    assert sum(v for k, v in report.items() if k != "total") == report["total"]
    assert report["ASR CTC head"] == 32 * SRC_V + SRC_V
    assert report["MT decoder"] == sum(p.numel() for p in model.mt_decoder.parameters())


def test_architecture_follows_config():
    from echostream.models.conformer import ChunkConformer
    from echostream.models.emformer import Emformer

    echo, base = make_model("echostream"), make_model("streamspeech")
    assert isinstance(echo.encoder.body, Emformer)
    assert isinstance(base.encoder.body, ChunkConformer)
    names = ("asr_ctc", "st_ctc", "mt_decoder", "t2u", "unit_decoder")
    for name in names:  # identical decoders: same parameter names and shapes
        a = {k: v.shape for k, v in getattr(echo, name).state_dict().items()}
        b = {k: v.shape for k, v in getattr(base, name).state_dict().items()}
        assert a == b, name
    assert echo.st_ctc.block_size == 4 and base.st_ctc.block_size == 4
