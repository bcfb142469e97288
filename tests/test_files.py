"""Atomic writes (echostream.files): complete file or the old one, never a half-written one."""

import os

import numpy as np
import pytest
import torch

from echostream.files import (
    atomic_open,
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_land_whole_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "notes.txt"  # the folder is created
    atomic_write_text(target, "é\r\nline\n")
    assert target.read_bytes() == "é\r\nline\n".encode()  # UTF-8, newlines as given
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _names(target.parent) == ["notes.txt"]  # no temp file left behind

    ckpt = tmp_path / "w.pt"
    atomic_torch_save({"w": torch.arange(3)}, ckpt)
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.arange(3))


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "manifest.tsv"
    target.write_text("old\n")
    with pytest.raises(type(error)), atomic_open(target, "w") as f:
        f.write("new, half")
        raise error
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["manifest.tsv"]


def test_atomic_path_suffix_for_writers_that_append_one(tmp_path):
    target = tmp_path / "feats.npy"
    with atomic_path(target, suffix=".tmp.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.npy")
        np.save(tmp, np.arange(4))  # would write tmp + ".npy" for any other ending
    np.testing.assert_array_equal(np.load(target), np.arange(4))
    assert _names(tmp_path) == ["feats.npy"]


def test_atomic_open_refuses_append_and_read_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "x", "a"):
        pass
    assert _names(tmp_path) == []
