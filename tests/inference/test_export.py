"""python -m xtc_ext.export on tiny runs (tests/inference/conftest.py): each format against eager, here and in a
fresh process; the fused ops through their fake kernels and their ONNX decomposition; the refusals."""

import importlib.util
import json

import pytest
import torch


from xtc_ext import export as export_mod
from xtc_ext.inference import InferenceModel, load_trained_model
from xtc_ext.inference import exporting

SIZE = (32, 64)  # the tiny runs' --size (tests/inference/conftest.py)
ONNX_READY = all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxscript", "onnxruntime"))


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        export_mod.main(argv)
    return exc.value.code, capsys.readouterr().err.strip()


def _assert_matches_eager(check, tasks, atol):
    assert check["frames"] == 10
    for key in ("max_abs_diff", "fresh_process_max_abs_diff"):
        assert set(check[key]) == set(tasks)
        assert all(0.0 <= v <= atol for v in check[key].values()), check


def test_torch_export_keeps_the_gate_drops_the_loss_and_has_dynamic_sizes(tiny_runs, tmp_path, gated_graph_ops):
    out, report = tmp_path / "mtcp.pt2", tmp_path / "report.json"
    result = export_mod.main([str(tiny_runs["mtcp"]), "--format", "export", "--output", str(out), "--report", str(report)])
    assert json.loads(report.read_text()) == json.loads(json.dumps(result))
    # batch and width dynamic; a height of one 32-pixel cell may stay fixed (xtc_ext/inference/exporting.py)
    assert result["tasks"] == ["semseg", "depth", "normals"]
    assert result["input"] in (["N", 3, "H", "W"], ["N", 3, SIZE[0], "W"]), result["input"]
    _assert_matches_eager(result["check"], result["tasks"], atol=1e-6)
    program = torch.export.load(str(out))
    # the gate runs through its fake kernel and stays a fused op; the unused coherence loss is pruned
    assert gated_graph_ops(program) == ["xtc_ext.sigmoid_gate.default"]
    wide = (SIZE[0], 3 * SIZE[1])
    images = torch.rand(3, 3, *wide)
    outputs = program.module()(images)
    assert [tuple(o.shape) for o in outputs] == [(3, 13, *wide), (3, 1, *wide), (3, 3, *wide)]
    with torch.no_grad():
        eager = InferenceModel(load_trained_model(tiny_runs["mtcp"]))(images)
    diffs = exporting.max_abs_differences(result["tasks"], eager, outputs)
    assert all(v <= 1e-5 for v in diffs.values()), diffs


def test_decomposed_graph_has_only_standard_ops_and_the_same_outputs(tiny_runs, gated_graph_ops):
    trained = load_trained_model(tiny_runs["mtcp"])
    standard = exporting.decompose_fused_ops(exporting.export_program(trained, SIZE))
    assert gated_graph_ops(standard) == []
    images = exporting.frame_batch(SIZE, trained.normalize)
    with torch.no_grad():
        eager = InferenceModel(trained)(images)
        decomposed = standard.module()(images)
    diffs = exporting.max_abs_differences(trained.tasks, eager, decomposed)
    assert all(v <= 1e-5 for v in diffs.values()), diffs


def test_aoti_package_matches_eager_here_and_in_a_fresh_process(tiny_runs, tmp_path):
    # the XTasC-Net stand-in: AOTInductor compiles (slow on a small CPU) a graph of standard ops only
    result = export_mod.main([str(tiny_runs["xtasc"]), "--format", "aoti", "--output", str(tmp_path / "xtasc.pt2")])
    _assert_matches_eager(result["check"], ["semseg", "depth"], atol=1e-4)


def test_onnx_is_refused_naming_the_missing_package(tiny_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(exporting, "missing_packages", lambda names: [n for n in names if n == "onnxscript"])
    out = tmp_path / "m.onnx"
    code, err = _fails([str(tiny_runs["mtcp"]), "--format", "onnx", "--output", str(out)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "onnxscript" in err and not out.exists()


@pytest.mark.skipif(not ONNX_READY, reason="onnx, onnxscript and onnxruntime are not installed")
def test_onnx_runs_in_onnxruntime_like_eager(tiny_runs, tmp_path):
    result = export_mod.main([str(tiny_runs["mtcp"]), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    _assert_matches_eager(result["check"], result["tasks"], atol=1e-4)


def test_bad_arguments_in_one_line(tiny_runs, tmp_path, capsys):
    for argv, named in (([str(tiny_runs["xtasc"]), "--format", "aoti", "--output", str(tmp_path / "a.so")], ".pt2"),
                        ([str(tiny_runs["xtasc"]), "--format", "export", "--output", str(tmp_path / "b.pt2"),
                          "--size", "48", "64"], "--size"),
                        ([str(tmp_path / "absent.pt"), "--format", "export", "--output", str(tmp_path / "c.pt2")],
                         "absent.pt")):
        code, err = _fails(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert list(tmp_path.iterdir()) == []
