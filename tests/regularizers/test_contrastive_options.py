"""The contrastive regularizer's options (docs/contrastive.md, "Criteria" and "Sampling"), each against a
small float64 reference written here:

- the ordering criterion of a depth source (``depth_criterion="ordering"``, S1');
- cross-image triplets (``cross_image=True``): anchors in their image, positives and negatives from the batch;
- the two mining rules, ``"semihard"`` (FaceNet) and ``"closest"`` (the specification's closest valid negative).

The references re-derive the exact draws from the same uniforms (the samplers pick the ``floor(u * count)``-th
member of a set, in key order for the 1-D kinds and in pixel order for normals), so the label values are
chosen away from every threshold: float32 (sampler) and float64 (reference) then agree on every set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xtc_ext.regularizers import CrossTaskContrastive
from xtc_ext.regularizers.contrastive import MaskedBatchNorm1d
from xtc_ext.regularizers.sampling import (
    SourceGrid,
    Triplets,
    draw_uniforms,
    make_criterion,
    num_uniforms,
    sample_triplets,
    to_source_grid,
)

GAP = 0.15
DEPTH_T = (0.05, 0.20)
NORMALS_T = (11.25, 30.0)
# unit-ish directions whose pairwise angles (0, 10.0, 45, 90, 135 degrees...) stay away from 11.25 and 30
DIRECTIONS = [(0.0, 0.0, 1.0), (0.0, math.sin(math.radians(10.0)), math.cos(math.radians(10.0))),
              (1.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, -1.0)]


def _uniforms(n, anchors, seed, pool=0):
    return draw_uniforms(torch.Generator().manual_seed(seed), n, num_uniforms(anchors, pool), torch.device("cpu"))


def _depth_batch(seed, n=3, h=4, w=5):
    """Depths ``exp(0.07 j)`` (log-depth differences are multiples of 0.07, at least 0.01 away from 0.05, 0.20
    and every ``delta + 0.15``), with void pixels (0, NaN)."""
    rng = np.random.default_rng(seed)
    d = np.exp(0.07 * rng.integers(0, 12, size=(n, 1, h, w)))
    d[rng.random(d.shape) < 0.15] = 0.0
    d[rng.random(d.shape) < 0.05] = np.nan
    return torch.tensor(d, dtype=torch.float32)


def _pick(u, count):
    return min(int(math.floor(u * count)), count - 1)


def _ref_1d(keys, valid, u, K, rule, cross_image):
    """float64 reference of the 1-D sampler for a depth source.

    ``keys``/``valid`` ``[N, L]`` (log-depth from the raw labels in float64); ``rule`` ``("thresholds", (tp, tn))``
    or ``("ordering", gap)``.  Returns ``(a, p, n, ok)`` lists of ``[N][K]`` (batch indices with ``cross_image``).
    """
    N, L = keys.shape
    out = [[None] * K for _ in range(N)]

    def sorted_pool(rows):  # (key, index) of the valid pixels, stable by index
        return sorted(((keys[r, j], r * L + j if cross_image else j) for r in rows for j in range(L) if valid[r, j]))

    for i in range(N):
        own = sorted_pool([i])
        pool = sorted_pool(range(N)) if cross_image else own
        for k in range(K):
            if not own:
                out[i][k] = (0, 0, 0, False)
                continue
            ka, a = own[_pick(float(u[i, k]), len(own))]
            others = [(kk, j) for kk, j in pool if j != a]
            if rule[0] == "thresholds":
                tp, tn = rule[1]
                pos = [j for kk, j in others if abs(kk - ka) <= tp]
                bound = None
            else:
                reach = max(abs(kk - ka) for kk, _ in pool)
                pos = [j for kk, j in others if abs(kk - ka) <= reach - rule[1]]
            if not pos:
                out[i][k] = (a, a, a, False)
                continue
            p = pos[_pick(float(u[i, K + k]), len(pos))]
            kp = next(kk for kk, j in pool if j == p)
            bound = rule[1][1] if rule[0] == "thresholds" else abs(kp - ka) + rule[1]
            neg = [j for kk, j in pool if abs(kk - ka) >= bound]
            if not neg:
                out[i][k] = (a, a, a, False)
                continue
            out[i][k] = (a, p, neg[_pick(float(u[i, 2 * K + k]), len(neg))], True)
    return [[[out[i][k][f] for k in range(K)] for i in range(N)] for f in range(4)]


def _log_depth64(d):
    x = d.double().reshape(d.shape[0], -1).numpy()
    valid = np.isfinite(x) & (x > 0)
    return np.where(valid, np.log(np.where(valid, x, 1.0)), 0.0), valid


def _assert_same(trip, ref):
    a, p, n, ok = ref
    assert trip.valid.tolist() == ok
    okm = torch.tensor(ok)
    for got, want in ((trip.anchor, a), (trip.positive, p), (trip.negative, n)):
        assert torch.equal(got[okm], torch.tensor(want)[okm])


@pytest.mark.parametrize("cross_image", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_ordering_criterion_draws_as_the_float64_reference(seed, cross_image):
    d = _depth_batch(seed)
    K = 9
    u = _uniforms(d.shape[0], K, seed)
    crit = make_criterion("depth", depth_criterion="ordering", depth_gap=GAP)
    trip = sample_triplets(to_source_grid("depth", d, (4, 5)), crit, K, u, cross_image)
    keys, valid = _log_depth64(d)
    ref = _ref_1d(keys, valid, u, K, ("ordering", GAP), cross_image)
    _assert_same(trip, ref)
    assert any(any(row) for row in ref[3])  # the case has valid triplets
    a, p, n, ok = (np.array(x) for x in ref)
    flat = keys.reshape(-1) if cross_image else None
    for i, k in zip(*np.nonzero(ok)):  # S1' in float64, no absolute threshold
        key = (lambda j: flat[j]) if cross_image else (lambda j: keys[i, j])
        assert abs(key(n[i, k]) - key(a[i, k])) - abs(key(p[i, k]) - key(a[i, k])) >= GAP


@pytest.mark.parametrize("seed", range(4))
def test_cross_image_thresholds_draw_as_the_float64_reference(seed):
    d = _depth_batch(seed + 10)
    K = 8
    u = _uniforms(d.shape[0], K, seed)
    trip = sample_triplets(to_source_grid("depth", d, (4, 5)), make_criterion("depth", DEPTH_T), K, u, True)
    keys, valid = _log_depth64(d)
    ref = _ref_1d(keys, valid, u, K, ("thresholds", DEPTH_T), True)
    _assert_same(trip, ref)
    L = 20
    anchors_image = trip.anchor // L
    assert torch.equal(anchors_image[trip.valid], torch.arange(3).unsqueeze(1).expand(3, K)[trip.valid])
    others = (trip.positive // L != anchors_image) | (trip.negative // L != anchors_image)
    assert bool((others & trip.valid).any())  # partners come from other images too


def test_cross_image_normals_draw_as_the_float64_reference():
    rng = np.random.default_rng(3)
    N, h, w, K = 2, 3, 4, 10
    dirs = np.array(DIRECTIONS + [(0.0, 0.0, 0.0)])
    lab = torch.tensor(dirs[rng.integers(0, len(dirs), size=(N, h, w))], dtype=torch.float32).permute(0, 3, 1, 2)
    u = _uniforms(N, K, 5)
    crit = make_criterion("normals", normals_thresholds_deg=NORMALS_T)
    trip = sample_triplets(to_source_grid("normals", lab, (h, w)), crit, K, u, True)
    v = lab.double().permute(0, 2, 3, 1).reshape(N * h * w, 3).numpy()
    norm = np.linalg.norm(v, axis=1)
    ok_pix = norm > 0
    unit = v / np.where(ok_pix, norm, 1.0)[:, None]
    angle = np.degrees(np.arccos(np.clip(unit @ unit.T, -1.0, 1.0)))
    L = h * w
    for i in range(N):
        own = [j for j in range(i * L, (i + 1) * L) if ok_pix[j]]
        for k in range(K):
            a = own[_pick(float(u[i, k]), len(own))]
            pos = [j for j in range(N * L) if ok_pix[j] and j != a and angle[a, j] <= NORMALS_T[0]]
            neg = [j for j in range(N * L) if ok_pix[j] and angle[a, j] >= NORMALS_T[1]]
            assert bool(trip.valid[i, k]) == bool(pos and neg)
            assert int(trip.anchor[i, k]) == a
            if pos and neg:
                assert int(trip.positive[i, k]) == pos[_pick(float(u[i, K + k]), len(pos))]
                assert int(trip.negative[i, k]) == neg[_pick(float(u[i, 2 * K + k]), len(neg))]


def test_ordering_is_refused_for_normals_and_bad_gaps():
    with pytest.raises(ValueError, match="depth_criterion"):
        make_criterion("depth", depth_criterion="order")
    for gap in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="depth_gap"):
            make_criterion("depth", depth_criterion="ordering", depth_gap=gap)
    grid = to_source_grid("normals", torch.ones(1, 3, 2, 2), (2, 2))
    with pytest.raises(ValueError, match="depth sources only"):
        sample_triplets(grid, make_criterion("depth", depth_criterion="ordering")._replace(kind="normals"), 2,
                        _uniforms(1, 2, 0))
    with pytest.raises(ValueError, match="cross_image"):
        CrossTaskContrastive({"semseg": 2}, {"depth": "depth"}, cross_image=1)


# --------------------------------------------------------------------------------------------
# Mining


def _ref_mine(za, zp, zn, zpool, cand_is_negative, valid, mining):
    """float64 reference: index of the chosen candidate (0 = the random negative, 1 + j = pool pixel j)."""
    N, K = valid.shape
    choice = np.zeros((N, K), dtype=np.int64)
    for i in range(N):
        for k in range(K):
            if not valid[i, k]:
                continue
            cands = [(0, float(np.linalg.norm(za[i, k] - zn[i, k])))]
            cands += [(1 + j, float(np.linalg.norm(za[i, k] - zpool[i, j])))
                      for j in range(zpool.shape[1]) if cand_is_negative[i, k, j]]
            d_pos = float(np.linalg.norm(za[i, k] - zp[i, k]))
            if mining == "closest":
                choice[i, k] = min(cands, key=lambda c: (c[1], c[0]))[0]
            else:
                far = [c for c in cands if c[1] > d_pos]
                choice[i, k] = (min(far, key=lambda c: (c[1], c[0])) if far
                                else max(cands, key=lambda c: (c[1], -c[0])))[0]
    return choice


@pytest.mark.parametrize("ordering", [False, True])
@pytest.mark.parametrize("mining", ["semihard", "closest"])
def test_mining_rules_choose_as_the_float64_reference(mining, ordering):
    N, L, K, M, D = 2, 30, 12, 9, 4
    g = torch.Generator().manual_seed(11)
    key = 0.07 * torch.randint(0, 12, (N, L), generator=g).double()  # log-depth, multiples of 0.07
    grid = SourceGrid("depth", key, torch.ones(N, L, dtype=torch.bool))
    crit = make_criterion("depth", DEPTH_T, depth_criterion="ordering" if ordering else "thresholds", depth_gap=GAP)
    trip = sample_triplets(grid, crit, K, _uniforms(N, K, 2))
    assert bool(trip.valid.any())
    pool = torch.randint(0, L, (N, M), generator=g)
    z = torch.nn.functional.normalize(torch.randn(N, 3 * K + M, D, generator=g, dtype=torch.float64), dim=-1)
    za, zp, zn, zpool = z.split([K, K, K, M], dim=1)
    chosen, new = CrossTaskContrastive._mine(grid, crit, trip, za, zp, zn, zpool, pool,
                                             torch.ones(N, M, dtype=torch.bool), mining)
    k64 = key.numpy()
    a, p = trip.anchor.numpy(), trip.positive.numpy()
    d_ap = np.abs(np.take_along_axis(k64, p, 1) - np.take_along_axis(k64, a, 1))
    bound = d_ap + GAP if ordering else np.full_like(d_ap, DEPTH_T[1])
    d_pool = np.abs(k64[np.arange(N)[:, None, None], pool.numpy()[:, None, :]]
                    - np.take_along_axis(k64, a, 1)[:, :, None])
    choice = _ref_mine(za.numpy(), zp.numpy(), zn.numpy(), zpool.numpy(), d_pool >= bound[:, :, None],
                       trip.valid.numpy(), mining)
    want_pix = np.where(choice > 0, np.take_along_axis(pool.numpy(), np.maximum(choice - 1, 0).reshape(N, K), 1),
                        trip.negative.numpy())
    assert np.array_equal(new.negative.numpy(), want_pix)
    want_z = torch.where(torch.tensor(choice > 0).unsqueeze(-1),
                         zpool.gather(1, torch.tensor(np.maximum(choice - 1, 0)).unsqueeze(-1).expand(-1, -1, D)), zn)
    assert torch.equal(chosen, want_z)
    assert bool((torch.tensor(choice) > 0).any())  # the pool was used


def test_closest_and_semihard_differ_on_a_constructed_case():
    def unit_at(d):  # a unit vector at distance d from e0
        c = 1 - d * d / 2
        return torch.tensor([c, math.sqrt(max(0.0, 1 - c * c)), 0.0])

    key = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    grid = SourceGrid("depth", key, torch.ones(1, 5, dtype=torch.bool))
    trip = Triplets(torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[2]]), torch.tensor([[True]]))
    za, zp, zn = unit_at(0.0).view(1, 1, 3), unit_at(0.5).view(1, 1, 3), unit_at(0.9).view(1, 1, 3)
    zpool = torch.stack([unit_at(0.2), unit_at(0.7)]).unsqueeze(0)  # pixels 3, 4: both negatives
    args = (grid, make_criterion("depth"), trip, za, zp, zn, zpool, torch.tensor([[3, 4]]), torch.ones(1, 2).bool())
    assert int(CrossTaskContrastive._mine(*args, "closest")[1].negative) == 3  # 0.2: the closest, nearer than p
    assert int(CrossTaskContrastive._mine(*args, "semihard")[1].negative) == 4  # 0.7: nearest beyond 0.5


# --------------------------------------------------------------------------------------------
# The whole regularizer with the options


def _reg(**options):
    torch.manual_seed(0)
    reg = CrossTaskContrastive({"semseg": 5, "depth": 4}, {"semseg": "categorical", "depth": "depth"},
                               embed_dim=3, anchors=6, semihard_pool=7, **options).double()
    with torch.no_grad():
        for m in reg.modules():
            if isinstance(m, MaskedBatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return reg


def _inputs(n=3, h=4, w=5):
    g = torch.Generator().manual_seed(4)
    feats = {"semseg": torch.randn(n, 5, h, w, generator=g, dtype=torch.float64, requires_grad=True),
             "depth": torch.randn(n, 4, h, w, generator=g, dtype=torch.float64, requires_grad=True)}
    labels = {"semseg": torch.randint(-1, 3, (n, h, w), generator=g), "depth": _depth_batch(4, n, h, w)}
    return feats, labels


def _ref_loss(reg, feats, out):
    """float64 S2 per target on the module's triplets (batch indices), projector written out."""
    losses = {}
    for t in reg.targets:
        trip, proj = out.triplets[t], reg.projectors[t][out.sources[t]]
        f = feats[t].permute(0, 2, 3, 1).reshape(-1, feats[t].shape[1])  # [N*h*w, C]
        K = trip.anchor.shape[1]
        index = torch.cat([trip.anchor, trip.positive, trip.negative], dim=1)
        if not reg.cross_image:  # per-image pixel indices -> batch indices
            index = index + torch.arange(index.shape[0]).unsqueeze(1) * (f.shape[0] // index.shape[0])
        rows = f[index]  # [N, 3K, C]
        hdn = rows @ proj.fc1.weight.t() + proj.fc1.bias
        sel = hdn[trip.valid.repeat(1, 3)]
        hdn = (hdn - sel.mean(0)) / torch.sqrt(sel.var(0, unbiased=False) + proj.bn.eps) * proj.bn.weight + proj.bn.bias
        z = torch.nn.functional.normalize(torch.relu(hdn) @ proj.fc2.weight.t() + proj.fc2.bias, dim=-1)
        za, zp, zn = z[:, :K], z[:, K:2 * K], z[:, 2 * K:]
        hinge = (torch.linalg.vector_norm(za - zp, dim=-1) - torch.linalg.vector_norm(za - zn, dim=-1) + reg.margin)
        losses[t] = hinge.clamp_min(0)[trip.valid].sum() / trip.valid.sum().clamp_min(1)
    return losses


@pytest.mark.parametrize("options", [dict(cross_image=True), dict(cross_image=True, depth_criterion="ordering"),
                                     dict(depth_criterion="ordering")])
def test_regularizer_loss_and_gradient_match_the_float64_reference(options):
    reg = _reg(**options)
    feats, labels = _inputs()
    out = reg(feats, labels, generator=torch.Generator().manual_seed(1))
    assert all(int(n) > 0 for n in out.num_triplets.values())
    if options.get("cross_image"):  # batch indices: the anchor's image is its row
        for trip in out.triplets.values():
            assert torch.equal((trip.anchor // 20)[trip.valid], torch.arange(3).unsqueeze(1).expand_as(trip.anchor)[trip.valid])
    ref = _ref_loss(reg, feats, out)
    for t in reg.targets:
        assert out.per_target[t].dtype == torch.float64
        assert abs(out.per_target[t].item() - ref[t].item()) < 1e-12
    assert abs(out.loss.item() - (ref["semseg"] + ref["depth"]).item() / 2) < 1e-6  # float32 total
    got = torch.autograd.grad(sum(out.per_target.values()), list(feats.values()))
    want = torch.autograd.grad(sum(ref.values()), list(feats.values()))
    for x, y in zip(got, want):
        assert torch.allclose(x, y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mining", ["semihard", "closest"])
def test_cross_image_mining_keeps_negatives_valid(mining):
    reg = _reg(cross_image=True, mining=mining)
    feats, labels = _inputs()
    out = reg(feats, labels, generator=torch.Generator().manual_seed(2))
    grid = to_source_grid("depth", labels["depth"], (4, 5))
    keys = torch.where(grid.valid, grid.key, torch.nan).reshape(-1).double()
    trip = out.triplets["semseg"]  # its only source is depth
    assert int(trip.valid.sum()) > 0 and bool(torch.isfinite(out.loss))
    d = (keys[trip.negative] - keys[trip.anchor]).abs()[trip.valid]
    assert bool((d >= DEPTH_T[1]).all())  # batch indices of valid negatives of the anchor
