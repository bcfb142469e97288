"""Unit vocoders: fairseq-compatible CodeHiFiGAN loading, UnitVocoder streaming and training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echostream.models.unit_vocoder import UnitVocoder, UnitVocoderConfig
from echostream.models.vocoder import CodeHiFiGAN, CodeHiFiGANConfig

PRETRAINED = Path(__file__).resolve().parents[1] / "echostream" / "pretrained" / "vocoder-tiny"

# A fairseq vocoder config.json with the official layout (rates 5·4·4·2·2, kernels 11,8,8,4,4)
# and tiny widths; training-only keys are present as in the real file and must be ignored.
TINY_FAIRSEQ_CONFIG = {
    "resblock": "1",
    "learning_rate": 0.0002,
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20,
    "embedding_dim": 8,
    "model_in_dim": 8,
    "segment_size": 8960,
    "code_hop_size": 320,
    "f0": False,
    "num_mels": 80,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 8,
        "var_pred_hidden_dim": 6,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
}


def fairseq_generator_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a fairseq CodeGenerator state dict with weight norm, written from
    fairseq's constructor (independently of echostream's module tree)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def wn_conv(name: str, weight: tuple[int, ...]) -> None:
        shapes[f"{name}.weight_g"] = (weight[0], 1, 1)  # weight_norm(dim=0)
        shapes[f"{name}.weight_v"] = weight

    c0, emb = cfg["upsample_initial_channel"], cfg["embedding_dim"]
    shapes["dict.weight"] = (cfg["num_embeddings"], emb)
    dp = cfg["dur_predictor_params"]
    h, k = dp["var_pred_hidden_dim"], dp["var_pred_kernel_size"]
    shapes.update({
        "dur_predictor.conv1.0.weight": (h, dp["encoder_embed_dim"], k),
        "dur_predictor.conv1.0.bias": (h,),
        "dur_predictor.ln1.weight": (h,), "dur_predictor.ln1.bias": (h,),
        "dur_predictor.conv2.0.weight": (h, h, k), "dur_predictor.conv2.0.bias": (h,),
        "dur_predictor.ln2.weight": (h,), "dur_predictor.ln2.bias": (h,),
        "dur_predictor.proj.weight": (1, h), "dur_predictor.proj.bias": (1,),
    })  # fmt: skip
    wn_conv("conv_pre", (c0, cfg["model_in_dim"], 7))
    shapes["conv_pre.bias"] = (c0,)
    block = 0
    for i, kernel in enumerate(cfg["upsample_kernel_sizes"]):
        c_in, c_out = c0 // 2**i, c0 // 2 ** (i + 1)
        wn_conv(f"ups.{i}", (c_in, c_out, kernel))  # ConvTranspose1d: (in, out, k)
        shapes[f"ups.{i}.bias"] = (c_out,)
        for rk, dilations in zip(
            cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"], strict=True
        ):
            for conv in ("convs1", "convs2"):
                for m in range(len(dilations)):
                    wn_conv(f"resblocks.{block}.{conv}.{m}", (c_out, c_out, rk))
                    shapes[f"resblocks.{block}.{conv}.{m}.bias"] = (c_out,)
            block += 1
    c_last = c0 // 2 ** len(cfg["upsample_rates"])
    wn_conv("conv_post", (1, c_last, 7))
    shapes["conv_post.bias"] = (1,)
    return shapes


def random_fairseq_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in fairseq_generator_shapes(cfg).items():
        scale = 0.3 if "weight" in name else 0.05
        state[name] = torch.randn(shape, generator=g) * scale
        if name.endswith("weight_g"):
            state[name] = state[name].abs() + 0.2
        if ".ln" in name and name.endswith("weight"):
            state[name] = 1 + state[name]
    return state


def reference_generator(state: dict[str, torch.Tensor], cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """fairseq's Generator.forward written out with functional ops on a weight-normed state
    dict: x (1, model_in_dim, T) -> (1, T·320)."""

    def w(name: str) -> torch.Tensor:
        v, g = state[f"{name}.weight_v"], state[f"{name}.weight_g"]
        return g * v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))

    x = F.conv1d(x, w("conv_pre"), state["conv_pre.bias"], padding=3)
    nk = len(cfg["resblock_kernel_sizes"])
    for i, (r, k) in enumerate(
        zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"], strict=True)
    ):
        x = F.leaky_relu(x, 0.1)
        x = F.conv_transpose1d(x, w(f"ups.{i}"), state[f"ups.{i}.bias"], r, (k - r) // 2)
        total = 0
        for j in range(nk):
            b, rk = i * nk + j, cfg["resblock_kernel_sizes"][j]
            y = x
            for m, d in enumerate(cfg["resblock_dilation_sizes"][j]):
                name1, name2 = f"resblocks.{b}.convs1.{m}", f"resblocks.{b}.convs2.{m}"
                t = F.leaky_relu(y, 0.1)
                t = F.conv1d(
                    t, w(name1), state[f"{name1}.bias"], dilation=d, padding=(rk * d - d) // 2
                )
                t = F.leaky_relu(t, 0.1)
                t = F.conv1d(t, w(name2), state[f"{name2}.bias"], padding=(rk - 1) // 2)
                y = y + t
            total = total + y
        x = total / nk
    x = F.conv1d(F.leaky_relu(x, 0.01), w("conv_post"), state["conv_post.bias"], padding=3)
    return torch.tanh(x).squeeze(1)


@pytest.fixture
def tiny_codehifigan() -> tuple[CodeHiFiGAN, dict]:
    state = random_fairseq_state(TINY_FAIRSEQ_CONFIG)
    model = CodeHiFiGAN(CodeHiFiGANConfig.from_dict(TINY_FAIRSEQ_CONFIG)).eval()
    model.load_fairseq_state_dict(state)
    return model, state


# ------------------------------------------------------------------------- CodeHiFiGAN


def test_official_config_shapes():
    """The default config is the mHuBERT km1000 vocoder's: 1000×128 units, 512 channels."""
    cfg = CodeHiFiGANConfig()
    assert cfg.hop_size == 320
    shapes = {k: tuple(v.shape) for k, v in CodeHiFiGAN(cfg).state_dict().items()}
    assert shapes["dict.weight"] == (1000, 128)
    assert shapes["conv_pre.weight"] == (512, 128, 7)
    assert shapes["ups.0.weight"] == (512, 256, 11)
    assert shapes["ups.4.weight"] == (32, 16, 4)
    assert shapes["resblocks.14.convs1.2.weight"] == (16, 16, 11)
    assert shapes["conv_post.weight"] == (1, 16, 7)
    assert shapes["dur_predictor.conv2.0.weight"] == (128, 128, 3)


