"""Tests for xtc_ext.metrics (hand-computed values) and xtc_ext.visualize."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xtc_ext.data import normalize_image
from xtc_ext.metrics import DepthMeter, SegmentationMeter
from xtc_ext.visualize import denormalize, save_prediction_figure, segmentation_palette

from conftest import REAL_FRAMES as REAL

# hand example: 6 pixels, one ignored
#   gt   = 0 0 1 1 2 -1
#   pred = 0 1 1 0 2  2
# confusion (rows gt, cols pred) over the 5 valid pixels:
#   [[1,1,0],[1,1,0],[0,0,1]]
# IoU0 = 1/(2+2-1) = 1/3, IoU1 = 1/3, IoU2 = 1/1 -> mIoU = 5/9; acc = 3/5
GT = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
PRED = torch.tensor([[[0, 1, 1], [0, 2, 2]]])


def test_seg_hand_example():
    m = SegmentationMeter(3)
    m.update(PRED, GT)
    assert torch.equal(m.confusion_matrix, torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]]))
    r = m.compute()
    assert r["iou_per_class"] == pytest.approx([1 / 3, 1 / 3, 1.0])
    assert r["mIoU"] == pytest.approx(5 / 9)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert isinstance(r["mIoU"], float) and isinstance(r["pixel_acc"], float)


def test_seg_absent_class_is_nan_and_excluded():
    m = SegmentationMeter(4)
    m.update(PRED, GT)
    r = m.compute()
    assert math.isnan(r["iou_per_class"][3])
    assert r["iou_per_class"][:3] == pytest.approx([1 / 3, 1 / 3, 1.0])
    assert r["mIoU"] == pytest.approx(5 / 9)
    # class 3 present only in the prediction -> IoU 0, counted in the mean
    m2 = SegmentationMeter(4)
    pred = PRED.clone()
    pred[0, 1, 1] = 3  # gt 2 predicted as 3: IoU2 = 0/1, IoU3 = 0/1
    m2.update(pred, GT)
    r2 = m2.compute()
    assert r2["iou_per_class"] == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])
    assert r2["mIoU"] == pytest.approx((2 / 3) / 4)
    assert r2["pixel_acc"] == pytest.approx(2 / 5)


def test_seg_ignore_pixel_prediction_does_not_count():
    # changing the prediction at the ignored pixel changes nothing
    m = SegmentationMeter(3)
    pred = PRED.clone()
    pred[0, 1, 2] = 0
    m.update(pred, GT)
    assert m.compute()["mIoU"] == pytest.approx(5 / 9)
    m255 = SegmentationMeter(3, ignore_index=255)
    m255.update(PRED, torch.where(GT < 0, torch.tensor(255), GT))
    assert m255.compute()["pixel_acc"] == pytest.approx(3 / 5)


def test_seg_logits_equal_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, 9, generator=g)
    target = torch.randint(-1, 5, (2, 7, 9), generator=g)
    a, b = SegmentationMeter(5), SegmentationMeter(5)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.confusion_matrix, b.confusion_matrix)
    assert a.confusion_matrix.sum() == (target >= 0).sum()


def test_seg_two_updates_equal_one_big_update():
    g = torch.Generator().manual_seed(1)
    t1 = torch.randint(-1, 6, (2, 5, 4), generator=g)
    t2 = torch.randint(-1, 6, (3, 5, 4), generator=g)
    p1 = torch.randint(0, 6, (2, 5, 4), generator=g)
    p2 = torch.randint(0, 6, (3, 5, 4), generator=g)
    a, b = SegmentationMeter(6), SegmentationMeter(6)
    a.update(p1, t1)
    a.update(p2, t2)
    b.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    assert torch.equal(a.confusion_matrix, b.confusion_matrix)
    ra, rb = a.compute(), b.compute()
    assert ra["mIoU"] == rb["mIoU"] and ra["pixel_acc"] == rb["pixel_acc"]
    # compare with a numpy reference
    t = torch.cat([t1, t2]).numpy().ravel()
    p = torch.cat([p1, p2]).numpy().ravel()
    v = t >= 0
    conf = np.zeros((6, 6), np.int64)
    np.add.at(conf, (t[v], p[v]), 1)
    assert np.array_equal(conf, a.confusion_matrix.numpy())


def test_seg_errors_and_reset_and_empty():
    m = SegmentationMeter(3)
    r = m.compute()
    assert math.isnan(r["mIoU"]) and math.isnan(r["pixel_acc"])
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -1))
    assert math.isnan(m.compute()["mIoU"])
    with pytest.raises(ValueError, match="3"):
        m.update(PRED, torch.tensor([[[0, 0, 3], [1, 2, -1]]]))  # target 3 out of range
    with pytest.raises(ValueError):
        m.update(PRED, torch.tensor([[[0, -2, 1], [1, 2, -1]]]))  # -2 is not ignore
    with pytest.raises(ValueError):
        m.update(torch.tensor([[[0, 1, 5], [0, 2, 2]]]), GT)  # pred label out of range
    with pytest.raises(ValueError, match="shape"):
        m.update(PRED[:, :1], GT)
    with pytest.raises(ValueError, match="channels"):
        m.update(torch.randn(1, 4, 2, 3), GT)
    with pytest.raises(ValueError):
        m.update(PRED.float(), GT)  # float labels
    with pytest.raises(ValueError):
        m.update(PRED, GT.float())
    m.reset()
    m.update(PRED, GT)
    assert m.compute()["mIoU"] == pytest.approx(5 / 9)


def test_depth_hand_example():
    # valid pixels: (p,t) = (1,1), (3,2), (4,5); the t=0 pixel is ignored
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 2.0, 5.0]).view(1, 1, 2, 2)
    m = DepthMeter()
    m.update(pred, target)
    r = m.compute()
    assert r["abs_err"] == pytest.approx(2 / 3)
    assert r["rel_err"] == pytest.approx((0 + 0.5 + 0.2) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m.count == 3


def test_depth_pooled_two_updates_equal_one():
    g = torch.Generator().manual_seed(2)
    t1 = torch.rand(2, 1, 4, 5, generator=g) * 5
    t2 = torch.rand(3, 1, 4, 5, generator=g) * 5
    t1[t1 < 2.0] = 0  # different numbers of valid pixels per batch
    t2[t2 < 0.5] = 0
    p1 = torch.rand(2, 1, 4, 5, generator=g) * 5
    p2 = torch.rand(3, 1, 4, 5, generator=g) * 5
    a, b = DepthMeter(), DepthMeter()
    a.update(p1, t1)
    a.update(p2, t2)
    b.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    ra, rb = a.compute(), b.compute()
    for k in ("abs_err", "rel_err", "rmse"):
        assert ra[k] == pytest.approx(rb[k], rel=1e-9)
    t = torch.cat([t1, t2]).double()
    p = torch.cat([p1, p2]).double()
    v = t > 0
    assert ra["abs_err"] == pytest.approx((p - t).abs()[v].mean().item(), rel=1e-6)
    assert ra["rel_err"] == pytest.approx(((p - t).abs() / t)[v].mean().item(), rel=1e-6)
    assert ra["rmse"] == pytest.approx(((p - t) ** 2)[v].mean().sqrt().item(), rel=1e-6)


def test_depth_errors_reset_empty():
    m = DepthMeter()
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(v) for v in m.compute().values())
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 3))
    m.update(torch.full((1, 1, 1, 2), 3.0), torch.full((1, 1, 1, 2), 2.0))
    assert m.compute()["abs_err"] == pytest.approx(1.0)
    m.reset()
    assert m.count == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_meters_on_cuda_without_sync():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 13, 30, 40, generator=g)
    target = torch.randint(-1, 13, (2, 30, 40), generator=g)
    dp = torch.rand(2, 1, 30, 40, generator=g) * 5
    dt = torch.rand(2, 1, 30, 40, generator=g) * 5
    dt[dt < 1] = 0
    sc, sg, dc, dg = SegmentationMeter(13), SegmentationMeter(13), DepthMeter(), DepthMeter()
    lc, tc, dpc, dtc = logits.to(dev), target.to(dev), dp.to(dev), dt.to(dev)
    sc.update(lc, tc)  # allocate accumulators
    dc.update(dpc, dtc)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sc.update(lc, tc)
        dc.update(dpc, dtc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sc.confusion_matrix.device.type == "cuda"
    for _ in range(2):
        sg.update(logits, target)
        dg.update(dp, dt)
    assert torch.equal(sc.confusion_matrix.cpu(), sg.confusion_matrix)
    for k in ("abs_err", "rel_err", "rmse"):
        assert dc.compute()[k] == pytest.approx(dg.compute()[k], rel=1e-6)
    bad = SegmentationMeter(13)
    bad.update(lc, torch.full_like(tc, 13))
    with pytest.raises(ValueError):
        bad.compute()


# --------------------------------------------------------------------------- #
# visualize
# --------------------------------------------------------------------------- #
def test_denormalize_inverts_normalize():
    x = torch.rand(3, 5, 6)
    assert torch.allclose(denormalize(normalize_image(x)), x, atol=1e-6)
    assert torch.allclose(denormalize(torch.zeros(3, 1, 1)).view(3),
                          torch.tensor([0.485, 0.456, 0.406]))


def test_palette_fixed():
    p13 = segmentation_palette(13)
    assert p13.shape == (13, 3) and p13.dtype == np.uint8
    assert np.array_equal(segmentation_palette(40)[:13], p13)
    assert len({tuple(c) for c in segmentation_palette(40)}) == 40


def _frame(h=24, w=32, c=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = normalize_image(torch.rand(3, h, w, generator=g))
    seg = torch.randint(-1, c, (h, w), generator=g)
    pred = torch.randint(0, c, (h, w), generator=g)
    depth = torch.rand(1, h, w, generator=g) * 5 + 0.5
    depth[0, :3, :4] = 0
    dpred = torch.rand(1, h, w, generator=g) * 5 + 0.5
    return image, seg, pred, depth, dpred


def _figure_pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and len(im.getbands()) == 3
        return np.asarray(im)


def test_save_prediction_figure(tmp_path):
    image, seg, pred, depth, dpred = _frame()
    logits = F.one_hot(pred, 13).permute(2, 0, 1).float()
    out = save_prediction_figure(tmp_path / "sub" / "fig.png", image, {"semseg": seg, "depth": depth},
                                 {"semseg": logits, "depth": dpred}, title="frame 0")
    a = _figure_pixels(out)
    assert a.shape[0] > 100 and a.shape[1] > 100 and a.std() > 10  # not a blank image
    # 40 classes work; a label out of range, a size mismatch, a task without a target raise
    save_prediction_figure(tmp_path / "f40.png", image, {"semseg": seg}, {"semseg": torch.randn(40, 24, 32)})
    assert (tmp_path / "f40.png").stat().st_size > 0
    with pytest.raises(ValueError, match="outside"):
        save_prediction_figure(tmp_path / "bad.png", image, {"semseg": seg + 20}, {"semseg": logits})
    with pytest.raises(ValueError, match="spatial shape"):
        save_prediction_figure(tmp_path / "bad.png", image, {"semseg": seg[:-1]}, {"semseg": logits})
    with pytest.raises(ValueError, match="no target"):
        save_prediction_figure(tmp_path / "bad.png", image, {"semseg": seg}, {"depth": dpred})


@pytest.mark.skipif(not (REAL / "rgb").is_dir(), reason="real NYUv2 frames not available")
def test_save_prediction_figure_real_frame(tmp_path):
    from xtc_ext.data import NYUv2Frames

    s = NYUv2Frames(REAL, size=(240, 320))[0]
    logits = F.one_hot(s["seg"].clamp(min=0), 13).permute(2, 0, 1).float()
    out = save_prediction_figure(tmp_path / "real.png", s["image"], {"semseg": s["seg"], "depth": s["depth"]},
                                 {"semseg": logits, "depth": s["depth"] * 1.1}, valid={"depth": s["depth_valid"]},
                                 title=s["name"])
    assert _figure_pixels(out).std() > 10


def test_prediction_figure_draws_every_task_and_the_void_colour(tmp_path):
    """One row per predicted task (normals and saliency included), the void colour in the legend."""
    image, seg, pred, depth, _ = _frame()
    g = torch.Generator().manual_seed(1)
    normals = F.normalize(torch.randn(3, 24, 32, generator=g), dim=0)
    normals[:, :4] = 0
    sal = (torch.rand(1, 24, 32, generator=g) > 0.5).float()
    sal[0, :2] = 255  # void: outside [0, 1]
    targets = {"semseg": seg, "depth": depth, "normals": normals, "sal": sal}
    preds = {"semseg": torch.randn(13, 24, 32, generator=g), "depth": depth + 0.1,
             "normals": torch.randn(3, 24, 32, generator=g), "sal": torch.randn(1, 24, 32, generator=g)}
    two = _figure_pixels(save_prediction_figure(tmp_path / "two.png", image, targets,
                                                {t: preds[t] for t in ("semseg", "depth")}, dpi=40))
    four = _figure_pixels(save_prediction_figure(tmp_path / "four.png", image, targets, preds, dpi=40))
    assert four.shape[0] > two.shape[0] * 1.5  # two more rows
    # the legend of a label task lists the void value
    from xtc_ext.tasks import get_task
    from xtc_ext.visualize import PANELS

    panels = PANELS["labels"](get_task("semseg"), seg, preds["semseg"], None, None, None)
    assert panels.legend[-1] == ((0.0, 0.0, 0.0), "void (-1)")
    assert (panels.gt[(seg == -1).numpy()] == 0).all()
    sal_panels = PANELS["probability"](get_task("sal"), sal, preds["sal"], None, None, None)
    assert (sal_panels.gt[0, :2] == (220, 30, 30)).all() and "void" in sal_panels.legend[0][1]


# --------------------------------------------------------------------------- #
# MT-CP metrics: NormalsMeter, SaliencyMeter, human parts via SegmentationMeter
# --------------------------------------------------------------------------- #
from xtc_ext.metrics import NormalsMeter, SaliencyMeter  # noqa: E402


def _normals_map(vectors):
    """[P, 3] list of vectors -> [1, 3, 1, P] float64 map."""
    v = torch.tensor(vectors, dtype=torch.float64)
    return v.t().reshape(1, 3, 1, -1).contiguous()


def _at_angle(deg, length=1.0):
    r = math.radians(deg)
    return [length * math.sin(r), 0.0, length * math.cos(r)]


def test_normals_known_angles():
    # pixel angles to +z: 0, 90, 45 (unnormalised prediction), invalid target, 180 (opposite)
    pred = _normals_map([[0, 0, 3], [2, 0, 0], [1, 0, 1], [1, 1, 1], [0, 0, -1]])
    target = _normals_map([[0, 0, 1], [0, 0, 1], [0, 0, 2], [0, 0, 0], [0, 0, 1]])
    m = NormalsMeter()
    m.update(pred[..., :4], target[..., :4])
    r = m.compute()
    assert m.count == 3
    assert r["mean"] == pytest.approx(45.0, abs=1e-9)
    assert r["median"] == pytest.approx(45.0, abs=0.006)  # 0.01-degree bins: within half a bin
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 90 ** 2 + 45 ** 2) / 3), rel=1e-12)
    for k in ("11.25", "22.5", "30"):
        assert r[k] == pytest.approx(100 / 3)
    m.update(pred[..., 4:], target[..., 4:])  # add 180 degrees: angles 0, 45, 90, 180
    r = m.compute()
    assert r["mean"] == pytest.approx(315 / 4)
    assert r["median"] == pytest.approx(67.5, abs=0.006)  # mean of the two middle angles
    # a zero prediction is 90 degrees off (arccos(0) of the reference), not 0
    z = NormalsMeter()
    z.update(_normals_map([[0, 0, 0]]), _normals_map([[0, 0, 1]]))
    assert z.compute()["mean"] == pytest.approx(90.0)


def test_normals_thresholds_and_float32():
    angles = [11.0, 12.0, 22.0, 29.0, 31.0]
    for dtype in (torch.float64, torch.float32):
        pred = _normals_map([_at_angle(a, 2.5) for a in angles]).to(dtype)
        target = _normals_map([[0, 0, 1]] * 5).to(dtype)
        m = NormalsMeter()
        m.update(pred, target)
        r = m.compute()
        assert r["mean"] == pytest.approx(21.0, abs=1e-4)
        assert r["median"] == pytest.approx(22.0, abs=0.006)
        assert r["rmse"] == pytest.approx(math.sqrt(sum(a * a for a in angles) / 5), abs=1e-4)
        assert (r["11.25"], r["22.5"], r["30"]) == pytest.approx((20.0, 60.0, 80.0))
    # small angles stay accurate in float32 (atan2, not arccos)
    s = NormalsMeter()
    s.update(_normals_map([_at_angle(0.05)]).float(), _normals_map([[0, 0, 1]]).float())
    assert s.compute()["mean"] == pytest.approx(0.05, rel=1e-4)


def test_normals_pooled_median_against_numpy():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 3, 10, 12, generator=g)
    target = torch.nn.functional.normalize(torch.randn(3, 3, 10, 12, generator=g), dim=1)
    target[:, :, :3] = 0  # invalid rows
    p = torch.nn.functional.normalize(pred.double(), dim=1)
    ang = torch.rad2deg(torch.acos((p * target.double()).sum(1).clamp(-1, 1)))[:, 3:].flatten().numpy()
    one, two = NormalsMeter(), NormalsMeter()
    one.update(pred, target)
    two.update(pred[:1], target[:1])
    two.update(pred[1:], target[1:])
    for m in (one, two):
        r = m.compute()
        assert m.count == ang.size
        assert r["mean"] == pytest.approx(ang.mean(), rel=1e-5)
        assert r["median"] == pytest.approx(np.median(ang), abs=0.006)
        assert r["rmse"] == pytest.approx(np.sqrt((ang ** 2).mean()), rel=1e-5)
        assert r["30"] == pytest.approx(100 * (ang < 30).mean())
    assert int(one.histogram.sum()) == ang.size
    coarse = NormalsMeter(num_bins=180)  # 1-degree bins: median within 0.5 degrees
    coarse.update(pred, target)
    assert coarse.compute()["median"] == pytest.approx(np.median(ang), abs=0.5)


def test_normals_errors_reset_empty():
    m = NormalsMeter()
    assert all(math.isnan(v) for v in m.compute().values())
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 3))
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 3, 2, 2, dtype=torch.int64), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError):
        NormalsMeter(num_bins=0)
    m.update(_normals_map([[1, 0, 0]]), _normals_map([[0, 0, 0]]))  # only invalid pixels
    assert m.count == 0 and math.isnan(m.compute()["mean"])
    m.update(_normals_map([[1, 0, 0]]), _normals_map([[0, 1, 0]]))
    assert m.compute()["mean"] == pytest.approx(90.0)
    m.reset()
    assert m.count == 0


# Saliency maxF by hand, thresholds 0.3 and 0.6, probabilities (from_logits=False):
#   image A: prob [0.9, 0.5, 0.4, 0.1], gt [1, 1, 0, 0]
#     0.3: pred [1,1,1,0] tp 2 fp 1 fn 0 -> P 2/3, R 1,   IoU 2/3
#     0.6: pred [1,0,0,0] tp 1 fp 0 fn 1 -> P 1,   R 1/2, IoU 1/2
#   image B: prob [0.7, 0.2, 0.35, 0.8], gt [0, 0, 0, 1]
#     0.3: pred [1,0,1,1] tp 1 fp 2 fn 0 -> P 1/3, R 1, IoU 1/3
#     0.6: pred [1,0,0,1] tp 1 fp 1 fn 0 -> P 1/2, R 1, IoU 1/2
#   averages: 0.3: P 1/2, R 1 -> F 2/3, IoU 1/2;  0.6: P 3/4, R 3/4 -> F 3/4, IoU 1/2
#   maxF = 3/4, mIoU = 1/2
SAL_PROB = torch.tensor([[0.9, 0.5, 0.4, 0.1], [0.7, 0.2, 0.35, 0.8]]).reshape(2, 1, 2, 2)
SAL_GT = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 1]]).reshape(2, 1, 2, 2)


def test_saliency_maxf_hand_example():
    m = SaliencyMeter(thresholds=[0.3, 0.6], from_logits=False)
    m.update(SAL_PROB, SAL_GT)
    r = m.compute()
    assert m.count == 2
    assert r["precision"] == pytest.approx([0.5, 0.75])
    assert r["recall"] == pytest.approx([1.0, 0.75])
    assert r["F"] == pytest.approx([2 / 3, 0.75])
    assert r["IoU"] == pytest.approx([0.5, 0.5])
    assert r["maxF"] == pytest.approx(0.75) and r["mIoU"] == pytest.approx(0.5)
    assert r["thresholds"] == pytest.approx([0.3, 0.6])
    # logits give the same result; per-image averaging: two updates equal one
    lg = SaliencyMeter(thresholds=[0.3, 0.6])
    lg.update(torch.logit(SAL_PROB[:1].double()), SAL_GT[:1])
    lg.update(torch.logit(SAL_PROB[1:].double()), SAL_GT[1:])
    assert lg.compute()["F"] == pytest.approx([2 / 3, 0.75])


def test_saliency_ignore_and_empty_rules():
    # image C: gt and prediction both empty at 0.3 -> IoU 1, P 0, R 0; one ignored pixel (-1)
    prob = torch.cat([SAL_PROB, torch.tensor([0.1, 0.2, 0.99, 0.25]).reshape(1, 1, 2, 2)])
    gt = torch.cat([SAL_GT, torch.tensor([0.0, 0.0, -1.0, 0.0]).reshape(1, 1, 2, 2)])
    m = SaliencyMeter(thresholds=[0.3, 0.6], from_logits=False)
    m.update(prob, gt)
    r = m.compute()
    assert r["precision"] == pytest.approx([1 / 3, 0.5])
    assert r["recall"] == pytest.approx([2 / 3, 0.5])
    assert r["IoU"] == pytest.approx([(0.5 * 2 + 1) / 3, (0.5 * 2 + 1) / 3])
    # an image whose pixels are all ignored is skipped
    m.update(torch.full((1, 1, 2, 2), 0.9), torch.full((1, 1, 2, 2), -1.0))
    assert m.count == 3 and m.compute()["F"] == pytest.approx(r["F"])


def _vandenhende_sal(probs, gts, thresholds):
    """Literal port of ASTMT/Vandenhende eval_sal + jaccard.precision_recall (numpy), as the papers' NumPy 1.x
    ran it: ``mask > th`` of the float32 mask and the float64 scalar ``th`` is computed in float32 there
    (value-based casting); NumPy 2 (NEP 50) would upcast to float64, hence the explicit ``np.float32(th)``."""
    n, k = len(probs), len(thresholds)
    jac, prec, rec = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    for i, (mask, gt) in enumerate(zip(probs, gts)):
        gt = gt.astype(bool)
        mask = mask.astype(np.float32)
        for j, th in enumerate(thresholds):
            pred = (mask > np.float32(th))
            if np.isclose(np.sum(gt), 0) and np.isclose(np.sum(pred), 0):
                jac[i, j] = 1
            else:
                jac[i, j] = np.sum(gt & pred) / np.sum(gt | pred, dtype=np.float32)
            tp, fn, fp = (pred & gt).sum(), (~pred & gt).sum(), (pred & ~gt).sum()
            prec[i, j], rec[i, j] = tp / (tp + fp + 1e-12), tp / (tp + fn + 1e-12)
    mp, mr = prec.mean(0), rec.mean(0)
    f = 2 * mp * mr / (mp + mr + 1e-12)
    return f.max(), jac.mean(0).max(), f


def test_saliency_matches_reference_evaluation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 1, 9, 11, generator=g) * 3
    gt = (torch.rand(5, 1, 9, 11, generator=g) > 0.6).float()
    gt[3] = 0  # an image without salient pixels
    m = SaliencyMeter()
    m.update(logits[:2], gt[:2])
    m.update(logits[2:], gt[2:])
    r = m.compute()
    probs = torch.sigmoid(logits).squeeze(1).numpy()
    th = np.linspace(0.2, 0.9, 15)
    maxf, miou, f = _vandenhende_sal(probs, gt.squeeze(1).numpy(), th)
    assert r["maxF"] == pytest.approx(maxf, rel=1e-6)
    assert r["mIoU"] == pytest.approx(miou, rel=1e-6)
    assert r["F"] == pytest.approx(f.tolist(), rel=1e-6)
    assert r["thresholds"] == pytest.approx(th.tolist())


def test_saliency_compares_in_float32_as_the_authors_numpy_1x():
    # every 8-bit probability k/255 (the authors' PNG predictions, read back as float32); 51/255, 102/255,
    # 153/255 and 204/255 equal the thresholds 0.2, 0.4, 0.6 and 0.8 in float32 (they exceed them in float64)
    k = torch.arange(256)
    prob = (k.float() / 255).reshape(1, 1, 16, 16)
    gt = torch.ones_like(prob)  # all salient: recall(tau) = #(prob > tau) / 256
    m = SaliencyMeter(from_logits=False)
    m.update(prob, gt)
    r = m.compute()
    th = np.linspace(0.2, 0.9, 15)
    above = [(k.float() / 255 > torch.tensor(t, dtype=torch.float32)).sum().item() for t in th]
    assert r["recall"] == pytest.approx([a / 256 for a in above], abs=1e-12)
    for t, k_on in ((0.2, 51), (0.4, 102), (0.6, 153), (0.8, 204)):
        j = int(np.argmin(np.abs(th - t)))
        assert np.float32(k_on / 255) == np.float32(th[j])  # on the threshold in float32 ...
        assert float(np.float32(k_on) / np.float32(255)) > th[j]  # ... above it in float64
        assert r["recall"][j] * 256 == pytest.approx(255 - k_on)  # float32: k_on itself is not above
    assert r["thresholds"] == pytest.approx(th.tolist(), abs=1e-15)  # reported in float64
    # the same with float64 or bfloat16-exact inputs: the prediction is taken in float32
    m64 = SaliencyMeter(from_logits=False)
    m64.update(prob.double(), gt)
    assert m64.compute()["recall"] == r["recall"]
    maxf, miou, f = _vandenhende_sal(prob.squeeze(1).numpy(), gt.squeeze(1).numpy(), th)
    assert r["F"] == pytest.approx(f.tolist(), rel=1e-12) and r["mIoU"] == pytest.approx(miou, rel=1e-12)


def test_saliency_errors_reset_empty():
    m = SaliencyMeter()
    r = m.compute()
    assert math.isnan(r["maxF"]) and len(r["F"]) == 15
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    with pytest.raises(ValueError):
        m.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 3))
    for bad in ([], [[0.5]], [float("nan")]):
        with pytest.raises(ValueError, match="thresholds"):
            SaliencyMeter(thresholds=bad)
    m.update(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    m.reset()
    assert m.count == 0


def test_human_parts_miou_counts_only_annotated_images():
    # human parts = SegmentationMeter; an image without part annotations (all -1) contributes nothing
    m = SegmentationMeter(3)
    m.update(PRED, GT)
    ref = m.compute()
    no_person_pred = torch.tensor([[[1, 1, 1], [2, 2, 0]]])
    m.update(no_person_pred, torch.full_like(GT, -1))
    assert m.compute() == ref
    assert ref["mIoU"] == pytest.approx(5 / 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_mtcp_meters_on_cuda_without_sync():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(4)
    pn = torch.randn(2, 3, 20, 24, generator=g)
    tn = torch.nn.functional.normalize(torch.randn(2, 3, 20, 24, generator=g), dim=1)
    tn[:, :, :4] = 0
    ps = torch.randn(2, 1, 20, 24, generator=g)
    ts = (torch.rand(2, 1, 20, 24, generator=g) > 0.5).float()
    nc, nh, sc, sh = NormalsMeter(), NormalsMeter(), SaliencyMeter(), SaliencyMeter()
    pnc, tnc, psc, tsc = pn.to(dev), tn.to(dev), ps.to(dev), ts.to(dev)
    nc.update(pnc, tnc)
    sc.update(psc, tsc)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        nc.update(pnc, tnc)
        sc.update(psc, tsc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(2):
        nh.update(pn, tn)
        sh.update(ps, ts)
    rc, rh = nc.compute(), nh.compute()
    for k in rc:
        assert rc[k] == pytest.approx(rh[k], rel=1e-5, abs=0.011 if k == "median" else 1e-6)
    assert sc.compute()["F"] == pytest.approx(sh.compute()["F"], rel=1e-6)
