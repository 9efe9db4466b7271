"""MT-CP losses (paper §3.5 Eq. 7, §4.2; docs/fidelity.md): per-task losses against
hand values and PyTorch, masking and ignore handling, the Eq. 7 assembly with LPS, fused vs eager."""

import math
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from xtc_ext.losses.mtcp import (
    LOSSES,
    MTCPLoss,
    MTCPLossTerms,
    balanced_bce,
    depth_loss,
    normals_loss,
    segmentation_loss,
    task_loss,
)
from xtc_ext.tasks import LOSS_KINDS
from xtc_ext.weighting import LPS, EqualWeighting, GradNorm

IMPLS = ("fused", "eager")


# ---------------------------------------------------------------------------------------------
# per-task losses


@pytest.mark.parametrize("impl", IMPLS)
def test_segmentation_loss_matches_cross_entropy_and_ignores_minus_one(impl):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, generator=g, requires_grad=True)
    target = torch.randint(-1, 7, (2, 5, 6), generator=g)
    loss = segmentation_loss(logits, target, impl=impl)
    ref = F.cross_entropy(logits, target, ignore_index=-1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    (ga,) = torch.autograd.grad(loss, logits)
    (gb,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ga, gb, atol=1e-6)
    # a batch without any labelled pixel (e.g. no persons for human parts): 0, zero gradient, not NaN
    empty = segmentation_loss(logits, torch.full_like(target, -1), impl=impl)
    assert empty.item() == 0.0
    (g0,) = torch.autograd.grad(empty, logits)
    assert torch.count_nonzero(g0) == 0
    with pytest.raises(ValueError):
        segmentation_loss(logits, torch.full_like(target, 7), impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_loss_hand_values_and_cap(impl):
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 9.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.5, 0.0], [2.0, 7.0]]]])  # pixel (0,1) invalid (0 m)
    # |1 - 1.5| + |3 - 2| + |9 - 7| = 3.5 over 3 valid pixels (metres)
    assert depth_loss(pred, target, impl=impl).item() == pytest.approx(3.5 / 3)
    # the authors' 6.5535 m cap drops the 7 m pixel: (0.5 + 1) / 2
    assert depth_loss(pred, target, depth_cap=6.5535, impl=impl).item() == pytest.approx(0.75)
    nan_target = target.clone()
    nan_target[0, 0, 1, 1] = float("nan")
    assert depth_loss(pred, nan_target, impl=impl).item() == pytest.approx(0.75)
    (g,) = torch.autograd.grad(depth_loss(pred, target, impl=impl), pred)
    assert g.flatten().tolist() == pytest.approx([-1 / 3, 0.0, 1 / 3, 1 / 3])
    assert depth_loss(pred, torch.zeros_like(target), impl=impl).item() == 0.0
    with pytest.raises(ValueError, match="depth_cap"):
        depth_loss(pred, target, depth_cap=0.0)
    with pytest.raises(ValueError, match=r"\[N,1,H,W\]"):
        depth_loss(pred.detach().expand(1, 2, 2, 2), target.expand(1, 2, 2, 2))


