"""CrossTaskContrastive (xtc_ext/regularizers/contrastive.py): loss, gradients, generator, errors.

The loss is compared with a float64 reference written here from the equations of docs/contrastive.md
(S2, S3; projector with BatchNorm statistics over the rows of valid triplets), on the triplets the
module reports.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xtc_ext.regularizers import CrossTaskContrastive, triplet_margin_loss
from xtc_ext.regularizers.contrastive import MaskedBatchNorm1d
from xtc_ext.regularizers.sampling import (
    SourceGrid,
    Triplets,
    make_criterion,
    pair_distance,
    sample_pool,
    sample_triplets,
    to_source_grid,
)

KINDS3 = {"semseg": "categorical", "depth": "depth", "normals": "normals"}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _labels(n, h, w, seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, classes, (n, h, w), generator=g)
    depth = torch.rand(n, 1, h, w, generator=g) * 9 + 0.5
    normals = torch.randn(n, 3, h, w, generator=g)
    return {"semseg": seg, "depth": depth, "normals": normals}


def _features(channels, n, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(n, c, h, w, generator=g, dtype=dtype).requires_grad_(True) for t, c in channels.items()}


# --------------------------------------------------------------------------------------------
# Triplet loss and projector against float64 references


def _ref_triplet(za, zp, zn, valid, margin):
    total, count = 0.0, 0
    for a, p, n, v in zip(za.reshape(-1, za.shape[-1]), zp.reshape(-1, za.shape[-1]),
                          zn.reshape(-1, za.shape[-1]), valid.reshape(-1)):
        if v:
            total += max(0.0, math.dist(a.tolist(), p.tolist()) - math.dist(a.tolist(), n.tolist()) + margin)
            count += 1
    return total / count if count else 0.0, count


@pytest.mark.parametrize("seed", range(4))
def test_triplet_margin_loss_matches_float64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    za, zp, zn = (F.normalize(torch.randn(3, 7, 5, generator=g, dtype=torch.float64), dim=-1) for _ in range(3))
    zp[0, 0] = za[0, 0]  # hostile: coinciding anchor and positive (d = 0)
    zn[1, 1] = za[1, 1]  # and coinciding anchor and negative
    valid = torch.rand(3, 7, generator=g) > 0.3
    loss, count = triplet_margin_loss(za, zp, zn, valid, 0.5)
    ref, ref_count = _ref_triplet(za, zp, zn, valid, 0.5)
    assert int(count) == ref_count
    assert loss.dtype == torch.float64
    assert abs(float(loss) - ref) < 1e-6  # the 1e-6 distance floor at d = 0


def test_triplet_loss_is_zero_with_zero_gradient_without_valid_triplets():
    za, zp, zn = (torch.randn(2, 3, 4, requires_grad=True) for _ in range(3))
    loss, count = triplet_margin_loss(za, zp, zp.detach() * 0 + za.detach(), torch.zeros(2, 3, dtype=torch.bool), 0.5)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(count) == 0
    assert float(za.grad.abs().sum()) == 0.0 and float(zp.grad.abs().sum()) == 0.0


def test_masked_batch_norm_matches_batch_norm_of_the_masked_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(40, generator=g) > 0.4
    bn = MaskedBatchNorm1d(6).double()
    ref = torch.nn.BatchNorm1d(6).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        ref.load_state_dict(bn.state_dict())
    y = bn(x, mask)
    y_ref = ref(x[mask])
    assert torch.allclose(y[mask], y_ref, atol=1e-12)
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    (y * torch.randn(40, 6, generator=g, dtype=torch.float64) * mask.unsqueeze(1)).sum().backward()
    assert float(x.grad[~mask].abs().sum()) == 0.0  # rows outside the mask: no gradient
    before = bn.running_mean.clone()
    bn(x, torch.zeros(40, dtype=torch.bool))
    assert torch.equal(bn.running_mean, before)  # no statistics without rows
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))


def test_masked_batch_norm_gradcheck():
    g = torch.Generator().manual_seed(1)
    bn = MaskedBatchNorm1d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    # gradcheck perturbs the parameters in place, so bn sees the perturbed weight and bias
    assert torch.autograd.gradcheck(lambda x_, w_, b_: bn(x_, mask), (x, bn.weight, bn.bias))


def _reference_loss(reg, features, labels, out):
    """float64 S3 on the module's triplets, projector re-implemented (eval-free, batch statistics)."""
    losses = []
    for t in reg.targets:
        s, trip = out.sources[t], out.triplets[t]
        f = features[t].detach().double()
        N, C, h, w = f.shape
        idx = torch.cat([trip.anchor, trip.positive, trip.negative], dim=1)
        rows = torch.stack([f[i].reshape(C, -1)[:, idx[i]].t() for i in range(N)])  # [N, 3K, C]
        mask = trip.valid.repeat(1, 3)
        proj = reg.projectors[t][s]
        hdn = rows @ proj.fc1.weight.double().t() + proj.fc1.bias.double()
        sel = hdn[mask]
        mean, var = sel.mean(0), sel.var(0, unbiased=False)
        hdn = (hdn - mean) / torch.sqrt(var + proj.bn.eps) * proj.bn.weight.double() + proj.bn.bias.double()
        z = F.normalize(F.relu(hdn) @ proj.fc2.weight.double().t() + proj.fc2.bias.double(), dim=-1)
        K = trip.anchor.shape[1]
        ref, _ = _ref_triplet(z[:, :K], z[:, K:2 * K], z[:, 2 * K:], trip.valid, reg.margin)
        losses.append(ref)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("h, w", [(6, 8), (5, 3)])
