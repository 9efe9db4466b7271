"""The triplet sampler of the contrastive regularizer (xtc_ext/regularizers/sampling.py).

Property tests over random label maps of every source kind (including images with one class, no
valid pixel, no pair outside the dead zone): every valid triplet satisfies the criterion, recomputed
here in float64 from the raw labels; an anchor is dropped only when its positive or negative set is
empty; class-balanced anchors; nearest-neighbour resampling; uniform positives and negatives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xtc_ext.regularizers.sampling import (
    SOURCE_KINDS,
    draw_uniforms,
    make_criterion,
    num_uniforms,
    sample_pool,
    sample_triplets,
    to_source_grid,
)

DEPTH_T = (0.05, 0.20)
NORMALS_T = (11.25, 30.0)
# float32 (sampler) vs float64 (reference) near a threshold: pairs within this band of a threshold
# are not used to decide that a set is empty or not.
TOL = {"depth": 1e-4, "normals": 1e-3}

DIRECTIONS = [(0.0, 0.0, 1.0), (0.0, 0.1, 1.0), (0.0, 0.3, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.2), (0.7, 0.7, 0.0)]
SPECIAL_NORMALS = [(0.0, 0.0, 0.0), (math.nan, 0.0, 1.0)]


@st.composite
def label_maps(draw, kind):
    """``(label tensor at label resolution, feature grid (h, w))``; labels are 1x or 2x the grid."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1, 2]))
    H, W = h * scale, w * scale
    size = n * H * W
    if kind == "categorical":
        k = draw(st.integers(1, 4))
        vals = draw(st.lists(st.integers(-1, k - 1), min_size=size, max_size=size))
        lab = torch.tensor(vals, dtype=torch.int64).view(n, H, W)
    elif kind in ("binary", "edge"):
        pool = [-1.0, 0.0, 0.2, 0.49, 0.5, 0.8, 1.0, 255.0, math.nan]  # 255: a void the readers did not map
        vals = draw(st.lists(st.sampled_from(pool), min_size=size, max_size=size))
        lab = torch.tensor(vals, dtype=torch.float32).view(n, 1, H, W)
    elif kind == "depth":
        special = st.sampled_from([0.0, -1.0, math.nan, math.inf, 1.0, 1.04, 1.06, 1.25, 3.0])
        vals = draw(st.lists(st.one_of(special, st.floats(0.1, 10.0)), min_size=size, max_size=size))
        lab = torch.tensor(vals, dtype=torch.float32).view(n, 1, H, W)
    else:
        vec = st.one_of(
            st.sampled_from(DIRECTIONS + SPECIAL_NORMALS),
            st.tuples(*[st.floats(-1.0, 1.0) for _ in range(3)]),
        )
        vals = draw(st.lists(vec, min_size=size, max_size=size))
        lab = torch.tensor(vals, dtype=torch.float32).view(n, H, W, 3).permute(0, 3, 1, 2).contiguous()
    return lab, (h, w)


