"""benchmarks/ten_frames.py: the README job's report, written into a document between its markers, agrees with the
run's own metrics.json; a document without the markers is refused, naming --write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ten_frames():
    spec = importlib.util.spec_from_file_location("ten_frames", ROOT / "benchmarks" / "ten_frames.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_section_is_written_between_the_markers_from_the_run(ten_frames, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\n{ten_frames.BEGIN}\nold text\n{ten_frames.END}\nafter\n")
    out = tmp_path / "run"
    text = ten_frames.main(["--out", str(out), "--write", str(doc), "--", "--epochs", "1", "--encoder-depth", "18",
                            "--size", "32", "32", "--num-figures", "0", "--no-tensorboard"])
    metrics = json.loads((out / "metrics.json").read_text())
    content = doc.read_text()
    assert "old text" not in content and content.startswith("# title\n") and content.endswith(f"{ten_frames.END}\nafter\n")
    assert text in content and "--epochs 1 --encoder-depth 18" in text and "after 1 epochs" in text
    assert f"| mIoU (13 classes) | {metrics['before_training']['mIoU']:.3f} | {metrics['test']['mIoU']:.3f} |" in text
    assert f"{metrics['first_epoch_loss']:.3f} (epoch 1)" in text


def test_the_project_document_has_the_markers(ten_frames):
    content = (ROOT / "docs" / "reproducing.md").read_text()
    assert content.count(ten_frames.BEGIN) == 1 and content.count(ten_frames.END) == 1


def test_a_document_without_markers_is_refused(ten_frames, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="--write: .* has no"):
        ten_frames.write_into(doc, "text")