def test_forward_matches_float64_reference(h, w):
    torch.manual_seed(0)
    channels = {"semseg": 5, "depth": 4, "normals": 6}
    reg = CrossTaskContrastive(channels, KINDS3, embed_dim=3, anchors=7)
    with torch.no_grad():
        for m in reg.modules():
            if isinstance(m, MaskedBatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    features = _features(channels, 3, h, w)
    labels = _labels(3, 2 * h, 2 * w)
    out = reg(features, labels, generator=_gen(3))
    assert out.loss.dtype == torch.float32 and out.loss.shape == ()
    assert abs(out.loss.item() - _reference_loss(reg, features, labels, out)) < 1e-5
    assert set(out.per_target) == set(channels)
    for t in channels:
        assert int(out.num_triplets[t]) == int(out.triplets[t].valid.sum())


# --------------------------------------------------------------------------------------------
# Gradients, empty contributions, margin


def test_gradients_reach_features_and_projector_not_labels():
    channels = {"semseg": 4, "depth": 4}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=16)
    features = _features(channels, 2, 8, 8)
    labels = _labels(2, 8, 8)
    labels["depth"].requires_grad_(True)
    out = reg(features, {k: labels[k] for k in ("semseg", "depth")}, generator=_gen())
    out.loss.backward()
    assert labels["depth"].grad is None
    for t in channels:
        assert features[t].grad is not None and float(features[t].grad.abs().sum()) > 0
        s = out.sources[t]
        for p in reg.projectors[t][s].parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert float(reg.projectors[t][s].fc1.weight.grad.abs().sum()) > 0


@st.composite
def _degenerate_batch(draw):
    """Per image: normal, one class, no valid pixel, or no depth pair outside the dead zone."""
    n = draw(st.integers(1, 3))
    kinds = draw(st.lists(st.sampled_from(["normal", "one_class", "void", "flat"]), min_size=n, max_size=n))
    seg = torch.randint(0, 3, (n, 5, 6), generator=_gen(draw(st.integers(0, 999))))
    depth = torch.rand(n, 1, 5, 6, generator=_gen(draw(st.integers(0, 999)))) * 9 + 0.5
    for i, k in enumerate(kinds):
        if k == "one_class":
            seg[i] = 2
            depth[i] = 3.0  # all positives, no negative
        elif k == "void":
            seg[i] = -1
            depth[i] = 0.0
        elif k == "flat":
            seg[i] = 1
            depth[i] = torch.tensor([1.0, 1.12] * 15).view(5, 6)  # log ratio 0.113: dead zone
    return seg, depth, kinds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_degenerate_batch(), seed=st.integers(0, 2**31 - 1))
def test_images_without_valid_triplets_contribute_zero_with_zero_gradient(batch, seed):
    seg, depth, kinds = batch
    channels = {"semseg": 3, "depth": 3}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=8)
    features = _features(channels, seg.shape[0], 5, 6, seed=seed % 1000)
    out = reg(features, {"semseg": seg, "depth": depth}, generator=_gen(seed))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for t in channels:
        per_image = out.triplets[t].valid.sum(dim=1)
        for i in range(seg.shape[0]):
            if kinds[i] != "normal":
                assert int(per_image[i]) == 0
            if int(per_image[i]) == 0:
                assert float(features[t].grad[i].abs().sum()) == 0.0
        if int(out.num_triplets[t]) == 0:
            assert out.per_target[t].item() == 0.0
            for p in reg.projectors[t].parameters():
                assert p.grad is None or float(p.grad.abs().sum()) == 0.0
    if all(k != "normal" for k in kinds):
        assert out.loss.item() == 0.0


