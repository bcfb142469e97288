"""Trainer: schedule, SpecAugment, training config, logs, checkpoints and exact resume (also after
SIGKILL), multi-chunk sampling, gradient accumulation, dev metrics and clear errors.

The trainer is exercised with a small stand-in model (same call signature as EchoStreamModel:
``model(batch, chunk_size=None) -> {"total": ..., ...}``) on a synthetic corpus built in
``tmp_path`` (random fbank, real sentencepiece models): everything here runs in seconds.
Run as a script, this file is the ``echostream train`` CLI with the (slowed) stand-in model,
which the SIGKILL test launches as a subprocess.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from echostream.audio.features import GlobalCMVN
from echostream.config import ConfigError, EchoStreamConfig, load_config
from echostream.data.manifest import MANIFEST_COLUMNS, ManifestRow, write_manifest
from echostream.text.tokenizer import train_tokenizer
from echostream.training.checkpoints import read_checkpoint, training_state
from echostream.training.config import SpecAugmentConfig, TrainingConfig, load_training_config
from echostream.training.dev_metrics import corpus_bleu, corpus_wer
from echostream.training.errors import TrainingError
from echostream.training.logs import CSVLog
from echostream.training.schedule import InverseSqrtSchedule, inverse_sqrt_lr
from echostream.training.specaugment import SpecAugment
from echostream.training.trainer import Trainer, main_train

REPO = Path(__file__).resolve().parents[1]
EMFORMER_CFG = REPO / "configs" / "fr-en" / "config_echostream_tiny.yaml"
CONFORMER_CFG = REPO / "configs" / "fr-en" / "config_streamspeech_tiny.yaml"

FR = [
    "le chat dort sur le tapis",
    "il fait beau aujourd'hui",
    "la maison est grande",
    "nous allons au marché demain",
    "le fichier de configuration est vide",
    "cliquez sur le bouton pour continuer",
    "ce paquet fournit une bibliothèque",
    "la version du noyau est trop ancienne",
    "le serveur ne répond pas",
    "installez le paquet avant de commencer",
    "le programme affiche une erreur",
    "ouvrez le menu des options",
]
EN = [
    "the cat sleeps on the carpet",
    "the weather is nice today",
    "the house is big",
    "we are going to the market tomorrow",
    "the configuration file is empty",
    "click on the button to continue",
    "this package provides a library",
    "the kernel version is too old",
    "the server does not answer",
    "install the package before starting",
    "the program shows an error",
    "open the options menu",
]


def make_corpus(root: Path, n_train: int = 24, n_dev: int = 6, seed: int = 0) -> Path:
    """The layout of `prepare synth` with random fbank: manifests, spm, cmvn.json, fbank/."""
    rng = np.random.default_rng(seed)
    train_tokenizer(FR, root / "spm" / "spm_fr", 48)
    train_tokenizer(EN, root / "spm" / "spm_en", 48)
    GlobalCMVN(torch.full((80,), 0.5), torch.full((80,), 2.0)).save(root / "cmvn.json")
    for split, n in (("train", n_train), ("dev", n_dev)):
        (root / "fbank" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            uid = f"{split}_{i:03d}"
            frames = int(rng.integers(60, 160))
            feats = rng.normal(0.5, 2.0, size=(frames, 80)).astype(np.float16)
            np.save(root / "fbank" / split / f"{uid}.npy", feats)
            units = rng.integers(0, 20, size=int(rng.integers(3, 10)))
            k = (i * 5 + (split == "dev")) % len(FR)
            rows.append(
                ManifestRow(
                    uid,
                    f"fbank/{split}/{uid}.npy",
                    frames,
                    FR[k],
                    EN[k],
                    " ".join(map(str, units)),
                    len(units),
                )
            )
        write_manifest(root / f"{split}.tsv", rows)
    return root


class StandIn(nn.Module):
    """Tiny multitask model with the EchoStreamModel call signature: ASR CTC + MT CE.

    Records the chunk sizes it is called with and the utterance ids it trains on; ``delay`` slows
    each forward
    (the SIGKILL test needs time to kill a run mid-way)."""

    def __init__(self, cfg, d: int = 16, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.proj = nn.Linear(80, d)
        self.drop = nn.Dropout(0.1)
        self.asr = nn.Linear(d, cfg.vocab.src_vocab_size)
        self.emb = nn.Embedding(cfg.vocab.tgt_vocab_size, d)
        self.out = nn.Linear(d, cfg.vocab.tgt_vocab_size)
        self.chunks: list = []
        self.ids: list[list[str]] = []
        self.fail_with: BaseException | None = None

    def encode(self, batch):
        x = batch["fbank"][:, ::4]  # (B, T/4, 80)
        lens = (batch["fbank_len"] + 3) // 4
        h = self.drop(torch.tanh(self.proj((x - 0.5) / 2.0)))  # (B, T/4, d)
        mask = (torch.arange(h.shape[1])[None] < lens[:, None]).float()[..., None]
        return h, lens, (h * mask).sum(1) / lens[:, None]

    def forward(self, batch, chunk_size=None):
        if self.fail_with is not None:
            raise self.fail_with
        if self.delay:
            time.sleep(self.delay)
        self.chunks.append(chunk_size)
        if self.training:
            self.ids.append(list(batch["ids"]))
        h, lens, pooled = self.encode(batch)
        log_probs = F.log_softmax(self.asr(h), -1).transpose(0, 1)
        asr = F.ctc_loss(log_probs, batch["src_tokens"], lens, batch["src_len"], zero_infinity=True)
        logits = self.out(self.emb(batch["prev_output_tokens"]) + pooled[:, None])
        ce = F.cross_entropy(
            logits.transpose(1, 2), batch["tgt_out"], ignore_index=0, label_smoothing=0.1
        )
        return {"total": 4 * asr + 8 * ce, "asr_ctc": asr, "mt_ce": ce}

    def greedy_asr(self, batch):
        h, lens, _ = self.encode(batch)
        best = self.asr(h).argmax(-1)
        out = []
        for b in range(len(lens)):
            seq, prev = [], 0
            for t in best[b, : lens[b]].tolist():
                if t not in (prev, 0):
                    seq.append(t)
                prev = t
            out.append(seq)
        return out

    def greedy_st(self, batch):
        _, _, pooled = self.encode(batch)
        tokens = torch.full((pooled.shape[0], 1), 2)
        for _ in range(8):
            logits = self.out(self.emb(tokens) + pooled[:, None])
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
        return [[t for t in row[1:] if t != 3] for row in tokens.tolist()]


def tcfg(**kw) -> TrainingConfig:
    base = dict(
        max_steps=8,
        max_frames=400,
        update_freq=2,
        warmup_steps=2,
        lr=1e-2,
        save_every=3,
        keep_last=2,
        eval_every=4,
        dev_decode_utterances=4,
        threads=1,
        progress=False,
        tensorboard=False,
    )
    base.update(kw)
    return TrainingConfig(**base)


def stand_in_trainer(
    cfg: EchoStreamConfig | Path,
    data: Path,
    out: Path,
    *,
    resume: bool = False,
    init_from: Path | None = None,
    **kw,
) -> Trainer:
    """A Trainer of :class:`StandIn` on ``data`` writing to ``out``; ``cfg``: a model config or
    its YAML file; ``kw``: fields of :func:`tcfg`."""
    if isinstance(cfg, Path):
        cfg = load_config(cfg)
    return Trainer(
        cfg, tcfg(**kw), data, out, resume=resume, init_from=init_from, model_factory=StandIn
    )


def trainer_state(path: Path) -> dict:
    return training_state(read_checkpoint(path))["trainer"]


def losses_of(log_path: Path) -> list[dict]:
    """Rows of a CSV log without the wall-clock column, as floats."""
    return [
        {k: float(v) for k, v in row.items() if k != "seconds" and v != ""}
        for row in CSVLog(log_path).read()
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- pieces


def test_inverse_sqrt_schedule_golden():
    assert inverse_sqrt_lr(0, 1e-3, 4, 1e-7) == 1e-7
    assert inverse_sqrt_lr(2, 1e-3, 4, 1e-7) == pytest.approx(1e-7 + 2 * (1e-3 - 1e-7) / 4)
    assert inverse_sqrt_lr(4, 1e-3, 4, 1e-7) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(16, 1e-3, 4, 1e-7) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(40_000, 1e-3, 10_000, 1e-7) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(9, 1e-3, 0, 0.0) == pytest.approx(1e-3 / 3)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = InverseSqrtSchedule(opt, 1e-3, 4, 1e-7)
    assert opt.param_groups[0]["lr"] == 1e-7
    sched.set_step(16)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    other = InverseSqrtSchedule(opt, 1e-3, 4, 1e-7)
    other.load_state_dict(sched.state_dict())
    assert other.step_num == 16 and opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_specaugment_bounds_values_and_determinism():
    torch.manual_seed(0)
    lengths = torch.tensor([300, 40, 0, 120])
    fbank = torch.randn(4, 300, 80)
    fbank[torch.arange(300)[None, :] >= lengths[:, None]] = 0.0
    mean = torch.linspace(-1, 1, 80)
    aug = SpecAugment(SpecAugmentConfig(), mask_value=mean)
    out1 = aug(fbank, lengths, torch.Generator().manual_seed(3))
    out2 = aug(fbank, lengths, torch.Generator().manual_seed(3))
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, aug(fbank, lengths, torch.Generator().manual_seed(4)))
    changed = out1 != fbank
    assert torch.equal(out1[changed], mean.expand_as(fbank)[changed])  # masked = CMVN mean
    for b, n in enumerate(lengths.tolist()):
        assert not changed[b, n:].any()  # padding untouched
    # Widths: freq in [0, 27], time in [0, min(100, length)]; all widths reachable.
    g = torch.Generator().manual_seed(0)
    f_widths, t_widths = set(), set()
    for _ in range(300):
        freq, time_ = aug.masks(torch.tensor([300, 50]), 80, 300, g)
        f_widths.update(freq.sum(1).tolist())
        t_widths.add(int(time_[0].sum()))
        assert int(time_[1].sum()) <= 50 and not time_[1, 50:].any()
    assert f_widths == set(range(28))
    assert max(t_widths) == 100 and min(t_widths) == 0
    off = SpecAugment(SpecAugmentConfig(enabled=False))
    assert off(fbank, lengths, g) is fbank
    # None: each utterance's own mean over its valid frames.
    per_utt = SpecAugment(SpecAugmentConfig(freq_mask_F=80, freq_mask_N=3), None)
    out = per_utt(fbank, lengths, torch.Generator().manual_seed(1))
    b = 1
    masked = out[b, :40][out[b, :40] != fbank[b, :40]]
    assert torch.allclose(masked, fbank[b, :40].mean().expand_as(masked))


def test_training_config_yaml(tmp_path):
    d = TrainingConfig()
    assert (d.lr, d.adam_betas, d.warmup_steps, d.clip_norm, d.update_freq) == (
        1e-3,
        [0.9, 0.98],
        10_000,
        1.0,
        2,
    )
    assert (d.specaugment.freq_mask_F, d.specaugment.time_mask_T) == (27, 100)
    path = tmp_path / "t.yaml"
    path.write_text("max_frames: 5000\nspecaugment: {time_mask_N: 2}\n")
    cfg = load_training_config(path, max_steps=7)
    assert (cfg.max_frames, cfg.max_steps, cfg.specaugment.time_mask_N) == (5000, 7, 2)
    path.write_text("max_frame: 5000\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: max_frame: unknown key"):
        load_training_config(path)
    path.write_text("update_freq: 0\n")
    with pytest.raises(ConfigError, match="update_freq: must be >= 1"):
        load_training_config(path)
    path.write_text("specaugment: {time_mask_p: 2}\n")
    with pytest.raises(ConfigError, match=r"specaugment\.time_mask_p"):
        load_training_config(path)
    for name in ("streamspeech.yaml", "tiny_cpu.yaml"):
        load_training_config(REPO / "configs" / "train" / name)


def test_csv_log_truncate(tmp_path):
    log = CSVLog(tmp_path / "x.csv")
    for step in range(1, 6):
        log.write({"step": step, "loss": step / 3})
    assert CSVLog(tmp_path / "x.csv").truncate_after(3) == 2
    rows = CSVLog(tmp_path / "x.csv").read()
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["loss"]) == 1.0
    with pytest.warns(UserWarning, match="not in the header"):
        log.write({"step": 4, "other": 1})
    assert CSVLog(tmp_path / "x.csv").read()[-1] == {"step": "4", "loss": ""}


def test_wer_and_bleu_helpers():
    assert corpus_wer(["a b c d"], ["a x c"]) == 50.0  # 1 substitution + 1 deletion / 4
    assert corpus_wer(["a b", "c"], ["a b", "c d e"]) == pytest.approx(200 / 3)
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert corpus_bleu(["the cat sat on the mat"], ["a dog"]) == 0.0


# --------------------------------------------------------------------------- training runs


def test_train_writes_logs_checkpoints_and_config(corpus, tmp_path):
    cfg = load_config(EMFORMER_CFG)
    trainer = stand_in_trainer(cfg, corpus, tmp_path / "run")
    summary = trainer.train()
    run = tmp_path / "run"
    assert summary["step"] == 8
    rows = losses_of(run / "train_log.csv")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"lr", "loss_total", "loss_asr_ctc", "loss_mt_ce", "grad_norm", "frames"} <= set(rows[0])
    assert rows[0]["lr"] == pytest.approx(1e-7 + (1e-2 - 1e-7) / 2)  # warm-up from 1e-7
    assert rows[-1]["lr"] == pytest.approx(1e-2 * math.sqrt(2 / 8))
    for r in rows:
        assert r["loss_total"] == pytest.approx(4 * r["loss_asr_ctc"] + 8 * r["loss_mt_ce"])
    assert rows[-1]["loss_mt_ce"] < rows[0]["loss_mt_ce"]  # it learns
    dev = losses_of(run / "dev_log.csv")
    assert [r["step"] for r in dev] == [4, 8]
    assert {"dev_total", "dev_asr_ctc", "dev_mt_ce", "asr_wer", "st_bleu"} <= set(dev[0])
    assert dev[0]["decoded_utterances"] == 4
    # Checkpoints: last = step 8, two numbered kept, best = lowest dev loss; hard links.
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_00000006.pt", "ckpt_00000008.pt"]
    assert trainer_state(run / "last.pt")["step"] == 8
    best_step = min(dev, key=lambda r: r["dev_total"])["step"]
    best = trainer_state(run / "best.pt")
    assert best["step"] == best_step
    assert best["best_dev_loss"] == pytest.approx(min(r["dev_total"] for r in dev))
    assert os.path.samefile(run / "last.pt", run / "ckpt_00000008.pt")
    assert not list(run.glob(".*tmp")) and not (run / ".ckpt.pending").exists()
    # The run folder is self-contained: its config loads, with the data's vocab sizes.
    saved = load_config(run / "config.yaml")
    assert saved.vocab.src_vocab_size == trainer.data.src_tokenizer.vocab_size
    assert saved.vocab.tgt_vocab_size == trainer.data.tgt_tokenizer.vocab_size
    assert saved.vocab.num_units == cfg.vocab.num_units  # no build.json: the config's
    assert Path(saved.vocab.src_spm).is_file() and Path(saved.features.cmvn_path).is_file()
    assert load_training_config(run / "train_config.yaml") == trainer.tcfg
    assert "dev @ step 8" in (run / "train.log").read_text()


def test_gradient_accumulation_and_epochs(corpus, tmp_path):
    trainer = stand_in_trainer(
        EMFORMER_CFG, corpus, tmp_path / "run", max_steps=7, update_freq=3, eval_every=0
    )
    trainer.train()
    lengths = trainer.train_set.lengths
    batches = [b for e in range(3) for b in trainer.sampler.batches(e)]
    rows = losses_of(tmp_path / "run" / "train_log.csv")
    for i, row in enumerate(rows):  # each update consumed 3 consecutive batches
        group = batches[3 * i : 3 * i + 3]
        assert row["frames"] == sum(lengths[j] for b in group for j in b)
        assert row["utterances"] == sum(len(b) for b in group)
    seen = trainer.model.ids
    per_epoch = len(trainer.sampler.batches(0))
    first_epoch = [i for ids in seen[:per_epoch] for i in ids]
    assert sorted(first_epoch) == sorted(r.id for r in trainer.data.train)  # one full epoch
    assert rows[-1]["epoch"] == (7 * 3 - 1) // per_epoch


def test_max_epochs_ends_with_a_partial_update(corpus, tmp_path):
    trainer = stand_in_trainer(
        EMFORMER_CFG, corpus, tmp_path / "run", max_steps=100, max_epochs=1, eval_every=0
    )
    trainer.train()
    batches = trainer.sampler.batches(0)
    assert len(batches) % 2 == 1  # the last update has one micro-batch instead of two
    rows = losses_of(tmp_path / "run" / "train_log.csv")
    assert len(rows) == (len(batches) + 1) // 2
    assert rows[-1]["frames"] == sum(trainer.train_set.lengths[i] for i in batches[-1])
    assert trainer_state(tmp_path / "run" / "last.pt")["step"] == len(rows)
    assert [r["step"] for r in losses_of(tmp_path / "run" / "dev_log.csv")] == [len(rows)]


def test_multichunk_training_samples_chunk_sizes(corpus, tmp_path):
    cfg = load_config(CONFORMER_CFG)
    chunked = {"max_steps": 10, "eval_every": 0, "dev_decode_utterances": 0}
    trainer = stand_in_trainer(cfg, corpus, tmp_path / "a", **chunked)
    trainer.train()
    train_chunks = trainer.model.chunks[:20]  # 10 updates × 2 micro-batches (then the dev pass)
    assert set(train_chunks) <= set(cfg.encoder.conformer.train_chunk_sizes)
    assert len(set(train_chunks)) >= 3
    assert set(trainer.model.chunks[20:]) == {None}  # evaluation: the model's own chunk size
    again = stand_in_trainer(cfg, corpus, tmp_path / "b", **chunked)
    again.train()
    assert again.model.chunks == trainer.model.chunks  # drawn from the seeded generator
    emformer = stand_in_trainer(EMFORMER_CFG, corpus, tmp_path / "c", max_steps=2, eval_every=0)
    emformer.train()
    assert set(emformer.model.chunks) == {None}


def test_resume_continues_the_same_curve(corpus, tmp_path):
    """Stop at step 5 (not a multiple of save_every: resumes from step 3), continue to 10."""
    cfg = load_config(CONFORMER_CFG)  # chunk sampling and SpecAugment both draw random numbers
    stand_in_trainer(cfg, corpus, tmp_path / "ref", max_steps=10).train()
    run = tmp_path / "run"
    first = stand_in_trainer(cfg, corpus, run, max_steps=10)
    batches = first._micro_batches()
    for _ in range(5):  # five updates, then "crash" (no final save): last.pt is step 3
        row = first.train_step(batches)
        row.pop("_stop")
        first.train_log.write(row)
        if first.step % 3 == 0:
            first.save()
    assert trainer_state(run / "last.pt")["step"] == 3
    with pytest.raises(TrainingError, match="already holds a run"):
        stand_in_trainer(cfg, corpus, run, max_steps=10)
    resumed = stand_in_trainer(cfg, corpus, run, max_steps=10, resume=True)
    assert resumed.step == 3
    resumed.train()
    assert losses_of(run / "train_log.csv") == losses_of(tmp_path / "ref" / "train_log.csv")
    assert losses_of(run / "dev_log.csv") == losses_of(tmp_path / "ref" / "dev_log.csv")
    a, b = read_checkpoint(run / "last.pt"), read_checkpoint(tmp_path / "ref" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_sigkill_mid_run_then_resume_matches_uninterrupted(corpus, tmp_path):
    """A real process killed with SIGKILL after a checkpoint resumes on the same loss curve."""
    steps = 12
    train_yaml = _write_yaml(
        tmp_path / "train.yaml",
        {
            "max_steps": steps,
            "max_frames": 400,
            "update_freq": 2,
            "warmup_steps": 2,
            "lr": 1e-2,
            "save_every": 3,
            "keep_last": 2,
            "eval_every": 5,
            "dev_decode_utterances": 4,
            "threads": 1,
            "progress": False,
            "tensorboard": False,
        },
    )
    args = [
        "--config",
        str(CONFORMER_CFG),
        "--data",
        str(corpus),
        "--train-config",
        str(train_yaml),
    ]
    ref = tmp_path / "ref"
    assert main_train([*args, "--out", str(ref)], model_factory=StandIn) == 0

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STANDIN_DELAY": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, __file__, *args, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            log = run / "train_log.csv"
            if (run / "last.pt").exists() and log.exists() and len(CSVLog(log).read()) >= 4:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    killed_at = len(CSVLog(run / "train_log.csv").read())
    ckpt_step = trainer_state(run / "last.pt")["step"]
    assert 3 <= ckpt_step < killed_at < steps  # killed mid-way, after a checkpoint

    assert main_train([*args, "--out", str(run), "--resume"], model_factory=StandIn) == 0
    assert f"at step {ckpt_step}" in (run / "train.log").read_text()
    for name, n in (("train_log.csv", steps), ("dev_log.csv", 3)):
        got, want = losses_of(run / name), losses_of(ref / name)
        assert len(got) == len(want) == n
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            for k in g:
                assert g[k] == pytest.approx(w[k], abs=1e-6, rel=0), (name, g["step"], k)


def test_sigterm_saves_and_stops(corpus, tmp_path):
    trainer = stand_in_trainer(EMFORMER_CFG, corpus, tmp_path / "run", max_steps=50, save_every=100)
    forward = trainer.model.forward

    def forward_then_term(batch, chunk_size=None):
        if len(trainer.model.ids) == 5:  # during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(batch, chunk_size)

    trainer.model.forward = forward_then_term
    previous = signal.getsignal(signal.SIGTERM)
    summary = trainer.train()
    assert summary["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert trainer_state(tmp_path / "run" / "last.pt")["step"] == 3
    assert "stopped by a signal at step 3" in (tmp_path / "run" / "train.log").read_text()


def micro_config(path: Path):
    """A reference config shrunk to a few thousand parameters per component."""
    cfg = load_config(path)
    cfg.subsampling.channels = 16
    for enc in (cfg.encoder.emformer, cfg.encoder.conformer):
        enc.d_model, enc.num_layers, enc.ffn_dim, enc.num_heads = 32, 1, 64, 2
    cfg.encoder.conformer.conv_kernel_size = 5
    st = cfg.st_ctc_decoder
    st.num_layers, st.ffn_dim, st.num_heads = 1, 64, 2
    for d in (cfg.mt_decoder, cfg.t2u_encoder, cfg.unit_decoder):
        d.num_layers, d.d_model, d.ffn_dim, d.num_heads = 1, 32, 64, 2
    return cfg


def test_real_model_trains_resumes_exactly_and_loads_for_inference(corpus, tmp_path):
    """EchoStreamModel (the baseline: multi-chunk, all four losses) through the trainer."""
    from echostream.models import load_checkpoint

    cfg = micro_config(CONFORMER_CFG)
    kw = dict(eval_every=2, dev_max_utterances=4)
    Trainer(cfg, tcfg(max_steps=4, **kw), corpus, tmp_path / "ref").train()
    Trainer(cfg, tcfg(max_steps=2, **kw), corpus, tmp_path / "run").train()
    Trainer(cfg, tcfg(max_steps=4, **kw), corpus, tmp_path / "run", resume=True).train()
    got = losses_of(tmp_path / "run" / "train_log.csv")
    want = losses_of(tmp_path / "ref" / "train_log.csv")
    assert len(got) == 4
    for g, w in zip(got, want, strict=True):
        for k in w:
            assert g[k] == pytest.approx(w[k], abs=1e-6, rel=0), (g["step"], k)
    assert {"loss_asr_ctc", "loss_st_ctc", "loss_mt_ce", "loss_unit_ctc"} <= set(got[0])
    dev = losses_of(tmp_path / "run" / "dev_log.csv")
    assert [r["step"] for r in dev] == [2, 4]
    assert dev[0]["decoded_utterances"] == 4 and "asr_wer" in dev[0] and "st_bleu" in dev[0]
    # A training checkpoint is an EchoStream checkpoint: it loads for inference.
    model, info = load_checkpoint(tmp_path / "run" / "best.pt")
    assert info.extra["training"]["trainer"]["step"] in (2, 4)
    assert model.cfg.vocab.tgt_vocab_size == info.config.vocab.tgt_vocab_size
    result = model.translate(torch.randn(120, 80))
    assert isinstance(result.tgt_text, str)


# --------------------------------------------------------------------------- errors


def test_error_empty_manifest_and_too_long(corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    (data / "dev.tsv").write_text("\t".join(MANIFEST_COLUMNS) + "\n")
    with pytest.raises(TrainingError, match=r"dev\.tsv: empty manifest"):
        stand_in_trainer(EMFORMER_CFG, data, tmp_path / "a")
    with pytest.raises(TrainingError, match=r"longer than max_frames=10.*raise max_frames"):
        stand_in_trainer(EMFORMER_CFG, corpus, tmp_path / "b", max_frames=10)


def test_error_vocab_mismatch(corpus, tmp_path):
    cfg = load_config(EMFORMER_CFG)  # says 1000; the corpus tokenizers have fewer pieces
    with pytest.raises(TrainingError, match=r"vocab mismatch: .*vocab\.src_vocab_size = 1000"):
        stand_in_trainer(cfg, corpus, tmp_path / "a", vocab_from_data=False)
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    stand_in_trainer(cfg, data, tmp_path / "run", max_steps=2).train()
    # --init-from: the weights, a fresh run (step 0).
    init = stand_in_trainer(
        cfg, data, tmp_path / "init", max_steps=2, init_from=tmp_path / "run" / "last.pt"
    )
    assert init.step == 0
    weights = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    for k, v in init.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # The corpus gets another English tokenizer: resuming or initialising must refuse.
    train_tokenizer([s.upper() + " extra words here" for s in EN], data / "spm" / "spm_en", 48)
    with pytest.raises(TrainingError, match=r"vocab mismatch: --init-from .* tgt"):
        stand_in_trainer(
            cfg, data, tmp_path / "init2", max_steps=2, init_from=tmp_path / "run" / "last.pt"
        )
    with pytest.raises(TrainingError, match=r"vocab mismatch: the checkpoint .*tgt"):
        stand_in_trainer(cfg, data, tmp_path / "run", max_steps=4, resume=True)


def test_error_architecture_mismatch_on_resume(corpus, tmp_path):
    cfg = load_config(EMFORMER_CFG)
    stand_in_trainer(cfg, corpus, tmp_path / "run", max_steps=2).train()
    other = load_config(EMFORMER_CFG)
    other.encoder.emformer.num_layers += 1
    other.loss.mt_ce_weight = 1.0  # not architecture: allowed
    with pytest.raises(
        TrainingError, match=r"architecture:\n  encoder\.emformer\.num_layers: 6 → 7"
    ):
        stand_in_trainer(other, corpus, tmp_path / "run", max_steps=4, resume=True)
    small = lambda c: StandIn(c, d=8)  # noqa: E731  weights that do not fit the checkpoint
    with pytest.raises(TrainingError, match="weights do not fit"):
        Trainer(cfg, tcfg(max_steps=4), corpus, tmp_path / "run", resume=True, model_factory=small)
    changed = load_config(EMFORMER_CFG)
    changed.loss.mt_ce_weight = 1.0
    t = stand_in_trainer(changed, corpus, tmp_path / "run", max_steps=4, resume=True)
    assert t.step == 2
    assert "loss.mt_ce_weight: 8.0 → 1.0" in (tmp_path / "run" / "train.log").read_text()


def test_error_out_of_memory_gives_advice(corpus, tmp_path):
    trainer = stand_in_trainer(EMFORMER_CFG, corpus, tmp_path / "run")
    trainer.model.fail_with = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(TrainingError, match=r"out of CPU memory .*max_frames: 200, update_freq: 4"):
        trainer.train()
    trainer.model.fail_with = ValueError("a real bug")
    with pytest.raises(ValueError, match="a real bug"):
        trainer.train()


def test_cli_errors(corpus, tmp_path, capsys):
    assert (
        main_train(
            [
                "--config",
                str(EMFORMER_CFG),
                "--data",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "--data" in capsys.readouterr().err
    assert (
        main_train(
            ["--config", "no_such_config", "--data", str(corpus), "--out", str(tmp_path / "o")]
        )
        == 1
    )
    assert "no_such_config" in capsys.readouterr().err


if __name__ == "__main__":  # the CLI with the stand-in model, for the SIGKILL test
    delay = float(os.environ.get("STANDIN_DELAY", "0"))
    sys.exit(main_train(sys.argv[1:], model_factory=lambda cfg: StandIn(cfg, delay=delay)))
