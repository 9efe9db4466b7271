"""Tests for xtc_ext.data.io: the file readers check what they read and name the file in every error."""

import re

import numpy as np
import pytest
from PIL import Image

from xtc_ext.data.io import (
    check_depth_array,
    check_same_size,
    load_npy,
    read_id_file,
    read_label_png,
    read_rgb_image,
    read_uint16_png,
)


def test_read_id_file(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("  a_1 \n\n b\t\n\nc\n")
    assert read_id_file(p) == ["a_1", "b", "c"]
    p.write_text("\n \n")
    with pytest.raises(ValueError, match=re.escape(str(p))):
        read_id_file(p)
    p.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match=re.escape(str(p))):
        read_id_file(p)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_id_file(tmp_path / "missing.txt")


def test_load_npy(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.arange(6, dtype=np.int16).reshape(2, 3))
    assert load_npy(p).tolist() == [[0, 1, 2], [3, 4, 5]]
    np.save(p, np.array(["x", "y"]))
    with pytest.raises(ValueError, match="non-numeric"):
        load_npy(p)
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=re.escape(str(p))):
        load_npy(p)
    with pytest.raises(FileNotFoundError, match="b.npy"):
        load_npy(tmp_path / "b.npy")


def test_check_depth_array(tmp_path):
    p = tmp_path / "d.npy"
    out = check_depth_array(np.array([[0.0, 1.5]], np.float64), p, "metres")
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 1.5]]
    assert check_depth_array(np.array([0.49225]), p, "u", depth_max=0.4922).shape == (1,)  # 1e-4 tolerance
    for bad, needle in ((np.array([np.inf]), "non-finite"), (np.array([-0.5]), "negative"),
                        (np.array([0.6]), "0.4922")):
        with pytest.raises(ValueError, match=needle) as ei:
            check_depth_array(bad, p, "u", depth_max=0.4922)
        assert str(p) in str(ei.value)


def test_image_readers(tmp_path):
    p = tmp_path / "i.png"
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(p)
    assert read_uint16_png(p, "depth").tolist() == [[65535] * 5] * 4
    Image.fromarray(np.full((4, 5), 3, np.uint8)).save(p)
    with pytest.raises(ValueError, match="depth image .* expected 16-bit"):
        read_uint16_png(p, "depth")
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(p)
    with pytest.raises(ValueError, match=r"value 9 > 8 \(expected 0..8\)"):
        read_label_png(p, 8, "0..8")
    assert read_rgb_image(p).shape == (4, 5, 3)  # grayscale converted to RGB
    Image.fromarray(np.zeros((4, 5, 4), np.uint8)).save(p)  # RGBA
    with pytest.raises(ValueError, match="mode 'RGBA'"):
        read_rgb_image(p)
    q = tmp_path / "j.png"
    with pytest.raises(ValueError) as ei:
        check_same_size((p, np.zeros((4, 5, 3))), (q, np.zeros((4, 6))))
    assert str(p) in str(ei.value) and str(q) in str(ei.value) and "6x4" in str(ei.value)