def _identity_projector_reg(classes, margin):
    reg = CrossTaskContrastive({"x": classes}, {"semseg": "categorical"}, embed_dim=classes, anchors=32, margin=margin)
    proj = reg.projectors["x"]["semseg"]
    with torch.no_grad():
        for lin in (proj.fc1, proj.fc2):
            lin.weight.copy_(torch.eye(classes))
            lin.bias.zero_()
    return reg


@pytest.mark.parametrize("margin", [0.5, 1.2])
def test_loss_is_zero_when_the_margin_is_met(margin):
    # features = one-hot of the class; identity projector: same class -> same embedding (d = 0),
    # different classes -> orthogonal unit vectors (d = sqrt(2) > margin)
    seg = torch.randint(0, 3, (2, 6, 6), generator=_gen(1))
    feats = F.one_hot(seg, 3).permute(0, 3, 1, 2).float().requires_grad_(True)
    reg = _identity_projector_reg(3, margin)
    out = reg({"x": feats}, {"semseg": seg}, generator=_gen(2))
    out.loss.backward()
    assert int(out.num_triplets["x"]) > 0
    assert out.loss.item() == 0.0
    assert float(feats.grad.abs().sum()) == 0.0


def test_loss_is_positive_when_the_margin_is_not_met():
    seg = torch.randint(0, 3, (2, 6, 6), generator=_gen(1))
    feats = F.one_hot(seg, 3).permute(0, 3, 1, 2).float()
    reg = _identity_projector_reg(3, 2.0)  # margin above sqrt(2)
    out = reg({"x": feats}, {"semseg": seg}, generator=_gen(2))
    assert abs(out.loss.item() - (2.0 - math.sqrt(2.0))) < 1e-4


# --------------------------------------------------------------------------------------------
# Projection of the sampled pixels only


@pytest.mark.parametrize("mining, extra", [("random", 0), ("semihard", 20)])
def test_projector_sees_only_the_sampled_rows(mining, extra):
    channels = {"semseg": 4, "depth": 4}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=5,
                               mining=mining, semihard_pool=20)
    seen = []
    for t in channels:
        for proj in reg.projectors[t].values():
            proj.fc1.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    reg(_features(channels, 3, 40, 48), _labels(3, 40, 48), generator=_gen())
    assert seen == [(3 * (3 * 5 + extra), 4)] * 2  # N * (3K [+ M]) rows, never N * H * W


# --------------------------------------------------------------------------------------------
# Source draws and the generator


def test_source_draw_never_picks_the_target_and_is_uniform():
    reg = CrossTaskContrastive({"semseg": 2, "depth": 2, "normals": 2, "sal": 2},
                               {"semseg": "categorical", "depth": "depth", "normals": "normals", "sal": "binary"})
    gen = _gen(5)
    counts = {t: {} for t in reg.targets}
    for _ in range(600):
        for t, s in reg.draw_sources(gen).items():
            assert s != t and s in reg.sources[t]
            counts[t][s] = counts[t].get(s, 0) + 1
    for t in reg.targets:
        assert len(counts[t]) == 3
        assert all(150 <= c <= 250 for c in counts[t].values()), counts[t]


@pytest.mark.parametrize("mining", ["random", "semihard"])
def test_same_generator_state_gives_same_draws_and_loss(mining):
    channels = {"semseg": 4, "depth": 4, "normals": 4}
    reg = CrossTaskContrastive(channels, KINDS3, anchors=9, mining=mining, semihard_pool=16)
    features, labels = _features(channels, 2, 6, 7), _labels(2, 6, 7)
    gen = _gen(7)
    state = gen.get_state()
    first = reg(features, labels, generator=gen)
    after_first = gen.get_state()
    gen.set_state(state)  # a resumed run restores the checkpointed state
    second = reg(features, labels, generator=gen)
    assert first.sources == second.sources
    assert torch.equal(first.loss, second.loss)
    for t in channels:
        assert all(torch.equal(x, y) for x, y in zip(first.triplets[t], second.triplets[t]))
    assert torch.equal(gen.get_state(), after_first)
    third = reg(features, labels, generator=gen)  # a later step draws anew
    assert any(not torch.equal(first.triplets[t].anchor, third.triplets[t].anchor) for t in channels)


