"""Tests for xtc_ext.data.normals: renormalisation, and surface normals from metric depth against
analytic planes."""

import numpy as np
import pytest
import torch

from xtc_ext.data import NYU_COLOR_INTRINSICS, normals_from_depth, renormalize_normals


def test_renormalize_normals():
    n = torch.stack([torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])])
    out = renormalize_normals(n)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.6, 0.8, 0.0]))
    assert torch.equal(out[:, 0, 1], torch.zeros(3))
    assert renormalize_normals(n[None]).shape == (1, 3, 1, 2)
    with pytest.raises(ValueError):
        renormalize_normals(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        renormalize_normals(torch.zeros(3, 4, 4, dtype=torch.int64))


# --------------------------------------------------------------------------- #
# normals from depth
# --------------------------------------------------------------------------- #
def _plane_depth(n0, d, H, W, fx, fy, cx, cy):
    """Depth of the plane n0 . P = d (camera frame) seen by a pinhole camera."""
    u = torch.arange(W, dtype=torch.float64)
    v = torch.arange(H, dtype=torch.float64)
    rx = ((u - cx) / fx)[None, :].expand(H, W)
    ry = ((v - cy) / fy)[:, None].expand(H, W)
    denom = n0[0] * rx + n0[1] * ry + n0[2]
    return (d / denom)[None].float()


def test_normals_fronto_parallel_plane():
    depth = torch.full((1, 48, 64), 2.0)
    n, valid = normals_from_depth(depth)
    assert n.dtype == torch.float32 and n.shape == (3, 48, 64)
    assert valid.dtype == torch.bool and valid.shape == (1, 48, 64)
    inner = valid[0, 1:-1, 1:-1]
    assert inner.all()
    assert not valid[0, 0].any() and not valid[0, -1].any()
    assert not valid[0, :, 0].any() and not valid[0, :, -1].any()
    assert torch.allclose(n[:, 1:-1, 1:-1], torch.tensor([0.0, 0.0, -1.0]).view(3, 1, 1), atol=1e-6)
    assert torch.equal(n[:, ~valid[0]], torch.zeros(3, int((~valid).sum())))


@pytest.mark.parametrize("normal", [(0.3, -0.2, -1.0), (-0.6, 0.1, -0.8), (0.0, -0.9, -0.45)])
def test_normals_tilted_plane_analytic(normal):
    n0 = torch.tensor(normal, dtype=torch.float64)
    n0 = n0 / n0.norm()
    fx, fy, cx, cy = NYU_COLOR_INTRINSICS
    H, W = 480, 640
    depth = _plane_depth(n0, -2.5, H, W, fx, fy, cx, cy)  # n0 . P = -2.5 < 0: n0 faces the camera
    assert (depth > 0).all()
    n, valid = normals_from_depth(depth)
    assert valid[0, 1:-1, 1:-1].all()
    err = (n[:, valid[0]] - n0.float()[:, None]).abs().max()
    assert err < 2e-4, err
    # a map at half resolution with the scaled intrinsics gives the same normal
    h, w = 240, 320
    depth2 = _plane_depth(n0, -2.5, h, w, fx * w / 640, fy * h / 480, cx * w / 640, cy * h / 480)
    n2, valid2 = normals_from_depth(depth2)
    assert valid2[0, 1:-1, 1:-1].all()
    assert (n2[:, valid2[0]] - n0.float()[:, None]).abs().max() < 2e-4
    # wrong intrinsics (unscaled) would give a different normal for a tilted plane
    n3, _ = normals_from_depth(depth2, image_size=(240, 320))
    assert (n3[:, valid2[0]] - n0.float()[:, None]).abs().max() > 1e-3


def test_normals_invalid_neighbours_and_orientation():
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + torch.rand(1, 20, 30, generator=g)
    depth[0, 10, 12] = 0.0
    n, valid = normals_from_depth(depth)
    for v, u in ((10, 12), (9, 12), (11, 12), (10, 11), (10, 13)):
        assert not valid[0, v, u]
    assert valid[0, 9, 11] and valid[0, 5, 5]  # diagonal neighbours are not used
    # oriented towards the camera: n . P <= 0 everywhere valid
    fx, fy, cx, cy = NYU_COLOR_INTRINSICS
    sx, sy = 30 / 640, 20 / 480
    u = torch.arange(30.0)
    v = torch.arange(20.0)
    P = torch.stack([depth[0] * ((u - cx * sx) / (fx * sx))[None], depth[0] * ((v - cy * sy) / (fy * sy))[:, None],
                     depth[0]])
    assert ((n * P).sum(0)[valid[0]] <= 1e-6).all()
    assert torch.allclose(n.norm(dim=0)[valid[0]], torch.ones(()), atol=1e-5)
    # tiny maps: everything is border
    n, valid = normals_from_depth(torch.ones(1, 2, 5))
    assert not valid.any() and n.abs().sum() == 0


def test_normals_from_depth_errors():
    for bad in (torch.ones(2, 4, 4), torch.ones(4, 4), torch.ones(1, 4, 4, dtype=torch.int64),
                np.ones((1, 4, 4))):
        with pytest.raises(ValueError, match="depth"):
            normals_from_depth(bad)
    with pytest.raises(ValueError, match="negative"):
        normals_from_depth(-torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        normals_from_depth(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="focal"):
        normals_from_depth(torch.ones(1, 4, 4), fx=0.0)
    with pytest.raises(ValueError):
        normals_from_depth(torch.ones(1, 4, 4), image_size=(0, 640))
