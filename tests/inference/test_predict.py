"""python -m xtc_ext.predict on tiny runs (tests/inference/conftest.py): files, folders, globs; every task's files;
the size mapping; bad inputs in one line with nothing written."""

import numpy as np
import pytest
import torch
from PIL import Image

from xtc_ext import predict as predict_mod
from xtc_ext.inference import load_trained_model, prepare, restore
from xtc_ext.inference.render import task_picture


def _open(path):
    with Image.open(path) as im:
        im.load()
        return im.copy()


def test_predict_two_files_and_a_folder_writes_every_task_at_the_input_size(tiny_runs, tmp_path):
    rgb = tiny_runs["root"] / "rgb"
    gray = tmp_path / "photos" / "gray.jpg"
    gray.parent.mkdir()
    Image.fromarray((np.arange(50 * 70) % 251).reshape(50, 70).astype(np.uint8)).save(gray)  # any size, grayscale
    out = tmp_path / "out"
    written = predict_mod.main([str(tiny_runs["xtasc"]), str(rgb / "0003.png"), str(rgb / "0007.png"),
                                str(gray.parent), "--output-dir", str(out), "--no-progress", "--batch-size", "2"])
    assert [p.name for p in written] == ["0003.png", "0007.png", "gray.jpg"]
    for stem, (h, w) in (("0003", (48, 64)), ("0007", (48, 64)), ("gray", (50, 70))):
        labels = np.array(_open(out / f"{stem}_semseg_labels.png"))
        assert labels.shape == (h, w) and labels.max() < 13
        colour = _open(out / f"{stem}_semseg.png")
        assert colour.mode == "RGB" and colour.height >= h and colour.width > w  # + legend
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32
        mm = np.array(_open(out / f"{stem}_depth_mm.png"))
        np.testing.assert_array_equal(mm, np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))
        assert _open(out / f"{stem}_depth.png").width > w  # + colour bar
        assert _open(out / f"{stem}_sheet.png").mode == "RGB"
    # the folder of the fixture through a glob, without sheets: the same predictions
    again = predict_mod.main([str(tiny_runs["xtasc"]), str(rgb / "*.png"), "--output-dir", str(tmp_path / "glob"),
                              "--no-progress", "--no-sheet"])
    assert len(again) == 3 and not list((tmp_path / "glob").glob("*_sheet.png"))
    np.testing.assert_array_equal(np.load(out / "0003_depth.npy"), np.load(tmp_path / "glob" / "0003_depth.npy"))


def test_predict_equals_the_recipes_prediction_mapped_back(tiny_runs, tmp_path):
    trained = load_trained_model(tiny_runs["xtasc"])
    image = torch.rand(3, 40, 50)
    path = tmp_path / "x.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    predict_mod.main([str(tiny_runs["xtasc"]), str(path), "--output-dir", str(tmp_path / "o"), "--no-progress",
                      "--amp", "none"])
    fitted, geometry = prepare(torch.from_numpy(np.array(_open(path))).permute(2, 0, 1).float() / 255, (32, 64), True)
    assert geometry.network == (32, 64) and geometry.original == (40, 50)
    with torch.no_grad():
        expected = trained.recipe.predict(trained.model, fitted[None])
    np.testing.assert_allclose(np.load(tmp_path / "o" / "x_depth.npy"), restore(expected["depth"][0], geometry)[0],
                               atol=1e-5)
    labels = np.array(_open(tmp_path / "o" / "x_semseg_labels.png"))
    np.testing.assert_array_equal(labels, restore(expected["semseg"][0], geometry).argmax(0).numpy())


def test_predict_mtcp_writes_normals_as_unit_vectors(tiny_runs, tmp_path):
    predict_mod.main([str(tiny_runs["mtcp"]), str(tiny_runs["root"] / "rgb"), "--output-dir", str(tmp_path),
                      "--no-progress"])
    normals = np.array(_open(tmp_path / "0011_normals.png")).astype(np.float64) / 127.5 - 1.0
    assert normals.shape == (48, 64, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=0.02)
    assert (tmp_path / "0011_semseg.png").is_file() and (tmp_path / "0011_depth.npy").is_file()


def test_padding_geometry_round_trips_and_pictures_check_channels():
    image = torch.rand(3, 40, 70)
    fitted, geometry = prepare(image, None, normalize=False)
    assert fitted.shape == (3, 64, 96) and not geometry.resized
    torch.testing.assert_close(restore(fitted, geometry), image)
    with pytest.raises(ValueError, match="size must be two positive multiples of 32"):
        prepare(image, (30, 64), normalize=False)
    with pytest.raises(ValueError, match="prediction of 'normals' must be"):
        task_picture("normals", torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="unknown task 'edges'"):
        task_picture("edges", torch.zeros(1, 4, 4))
    logits = torch.zeros(3, 4, 4)
    logits[2, :3] = 1.0  # class 2 covers 12 pixels, class 0 the other 4
    entries = task_picture("semseg", logits, class_names=("a", "b", "c"))._legend_entries()
    assert [name for name, _ in entries] == ["c", "a"]


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        predict_mod.main(argv)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_bad_inputs_get_one_line_and_nothing_is_written(tiny_runs, tmp_path, capsys):
    out = tmp_path / "out"
    good = str(tiny_runs["root"] / "rgb" / "0003.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    not_ckpt = tmp_path / "model.pt"
    not_ckpt.write_bytes(b"junk")
    state = torch.load(tiny_runs["xtasc"], weights_only=True)
    state["model"] = {k + ".old": v for k, v in state["model"].items()}
    state["xtc_ext_version"] = "0.0.1"
    other_version = tmp_path / "other.pt"
    torch.save(state, other_version)
    cases = [
        ([str(tiny_runs["xtasc"]), good, str(broken)], "broken.png"),
        ([str(tiny_runs["xtasc"]), str(tmp_path / "absent.png")], "absent.png"),
        ([str(tiny_runs["xtasc"]), str(tmp_path / "*.jpeg")], "no file matches"),
        ([str(not_ckpt), good], "model.pt"),
        ([str(other_version), good], "xtc_ext 0.0.1"),
        ([str(tiny_runs["xtasc"]), good, "--size", "30", "64"], "--size"),
    ]
    for argv, named in cases:
        code, err = _fails(argv + ["--output-dir", str(out), "--no-progress"], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and named in err, err
        assert not out.exists()