def test_generator_consumption_does_not_depend_on_the_labels():
    channels = {"semseg": 4, "depth": 4}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=6)
    g1, g2 = _gen(9), _gen(9)
    labels_void = {"semseg": torch.full((2, 5, 5), -1), "depth": torch.zeros(2, 1, 5, 5)}
    reg(_features(channels, 2, 5, 5), _labels(2, 5, 5), generator=g1)
    reg(_features(channels, 2, 5, 5), labels_void, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# --------------------------------------------------------------------------------------------
# Semi-hard mining


def test_semihard_negatives_are_valid_candidates():
    torch.manual_seed(0)
    reg = CrossTaskContrastive({"x": 6}, {"depth": "depth"}, anchors=12, mining="semihard", semihard_pool=10)
    depth = torch.rand(2, 1, 5, 5, generator=_gen(4)) * 4 + 0.5
    features = _features({"x": 6}, 2, 5, 5)
    out = reg(features, {"depth": depth}, generator=_gen(8))
    trip = out.triplets["x"]
    grid = to_source_grid("depth", depth, (5, 5))
    crit = make_criterion("depth")
    ok = trip.valid
    assert bool((pair_distance(grid, trip.anchor, trip.negative)[ok] >= crit.negative).all())
    # the module's candidates, redrawn from the same generator state: the random negative and the pool
    gen = _gen(8)
    reg.draw_sources(gen)
    u = torch.rand((2, 3 * 12 + 1 + 10), generator=gen, dtype=torch.float64)
    base = sample_triplets(grid, crit, 12, u)
    pool, _ = sample_pool(grid, u[:, 37:])
    assert torch.equal(trip.anchor, base.anchor) and torch.equal(trip.valid, base.valid)
    for i in range(2):
        for k in range(12):
            if not base.valid[i, k]:
                assert int(trip.negative[i, k]) == int(base.negative[i, k])
                continue
            cands = [int(base.negative[i, k])] + [int(p) for p in pool[i]
                                                  if abs(float(grid.key[i, p] - grid.key[i, base.anchor[i, k]]))
                                                  >= crit.negative]
            assert int(trip.negative[i, k]) in cands


def test_semihard_selection_rule_on_constructed_embeddings():
    # anchor at the origin direction e0; positive at distance 0.5; candidates at 0.3, 0.7, 1.2 (valid)
    # and 0.6 (not a negative by its label): the rule picks 0.7 (nearest farther than the positive)
    def unit_at(d):  # a unit vector at Euclidean distance d from e0 in the (e0, e1) plane
        c = 1 - d * d / 2
        return torch.tensor([c, math.sqrt(max(0.0, 1 - c * c)), 0.0])

    e0 = unit_at(0.0)
    za, zp = e0.view(1, 1, 3), unit_at(0.5).view(1, 1, 3)
    zn = unit_at(0.3).view(1, 1, 3)
    zpool = torch.stack([unit_at(0.7), unit_at(1.2), unit_at(0.6)]).unsqueeze(0)
    key = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]])  # log-depth keys of pixels 0..6
    grid = SourceGrid("depth", key, torch.ones(1, 7, dtype=torch.bool))
    trip = Triplets(torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[2]]), torch.tensor([[True]]))
    pool = torch.tensor([[3, 4, 5]])  # pixel 5 has key 0: not a negative of the anchor
    chosen, new = CrossTaskContrastive._mine(grid, make_criterion("depth"), trip, za, zp, zn, zpool, pool,
                                             torch.ones(1, 3, dtype=torch.bool), "semihard")
    assert int(new.negative) == 3 and torch.allclose(chosen, unit_at(0.7).view(1, 1, 3))
    # no candidate farther than the positive: the farthest one (the least hard)
    zpool2 = torch.stack([unit_at(0.1), unit_at(0.2), unit_at(0.9)]).unsqueeze(0)
    chosen, new = CrossTaskContrastive._mine(grid, make_criterion("depth"), trip, za, unit_at(1.5).view(1, 1, 3),
                                             zn, zpool2, pool, torch.ones(1, 3, dtype=torch.bool), "semihard")
    assert int(new.negative) == 2  # 0.3 (the random negative) beats 0.1 and 0.2; 0.9 is not a negative


# --------------------------------------------------------------------------------------------
# Autocast, dtypes


