"""The multitask trainer: ``echostream train --config C --data D --out O``.

One loop for both architectures, following StreamSpeech's recipe (see
:mod:`echostream.training.config`): Adam + inverse-sqrt warm-up, clip-norm, frame-count
bucketing (:class:`~echostream.data.sampler.BucketBatchSampler`), gradient accumulation,
SpecAugment on the fly, multi-chunk training for the chunk Conformer (a chunk size drawn per
micro-batch from ``encoder.conformer.train_chunk_sizes`` and passed as
``model(batch, chunk_size=...)``). The model computes its own weighted multitask loss:
``model(batch, chunk_size=None) -> {"total": ..., <component>: ..., ...}`` with per-batch
normalised (mean) losses; the trainer averages them over the accumulated micro-batches and,
through DDP, over ranks.

Distributed: launched by ``torchrun``, one process per device. With ``WORLD_SIZE > 1`` the
process group is initialised from the environment (NCCL on GPU, gloo on CPU), the model is
wrapped in ``DistributedDataParallel`` and each rank reads its own shard of every epoch's
batches. Rank 0 evaluates, logs and writes checkpoints.

The data directory ``D`` is described in :mod:`echostream.training.data`, the run folder ``O``
(checkpoints with the full training state for an exact resume, logs, config copies) in
:mod:`echostream.training.checkpoints`, the dev WER/BLEU in
:mod:`echostream.training.dev_metrics`. SIGTERM/SIGINT stop a run cleanly after the current step
(with a checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from echostream.config import (
    ConfigError,
    EchoStreamConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from echostream.data.manifest import ManifestError
from echostream.data.sampler import BucketBatchSampler, S2STDataset, collate
from echostream.files import atomic_torch_save
from echostream.text.normalize import normalize
from echostream.text.tokenizer import TokenizerError
from echostream.training.checkpoints import (
    TRAINING_STATE_FORMAT,
    TRAINING_STATE_VERSION,
    atomic_link,
    config_differences,
    copy_if_other,
    read_checkpoint,
    training_state,
)
from echostream.training.config import (
    TrainingConfig,
    load_training_config,
    save_training_config,
)
from echostream.training.data import file_sha256, load_training_data, resolve_model_config
from echostream.training.dev_metrics import corpus_bleu, corpus_wer, decode_for_eval
from echostream.training.errors import TrainingError
from echostream.training.logs import CSVLog, Progress, TensorBoardLog
from echostream.training.schedule import InverseSqrtSchedule
from echostream.training.specaugment import SpecAugment

REPO_DIR = Path(__file__).resolve().parents[2]

ModelFactory = Callable[[EchoStreamConfig], nn.Module]


# --------------------------------------------------------------------------- small helpers


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "defaultcpuallocator" in text
    )


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- distributed


@dataclasses.dataclass
class Runtime:
    """Where this process runs: rank, world size, device; ``distributed`` once initialised."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(tcfg: TrainingConfig) -> Runtime:
    """Device choice and, when ``WORLD_SIZE > 1`` (torchrun), the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device: cuda was asked for but torch sees no CUDA device")
    use_cuda = tcfg.device == "cuda" or (tcfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(rank, world, local_rank, device, distributed)


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Builds everything from configs, then :meth:`train` runs to ``max_steps``.

    ``model_factory(cfg) -> nn.Module`` (default: :func:`echostream.models.build_model`) must
    return a module with ``forward(batch, chunk_size=None) -> dict`` of scalar loss tensors
    including ``"total"``. ``resume``: continue from ``out_dir/last.pt`` when it exists.
    ``init_from``: initialise the model's weights from another checkpoint (matching names and
    shapes; a fresh optimiser), e.g. a text-pretrained MT decoder.
    """

    def __init__(
        self,
        model_cfg: EchoStreamConfig,
        tcfg: TrainingConfig,
        data_dir: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        init_from: str | os.PathLike | None = None,
        model_factory: ModelFactory | None = None,
    ):
        self.tcfg = tcfg
        self.out = Path(out_dir)
        self.rt = setup_runtime(tcfg)
        if tcfg.threads is not None:
            torch.set_num_threads(tcfg.threads)
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True)
            if self.rt.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
        self.amp_dtype = self._amp_dtype()

        # ---- resume?
        ckpt_path = self.out / "last.pt"
        checkpoint = None
        if ckpt_path.is_file():
            if not resume:
                raise TrainingError(
                    f"{self.out} already holds a run ({ckpt_path.name}); pass "
                    "--resume to continue it, or choose another --out"
                )
            checkpoint = read_checkpoint(ckpt_path)
            training_state(checkpoint)  # a model-only checkpoint cannot be resumed
        self.resumed = checkpoint is not None
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.rt.distributed:
            dist.barrier()
        self.progress = Progress(tcfg.max_steps, 0, False, self.out / "train.log")
        if not self.rt.is_main:
            self.progress.log_path = None

        # ---- data and the model config it implies
        self.data = load_training_data(data_dir, model_cfg, tcfg)
        self.train_manifest_sha256 = file_sha256(self.data.train.path)
        self.cfg = resolve_model_config(model_cfg, self.data, tcfg)
        if checkpoint is not None:
            self._check_compatible(checkpoint)
        elif resume and self.rt.is_main:
            self.log(f"--resume: no checkpoint in {self.out}; starting from scratch")

        # ---- model, optimiser, schedule
        torch.manual_seed(tcfg.seed)
        if model_factory is None:
            from echostream.models import build_model

            model_factory = build_model
        self.model = model_factory(self.cfg).to(self.rt.device)
        if init_from is not None and checkpoint is None:
            self._init_from(Path(init_from))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params,
            lr=tcfg.lr,
            betas=tuple(tcfg.adam_betas),
            eps=tcfg.adam_eps,
            weight_decay=tcfg.weight_decay,
        )
        self.schedule = InverseSqrtSchedule(
            self.optimizer, tcfg.lr, tcfg.warmup_steps, tcfg.warmup_init_lr
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        # ---- data pipeline
        self.train_set = S2STDataset(
            self.data.train,
            self.data.src_tokenizer,
            self.data.tgt_tokenizer,
            feature_dir=self.data.feature_dir(tcfg.train_split),
        )
        lengths = self.train_set.lengths
        usable = sum(n <= tcfg.max_frames for n in lengths)
        if usable == 0:
            raise TrainingError(
                f"every training utterance is longer than max_frames="
                f"{tcfg.max_frames} (shortest: {min(lengths)} frames); "
                "raise max_frames"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.sampler = BucketBatchSampler(
                    lengths,
                    tcfg.max_frames,
                    max_batch_size=tcfg.max_batch_size,
                    shuffle=True,
                    seed=tcfg.seed,
                    rank=self.rt.rank,
                    world_size=self.rt.world_size,
                )
            except ValueError as err:
                raise TrainingError(f"{self.data.train.path}: {err}") from None
        for w in caught:
            if self.rt.is_main:
                self.log(f"warning: {w.message}")
        self.loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=tcfg.num_workers,
            pin_memory=self.rt.device.type == "cuda",
            generator=torch.Generator(),  # the loader must not draw from the global RNG
        )
        mask_value = None
        if self.data.cmvn_path is not None:
            from echostream.audio.features import GlobalCMVN

            mask_value = GlobalCMVN.load(self.data.cmvn_path).mean
        self.specaugment = SpecAugment(tcfg.specaugment, mask_value)
        conf = self.cfg.encoder.conformer
        self.chunk_sizes = (
            (list(conf.train_chunk_sizes) or [conf.chunk_size])
            if self.cfg.encoder.type == "conformer"
            else []
        )

        # ---- state: fresh or restored
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # this rank's batches consumed in the current epoch
        self.best_dev_loss = math.inf
        self.skipped_updates = 0
        self.aug_generator = torch.Generator()
        self.aug_generator.manual_seed(derive_seed(tcfg.seed, "augment", self.rt.rank))
        torch.manual_seed(derive_seed(tcfg.seed, "torch", self.rt.rank))
        random.seed(derive_seed(tcfg.seed, "python", self.rt.rank))
        np.random.seed(derive_seed(tcfg.seed, "numpy", self.rt.rank) % (1 << 32))
        if checkpoint is not None:
            self._restore(checkpoint)

        # ---- wrappers (after loading: state dicts are the plain module's). DDP first, then
        # compile (torch's recommended order: the compiler splits graphs at DDP's buckets).
        self.train_model: nn.Module = self.model
        if self.rt.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.train_model = DDP(
                self.train_model, device_ids=ids, find_unused_parameters=tcfg.find_unused_parameters
            )
        if tcfg.compile:
            self.train_model = torch.compile(self.train_model, dynamic=True)
        if self.rt.is_main:
            self._write_run_files()
        if self.rt.is_main and not self.resumed:  # logs of a run killed before any checkpoint
            for name in ("train_log.csv", "dev_log.csv"):
                (self.out / name).unlink(missing_ok=True)
        self.train_log = CSVLog(self.out / "train_log.csv")
        self.dev_log = CSVLog(self.out / "dev_log.csv")
        if self.rt.is_main and self.resumed:
            dropped = self.train_log.truncate_after(self.step)
            self.dev_log.truncate_after(self.step)
            self.log(
                f"resumed from {ckpt_path} at step {self.step} (epoch {self.epoch}, "
                f"batch {self.batches_done}); dropped {dropped} log row(s) after it"
            )
        self.tb = TensorBoardLog(self.out / "tb", tcfg.tensorboard and self.rt.is_main)
        self._stop_signal: int | None = None
        self._eval_example = ""

    # ------------------------------------------------------------------ setup helpers

    def log(self, message: str) -> None:
        if self.rt.is_main:
            self.progress.write(message)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.tcfg.amp
        if amp == "none":
            return None
        if self.rt.device.type != "cuda":
            if self.rt.is_main:
                print(f"note: amp={amp} is for GPUs; training in fp32 on the CPU", file=sys.stderr)
            return None
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise TrainingError("amp: bf16 is not supported by this GPU; use fp16")
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _check_compatible(self, ckpt: dict) -> None:
        self._check_vocab(training_state(ckpt).get("vocab", {}), "the checkpoint")
        arch, other = config_differences(ckpt["config"], config_to_dict(self.cfg))
        if arch:
            raise TrainingError(
                f"{self.out / 'last.pt'}: the model config does not match the checkpoint's "
                "architecture:\n  "
                + "\n  ".join(arch)
                + "\nresume with the config it was trained with (config.yaml in the run folder)"
            )
        if other and self.rt.is_main:
            self.log(
                "note: model config differs from the checkpoint's in non-architecture "
                "settings (the new values apply):\n  " + "\n  ".join(other)
            )

    def _check_vocab(self, vocab: dict, what: str) -> None:
        mine = self.data.vocab_info()
        for side, tok in (("src", self.data.src_tokenizer), ("tgt", self.data.tgt_tokenizer)):
            theirs = vocab.get(side)
            if theirs is None:
                continue
            if theirs["vocab_size"] != mine[side]["vocab_size"]:
                raise TrainingError(
                    f"vocab mismatch: {what} has a {side} vocabulary of {theirs['vocab_size']} "
                    f"but the data's tokenizer {tok.path} has {mine[side]['vocab_size']} pieces"
                )
            if theirs["sha256"] != mine[side]["sha256"]:
                raise TrainingError(
                    f"vocab mismatch: {what} was trained with another {side} sentencepiece model "
                    f"than {tok.path} (same size, different pieces: ids would change meaning)"
                )
        units = vocab.get("num_units")
        if units is not None and units != self.cfg.vocab.num_units:
            raise TrainingError(
                f"vocab mismatch: {what} has {units} units, the config/data "
                f"{self.cfg.vocab.num_units}"
            )

    def _init_from(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        mine = self.data.vocab_info()
        for side in ("src", "tgt"):
            blob = ckpt.get(f"{side}_spm")
            if blob is not None and hashlib.sha256(blob).hexdigest() != mine[side]["sha256"]:
                raise TrainingError(
                    f"vocab mismatch: --init-from {path} was trained with another {side} "
                    "sentencepiece model than the data's: its embeddings would mean other pieces"
                )
        state = ckpt["state_dict"]
        own = self.model.state_dict()
        take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        shape = [k for k in state if k in own and own[k].shape != state[k].shape]
        self.model.load_state_dict(take, strict=False)
        self.log(
            f"init from {path}: {len(take)}/{len(own)} tensors loaded, "
            f"{len(shape)} skipped (shape), {len(set(state) - set(own))} not in this model, "
            f"{len(set(own) - set(take))} left as initialised"
        )

    def _portable_config(self) -> dict:
        """The model config with paths relative to the run folder (``config.yaml``)."""
        d = config_to_dict(self.cfg)
        d["vocab"]["src_spm"], d["vocab"]["tgt_spm"] = "spm/spm_fr.model", "spm/spm_en.model"
        d["features"]["cmvn_path"] = "cmvn.json" if self.data.cmvn_path else None
        return d

    def _write_run_files(self) -> None:
        (self.out / "spm").mkdir(parents=True, exist_ok=True)
        for tok, name in ((self.data.src_tokenizer, "spm_fr"), (self.data.tgt_tokenizer, "spm_en")):
            for suffix in (".model", ".vocab"):
                copy_if_other(tok.path.with_suffix(suffix), self.out / "spm" / f"{name}{suffix}")
        if self.data.cmvn_path is not None:
            copy_if_other(self.data.cmvn_path, self.out / "cmvn.json")
        save_config(config_from_dict(self._portable_config()), self.out / "config.yaml")
        save_training_config(self.tcfg, self.out / "train_config.yaml")

    # ------------------------------------------------------------------ state

    def _rng_state(self) -> dict:
        keys, pos, has_gauss, cached = np.random.get_state()[1:]
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
            "augment": self.aug_generator.get_state(),
        }
        if self.rt.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        self.aug_generator.set_state(state["augment"])
        if "cuda" in state and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.rt.device)

    def _restore(self, ckpt: dict) -> None:
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise TrainingError(
                f"{self.out / 'last.pt'}: model weights do not fit this model "
                f"(architecture mismatch): {err}"
            ) from None
        ckpt = training_state(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        t = ckpt["trainer"]
        self.step, self.epoch = int(t["step"]), int(t["epoch"])
        self.best_dev_loss = float(t["best_dev_loss"])
        self.skipped_updates = int(t.get("skipped_updates", 0))
        batches_done, old_world = int(t["batches_done"]), int(t["world_size"])
        rng = ckpt["rng"]
        if old_world != self.rt.world_size:
            # Another sharding of each epoch: keep the position as a fraction of the epoch.
            batches_done = batches_done * old_world // self.rt.world_size
            if self.rt.is_main:
                self.log(
                    f"note: world size {self.rt.world_size} != checkpoint's {old_world}: "
                    "data order and random streams are not those of the original run"
                )
        if self.rt.rank < len(rng):
            self._set_rng_state(rng[self.rt.rank])
        self.batches_done = batches_done
        if t.get("train_manifest_sha256") not in (None, self.train_manifest_sha256):
            self.log("note: the train manifest changed since the checkpoint; data order differs")

    def _gather(self, obj) -> list:
        if not self.rt.distributed:
            return [obj]
        out: list = [None] * self.rt.world_size
        dist.all_gather_object(out, obj)
        return out

    def training_state(self) -> dict:
        """Everything :meth:`_restore` needs besides the weights; collective under DDP (every
        rank must call: the RNG states of all ranks are gathered)."""
        rng = self._gather(self._rng_state())
        return {
            "format": TRAINING_STATE_FORMAT,
            "version": TRAINING_STATE_VERSION,
            "training_config": config_to_dict(self.tcfg),
            "vocab": {**self.data.vocab_info(), "num_units": self.cfg.vocab.num_units},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "trainer": {
                "step": self.step,
                "epoch": self.epoch,
                "batches_done": self.batches_done,
                "world_size": self.rt.world_size,
                "best_dev_loss": self.best_dev_loss,
                "skipped_updates": self.skipped_updates,
                "train_manifest_sha256": self.train_manifest_sha256,
                "torch_version": str(torch.__version__),
            },
            "rng": rng,
        }

    def _write_checkpoint(self, path: Path, training: dict) -> None:
        """The EchoStream checkpoint format (``echostream.models.checkpoint``: config, weights,
        CMVN, tokenizers), with the training state in ``extra["training"]``: a training
        checkpoint loads for inference with ``echostream.models.load_checkpoint``."""
        tokenizers = (self.data.src_tokenizer.path, self.data.tgt_tokenizer.path)
        from echostream.models import EchoStreamModel

        if isinstance(self.model, EchoStreamModel):
            from echostream.models.checkpoint import save_checkpoint

            save_checkpoint(path, self.model, extra={"training": training}, tokenizers=tokenizers)
            return
        payload = {  # same layout for other modules (stand-ins, experiments)
            "format": "echostream",
            "version": 1,
            "config": config_to_dict(self.cfg),
            "state_dict": self.model.state_dict(),
            "cmvn": None,
            "src_spm": tokenizers[0].read_bytes(),
            "tgt_spm": tokenizers[1].read_bytes(),
            "extra": {"training": training},
        }
        atomic_torch_save(payload, path)

    def save(self, last: bool = True, best: bool = False) -> None:
        """Write this step's checkpoint (collective under DDP; rank 0 writes)."""
        training = self.training_state()
        if not self.rt.is_main:
            return
        numbered = self.out / f"ckpt_{self.step:08d}.pt"
        target = numbered if self.tcfg.keep_last > 0 and last else self.out / ".ckpt.pending"
        self._write_checkpoint(target, training)
        if last:
            atomic_link(target, self.out / "last.pt")
        if best:
            atomic_link(target, self.out / "best.pt")
        if target.name == ".ckpt.pending":
            target.unlink()
        old = sorted(self.out.glob("ckpt_*.pt"))
        for path in old[: max(0, len(old) - self.tcfg.keep_last)]:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ data stream

    def _micro_batches(self) -> Iterator[dict]:
        """This rank's batches, epoch after epoch, from the restored position."""
        while self.tcfg.max_epochs is None or self.epoch < self.tcfg.max_epochs:
            self.sampler.set_epoch(self.epoch, skip_batches=self.batches_done)
            for batch in self.loader:
                self.batches_done += 1
                yield batch
            self.epoch += 1
            self.batches_done = 0

    def _to_device(self, batch: dict) -> dict:
        nb = self.rt.device.type == "cuda"
        return {
            k: v.to(self.rt.device, non_blocking=nb) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def _sample_chunk(self) -> int | None:
        if not self.chunk_sizes:
            return None
        i = int(torch.randint(len(self.chunk_sizes), (1,), generator=self.aug_generator))
        return self.chunk_sizes[i]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ one update

    def _forward_backward(self, batch: dict, chunk: int | None, sync: bool) -> dict[str, float]:
        batch = self._to_device(batch)
        batch["fbank"] = self.specaugment(batch["fbank"], batch["fbank_len"], self.aug_generator)
        if self.tcfg.compile:  # guards on the ids list would recompile for every batch size
            batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
        no_sync = getattr(self.train_model, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with self._autocast():
                out = self.train_model(batch, chunk_size=chunk)
            if "total" not in out:
                raise TrainingError(f"the model returned {sorted(out)}: no 'total' loss")
            loss = out["total"].float() / self.tcfg.update_freq
            self.scaler.scale(loss).backward()
        values = {
            k: float(v.detach().float())
            for k, v in out.items()
            if torch.is_tensor(v) and v.numel() == 1
        }
        values["_frames"] = float(batch["fbank_len"].sum())
        values["_utterances"] = float(batch["fbank_len"].shape[0])
        return values

    def _oom_error(self, err: BaseException, batch: dict | None) -> TrainingError:
        shape = tuple(batch["fbank"].shape) if batch is not None else "?"
        where = "GPU" if self.rt.device.type == "cuda" else "CPU"
        t = self.tcfg
        return TrainingError(
            f"out of {where} memory at step {self.step + 1} (fbank batch {shape}). Lower "
            f"max_frames (now {t.max_frames}) and raise update_freq (now {t.update_freq}) to "
            f"keep the same effective batch, e.g. max_frames: {max(1, t.max_frames // 2)}, "
            f"update_freq: {t.update_freq * 2}; or set max_batch_size"
            + ("; or use amp: bf16" if where == "GPU" and t.amp == "none" else "")
            + f". ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        )

    def train_step(self, batches: Iterator[dict]) -> dict | None:
        """One optimiser update over ``update_freq`` micro-batches; None when data ran out."""
        t0 = time.perf_counter()
        self.train_model.train()
        sums: dict[str, float] = {}
        n_micro = 0
        batch = None
        try:
            for micro in range(self.tcfg.update_freq):
                batch = next(batches, None)
                if batch is None:
                    break
                last = micro == self.tcfg.update_freq - 1
                values = self._forward_backward(batch, self._sample_chunk(), sync=last)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_micro += 1
        except Exception as err:
            if _is_oom(err):
                raise self._oom_error(err, batch) from err
            raise
        if n_micro == 0:
            return None
        if n_micro < self.tcfg.update_freq:  # data ran out mid-accumulation (max_epochs)
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.tcfg.update_freq / n_micro)
                    if self.rt.distributed:  # the last micro-batch (which syncs) never came
                        dist.all_reduce(p.grad)
                        p.grad.div_(self.rt.world_size)
        # Global averages over micro-batches and ranks (frames/utterances: totals).
        names = sorted(sums)
        vec = torch.tensor(
            [sums[k] for k in names] + [float(self._stop_signal is not None)], dtype=torch.float64
        )
        if self.rt.distributed:
            vec = vec.to(self.rt.device)
            dist.all_reduce(vec)
            vec = vec.cpu()
        stop = bool(vec[-1] > 0)
        totals = dict(zip(names, vec[:-1].tolist(), strict=True))
        denom = n_micro * self.rt.world_size
        losses = {k: v / denom for k, v in totals.items() if not k.startswith("_")}

        self.scaler.unscale_(self.optimizer)
        max_norm = self.tcfg.clip_norm if self.tcfg.clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        lr = self.schedule.set_step(self.step + 1)
        if math.isfinite(grad_norm) or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the scaler skips non-finite fp16 steps itself
        if not math.isfinite(grad_norm):
            self.skipped_updates += 1
            if not self.scaler.is_enabled():  # fp16 overflows while the scale settles are routine
                self.log(f"warning: step {self.step + 1}: non-finite gradient norm, update skipped")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - t0
        row = {"step": self.step, "epoch": self.epoch, "lr": lr}
        row.update({f"loss_{k}" if not k.startswith("loss") else k: v for k, v in losses.items()})
        row.update(
            {
                "grad_norm": grad_norm,
                "frames": int(totals["_frames"]),
                "utterances": int(totals["_utterances"]),
                "seconds": seconds,
            }
        )
        row["_stop"] = stop
        return row

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Dev losses over the dev set (or its first ``dev_max_utterances``), greedy ASR WER and
        ST BLEU on the first ``dev_decode_utterances``. Rank 0 only; others wait."""
        result = None
        if self.rt.is_main:
            with torch.random.fork_rng(
                devices=[self.rt.device] if self.rt.device.type == "cuda" else []
            ):
                result = self._evaluate()
        if self.rt.distributed:
            dist.barrier()
        return result

    def _dev_loader(self, n: int | None) -> torch.utils.data.DataLoader:
        dev = self.data.dev
        rows = dev.rows if n is None else dev.rows[:n]
        manifest = dataclasses.replace(dev, rows=list(rows))
        ds = S2STDataset(
            manifest,
            self.data.src_tokenizer,
            self.data.tgt_tokenizer,
            feature_dir=self.data.feature_dir(self.tcfg.dev_split),
        )
        lengths = ds.lengths
        max_frames = max(self.tcfg.dev_max_frames or self.tcfg.max_frames, max(lengths))
        sampler = BucketBatchSampler(
            lengths, max_frames, max_batch_size=self.tcfg.max_batch_size, shuffle=False
        )
        return torch.utils.data.DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate, num_workers=0
        )

    def _evaluate(self) -> dict:
        t0 = time.perf_counter()
        model = self.model
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            for batch in self._dev_loader(self.tcfg.dev_max_utterances):
                batch = self._to_device(batch)
                with self._autocast():
                    out = model(batch)
                n = int(batch["fbank_len"].shape[0])
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        sums[k] = sums.get(k, 0.0) + float(v.float()) * n
                count += n
            result: dict = {f"dev_{k}": v / max(count, 1) for k, v in sums.items()}
            result["dev_utterances"] = count
            if self.tcfg.dev_decode_utterances > 0:
                try:
                    result.update(self._decode_metrics())
                except Exception as err:  # a decoding bug must not end a long run
                    if _is_oom(err):
                        raise
                    self.log(
                        f"warning: dev decoding failed ({type(err).__name__}: {err}); "
                        "no WER/BLEU this time"
                    )
        except Exception as err:
            if _is_oom(err):
                raise self._oom_error(err, None) from err
            raise
        finally:
            model.train(was_training)
        result["seconds"] = time.perf_counter() - t0
        return result

    def _decode_metrics(self) -> dict:
        src_refs, tgt_refs, asr_hyps, st_hyps = [], [], [], []
        ids = {row.id: row for row in self.data.dev.rows}
        for batch in self._dev_loader(self.tcfg.dev_decode_utterances):
            batch = self._to_device(batch)
            with self._autocast():
                asr, st = decode_for_eval(self.model, batch)
            for i, utt in enumerate(batch["ids"]):
                src_refs.append(normalize(ids[utt].src_text))
                tgt_refs.append(normalize(ids[utt].tgt_text))
                if asr is not None:
                    asr_hyps.append(self.data.src_tokenizer.decode(asr[i]))
                if st is not None:
                    st_hyps.append(self.data.tgt_tokenizer.decode(st[i]))
        out: dict = {}
        if asr_hyps:
            out["asr_wer"] = corpus_wer(src_refs, asr_hyps)
        if st_hyps:
            out["st_bleu"] = corpus_bleu(tgt_refs, st_hyps)
        if asr_hyps or st_hyps:
            out["decoded_utterances"] = len(src_refs)
            self._eval_example = (
                f"  e.g. ASR: {asr_hyps[0] if asr_hyps else '-'!r} (ref {src_refs[0]!r})\n"
                f"       ST:  {st_hyps[0] if st_hyps else '-'!r} (ref {tgt_refs[0]!r})"
            )
        return out

    # ------------------------------------------------------------------ main loop

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.log(
            f"signal {signal.Signals(signum).name}: saving and stopping after this step "
            "(send it again to abort without saving)"
        )

    def train(self) -> dict:
        """Train until ``max_steps`` (or ``max_epochs``, or SIGTERM/SIGINT: then save and stop).

        Returns a summary: steps, last losses, best dev loss, seconds.
        """
        tcfg = self.tcfg
        handlers = {}
        if _in_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self._on_signal)
        self.progress = Progress(
            tcfg.max_steps,
            self.step,
            tcfg.progress and self.rt.is_main,
            self.out / "train.log" if self.rt.is_main else None,
        )
        if self.rt.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(
                f"{'resuming' if self.resumed else 'training'} {self.cfg.model} "
                f"({n_params:,} parameters) on {self.rt.world_size} × {self.rt.device.type}"
                f", {len(self.data.train)} train / {len(self.data.dev)} dev utterances, "
                f"{len(self.sampler.batches())} batches per rank per epoch, "
                f"steps {self.step} → {tcfg.max_steps}"
            )
        t_start = time.perf_counter()
        batches = self._micro_batches()
        last_row: dict = {}
        evaluated_at = saved_at = -1
        start_step, out_of_data = self.step, False
        try:
            while self.step < tcfg.max_steps:
                row = self.train_step(batches)
                if row is None:
                    self.log(f"max_epochs={tcfg.max_epochs} reached at step {self.step}")
                    out_of_data = True
                    break
                stop = row.pop("_stop")
                last_row = row
                if self.rt.is_main:
                    self.train_log.write(row)
                    self.tb.scalars("train", row, self.step)
                    losses = {
                        k.removeprefix("loss_"): v for k, v in row.items() if k.startswith("loss_")
                    }
                    self.progress.update(
                        self.step, losses, row["lr"], row["frames"] / max(row["seconds"], 1e-9)
                    )
                final = self.step >= tcfg.max_steps
                is_best = False
                if not stop and (final or (tcfg.eval_every and self.step % tcfg.eval_every == 0)):
                    is_best = self._run_eval()
                    evaluated_at = self.step
                save_due = tcfg.save_every and self.step % tcfg.save_every == 0
                if final or stop or is_best or save_due:
                    self.save(last=True, best=is_best)
                    saved_at = self.step
                if stop:
                    self.log(
                        f"stopped by a signal at step {self.step}; saved "
                        f"{self.out / 'last.pt'} (continue with --resume)"
                    )
                    break
            if out_of_data and self.step > start_step:
                is_best = self._run_eval() if evaluated_at != self.step else False
                if is_best or saved_at != self.step:
                    self.save(last=True, best=is_best)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.progress.close()
            self.tb.close()
        seconds = time.perf_counter() - t_start
        summary = {
            "step": self.step,
            "epoch": self.epoch,
            "seconds": seconds,
            "best_dev_loss": self.best_dev_loss,
            "last": last_row,
            "skipped_updates": self.skipped_updates,
        }
        if self.rt.is_main:
            self.log(
                f"done: step {self.step}, best dev loss {self.best_dev_loss:.4f}, {seconds:.1f} s"
            )
        return summary

    def _run_eval(self) -> bool:
        """Evaluate, log, and say (on every rank) whether this is the best dev loss so far."""
        result = self.evaluate()
        flag = [False]
        if self.rt.is_main and result is not None:
            dev_loss = result.get("dev_total", math.inf)
            flag[0] = dev_loss < self.best_dev_loss
            if flag[0]:
                self.best_dev_loss = dev_loss
            row = {"step": self.step, **result, "best": int(flag[0])}
            self.dev_log.write(row)
            self.tb.scalars("dev", result, self.step)
            parts = [f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)]
            self.log(f"dev @ step {self.step}: " + " ".join(parts) + (" (best)" if flag[0] else ""))
            if self._eval_example:
                self.progress.write(self._eval_example, echo=False)
        if self.rt.distributed:
            dist.broadcast_object_list(flag, src=0)
            best = [self.best_dev_loss]
            dist.broadcast_object_list(best, src=0)
            self.best_dev_loss = best[0]
        return bool(flag[0])


# --------------------------------------------------------------------------- CLI


def _resolve_path(value: str, folder: Path, pattern: str) -> Path:
    path = Path(value)
    if path.exists():
        return path
    candidate = folder / pattern.format(value)
    if candidate.exists():
        return candidate
    raise ConfigError(f"{value}: no such file (nor {candidate})")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="echostream train",
        description="Train EchoStream or the StreamSpeech baseline. Several processes: "
        "torchrun --nproc_per_node N -m echostream.training.trainer ARGS.",
    )
    p.add_argument(
        "--config",
        required=True,
        help="model config: a YAML path or a name in configs/fr-en (echostream_tiny)",
    )
    p.add_argument("--data", required=True, help="corpus folder (echostream prepare synth)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, config copies")
    p.add_argument(
        "--train-config",
        default=None,
        help="training config: a YAML path or a name in configs/train (default: "
        "StreamSpeech's recipe)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--init-from",
        default=None,
        help="initialise weights from this checkpoint (matching names and shapes)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main_train(
    argv: Sequence[str] | None = None, *, model_factory: ModelFactory | None = None
) -> int:
    """``echostream train ...``; returns the exit status (errors: a message and 1)."""
    return run_train(build_arg_parser().parse_args(argv), model_factory=model_factory)


def run_train(args: argparse.Namespace, *, model_factory: ModelFactory | None = None) -> int:
    """Train from parsed :func:`build_arg_parser` arguments (for a CLI sub-command)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg_path = _resolve_path(args.config, REPO_DIR / "configs" / "fr-en", "config_{}.yaml")
        model_cfg = load_config(cfg_path)
        train_path = None
        if args.train_config is not None:
            train_path = _resolve_path(args.train_config, REPO_DIR / "configs" / "train", "{}.yaml")
        tcfg = load_training_config(
            train_path,
            max_steps=args.max_steps,
            device=args.device,
            amp=args.amp,
            compile=args.compile,
            threads=args.threads,
            seed=args.seed,
            progress=False if args.quiet else None,
        )
        trainer = Trainer(
            model_cfg,
            tcfg,
            args.data,
            args.out,
            resume=args.resume,
            init_from=args.init_from,
            model_factory=model_factory,
        )
        trainer.train()
    except (TrainingError, ConfigError, ManifestError, TokenizerError) as err:
        prefix = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main_train())
