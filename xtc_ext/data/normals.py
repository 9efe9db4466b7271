"""Surface normals: renormalisation after resizing, and normals derived from metric depth.

Convention of every normals map here: float32 ``[3,H,W]`` unit vectors in the camera frame,
x right, y down, z forward (OpenCV), a zero vector where invalid, with a bool ``[1,H,W]`` validity
mask. :func:`normals_from_depth` gives the ten packaged NYUv2 frames, which come without normals,
an approximation of the NYUD-v2 normals that MT-CP trains on (MT-CP paper §4.1).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from .transforms import Sample, check_size, resize_sample, shape_of

__all__ = [
    "NYU_COLOR_INTRINSICS",
    "renormalize_normals",
    "normals_from_depth",
    "resize_sample_with_normals",
    "unit_normals_hw3",
]

#: NYU Depth v2 colour-camera intrinsics (fx, fy, cx, cy) in pixels for the 640x480
#: frames, from ``camera_params.m`` of the NYU Depth v2 toolbox (Silberman et al.,
#: ECCV 2012).
NYU_COLOR_INTRINSICS: Tuple[float, float, float, float] = (
    5.1885790117450188e+02, 5.1946961112127485e+02, 3.2558244941119034e+02, 2.5373616633400465e+02)


def renormalize_normals(normals: torch.Tensor) -> torch.Tensor:
    """Scale every normal vector to unit length; zero vectors (invalid) stay zero.

    Args:
        normals: floating tensor ``[3,H,W]`` (or ``[N,3,H,W]``): x, y, z components.

    Returns:
        A new tensor of the same shape and dtype: ``n / |n|`` where ``|n| > 0``, else 0
        (``|n|`` from the sum of squares, so float32 vectors shorter than about 1e-19
        count as zero).

    Raises:
        ValueError: not a floating tensor with 3 channels in dimension -3.

    Source: Vandenhende et al.'s ``FixedResize`` (the MT-CP data pipeline) renormalises the
    normals after resizing; it adds float32 eps to ``|n|`` instead of keeping zeros exactly.
    """
    if (not isinstance(normals, torch.Tensor) or normals.dim() not in (3, 4)
            or normals.shape[-3] != 3 or not normals.dtype.is_floating_point):
        raise ValueError(f"normals must be a floating [3,H,W] or [N,3,H,W] tensor, got "
                         f"{shape_of(normals)}"
                         + (f" {normals.dtype}" if isinstance(normals, torch.Tensor) else ""))
    # sum of squares: much faster than linalg.vector_norm over the channel dim on CPU;
    # float32 vectors shorter than ~1e-19 underflow to 0 and count as invalid
    norm = (normals * normals).sum(dim=-3, keepdim=True).sqrt()
    inv = torch.where(norm > 0, norm.reciprocal(), torch.zeros((), dtype=norm.dtype,
                                                               device=norm.device))
    return (normals * inv).contiguous()


def normals_from_depth(depth: torch.Tensor,
                       fx: float = NYU_COLOR_INTRINSICS[0], fy: float = NYU_COLOR_INTRINSICS[1],
                       cx: float = NYU_COLOR_INTRINSICS[2], cy: float = NYU_COLOR_INTRINSICS[3],
                       image_size: Tuple[int, int] = (480, 640)
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Surface normals of a metric depth map by back-projection and central differences.

    Convention: OpenCV camera frame, **x right, y down, z forward** (the camera looks
    along +z); pixel (row v, column u) with 0-based indices. Steps (float64):

    1. Intrinsics for this map: the given ones are for a map of ``image_size`` =
       (H0, W0); a map of size (H, W) is taken to show the same field of view, so
       ``fx' = fx * W/W0``, ``cx' = cx * W/W0``, ``fy' = fy * H/H0``, ``cy' = cy * H/H0``.
    2. Back-projection ``P(v,u) = Z * ((u - cx')/fx', (v - cy')/fy', 1)``, Z = depth.
    3. Central differences ``du = P(v,u+1) - P(v,u-1)``, ``dv = P(v+1,u) - P(v-1,u)``;
       ``n = du x dv``, normalised to unit length.
    4. Orientation towards the camera: n is negated where ``n . P > 0`` (so
       ``n . P <= 0``; a fronto-parallel plane Z = const gives n = (0, 0, -1)).
    5. Invalid (n = 0, valid = False): border pixels (first/last row and column),
       pixels whose own depth or any of the four neighbours used is 0, and pixels with
       a degenerate cross product.

    This is an **approximation** of the NYUv2 normals used by Vandenhende's NYUD_MT
    (those were computed by a different, smoothed plane-fitting pipeline). It is meant
    for frames without released normals, e.g. the packaged ``xtc_ext/data/nyuv2_test10``; on depth
    edges it gives normals of the "surface" bridging foreground and background. The
    NYU toolbox uses 1-based MATLAB pixel coordinates; here u, v are 0-based (the
    usual Python convention), a one-pixel shift of the principal point that does not
    change the normals measurably.

    Args:
        depth: float tensor ``[1,H,W]``, metres, 0 = invalid (finite, >= 0).
        fx, fy: focal lengths in pixels for ``image_size`` (> 0). Default: NYUv2
            colour camera (``NYU_COLOR_INTRINSICS``).
        cx, cy: principal point in pixels for ``image_size``.
        image_size: (H0, W0) the intrinsics refer to; default (480, 640).

    Returns:
        ``(normals, valid)``: float32 ``[3,H,W]`` unit vectors (x, y, z; 0 where
        invalid) and bool ``[1,H,W]``.

    Raises:
        ValueError: ``depth`` not a floating ``[1,H,W]`` tensor, non-finite or
            negative depth, non-positive focal length or ``image_size``.

    Source: pinhole back-projection with the NYU Depth v2 toolbox intrinsics
    (``camera_params.m``); axis convention of the NYUD_MT normals, whose x component the
    flip negates (:func:`xtc_ext.data.transforms.apply_augmentation`).
    """
    if (not isinstance(depth, torch.Tensor) or depth.dim() != 3 or depth.shape[0] != 1
            or not depth.dtype.is_floating_point):
        raise ValueError(f"depth must be a floating [1,H,W] tensor, got {shape_of(depth)}"
                         + (f" {depth.dtype}" if isinstance(depth, torch.Tensor) else ""))
    h0, w0 = check_size(image_size)
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"principal point must be finite, got cx={cx}, cy={cy}")
    z = depth[0].detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(z).all():
        raise ValueError("depth contains non-finite values")
    if z.size and z.min() < 0:
        raise ValueError(f"depth contains negative values (min {z.min():.4g}); "
                         f"expected metres >= 0, 0 = invalid")
    H, W = z.shape
    sx, sy = W / w0, H / h0
    fxs, fys, cxs, cys = fx * sx, fy * sy, cx * sx, cy * sy
    # numpy: several times faster than torch for these strided element-wise ops on CPU
    normals = np.zeros((3, H, W), dtype=np.float32)
    valid = np.zeros((H, W), dtype=bool)
    if H >= 3 and W >= 3:
        X = z * ((np.arange(W, dtype=np.float64) - cxs) / fxs)[None, :]
        Y = z * ((np.arange(H, dtype=np.float64) - cys) / fys)[:, None]
        # du = P(v, u+1) - P(v, u-1), dv = P(v+1, u) - P(v-1, u) on the interior
        dux, duy, duz = (X[1:-1, 2:] - X[1:-1, :-2], Y[1:-1, 2:] - Y[1:-1, :-2],
                         z[1:-1, 2:] - z[1:-1, :-2])
        dvx, dvy, dvz = (X[2:, 1:-1] - X[:-2, 1:-1], Y[2:, 1:-1] - Y[:-2, 1:-1],
                         z[2:, 1:-1] - z[:-2, 1:-1])
        nx = duy * dvz - duz * dvy
        ny = duz * dvx - dux * dvz
        nz = dux * dvy - duy * dvx
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        ok = ((z[1:-1, 1:-1] > 0) & (z[1:-1, 2:] > 0) & (z[1:-1, :-2] > 0)
              & (z[2:, 1:-1] > 0) & (z[:-2, 1:-1] > 0) & (norm > 0))
        # 1/|n| where valid, sign chosen so that n . P <= 0 (towards the camera), 0 elsewhere
        facing = nx * X[1:-1, 1:-1] + ny * Y[1:-1, 1:-1] + nz * z[1:-1, 1:-1]
        scale = np.where(ok, np.where(facing > 0, -1.0, 1.0) / np.where(ok, norm, 1.0), 0.0)
        normals[0, 1:-1, 1:-1] = nx * scale
        normals[1, 1:-1, 1:-1] = ny * scale
        normals[2, 1:-1, 1:-1] = nz * scale
        valid[1:-1, 1:-1] = ok
    return (torch.from_numpy(normals).to(depth.device),
            torch.from_numpy(valid)[None].to(depth.device))


def resize_sample_with_normals(sample: Sample, size: Optional[Tuple[int, int]]) -> Sample:
    """:func:`resize_sample` (normals nearest like every per-pixel map), then, if the
    sample was resized, the normals renormalised to unit length (zero vectors stay
    zero; a no-op up to rounding for unit input, since nearest copies vectors)."""
    out = resize_sample(sample, size)
    if out is not sample and "normals" in out:
        out = dict(out)
        out["normals"] = renormalize_normals(out["normals"])
    return out


def unit_normals_hw3(nrm: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(H,W,3) float normals (as stored in the NYUD_MT ``.npy`` files) -> (float32 (3,H,W)
    unit vectors with 0 where |n| == 0, bool (H,W) |n| > 0)."""
    n = np.ascontiguousarray(np.transpose(nrm, (2, 0, 1)), dtype=np.float64)
    norm = np.sqrt((n * n).sum(axis=0))
    valid = norm > 0
    out = (n * (np.where(valid, 1.0 / np.where(valid, norm, 1.0), 0.0))[None]).astype(np.float32)
    return out, valid