def test_fold_weight_norm_matches_torch():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 3, 5))
    g, v = torch.rand(6, 1, 1) + 0.5, torch.randn(6, 3, 5)
    conv.parametrizations.weight.original0.data.copy_(g)
    conv.parametrizations.weight.original1.data.copy_(v)
    folded = CodeHiFiGAN.fold_weight_norm({"m.weight_g": g, "m.weight_v": v, "m.bias": conv.bias})
    torch.testing.assert_close(folded["m.weight"], conv.weight, rtol=0, atol=1e-6)
    # new-style parametrization names fold the same way
    prefix = "m.parametrizations.weight.original"
    new = CodeHiFiGAN.fold_weight_norm({f"{prefix}0": g, f"{prefix}1": v})
    torch.testing.assert_close(new["m.weight"], conv.weight, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="both g and v"):
        CodeHiFiGAN.fold_weight_norm({"m.weight_g": g})


def test_generator_matches_functional_reference(tiny_codehifigan):
    model, state = tiny_codehifigan
    units = torch.tensor([[3, 3, 7, 0, 19, 5]])
    dur = torch.tensor([[1, 2, 1, 3, 1, 2]])
    wav, wav_len = model(units, durations=dur)
    assert wav.shape == (1, 10 * 320) and wav_len.tolist() == [3200]
    frames = state["dict.weight"][units[0].repeat_interleave(dur[0])].T.unsqueeze(0)
    torch.testing.assert_close(wav, reference_generator(state, TINY_FAIRSEQ_CONFIG, frames),
                               rtol=0, atol=1e-5)  # fmt: skip


