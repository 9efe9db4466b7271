"""The compiled extension: build info, registration, and the clear errors for missing/stale builds."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xtc_ext
from xtc_ext import _extension

ROOT = Path(__file__).resolve().parents[2]


def test_build_info_describes_the_build():
    info = xtc_ext.build_info
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["with_cuda"], bool)
    assert info["with_cuda"] == bool(info["with_cuda"] and torch.version.cuda)
    assert len(info["source_hash"]) == 64


def test_ops_are_registered_under_torch_ops():
    for name in ("masked_cross_entropy", "masked_l1_loss", "soft_cross_entropy"):
        for suffix in ("", "_fwd", "_bwd"):
            assert hasattr(torch.ops.xtc_ext, name + suffix)


def test_build_matches_checkout_sources():
    assert _extension.source_hash(ROOT / "csrc") == xtc_ext.build_info["source_hash"]


def test_source_hash_sees_any_change(tmp_path):
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "a.cpp").write_text("int a;\n")
    (csrc / "b.h").write_text("#pragma once\n")
    before = _extension.source_hash(csrc)
    (csrc / "a.cpp").write_text("int a = 1;\n")
    changed = _extension.source_hash(csrc)
    assert changed != before
    (csrc / "notes.txt").write_text("not a source file")
    assert _extension.source_hash(csrc) == changed


def _pkg_path():
    return [str(ROOT / "xtc_ext")]


def test_stale_sources_raise_with_rebuild_command(monkeypatch):
    monkeypatch.delenv("XTC_ALLOW_STALE_BUILD", raising=False)
    monkeypatch.setattr(_extension, "source_hash", lambda csrc: "0" * 64)
    with pytest.raises(ImportError, match="(?s)stale build.*pip install --no-build-isolation"):
        _extension.load(_pkg_path())


def test_stale_sources_only_warn_when_allowed(monkeypatch):
    monkeypatch.setattr(_extension, "source_hash", lambda csrc: "0" * 64)
    monkeypatch.setenv("XTC_ALLOW_STALE_BUILD", "1")
    with pytest.warns(UserWarning, match="stale build"):
        info = _extension.load(_pkg_path())
    assert info["source_hash"] == xtc_ext.build_info["source_hash"]


def test_other_torch_version_raises(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    with pytest.raises(ImportError, match="built against torch .* but torch 0.0.1"):
        _extension.load(_pkg_path())


def test_missing_extension_raises(monkeypatch):
    def fail(name):
        raise ImportError("No module named 'xtc_ext._C'")

    monkeypatch.setattr(_extension.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="(?s)could not be loaded.*pip install --no-build-isolation"):
        _extension.load(_pkg_path())


def test_import_from_repository_root_finds_installed_build():
    code = "import xtc_ext, torch; print(torch.ops.xtc_ext.masked_cross_entropy(torch.zeros(1,2,1,1), torch.zeros(1,1,1, dtype=torch.long)).item())"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout) == pytest.approx(0.6931472, rel=1e-6)  # log 2