def test_bfloat16_autocast_runs_the_projector_in_bfloat16_and_returns_float32():
    channels = {"semseg": 8, "depth": 8}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=16)
    dtypes = []
    for t in channels:
        for proj in reg.projectors[t].values():
            proj.fc2.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    features = _features(channels, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg({k: v.bfloat16() for k, v in features.items()}, _labels(2, 8, 8), generator=_gen())
    out.loss.backward()
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(float(f.grad.abs().sum()) > 0 for f in features.values())


def _loss_and_feature_grads(reg, features, labels, head_weight, autocast_dtype=None):
    """The regularizer's loss plus a head's linear loss on the same maps (autograd sums both gradients)."""
    leaves = {t: f.detach().clone().requires_grad_(True) for t, f in features.items()}
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = reg(leaves, labels, generator=_gen(5))
    head = sum((leaves[t].double() * head_weight[t]).sum() for t in leaves)
    (out.loss.double() + head).backward()
    return out.loss.detach().double(), {t: f.grad for t, f in leaves.items()}


def _channels_last_case(dtype):
    channels = {"semseg": 6, "depth": 5}
    torch.manual_seed(0)
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, embed_dim=4, anchors=9)
    features = {t: f.detach().to(dtype) for t, f in _features(channels, 3, 7, 9, seed=4).items()}
    labels = {k: v for k, v in _labels(3, 7, 9, seed=4).items() if k in channels}
    # a head gradient of the size of the regularizer's (in bf16 a larger one would round it away)
    head_weight = {t: 1e-3 * torch.randn(f.shape, dtype=torch.float64) for t, f in features.items()}
    cl = {t: f.contiguous(memory_format=torch.channels_last) for t, f in features.items()}
    assert not any(f.is_contiguous() for f in cl.values())
    return reg, features, cl, labels, head_weight


def _assert_same(loss, grads, ref_loss, ref_grads, head_weight, dtype, tol):
    assert abs(float(loss) - float(ref_loss)) <= tol * max(1.0, abs(float(ref_loss)))
    for t, g in grads.items():
        assert g.dtype == dtype and g.is_contiguous(memory_format=torch.channels_last), t
        reg_part, ref_part = g.double() - head_weight[t], ref_grads[t].double() - head_weight[t]
        assert float(ref_part.abs().max()) > 0, t  # the regularizer's own gradient is compared, not the head's
        assert float((reg_part - ref_part).abs().max()) <= tol * float(ref_part.abs().max()), t


def test_channels_last_features_match_the_float64_contiguous_result():
    """``--channels-last``: the maps are gathered in their own layout and their gradient keeps it (no
    layout-mismatched add against the head's gradient); loss and gradients equal the float64 result on
    contiguous maps of the same values, with a head consuming the same maps."""
    reg, features, cl, labels, head_weight = _channels_last_case(torch.float32)
    ref = _loss_and_feature_grads(copy.deepcopy(reg).double(), {t: f.double() for t, f in features.items()},
                                  labels, head_weight)
    _assert_same(*_loss_and_feature_grads(reg, cl, labels, head_weight), *ref, head_weight, torch.float32, 1e-5)


def test_channels_last_bfloat16_under_autocast_matches_the_contiguous_layout():
    """The training program's CPU default (bf16 autocast + channels_last): same loss and gradients as the
    contiguous bf16 maps (only the gather's layout differs; bf16 accumulation order aside)."""
    reg, features, cl, labels, head_weight = _channels_last_case(torch.bfloat16)
    ref = _loss_and_feature_grads(reg, features, labels, head_weight, torch.bfloat16)
    _assert_same(*_loss_and_feature_grads(reg, cl, labels, head_weight, torch.bfloat16), *ref, head_weight,
                 torch.bfloat16, 1e-2)