def test_duration_prediction_sets_length(tiny_codehifigan):
    model, _ = tiny_codehifigan
    units = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    dp = model.dur_predictor
    with torch.no_grad():  # log(1 + d) = log 4 everywhere -> fairseq's round(exp - 1) = 3
        dp.proj.weight.zero_()
        dp.proj.bias.fill_(float(np.log(4.0)))
    assert model.predict_durations(units).tolist() == [[3] * 7]
    wav, wav_len = model(units)
    assert wav_len.tolist() == [7 * 3 * 320] and wav.shape[1] == 7 * 3 * 320
    _, len1 = model(units, dur_prediction=False)
    assert len1.tolist() == [7 * 320]
    # a batch: each row is synthesised alone (padding never leaks), lengths per row
    batch = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    wav_b, len_b = model(batch, torch.tensor([4, 2]))
    assert len_b.tolist() == [4 * 3 * 320, 2 * 3 * 320]
    alone, _ = model(batch[1:, :2])
    torch.testing.assert_close(wav_b[1, : len_b[1]], alone[0], rtol=0, atol=0)
    assert wav_b[1, len_b[1] :].abs().max() == 0
    with pytest.raises(ValueError, match=r"unit ids must be in \[0, 20\)"):
        model(torch.tensor([[20]]))


def test_from_fairseq_files(tmp_path, tiny_codehifigan):
    model, state = tiny_codehifigan
    ckpt, cfg_path = tmp_path / "g_00500000", tmp_path / "config.json"
    torch.save({"generator": state}, ckpt)
    cfg_path.write_text(json.dumps(TINY_FAIRSEQ_CONFIG))
    loaded = CodeHiFiGAN.from_fairseq(ckpt, cfg_path)
    assert not loaded.training
    units = torch.tensor([[4, 9, 9, 2]])
    torch.testing.assert_close(loaded(units)[0], model(units)[0], rtol=0, atol=0)

    broken = dict(state)
    del broken["ups.2.weight_v"], broken["ups.2.weight_g"]
    torch.save({"generator": broken}, ckpt)
    with pytest.raises(ValueError, match=r"g_00500000: .*missing \['ups\.2\.weight'\]"):
        CodeHiFiGAN.from_fairseq(ckpt, cfg_path)
    wide = dict(TINY_FAIRSEQ_CONFIG, upsample_initial_channel=128)
    cfg_path.write_text(json.dumps(wide))
    torch.save({"generator": state}, ckpt)
    with pytest.raises(ValueError, match="shape mismatches"):
        CodeHiFiGAN.from_fairseq(ckpt, cfg_path)
    cfg_path.write_text(json.dumps(dict(TINY_FAIRSEQ_CONFIG, resblock="2")))
    with pytest.raises(ValueError, match="resblock type"):
        CodeHiFiGAN.from_fairseq(ckpt, cfg_path)
    cfg_path.write_text(json.dumps(TINY_FAIRSEQ_CONFIG))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        CodeHiFiGAN.from_fairseq(tmp_path / "missing", cfg_path)


# ------------------------------------------------------------------------- UnitVocoder


def tiny_unit_vocoder(seed: int = 0, **overrides) -> UnitVocoder:
    torch.manual_seed(seed)
    cfg = UnitVocoderConfig(**{"num_units": 30, "unit_dim": 16, "unit_layers": 2,
                               "frame_dim": 24, "frame_layers": 2, **overrides})  # fmt: skip
    model = UnitVocoder(cfg).eval()
    with torch.no_grad():  # durations of 1..~6 frames
        model.duration_head.weight.normal_(0, 0.4)
        model.duration_head.bias.fill_(0.8)
    return model