def _normals_case():
    # 4 pixels (1 x 4): equal direction at another scale, orthogonal, opposite, invalid target
    pred = torch.tensor([[0.0, 0.0, 5.0], [0.0, 2.0, 0.0], [0.0, 0.0, -0.5], [1.0, 1.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    to_map = lambda v: v.t().reshape(1, 3, 1, 4).contiguous()  # noqa: E731
    return to_map(pred).requires_grad_(), to_map(target)


@pytest.mark.parametrize("impl", IMPLS)
def test_normals_loss_cosine_and_l1_hand_values(impl):
    pred, target = _normals_case()
    # cosine distances 0, 1, 2 over the 3 valid pixels
    assert normals_loss(pred, target, "cosine", impl).item() == pytest.approx(1.0, abs=1e-6)
    # L1 of normalised vectors per valid element (3 per pixel): |n - t| sums 0, 2, 2 -> 4 / 9
    assert normals_loss(pred, target, "l1", impl).item() == pytest.approx(4 / 9, abs=1e-6)
    (g,) = torch.autograd.grad(normals_loss(pred, target, "cosine", impl), pred)
    assert torch.count_nonzero(g[..., 3]) == 0  # invalid pixel: no gradient
    assert torch.isfinite(g).all()
    # scale invariance of the prediction (it is normalised)
    assert normals_loss(pred * 3, target, "l1", impl).item() == pytest.approx(4 / 9, abs=1e-6)
    with pytest.raises(ValueError, match="unknown normals loss kind"):
        normals_loss(pred, target, "l2")
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        normals_loss(pred[:, :2], target[:, :2])


def _vandenhende_balanced_bce(output, label):
    """The authors' / Vandenhende's BalancedCrossEntropyLoss(size_average=True), no ignore handling."""
    labels = torch.ge(label, 0.5).float()
    num_labels_pos = torch.sum(labels)
    num_labels_neg = torch.sum(1.0 - labels)
    num_total = num_labels_pos + num_labels_neg
    w = num_labels_neg / num_total
    output_gt_zero = torch.ge(output, 0).float()
    loss_val = torch.mul(output, (labels - output_gt_zero)) - torch.log(
        1 + torch.exp(output - 2 * torch.mul(output, output_gt_zero))
    )
    loss_pos_pix = -torch.mul(labels, loss_val)
    loss_neg_pix = -torch.mul(1.0 - labels, loss_val)
    final = w * torch.sum(loss_pos_pix) + (1 - w) * torch.sum(loss_neg_pix)
    return final / float(label.numel())


def test_balanced_bce_hand_value_and_authors_form():
    # 4 valid pixels: y = [1, 0, 0, 0] -> w = 3/4; logits x = [0, 0, ln 3, -ln 3]
    x = torch.tensor([0.0, 0.0, math.log(3), -math.log(3)]).reshape(1, 1, 2, 2).requires_grad_()
    t = torch.tensor([1.0, 0.0, 0.2, 0.49]).reshape(1, 1, 2, 2)
    # l = [ln 2, ln 2, ln 4, ln(4/3)]; loss = (3/4 ln 2 + 1/4 (ln 2 + ln 4 + ln 4/3)) / 4
    expected = (0.75 * math.log(2) + 0.25 * (math.log(2) + math.log(4) + math.log(4 / 3))) / 4
    assert balanced_bce(x, t).item() == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 1, 6, 7, generator=g) * 4).requires_grad_()
    target = (torch.rand(2, 1, 6, 7, generator=g) > 0.7).float()
    ours = balanced_bce(logits, target)
    theirs = _vandenhende_balanced_bce(logits, target)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    (ga,) = torch.autograd.grad(ours, logits)
    (gb,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(ga, gb, atol=1e-7)
    # extreme logits stay finite
    big = balanced_bce(torch.tensor([[[[80.0, -80.0]]]]), torch.tensor([[[[0.0, 1.0]]]]))
    assert big.item() == pytest.approx(80.0 / 2 * 0.5 + 80.0 / 2 * 0.5, rel=1e-4)


def test_balanced_bce_ignores_minus_one():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 1, 4, 5, generator=g, requires_grad=True)
    target = (torch.rand(1, 1, 4, 5, generator=g) > 0.5).float()
    ignored = target.clone()
    ignored[..., :2, :] = -1  # the first two rows ignored
    loss = balanced_bce(logits, ignored)
    # equals the loss of the valid rows alone
    assert loss.item() == pytest.approx(balanced_bce(logits[..., 2:, :], target[..., 2:, :]).item(), rel=1e-6)
    (gl,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(gl[..., :2, :]) == 0
    none = balanced_bce(logits, torch.full_like(target, -1.0))
    assert none.item() == 0.0 and math.isfinite(none.item())
    with pytest.raises(ValueError, match="shape"):
        balanced_bce(logits, target[..., :3, :])


def test_task_loss_dispatch():
    g = torch.Generator().manual_seed(3)
    seg = torch.randn(1, 4, 3, 3, generator=g)
    lab = torch.randint(-1, 4, (1, 3, 3), generator=g)
    assert torch.equal(task_loss("human_parts", seg, lab), segmentation_loss(seg, lab))
    sal = torch.randn(1, 1, 3, 3, generator=g)
    sal_t = (torch.rand(1, 1, 3, 3, generator=g) > 0.5).float()
    assert torch.equal(task_loss("sal", sal, sal_t, impl="eager"), balanced_bce(sal, sal_t))
    with pytest.raises(ValueError, match="unknown task"):
        task_loss("segmentation", seg, lab)
    with pytest.raises(ValueError, match="unknown loss impl"):
        task_loss("sal", sal, sal_t, impl="cuda")


# ---------------------------------------------------------------------------------------------
# MTCPLoss (Eq. 7)


class _Out(NamedTuple):
    predictions: dict
    intermediate: dict
    coherence_loss: torch.Tensor


def _batch(tasks, seed=0, N=2, H=6, W=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    shapes = {"semseg": (N, 5, H, W), "human_parts": (N, 7, H, W), "depth": (N, 1, H, W),
              "normals": (N, 3, H, W), "sal": (N, 1, H, W)}
    preds = {t: rnd(*shapes[t]) for t in tasks}
    inter = {t: [rnd(*shapes[t]), rnd(*shapes[t])] for t in tasks}
    targets = {}
    for t in tasks:
        if t in ("semseg", "human_parts"):
            targets[t] = torch.randint(-1, shapes[t][1], (N, H, W), generator=g)
        elif t == "depth":
            d = torch.rand(N, 1, H, W, generator=g, dtype=dtype) * 8
            d[d < 1] = 0
            targets[t] = d
        elif t == "normals":
            n = F.normalize(torch.randn(N, 3, H, W, generator=g, dtype=dtype), dim=1)
            n[:, :, :2] = 0  # invalid rows
            targets[t] = n
        else:
            s = (torch.rand(N, 1, H, W, generator=g, dtype=dtype) > 0.6).to(dtype)
            s[:, :, 0] = -1
            targets[t] = s
    coh = torch.rand((), generator=g, dtype=dtype).requires_grad_()
    return _Out(preds, inter, coh), targets


@pytest.mark.parametrize("tasks", [("semseg", "depth", "normals"), ("semseg", "human_parts", "sal")])
def test_mtcp_loss_assembles_eq7(tasks):
    out, targets = _batch(tasks, seed=4)
    lps = LPS(3)
    lps.epoch_end([2.0, 1.0, 0.5])
    lps.epoch_end([1.0, 1.2, 0.4])  # non-trivial weights
    assert not torch.allclose(lps.weights(), torch.ones(3))
    crit = MTCPLoss(tasks, lps)
    terms = crit(out, targets)
    assert isinstance(terms, MTCPLossTerms)
    finals = [task_loss(t, out.predictions[t], targets[t]) for t in tasks]
    inters = [sum(task_loss(t, p, targets[t]) for p in out.intermediate[t]) for t in tasks]
    assert terms.per_task_final.tolist() == pytest.approx([x.item() for x in finals], rel=1e-6)
    assert terms.per_task_intermediate.tolist() == pytest.approx([x.item() for x in inters], rel=1e-6)
    assert terms.coherence.item() == pytest.approx(out.coherence_loss.item())
    w = lps.weights().tolist()
    expected = (
        sum(wi * math.log(1 + f.item() + 1e-6) for wi, f in zip(w, finals))
        + 0.5 * sum(x.item() for x in inters)
        + 0.01 * out.coherence_loss.item()
    )
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)
    # gradients reach every prediction, the intermediate ones and the coherence loss
    leaves = list(out.predictions.values()) + [p for ps in out.intermediate.values() for p in ps]
    grads = torch.autograd.grad(terms.total, leaves + [out.coherence_loss])
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    assert grads[-1].item() == pytest.approx(0.01)
    # the per-task vector is what LPS.epoch_end takes
    lps.epoch_end(terms.per_task_final.detach())


def test_mtcp_loss_weights_and_output_forms():
    tasks = ("semseg", "depth", "normals")
    out, targets = _batch(tasks, seed=5)
    ew = MTCPLoss(tasks, "equal", coherence_weight=0.0, intermediate_weight=0.0)
    terms = ew(out, targets)
    assert terms.total.item() == pytest.approx(terms.per_task_final.sum().item(), rel=1e-6)
    assert isinstance(ew.weighting, EqualWeighting)
    # mapping and plain object outputs; no intermediate predictions; the authors' empty coherence tensor
    as_dict = {"predictions": out.predictions, "intermediate": None, "coherence_loss": torch.zeros(0)}
    crit = MTCPLoss(tasks, "lps-log", coherence_weight=1.0, intermediate_weight=2.0)
    t1 = crit(as_dict, targets)
    assert t1.per_task_intermediate.tolist() == [0.0, 0.0, 0.0] and t1.coherence.item() == 0.0
    expected = sum(math.log1p(x + 1e-6) for x in t1.per_task_final.tolist())
    assert t1.total.item() == pytest.approx(expected, rel=1e-6)
    obj = SimpleNamespace(predictions=out.predictions, intermediate={"depth": out.intermediate["depth"]},
                          coherence_loss=torch.tensor([0.25]))
    t2 = crit(obj, targets)
    assert t2.per_task_intermediate[0].item() == 0.0 and t2.per_task_intermediate[2].item() == 0.0
    assert t2.per_task_intermediate[1].item() > 0
    assert t2.total.item() == pytest.approx(expected + 2.0 * t2.per_task_intermediate[1].item() + 0.25, rel=1e-6)
    # options reach the task losses
    cap = MTCPLoss(tasks, "equal", depth_cap=3.0, normals_kind="l1")
    t3 = cap(out, targets)
    assert t3.per_task_final[1].item() == pytest.approx(
        depth_loss(out.predictions["depth"], targets["depth"], depth_cap=3.0).item(), rel=1e-6)
    assert t3.per_task_final[2].item() == pytest.approx(
        normals_loss(out.predictions["normals"], targets["normals"], "l1").item(), rel=1e-6)


@pytest.mark.parametrize("tasks", [("semseg", "depth", "normals"), ("semseg", "human_parts", "sal")])
@pytest.mark.parametrize("normals_kind", ["cosine", "l1"])
def test_mtcp_loss_fused_and_eager_agree(tasks, normals_kind):
    out, targets = _batch(tasks, seed=6)
    res = {}
    for impl in IMPLS:
        lps = LPS(3)
        lps.epoch_end([1.0, 2.0, 3.0])
        lps.epoch_end([0.8, 2.1, 2.0])
        terms = MTCPLoss(tasks, lps, normals_kind=normals_kind, impl=impl)(out, targets)
        leaves = list(out.predictions.values()) + [p for ps in out.intermediate.values() for p in ps]
        res[impl] = (terms, torch.autograd.grad(terms.total, leaves))
    (a, ga), (b, gb) = res["fused"], res["eager"]
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-7)


def test_mtcp_loss_with_gradnorm_and_float64():
    tasks = ("semseg", "depth", "normals")
    out, targets = _batch(tasks, seed=7, dtype=torch.float64)
    shared = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # make every prediction depend on the shared parameter
    out = _Out({t: p * shared.sum() for t, p in out.predictions.items()}, out.intermediate, out.coherence_loss)
    gn = GradNorm(3, shared)
    terms = MTCPLoss(tasks, gn)(out, targets)
    assert terms.total.dtype == torch.float64 and terms.per_task_final.dtype == torch.float64
    assert gn.task_weights.grad is not None


def test_mtcp_loss_errors():
    with pytest.raises(ValueError, match="at least one task"):
        MTCPLoss(())
    with pytest.raises(ValueError, match="unknown task"):
        MTCPLoss(("semseg", "segmentation"))
    with pytest.raises(ValueError, match="repeated"):
        MTCPLoss(("semseg", "semseg"))
    with pytest.raises(ValueError, match="num_tasks"):
        MTCPLoss(("semseg", "depth", "normals"), LPS(2))
    with pytest.raises(ValueError, match="coherence_weight"):
        MTCPLoss(("semseg",), coherence_weight=-1.0)
    with pytest.raises(ValueError, match="intermediate_weight"):
        MTCPLoss(("semseg",), intermediate_weight=-0.5)
    with pytest.raises(ValueError, match="unknown normals loss kind"):
        MTCPLoss(("normals",), normals_kind="mse")
    with pytest.raises(ValueError, match="unknown loss impl"):
        MTCPLoss(("normals",), impl="cuda")
    with pytest.raises(ValueError, match="unknown weighting"):
        MTCPLoss(("normals",), "lps-typo")
    with pytest.raises(TypeError, match="weighting"):
        MTCPLoss(("normals",), 3)
    tasks = ("semseg", "depth", "normals")
    out, targets = _batch(tasks, seed=8)
    crit = MTCPLoss(tasks)
    with pytest.raises(KeyError, match="no target"):
        crit(out, {k: v for k, v in targets.items() if k != "depth"})
    with pytest.raises(KeyError, match="no prediction"):
        crit(out._replace(predictions={k: v for k, v in out.predictions.items() if k != "normals"}), targets)
    with pytest.raises(ValueError, match="scalar"):
        crit(out._replace(coherence_loss=torch.ones(2)), targets)
    assert set(LOSSES) == set(LOSS_KINDS)
    assert "MTCPLoss(tasks=" in repr(crit)
