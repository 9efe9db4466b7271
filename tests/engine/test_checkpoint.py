"""Atomic writes, checkpoint loading errors and the RNG state of xtc_ext.engine.checkpoint."""

import errno
import random

import numpy as np
import pytest
import torch

from xtc_ext.engine import checkpoint as ckpt


def test_a_failed_write_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"model": {}, "args": {}, "epoch": 1})

    def full_disk(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device; the previous last.pt is intact") as exc:
        ckpt.save_checkpoint(path, {"model": {}, "args": {}, "epoch": 2})
    assert exc.value.errno == errno.ENOSPC
    assert ckpt.load_checkpoint(path)["epoch"] == 1  # still loadable, still the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path / "last.pt", {"model": {}, "args": {}})
    assert not list(tmp_path.iterdir())


def test_text_and_copies_are_atomic_too(tmp_path):
    ckpt.write_text(tmp_path / "a.txt", "one")
    ckpt.copy_file(tmp_path / "a.txt", tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "one"
    with pytest.raises(OSError, match="could not write"):
        ckpt.write_text(tmp_path / "missing_dir" / "c.txt", "x")


@pytest.mark.parametrize("content, reason", [
    (None, "not found"),
    (b"", "truncated"),
    (b"junk junk", "truncated"),
    ("truncate", "truncated"),
    ("not_ours", "not a checkpoint of python -m xtc_ext.train"),
])
def test_load_errors_name_the_file_in_one_line(tmp_path, content, reason):
    path = tmp_path / "x.pt"
    if content == "truncate":
        torch.save({"model": {"w": torch.zeros(1000)}, "args": {}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif content == "not_ours":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.load_checkpoint(path)
    message = str(exc.value)
    assert "x.pt" in message and reason in message and "\n" not in message


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a file"):
        ckpt.load_checkpoint(tmp_path)


def test_rng_state_round_trip_with_the_loops_generators():
    gens = {"loader": torch.Generator().manual_seed(1), "regularizer": torch.Generator().manual_seed(2)}
    state = ckpt.capture_rng_state(gens)
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gens["loader"]),
                torch.rand(1, generator=gens["regularizer"]))
    fresh = {"loader": torch.Generator(), "regularizer": torch.Generator()}
    ckpt.restore_rng_state(state, fresh)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=fresh["loader"]),
             torch.rand(1, generator=fresh["regularizer"]))
    assert expected[:2] == again[:2] and all(torch.equal(a, b) for a, b in zip(expected[2:], again[2:]))
    # a checkpoint of an older version without a generator leaves that generator as seeded
    del state["regularizer"]
    seeded = torch.Generator().manual_seed(5)
    ckpt.restore_rng_state(state, {"regularizer": seeded})
    assert torch.equal(torch.rand(1, generator=seeded), torch.rand(1, generator=torch.Generator().manual_seed(5)))
