"""Distributed training: two CPU processes under torchrun (gloo) see disjoint data and end with
identical weights; rank 0 writes one checkpoint holding both ranks' RNG states.

Run as a script (by torchrun), this file is the worker: it trains the stand-in model of
test_training.py and records, per rank, the utterances it trained on and its final weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_training import EMFORMER_CFG, StandIn, make_corpus, tcfg

from echostream.config import load_config
from echostream.data.manifest import read_manifest
from echostream.data.sampler import BucketBatchSampler
from echostream.training.checkpoints import read_checkpoint, training_state

STEPS = 5


def test_two_ranks_disjoint_data_identical_weights(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=72)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(corpus),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    seen = [json.loads((out / f"rank{r}_ids.json").read_text()) for r in range(2)]
    weights = [torch.load(out / f"rank{r}_weights.pt", weights_only=True) for r in range(2)]
    for r in range(2):
        assert len(seen[r]) == STEPS * 2  # update_freq 2 micro-batches per step
    # Each rank trained on exactly its shard of epoch 0, in order; the shards are disjoint.
    rows = read_manifest(corpus / "train.tsv").rows
    lengths = {row.id: row.src_n_frames for row in rows}
    for r in range(2):
        shard = BucketBatchSampler(
            [row.src_n_frames for row in rows], 300, seed=1, rank=r, world_size=2
        ).batches(0)
        assert len(shard) >= STEPS * 2
        assert seen[r] == [[rows[i].id for i in b] for b in shard[: STEPS * 2]]
    flat = [[utt for batch in s for utt in batch] for s in seen]
    assert not set(flat[0]) & set(flat[1])
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    ckpt = read_checkpoint(out / "last.pt")
    state = training_state(ckpt)
    assert state["trainer"]["world_size"] == 2 and state["trainer"]["step"] == STEPS
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["augment"], state["rng"][1]["augment"])
    for k in weights[0]:
        assert torch.equal(ckpt["state_dict"][k], weights[0][k]), k
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == STEPS + 1
    header = rows[0].split(",")
    frames = int(rows[1].split(",")[header.index("frames")])  # summed over both ranks
    assert frames == sum(lengths[u] for r in range(2) for b in seen[r][:2] for u in b)


def _worker(corpus: str, out: str) -> None:
    from echostream.training.trainer import Trainer

    rank = int(os.environ["RANK"])
    trainer = Trainer(
        load_config(EMFORMER_CFG),
        tcfg(max_steps=STEPS, max_frames=300, eval_every=0, dev_decode_utterances=2),
        corpus,
        out,
        model_factory=StandIn,
    )
    trainer.train()
    Path(out, f"rank{rank}_ids.json").write_text(json.dumps(trainer.model.ids))
    torch.save(trainer.model.state_dict(), Path(out, f"rank{rank}_weights.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
