"""Tests for xtc_ext.data.registry: the registered specs and their facts, building every layout from
fixtures (samples carry the keys of the asked tasks), refusals that name the argument, registration
rules, and the packaged NYUv2 frames."""

import importlib
import os
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import xtc_ext.data as xdata
from xtc_ext.data import (
    CITYSCAPES19_CLASS_NAMES,
    CITYSCAPES7_CLASS_NAMES,
    DATASETS,
    NYU13_CLASS_NAMES,
    NYUV2_TEST10,
    PASCAL_SEMSEG_CLASS_NAMES,
    BuildRequest,
    DatasetSpec,
    NYUv2Frames,
    get_dataset,
)
from xtc_ext.tasks import get_task

from conftest import REAL_FRAMES
from fixtures import DATASET_WRITERS

SMALL = (32, 48)

# The per-dataset facts that train.py / evaluate.py / mtcp_train.py spread over ten tables before
# the registry (DATASET_DEFAULTS, CLASS_CHOICES, TEST_SPLIT, depth_unit, mtcp_tasks), written out.
EXPECTED = {
    # name: (classes, tasks, default_size, val_fraction, test_split, test text, depth unit, auto scaling)
    "frames": ((13, 40), ("semseg", "depth", "normals"), (96, 128), 0.0, None, "the training frames", "m",
               "divide"),
    "nyuv2": ((13,), ("semseg", "depth"), None, 0.1, "val", "val", "m", "divide"),
    "cityscapes": ((7, 19), ("semseg", "depth"), (128, 256), 0.1, "val", "val", "disparity/256", "none"),
    "cityscapes-mtan": ((7, 19), ("semseg", "depth"), None, 0.1, "val", "val", "disparity/256", "none"),
    "nyudmt": ((40,), ("semseg", "depth", "normals"), (480, 640), 0.1, "val", "val", "m", "divide"),
    "pascal": ((21,), ("semseg", "human_parts", "sal"), (512, 512), 0.1, "val", "val", None, None),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One fixture tree per registered layout (a few small files each)."""
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, writer in DATASET_WRITERS.items():
        out[name] = base / name
        writer(out[name])
    return out


def _size(spec):
    return None if spec.default_size is None else SMALL


def _build(spec, root, split="train", **overrides):
    kw = dict(classes=spec.classes[0], size=_size(spec), augment=False, normalize=False,
              depth_scaling="auto", tasks=spec.tasks)
    kw.update(overrides)
    return spec.build(root, split, **kw)


# --------------------------------------------------------------------------- #
# the registered specs and their facts
# --------------------------------------------------------------------------- #
def test_registered_datasets_and_facts():
    assert list(DATASETS) == list(EXPECTED)  # the order of the --dataset choices
    assert set(DATASET_WRITERS) == set(DATASETS)  # every layout has a fixture writer
    for name, (classes, tasks, size, vf, test_split, text, unit, scaling) in EXPECTED.items():
        spec = get_dataset(name)
        assert spec is DATASETS[name] and spec.name == name and spec.summary
        assert (spec.classes, spec.tasks, spec.default_size, spec.val_fraction) == (classes, tasks, size, vf)
        assert (spec.test_split, spec.test_description) == (test_split, text)
        assert (spec.depth_unit, spec.default_depth_scaling) == (unit, scaling)
        assert spec.default_root == (NYUV2_TEST10 if name == "frames" else None)
    assert {t: get_task(t).sample_key for t in ("semseg", "depth", "normals", "human_parts", "sal")} == {
        "semseg": "seg", "depth": "depth", "normals": "normals", "human_parts": "human_parts", "sal": "sal"}


def test_get_dataset_unknown_lists_the_names():
    with pytest.raises(ValueError) as ei:
        get_dataset("imagenet")
    assert "imagenet" in str(ei.value)
    for name in EXPECTED:
        assert name in str(ei.value)


def test_task_channels():
    assert get_dataset("frames").task_channels(13) == {"semseg": 13, "depth": 1, "normals": 3}
    assert get_dataset("frames").task_channels(40) == {"semseg": 40, "depth": 1, "normals": 3}
    assert get_dataset("nyudmt").task_channels(40) == {"semseg": 40, "depth": 1, "normals": 3}
    assert get_dataset("pascal").task_channels(21) == {"semseg": 21, "human_parts": 7, "sal": 1}
    assert get_dataset("nyuv2").task_channels(13) == {"semseg": 13, "depth": 1}
    assert get_dataset("cityscapes").task_channels(19) == {"semseg": 19, "depth": 1}
    with pytest.raises(ValueError, match="classes"):
        get_dataset("cityscapes").task_channels(13)


def test_class_names():
    assert get_dataset("frames").class_names(13) == NYU13_CLASS_NAMES
    assert get_dataset("nyuv2").class_names(13) == NYU13_CLASS_NAMES
    assert get_dataset("frames").class_names(40) is None
    assert get_dataset("nyudmt").class_names(40) is None
    for name in ("cityscapes", "cityscapes-mtan"):
        assert get_dataset(name).class_names(7) == CITYSCAPES7_CLASS_NAMES
        assert get_dataset(name).class_names(19) == CITYSCAPES19_CLASS_NAMES
    assert get_dataset("pascal").class_names(21) == PASCAL_SEMSEG_CLASS_NAMES
    assert NYU13_CLASS_NAMES[11] == "wall" and CITYSCAPES7_CLASS_NAMES[6] == "vehicle"
    with pytest.raises(ValueError, match="classes"):
        get_dataset("nyuv2").class_names(40)


# --------------------------------------------------------------------------- #
# build: every layout, every class count, the asked tasks
# --------------------------------------------------------------------------- #
def _check_sample(s, spec, classes, tasks):
    H, W = s["image"].shape[-2:]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, H, W)
    assert isinstance(s["name"], str) and s["name"]
    for t in tasks:
        assert get_task(t).sample_key in s, (spec.name, t)
    if "semseg" in tasks:
        seg = s["seg"]
        assert seg.dtype == torch.int64 and seg.shape == (H, W)
        assert seg.min() >= -1 and seg.max() <= classes - 1
    if "depth" in tasks:
        assert s["depth"].shape == (1, H, W) and s["depth_valid"].dtype == torch.bool
    if "normals" in tasks:
        assert s["normals"].shape == (3, H, W) and s["normals_valid"].shape == (1, H, W)
    if "human_parts" in tasks:
        assert s["human_parts"].dtype == torch.int64 and s["human_parts"].max() <= 6
    if "sal" in tasks:
        assert s["sal"].shape == (1, H, W) and set(s["sal"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_build_every_layout_carries_the_task_keys(roots, name):
    spec = get_dataset(name)
    for classes in spec.classes:
        for split in ("train",) + ((spec.test_split,) if spec.test_split else ()):
            ds = _build(spec, roots[name], split, classes=classes)
            assert len(ds) >= 1
            s = ds[0]
            _check_sample(s, spec, classes, spec.tasks)
            if spec.default_size is not None:
                assert s["image"].shape[-2:] == SMALL
    torch.manual_seed(0)
    aug = _build(spec, roots[name], augment=True, normalize=True)
    assert aug.augment and set(aug[0]) == set(_build(spec, roots[name])[0])


def test_build_reads_only_the_asked_optional_targets(roots):
    frames = get_dataset("frames")
    assert "normals" not in _build(frames, roots["frames"], tasks=("semseg", "depth"))[0]
    with_normals = _build(frames, roots["frames"], tasks=("semseg", "depth", "normals"))[0]
    assert "normals" in with_normals and "normals_valid" in with_normals
    pascal = get_dataset("pascal")
    assert set(_build(pascal, roots["pascal"], tasks=("sal",))[0]) == {"image", "sal", "name"}
    assert set(_build(pascal, roots["pascal"], tasks=("human_parts", "semseg"))[0]) == {
        "image", "seg", "human_parts", "name"}


def test_build_resolves_depth_scaling(roots):
    assert _build(get_dataset("frames"), roots["frames"]).depth_scaling == "divide"
    assert _build(get_dataset("nyudmt"), roots["nyudmt"]).depth_scaling == "divide"
    assert _build(get_dataset("cityscapes"), roots["cityscapes"]).depth_scaling == "none"
    assert _build(get_dataset("cityscapes-mtan"), roots["cityscapes-mtan"]).depth_scaling == "none"
    ds = _build(get_dataset("nyuv2"), roots["nyuv2"], depth_scaling="multiply")
    assert ds.depth_scaling == "multiply"
    # no depth: a valid value is accepted and not used
    assert len(_build(get_dataset("pascal"), roots["pascal"], depth_scaling="divide")) == 3


# --------------------------------------------------------------------------- #
# refusals name the argument
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,override,needle", [
    ("nyuv2", {"classes": 40}, "classes"),
    ("frames", {"classes": 19}, "classes"),
    ("cityscapes", {"classes": 13}, "classes"),
    ("pascal", {"classes": True}, "classes"),
    ("nyuv2", {"size": (32, 32)}, "size"),
    ("cityscapes-mtan", {"size": (32, 64)}, "size"),
    ("frames", {"size": (0, 32)}, "size"),
    ("frames", {"size": (32,)}, "size"),
    ("pascal", {"tasks": ("depth",)}, "tasks"),
    ("nyuv2", {"tasks": ("semseg", "normals")}, "tasks"),
    ("frames", {"tasks": ("edges",)}, "tasks"),
    ("frames", {"tasks": ()}, "tasks"),
    ("frames", {"tasks": "semseg"}, "tasks"),
    ("frames", {"tasks": ("depth", "depth")}, "tasks"),
    ("cityscapes", {"depth_scaling": "metres"}, "depth_scaling"),
])
def test_build_refusals_name_the_argument(roots, name, override, needle):
    with pytest.raises(ValueError, match=needle):
        _build(get_dataset(name), roots[name], **override)


def test_build_needs_a_root_and_a_split(roots):
    with pytest.raises(ValueError, match="root"):
        _build(get_dataset("nyuv2"), None)
    with pytest.raises(ValueError, match="split"):
        _build(get_dataset("nyudmt"), roots["nyudmt"], split="")
    with pytest.raises(FileNotFoundError, match="nope"):
        _build(get_dataset("nyudmt"), roots["nyudmt"], split="nope")


# --------------------------------------------------------------------------- #
# registration: adding a dataset is one spec
# --------------------------------------------------------------------------- #
class _Toy(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 2, 2), "seg": torch.zeros(2, 2, dtype=torch.int64), "name": str(i)}


def _toy_spec(calls, **changes):
    def factory(root, split, request):
        calls.append((root, split, request))
        return _Toy(2)

    fields = dict(name="toy", summary="a toy layout", classes=(3, 5), tasks=("semseg", "sal"),
                  default_size=(8, 8), factory=factory, test_split="test")
    fields.update(changes)
    return DatasetSpec(**fields)


def test_register_a_new_dataset(tmp_path):
    calls = []
    spec = _toy_spec(calls)
    try:
        assert DATASETS.register(spec) is spec and get_dataset("toy") is spec
        with pytest.raises(ValueError, match="already registered"):
            DATASETS.register(_toy_spec(calls))
        ds = spec.build(str(tmp_path), "train", classes=5, size=[4, 6], augment=1, normalize=0,
                        depth_scaling="auto", tasks=["sal"])
        assert isinstance(ds, _Toy)
        root, split, request = calls[-1]
        assert root == tmp_path and split == "train"
        assert request == BuildRequest(classes=5, size=(4, 6), augment=True, normalize=False,
                                       depth_scaling="none", tasks=("sal",))
        assert spec.task_channels(3) == {"semseg": 3, "sal": 1} and spec.class_names(3) is None
        # defaults of the optional fields
        defaults = (spec.val_fraction, spec.test_description, spec.depth_unit, spec.default_root)
        assert defaults == (0.1, "test", None, None)
    finally:
        DATASETS.unregister("toy")
    with pytest.raises(TypeError):
        DATASETS.register({"name": "toy"})


@pytest.mark.parametrize("changes,needle", [
    ({"name": ""}, "name"),
    ({"classes": ()}, "classes"),
    ({"classes": (0,)}, "classes"),
    ({"tasks": ("semseg", "edges")}, "tasks"),
    ({"tasks": ()}, "tasks"),
    ({"default_size": (8, -1)}, "size"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": "0.1"}, "val_fraction"),
    ({"depth_unit": "m"}, "depth_unit"),
    ({"tasks": ("semseg", "depth"), "default_depth_scaling": "divide"}, "depth_unit"),
    ({"tasks": ("semseg", "depth"), "depth_unit": "m"}, "default_depth_scaling"),
    ({"tasks": ("semseg", "depth"), "depth_unit": "m", "default_depth_scaling": "halve"},
     "default_depth_scaling"),
    ({"test_split": ""}, "test_split"),
    ({"test_split": None}, "test_description"),
    ({"factory": None}, "factory"),
    ({"class_name_tables": {3: ("a", "b")}}, "class_name_tables"),
    ({"class_name_tables": {4: ("a", "b", "c", "d")}}, "class_name_tables"),
])
def test_bad_spec_fields_are_refused(changes, needle):
    with pytest.raises(ValueError, match=needle):
        _toy_spec([], **changes)


def test_every_module_of_the_package_is_imported():
    names = [m.name for m in pkgutil.iter_modules(xdata.__path__)]
    assert {"registry", "frames", "nyuv2", "cityscapes", "nyud_mt", "pascal_mt"} <= set(names)
    for name in names:
        assert f"xtc_ext.data.{name}" in sys.modules
    # re-importing a family module does not register its spec a second time
    importlib.import_module("xtc_ext.data.frames")
    assert list(DATASETS).count("frames") == 1


# --------------------------------------------------------------------------- #
# the packaged frames
# --------------------------------------------------------------------------- #
def test_packaged_frames_exist_and_read():
    root = get_dataset("frames").default_root
    assert root == Path(xdata.__file__).resolve().parent / "nyuv2_test10"
    ids = ["0001", "0002", "0009", "0014", "0015", "0016", "0017", "0018", "0021", "0028"]
    for sub in ("rgb", "depth", "label13", "label40"):
        assert sorted(p.stem for p in (root / sub).glob("*.png")) == ids, sub
    readme = (root / "README.md").read_text()
    for needle in ("Silberman", "ECCV 2012", "testNdxs", "Licence", "research use"):
        assert needle in readme
    ds = get_dataset("frames").build(None, "train", classes=13, size=(96, 128), augment=False,
                                     normalize=False, depth_scaling="auto", tasks=("semseg", "depth"))
    assert isinstance(ds, NYUv2Frames) and ds.root == root and ds.frames == ids
    s = ds[0]
    assert s["image"].shape == (3, 96, 128) and s["depth"].max() <= 10.5 and s["seg"].max() <= 12


@pytest.mark.skipif("XTC_NYUV2_FRAMES" in os.environ, reason="XTC_NYUV2_FRAMES overrides the frames")
def test_tests_read_the_packaged_frames():
    assert REAL_FRAMES.resolve() == NYUV2_TEST10 == get_dataset("frames").default_root