def _on_grid(lab: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Nearest neighbour by pixel centres, computed by hand: ``[n, c, h, w]`` float64."""
    lab = lab.double() if lab.dim() == 4 else lab.double().unsqueeze(1)
    H, W = lab.shape[-2:]
    ys = [min(H - 1, int(math.floor((y + 0.5) * H / h))) for y in range(h)]
    xs = [min(W - 1, int(math.floor((x + 0.5) * W / w))) for x in range(w)]
    return lab[:, :, ys][:, :, :, xs].numpy()


def _reference(kind, lab, h, w):
    """``(valid [n, L], delta(i, j) [n, L, L] float64, pos_thr, neg_thr)`` from the raw labels."""
    g = _on_grid(lab, h, w)
    n = g.shape[0]
    if kind == "normals":
        v = g.reshape(n, 3, h * w).transpose(0, 2, 1)
        norm = np.linalg.norm(v, axis=-1)
        valid = np.isfinite(v).all(-1) & (norm > 0)
        u = np.where(valid[..., None], v / np.where(valid, norm, 1.0)[..., None], 0.0)
        cos = np.clip(np.einsum("nid,njd->nij", u, u), -1.0, 1.0)
        return valid, np.degrees(np.arccos(cos)), NORMALS_T[0], NORMALS_T[1]
    key = g.reshape(n, h * w)
    if kind == "categorical":
        valid = key >= 0
        delta = (key[:, :, None] != key[:, None, :]).astype(np.float64)
        return valid, delta, 0.0, 1.0
    if kind in ("binary", "edge"):
        k = np.nan_to_num(key, nan=-1.0)
        valid = (k >= 0) & (k <= 1)  # values outside [0, 1] are void
        side = key >= 0.5
        return valid, (side[:, :, None] != side[:, None, :]).astype(np.float64), 0.0, 1.0
    valid = np.isfinite(key) & (key > 0)
    logd = np.log(np.where(valid, key, 1.0))
    return valid, np.abs(logd[:, :, None] - logd[:, None, :]), DEPTH_T[0], DEPTH_T[1]


def _sample(kind, lab, hw, seed, anchors=16):
    crit = make_criterion(kind, DEPTH_T, NORMALS_T)
    grid = to_source_grid(kind, lab, hw)
    gen = torch.Generator().manual_seed(seed)
    u = draw_uniforms(gen, lab.shape[0], num_uniforms(anchors), torch.device("cpu"))
    return grid, sample_triplets(grid, crit, anchors, u)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_sampled_triplets_satisfy_the_criterion_and_drop_only_empty_sets(kind, data):
    lab, (h, w) = data.draw(label_maps(kind))
    seed = data.draw(st.integers(0, 2**31 - 1))
    grid, trip = _sample(kind, lab, (h, w), seed)
    valid, delta, tp, tn = _reference(kind, lab, h, w)
    tol = TOL.get(kind, 0.0)
    assert np.array_equal(grid.valid.numpy(), valid)
    a, p, n, ok = (t.numpy() for t in trip)
    for i in range(a.shape[0]):
        d = delta[i]
        for k in range(a.shape[1]):
            ai, pi, ni = a[i, k], p[i, k], n[i, k]
            if ok[i, k]:
                assert valid[i, ai] and valid[i, pi] and valid[i, ni]
                assert pi != ai
                assert d[ai, pi] <= tp + tol, (kind, d[ai, pi])
                assert d[ai, ni] >= tn - tol, (kind, d[ai, ni])
                continue
            assert pi == ai and ni == ai  # dropped slots point at the anchor
            others = np.arange(d.shape[0]) != ai
            if valid[i, ai]:
                has_pos = (valid[i] & others & (d[ai] <= tp - tol)).any()
                has_neg = (valid[i] & (d[ai] >= tn + tol)).any()
                assert not (has_pos and has_neg), "an anchor with a positive and a negative was dropped"
            elif kind in ("categorical", "binary", "edge"):
                # no class with two valid pixels: no anchor can have a positive
                sizes = [(valid[i] & (d[j] == 0)).sum() for j in np.flatnonzero(valid[i])]
                assert max(sizes, default=0) < 2
            else:
                assert not valid[i].any()


@pytest.mark.parametrize("kind", ["categorical", "binary", "edge"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_anchors_are_class_balanced_over_classes_with_a_positive(kind, data):
    lab, (h, w) = data.draw(label_maps(kind))
    seed = data.draw(st.integers(0, 2**31 - 1))
    anchors = data.draw(st.integers(1, 40))
    grid, trip = _sample(kind, lab, (h, w), seed, anchors)
    key = grid.key.numpy()
    for i in range(key.shape[0]):
        v = grid.valid[i].numpy()
        classes, counts = np.unique(key[i][v], return_counts=True)
        eligible = set(classes[counts >= 2].tolist())
        if not eligible:
            continue
        drawn = key[i][trip.anchor[i].numpy()]
        assert set(drawn.tolist()) <= eligible
        per_class = [int((drawn == c).sum()) for c in eligible]
        assert max(per_class) - min(per_class) <= 1


def test_positives_and_negatives_are_uniform_over_their_sets():
    # one image, ten pixels: class 0 on 4 pixels, class 1 on 6 pixels
    lab = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]])
    grid, trip = _sample("categorical", lab, (1, 10), seed=3, anchors=6000)
    a, p, n = trip.anchor[0], trip.positive[0], trip.negative[0]
    assert bool(trip.valid.all())
    for cls, members, others in ((0, range(4), range(4, 10)), (1, range(4, 10), range(4))):
        sel = grid.key[0][a] == cls
        assert abs(int(sel.sum()) - 3000) <= 1  # balanced quotas
        for anchor in members:
            chosen = sel & (a == anchor)
            expected_p = int(chosen.sum()) / (len(members) - 1)
            expected_n = int(chosen.sum()) / len(others)
            for j in members:
                if j != anchor:
                    assert abs(int((p[chosen] == j).sum()) - expected_p) <= 0.25 * expected_p
            for j in others:
                assert abs(int((n[chosen] == j).sum()) - expected_n) <= 0.25 * expected_n


def test_depth_dead_zone_excludes_ambiguous_pairs():
    # log-distances from pixel 0: 0.0392 (positive), 0.1 (dead zone), 0.3 (negative)
    d = torch.tensor([1.0, 1.04, math.exp(0.1), math.exp(0.3)]).view(1, 1, 1, 4)
    grid, trip = _sample("depth", d, (1, 4), seed=0, anchors=400)
    a, p, n, ok = (t[0] for t in trip)
    anchor0 = ok & (a == 0)
    assert anchor0.any()
    assert set(p[anchor0].tolist()) == {1} and set(n[anchor0].tolist()) == {3}
    assert not (ok & (a == 2)).any()  # exp(0.1): its nearest pixels are all in the dead zone


def test_nearest_neighbour_uses_pixel_centres_and_masks():
    lab = torch.arange(16).view(1, 4, 4)
    grid = to_source_grid("categorical", lab, (2, 2))
    assert grid.key.view(2, 2).tolist() == [[5.0, 7.0], [13.0, 15.0]]  # rows/cols 1 and 3
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 1] = False
    grid = to_source_grid("categorical", lab, (2, 2), valid=mask)
    assert grid.valid.view(2, 2).tolist() == [[False, True], [True, True]]


def test_pool_draws_only_valid_pixels():
    lab = torch.full((2, 1, 4, 4), -1.0)
    lab[0, 0, 1, 2] = 2.0
    lab[0, 0, 3, 3] = 5.0
    grid = to_source_grid("depth", lab, (4, 4))
    pix, ok = sample_pool(grid, torch.rand(2, 50, dtype=torch.float64))
    assert set(pix[0].tolist()) <= {6, 15} and bool(ok[0].all())
    assert not bool(ok[1].any())  # no valid pixel in image 1


def test_sampling_is_a_function_of_the_uniforms():
    lab = torch.randint(-1, 4, (2, 6, 7))
    _, t1 = _sample("categorical", lab, (6, 7), seed=11)
    _, t2 = _sample("categorical", lab, (6, 7), seed=11)
    _, t3 = _sample("categorical", lab, (6, 7), seed=12)
    assert all(torch.equal(x, y) for x, y in zip(t1, t2))
    assert not torch.equal(t1.anchor, t3.anchor)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_criterion("edges"), "unknown source kind"),
        (lambda: make_criterion("depth", depth_thresholds=(0.2, 0.05)), "depth_thresholds"),
        (lambda: make_criterion("normals", normals_thresholds_deg=(30, 200)), "normals_thresholds_deg"),
        (lambda: make_criterion("depth", depth_thresholds=(0.1,)), "depth_thresholds"),
        (lambda: to_source_grid("depth", torch.ones(2, 2, 4, 4), (4, 4)), "shape"),
        (lambda: to_source_grid("normals", torch.ones(2, 1, 4, 4), (4, 4)), "shape"),
        (lambda: to_source_grid("categorical", torch.ones(2, 4, 4), (4, 4)), "integer"),
        (lambda: to_source_grid("depth", torch.ones(2, 1, 4, 4, dtype=torch.long), (4, 4)), "floating"),
        (lambda: to_source_grid("depth", torch.ones(1, 1, 4, 4), (4, 4), valid=torch.ones(1, 4, 4)), "bool"),
        (lambda: to_source_grid("depth", torch.ones(1, 1, 4, 4), (4, 4), valid=torch.ones(1, 3, 4).bool()), "valid"),
    ],
)
def test_bad_sampler_input_raises(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_sample_triplets_argument_errors():
    grid = to_source_grid("depth", torch.rand(2, 1, 3, 3) + 0.5, (3, 3))
    crit = make_criterion("depth")
    with pytest.raises(ValueError, match="anchors"):
        sample_triplets(grid, crit, 0, torch.rand(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="uniforms"):
        sample_triplets(grid, crit, 4, torch.rand(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="kind"):
        sample_triplets(grid, make_criterion("categorical"), 1, torch.rand(2, 4, dtype=torch.float64))
