"""BucketBatchSampler: max frames, determinism, DDP shards, resume."""

from __future__ import annotations

import numpy as np
import pytest

from echostream.data.sampler import BucketBatchSampler

LENGTHS = np.random.default_rng(0).integers(50, 1500, size=500).tolist()


def test_respects_max_frames_and_batch_size():
    s = BucketBatchSampler(LENGTHS, max_frames=6000, max_batch_size=7, seed=3)
    batches = list(s)
    assert batches
    for b in batches:
        assert len(b) * max(LENGTHS[i] for i in b) <= 6000
        assert len(b) <= 7
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == len(LENGTHS)  # world_size 1: nothing dropped
    sorted_spread = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches]
    assert np.median(sorted_spread) < 50  # bucketed: similar lengths together


def test_deterministic_per_seed_and_epoch():
    a = BucketBatchSampler(LENGTHS, 6000, seed=5)
    b = BucketBatchSampler(LENGTHS, 6000, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)  # reshuffled
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(LENGTHS, 6000, seed=6)) != list(b)
    ordered = BucketBatchSampler(LENGTHS, 6000, shuffle=False)
    firsts = [LENGTHS[bt[0]] for bt in ordered]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_disjoint_and_equal(world_size):
    shards = []
    for rank in range(world_size):
        s = BucketBatchSampler(LENGTHS, 5000, seed=1, rank=rank, world_size=world_size)
        s.set_epoch(2)
        shards.append(list(s))
    assert len({len(sh) for sh in shards}) == 1  # same number of batches on every rank
    items = [[i for b in sh for i in b] for sh in shards]
    for r in range(world_size):
        for q in range(r + 1, world_size):
            assert not set(items[r]) & set(items[q])
    one = BucketBatchSampler(LENGTHS, 5000, seed=1)
    one.set_epoch(2)
    all_batches = list(one)
    dropped = len(all_batches) % world_size
    covered = sorted(i for it in items for i in it)
    assert len(covered) == len(LENGTHS) - sum(
        len(b) for b in all_batches[len(all_batches) - dropped :]
    )


def test_resume_mid_epoch_and_state():
    s = BucketBatchSampler(LENGTHS, 6000, seed=2, rank=1, world_size=2)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, skip_batches=5)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    state = s.state_dict(batches_done=7)
    t = BucketBatchSampler(LENGTHS, 6000, seed=2, rank=1, world_size=2)
    t.load_state_dict(state)
    assert list(t) == full[7:]
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(LENGTHS, 6000, seed=9).load_state_dict(state)


def test_too_long_items_dropped_and_errors():
    with pytest.warns(UserWarning, match="2 item"):
        s = BucketBatchSampler([10, 20, 5000, 30, 9000], max_frames=100)
    assert s.num_dropped == 2
    assert sorted(i for b in s for i in b) == [0, 1, 3]
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(LENGTHS, 6000, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer batches than world_size"):
        BucketBatchSampler([10, 10], 100, world_size=2)


def test_dataset_reads_fairseq_zip_and_npy(tmp_path):
    """StreamSpeech manifests point into an uncompressed zip of .npy fbank (path:offset:len)."""
    import io
    import zipfile

    import torch

    from echostream.data.manifest import ManifestRow, write_manifest
    from echostream.data.sampler import S2STDataset, collate

    feats = {f"u{i}": np.random.default_rng(i).normal(size=(20 + i, 80)).astype(np.float32)
             for i in range(3)}  # fmt: skip
    zpath = tmp_path / "src_fbank80.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        for k, v in feats.items():
            buf = io.BytesIO()
            np.save(buf, v)
            z.writestr(f"{k}.npy", buf.getvalue())
    rows = []
    with zipfile.ZipFile(zpath) as z:
        for info in z.infolist():  # data starts after the 30-byte local header + name + extra
            with open(zpath, "rb") as f:
                f.seek(info.header_offset + 26)
                n_name, n_extra = np.frombuffer(f.read(4), dtype="<u2")
            offset = info.header_offset + 30 + int(n_name) + int(n_extra)
            k = info.filename[:-4]
            rows.append(ManifestRow(k, f"{zpath}:{offset}:{info.file_size}", len(feats[k]),
                                    "bonjour", "hello", "1 2 3", 3))  # fmt: skip
    np.save(tmp_path / "u9.npy", feats["u0"])
    rows.append(ManifestRow("u9", "u9.npy", 20, "salut", "hi", "4", 1))
    write_manifest(tmp_path / "m.tsv", rows)
    ds = S2STDataset(tmp_path / "m.tsv", num_units=10)
    for i, row in enumerate(rows[:3]):
        assert torch.equal(ds[i].fbank, torch.from_numpy(feats[row.id]))
    assert torch.equal(ds[3].fbank, torch.from_numpy(feats["u0"]))
    batch = collate([ds[i] for i in range(4)])
    assert batch["fbank"].shape == (4, 22, 80) and batch["units"].tolist()[3] == [4, -1, -1]
    assert batch["src_tokens"].shape == (4, 0)  # no tokenizer given
