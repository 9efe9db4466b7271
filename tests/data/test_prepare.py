"""``python -m xtc_ext.data.prepare``: a downloaded release checked against the size its reader should find
(docs/data.md), on the tiny trees of tests/fixtures.py with the release sizes set to theirs."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import CS_FRAMES, DATASET_WRITERS, NYUDMT_SPLITS, PASCALMT_SPLITS
from xtc_ext.data import DATASETS, get_dataset
from xtc_ext.data import prepare
from xtc_ext.data.prepare import check_release, main

#: The samples per split that the fixture writers produce.
FIXTURE_SIZES = {
    "nyuv2": {"train": 4, "val": 2},
    "cityscapes": {"train": len(CS_FRAMES), "val": 2},
    "cityscapes-mtan": {"train": 4, "val": 2},
    "nyudmt": {s: len(ids) for s, ids in NYUDMT_SPLITS.items()},
    "pascal": {s: len(ids) for s, ids in PASCALMT_SPLITS.items()},
}
#: A file of each tree, relative to the root, whose loss makes a split smaller or unreadable.
ONE_FILE = {
    "nyuv2": "val/image/1.npy",
    "cityscapes": f"leftImg8bit/train/{CS_FRAMES[0][0]}/{CS_FRAMES[0][1]}_leftImg8bit.png",
    "cityscapes-mtan": "train/image/3.npy",
    "nyudmt": f"depth/{NYUDMT_SPLITS['val'][0]}.npy",
    "pascal": f"sal_distill/{PASCALMT_SPLITS['train'][0]}.png",
}


def test_every_dataset_with_a_release_has_its_sizes_and_a_fixture():
    with_release = {name for name, spec in DATASETS.items() if spec.release_sizes}
    assert with_release == set(FIXTURE_SIZES) == set(DATASET_WRITERS) - {"frames"}
    for name in with_release:
        assert set(get_dataset(name).release_sizes) == {"train", get_dataset(name).test_split}


@pytest.fixture(params=sorted(FIXTURE_SIZES))
def release(request, tmp_path, monkeypatch):
    """(name, root) of a tiny tree whose registered release sizes are the tree's own."""
    name = request.param
    DATASET_WRITERS[name](tmp_path)
    spec = dataclasses.replace(DATASETS[name], release_sizes=FIXTURE_SIZES[name])
    monkeypatch.setattr(prepare, "get_dataset", lambda n: spec if n == name else get_dataset(n))
    return name, tmp_path


def test_a_complete_release_passes(release, capsys):
    name, root = release
    assert main(["--dataset", name, "--data-root", str(root), "--read-all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [[name, f"{s}:", str(n)] for s, n in FIXTURE_SIZES[name].items()]
    assert all(line.endswith(" ok") for line in lines)


def test_a_missing_file_fails_and_is_named(release, capsys):
    name, root = release
    (root / ONE_FILE[name]).unlink()
    assert main(["--dataset", name, "--data-root", str(root)]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if not line.endswith(" ok")]
    assert len(bad) == 1  # one split: fewer samples, or the reader's message naming the file
    assert "differs from the release" in bad[0] or ONE_FILE[name].split("/")[-1] in bad[0]


def test_a_release_of_another_size_fails(tmp_path, monkeypatch):
    DATASET_WRITERS["nyuv2"](tmp_path)
    spec = dataclasses.replace(DATASETS["nyuv2"], release_sizes={"train": 4, "val": 3})
    results = check_release(spec, tmp_path)
    assert [(r.split, r.found, r.expected, r.ok) for r in results] == [("train", 4, 4, True), ("val", 2, 3, False)]
    assert results[1].line() == "val: 2 samples (release: 3) differs from the release"


def test_read_all_finds_a_corrupt_file(tmp_path):
    DATASET_WRITERS["nyuv2"](tmp_path)
    (tmp_path / "train" / "depth" / "2.npy").write_bytes(b"not a npy file")
    spec = dataclasses.replace(DATASETS["nyuv2"], release_sizes={"train": 4, "val": 2})
    assert all(r.ok for r in check_release(spec, tmp_path))  # the sizes alone look right
    train, val = check_release(spec, tmp_path, read_all=True)
    assert not train.ok and "sample 2" in train.error and "2.npy" in train.error and val.ok


def test_the_program_refuses_bad_arguments(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "xtc_ext.data.prepare", *argv], capture_output=True, text=True)

    for argv, needle in ((["--dataset", "frames", "--data-root", str(tmp_path)], "--dataset"),
                         (["--dataset", "nyuv2", "--data-root", str(tmp_path / "none")], "--data-root")):
        done = run(*argv)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr
    done = run("--dataset", "nyuv2", "--data-root", str(tmp_path))  # an empty folder: the real release sizes
    assert done.returncode == 1 and "nyuv2 train: not readable (release: 795)" in done.stdout
    assert "RuntimeWarning" not in done.stderr


def test_release_sizes_are_checked():
    with pytest.raises(ValueError, match="release_sizes"):
        dataclasses.replace(DATASETS["nyuv2"], release_sizes={"train": 0})
    with pytest.raises(ValueError, match="no public release"):
        check_release(DATASETS["frames"], ".")


def test_docs_data_has_a_section_per_dataset_that_needs_a_data_root():
    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    headings = {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}
    needs_root = {name for name, spec in DATASETS.items() if spec.default_root is None}
    assert needs_root <= headings  # the --data-root error message points to docs/data.md, section NAME
    for name in needs_root:
        assert f"python -m xtc_ext.data.prepare --dataset {name} " in text