def test_float64_module_and_features():
    channels = {"semseg": 4, "depth": 4}
    reg = CrossTaskContrastive(channels, {"semseg": "categorical", "depth": "depth"}, anchors=8).double()
    out = reg(_features(channels, 2, 5, 5, dtype=torch.float64), _labels(2, 5, 5), generator=_gen())
    assert out.per_target["semseg"].dtype == torch.float64 and out.loss.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_channels={}), "feature_channels"),
        (dict(feature_channels={"semseg": 0}), "feature_channels"),
        (dict(source_kinds={"semseg": "categorical", "depth": "disparity"}), "source_kinds\\['depth'\\]"),
        (dict(source_kinds={"semseg": "categorical"}), "target 'semseg' has no source"),
        (dict(margin=0.0), "margin"),
        (dict(margin=-1.0), "margin"),
        (dict(margin=math.inf), "margin"),
        (dict(anchors=0), "anchors"),
        (dict(embed_dim=0), "embed_dim"),
        (dict(mining="hard"), "mining"),
        (dict(semihard_pool=0), "semihard_pool"),
        (dict(depth_thresholds=(0.3, 0.1)), "depth_thresholds"),
        (dict(normals_thresholds_deg=(30.0, 11.25)), "normals_thresholds_deg"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    args = dict(feature_channels={"semseg": 4, "depth": 4}, source_kinds={"semseg": "categorical", "depth": "depth"})
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CrossTaskContrastive(args.pop("feature_channels"), args.pop("source_kinds"), **args)


def _bad_inputs():
    ok_f = lambda: _features({"semseg": 4, "depth": 4}, 2, 6, 6)  # noqa: E731
    ok_l = lambda: {k: v for k, v in _labels(2, 6, 6).items() if k != "normals"}  # noqa: E731
    cases = []
    f = ok_f()
    f["semseg"] = torch.randn(2, 5, 6, 6)
    cases.append((f, ok_l(), None, "features\\['semseg'\\] has 5 channels"))
    f = ok_f()
    f["depth"] = torch.randn(3, 4, 6, 6)
    cases.append((f, ok_l(), None, "features\\['depth'\\] has batch size 3"))
    f = ok_f()
    del f["depth"]
    cases.append((f, ok_l(), None, "features has no entry for target 'depth'"))
    f = ok_f()
    f["semseg"] = torch.randn(2, 4, 6)
    cases.append((f, ok_l(), None, "features\\['semseg'\\]"))
    lab = ok_l()
    lab["depth"] = torch.rand(3, 1, 6, 6)
    cases.append((ok_f(), lab, None, "labels\\['depth'\\] has batch size 3"))
    lab = ok_l()
    lab["depth"] = torch.rand(2, 2, 6, 6)
    cases.append((ok_f(), lab, None, "labels\\['depth'\\] must have shape"))
    lab = ok_l()
    del lab["semseg"]
    cases.append((ok_f(), lab, None, "labels has no entry for source task 'semseg'"))
    lab = ok_l()
    lab["semseg"] = lab["semseg"].float()
    cases.append((ok_f(), lab, None, "integer"))
    cases.append((ok_f(), ok_l(), {"depth": torch.ones(2, 1, 6, 6)}, "bool"))
    cases.append((ok_f(), ok_l(), {"depth": torch.ones(2, 1, 5, 6, dtype=torch.bool)}, "valid mask"))
    return cases


@pytest.mark.parametrize("features, labels, valid, match", _bad_inputs())
def test_bad_forward_inputs_raise(features, labels, valid, match):
    reg = CrossTaskContrastive({"semseg": 4, "depth": 4}, {"semseg": "categorical", "depth": "depth"}, anchors=4)
    with pytest.raises((ValueError, TypeError), match=match):
        reg(features, labels, valid, generator=_gen())


def test_generator_is_required_and_must_be_a_cpu_generator():
    reg = CrossTaskContrastive({"semseg": 4, "depth": 4}, {"semseg": "categorical", "depth": "depth"}, anchors=4)
    f, lab = _features({"semseg": 4, "depth": 4}, 1, 4, 4), _labels(1, 4, 4)
    with pytest.raises(TypeError, match="generator"):
        reg(f, lab)
    with pytest.raises(TypeError, match="generator"):
        reg(f, lab, generator=0)
    with pytest.raises(TypeError, match="generator"):
        reg.draw_sources(None)


def test_optimising_the_regularizer_separates_positives_from_negatives():
    # free features and the projector trained on the regularizer alone: the loss must fall (a sign
    # error in any gradient would make it rise or stall near the margin)
    torch.manual_seed(0)
    seg = torch.randint(0, 3, (2, 8, 8), generator=_gen(3))
    feats = torch.randn(2, 8, 8, 8, generator=_gen(4)).requires_grad_(True)
    reg = CrossTaskContrastive({"x": 8}, {"semseg": "categorical"}, embed_dim=8, anchors=64)
    opt = torch.optim.Adam([feats, *reg.parameters()], lr=0.1)
    gen = _gen(5)
    losses = []
    for _ in range(60):
        out = reg({"x": feats}, {"semseg": seg}, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