def stream_all(model, units: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    state, outs, pos = model.init_state(1), [], 0
    for c in chunks:
        wav, n, state = model.stream(units[:, pos : pos + c], None, state)
        outs.append(wav[0, : n[0]])
        pos += c
    assert pos == units.shape[1]
    wav, n, _ = model.stream(units[:, :0], None, state, final=True)
    return torch.cat([*outs, wav[0, : n[0]]])


def test_unit_vocoder_lengths_follow_durations():
    model = tiny_unit_vocoder()
    units = torch.tensor([[1, 5, 7, 2, 0], [3, 4, 0, 0, 0]])
    dur = torch.tensor([[1, 2, 3, 1, 4], [2, 2, 1, 1, 1]])
    wav, wav_len = model(units, torch.tensor([5, 2]), durations=dur)
    assert wav_len.tolist() == [11 * 320, 4 * 320] and wav.shape == (2, 11 * 320)
    assert wav[1, 4 * 320 :].abs().max() == 0 and wav[1, : 4 * 320].abs().max() > 0
    _, _, log_d, _ = model.synthesize(units[:1])
    pred = model.durations_from_log(log_d)
    assert model(units[:1])[1].item() == 320 * int(pred.sum())
    assert int(pred.min()) >= 1 and int(pred.max()) <= model.cfg.max_duration
    with pytest.raises(ValueError, match=r"unit ids must be in \[0, 30\)"):
        model(torch.tensor([[30]]))


@pytest.mark.parametrize("chunks", [[1] * 17, [17], [0, 3, 0, 5, 9], [2, 15]])
def test_unit_vocoder_stream_equals_forward(chunks):
    model = tiny_unit_vocoder()
    units = torch.randint(0, 30, (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, n = model(units)
        streamed = stream_all(model, units, chunks)
    assert streamed.shape[0] == int(n[0])
    torch.testing.assert_close(streamed, whole[0], rtol=0, atol=1e-5)


def test_unit_vocoder_stream_edges_and_lookahead():
    """Look-ahead 0 and longer look-ahead, tiny inputs (1 unit, shorter than the look-ahead)."""
    for overrides in ({"unit_lookahead": 0, "frame_lookahead": 0},
                      {"unit_lookahead": 3, "frame_lookahead": 5}):  # fmt: skip
        model = tiny_unit_vocoder(seed=2, **overrides)
        for units in (torch.tensor([[4]]), torch.tensor([[4, 9, 1, 1, 20, 3]])):
            with torch.no_grad():
                whole, _ = model(units)
                streamed = stream_all(model, units, [1] * units.shape[1])
            torch.testing.assert_close(streamed, whole[0], rtol=0, atol=1e-5)


def test_unit_vocoder_batched_ragged_streams_and_states_are_values():
    model = tiny_unit_vocoder()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 30, (1, 12), generator=gen), torch.randint(0, 30, (1, 7), generator=gen)
    with torch.no_grad():
        whole_a, whole_b = model(a)[0][0], model(b)[0][0]
        # stream a starts alone; b joins later: states stacked, ragged chunks, then unstacked
        sa = model.init_state(1)
        out_a = [model.stream(a[:, :4], None, sa)]
        sa = out_a[0][2]
        state = type(sa).stack([sa, model.init_state(1)])
        before = {k: v.clone() for k, v in vars(state).items()}
        chunk = torch.zeros(2, 5, dtype=torch.long)
        chunk[0, :5], chunk[1, :3] = a[0, 4:9], b[0, :3]
        wav, n, state2 = model.stream(chunk, torch.tensor([5, 3]), state)
        for k, v in vars(state).items():  # the input state was not mutated
            assert torch.equal(v, before[k]), k
        chunk = torch.zeros(2, 4, dtype=torch.long)
        chunk[0, :3], chunk[1, :4] = a[0, 9:], b[0, 3:]
        wav2, n2, state3 = model.stream(chunk, torch.tensor([3, 4]), state2, final=True)
    got_a = torch.cat([out_a[0][0][0, : out_a[0][1][0]], wav[0, : n[0]], wav2[0, : n2[0]]])
    got_b = torch.cat([wav[1, : n[1]], wav2[1, : n2[1]]])
    torch.testing.assert_close(got_a, whole_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_b, whole_b, rtol=0, atol=1e-5)
    assert state3.batch_size == 2 and state3.nbytes() > 0


def test_unit_vocoder_save_load(tmp_path):
    model = tiny_unit_vocoder()
    model.save(tmp_path / "v.pt", kmeans_sha256="abc")
    loaded = UnitVocoder.load(tmp_path / "v.pt")
    units = torch.tensor([[1, 2, 3, 29]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(units)[0], model(units)[0], rtol=0, atol=0)
    assert loaded.metadata["kmeans_sha256"] == "abc"
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an EchoStream unit vocoder"):
        UnitVocoder.load(tmp_path / "bad.pt")


def test_pretrained_vocoder_runs():
    path = PRETRAINED / "vocoder.pt"
    if not path.is_file():
        pytest.skip("no shipped vocoder weights")
    assert path.stat().st_size <= 25 * 2**20
    model = UnitVocoder.load(path)
    units = torch.randint(
        0, model.cfg.num_units, (1, 40), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        wav, n = model(units)
    assert int(n[0]) % 320 == 0 and 40 * 320 <= int(n[0]) <= 40 * 320 * model.cfg.max_duration
    assert torch.isfinite(wav).all() and 1e-3 < float(wav.abs().max()) <= 1.5


def test_pretrained_vocoder_is_intelligible():
    """pico2wave English -> shipped k-means units -> shipped vocoder -> pocketsphinx."""
    pytest.importorskip("pocketsphinx")
    from echostream.data.tts import pico_available, pico_synth
    from echostream.data.units import UnitKMeans
    from echostream.evaluation.asr import EnglishASR, word_error_rate

    if not pico_available() or not (PRETRAINED / "vocoder.pt").is_file():
        pytest.skip("needs pico2wave and the shipped vocoder")
    km = UnitKMeans.load(PRETRAINED / "kmeans.npz")
    model = UnitVocoder.load(PRETRAINED / "vocoder.pt")
    asr = EnglishASR()
    refs = ["this package contains the documentation", "support for the new version"]
    hyps = []
    for text in refs:
        pcm, _ = pico_synth(text)
        units = km.units(pcm)
        with torch.no_grad():
            wav, n = model(torch.tensor([units]))
        assert abs(int(n[0]) - pcm.size) < 0.25 * pcm.size  # predicted durations ≈ real ones
        hyps.append(asr.transcribe(wav[0, : n[0]].numpy()))
    assert word_error_rate(refs, hyps) <= 0.25, hyps


# ------------------------------------------------------------------------- training script


def _fake_corpus(root: Path, n_utts: int = 6) -> None:
    """A corpus in prepare-synth layout: harmonic tones as 'speech', a 12-unit k-means."""
    from echostream.audio.io import save_audio
    from echostream.data.manifest import ManifestRow, write_manifest
    from echostream.data.units import UnitKMeans, unit_features

    rng = np.random.default_rng(0)
    pcms = []
    for i in range(n_utts):
        t = np.arange(int(16000 * (0.6 + 0.1 * i))) / 16000
        f0 = 120 + 60 * np.sin(2 * np.pi * (0.7 + 0.2 * i) * t)
        pcm = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) + 0.01 * rng.standard_normal(t.size)
        pcms.append(pcm.astype(np.float32))
    km = UnitKMeans.fit([unit_features(p) for p in pcms], 12, seed=0)
    km.save(root / "units" / "kmeans.npz")
    for split in ("train", "dev"):
        rows = []
        for i, pcm in enumerate(pcms):
            (root / "tgt" / split).mkdir(parents=True, exist_ok=True)
            save_audio(root / "tgt" / split / f"u{i}.flac", pcm)
            units = km.units(pcm)
            rows.append(ManifestRow(f"u{i}", f"tgt/{split}/u{i}.flac", 10, "x", "hello world",
                                    " ".join(map(str, units)), len(units)))  # fmt: skip
        write_manifest(root / f"{split}.tsv", rows)


def test_train_resume_and_export(tmp_path):
    from echostream.training.train_vocoder import main, run_lengths

    u, d = run_lengths(np.array([5, 5, 7, 5, 5, 5]))
    assert u.tolist() == [5, 7, 5] and d.tolist() == [2, 1, 3]
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    _fake_corpus(corpus)
    small = ["--unit-dim", "16", "--frame-dim", "16", "--frame-layers", "1", "--unit-layers", "1",
             "--batch-frames", "200", "--threads", "1", "--log-every", "1"]  # fmt: skip
    assert main(["train", "--corpus", str(corpus), "--out", str(out), "--steps", "2", *small]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["num_units"] == 12
    # same command with a longer schedule resumes at step 2
    assert main(["train", "--corpus", str(corpus), "--out", str(out), "--steps", "3", *small]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["log"]) == 2
    main(["export", "--checkpoint", str(out / "last.pt"), "--corpus", str(corpus),
          "--out", str(tmp_path / "export")])  # fmt: skip
    model = UnitVocoder.load(tmp_path / "export" / "vocoder.pt")
    assert model.metadata["trained_steps"] == 3
    assert (tmp_path / "export" / "kmeans.npz").is_file()
