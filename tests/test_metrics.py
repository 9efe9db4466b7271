"""Tests for xtc_ext.metrics (hand-computed values) and xtc_ext.visualize."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
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


def test_save_prediction_figure(tmp_path):
    image, seg, pred, depth, dpred = _frame()
    out = save_prediction_figure(tmp_path / "sub" / "fig.png", image, seg, pred, depth, dpred,
                                 num_classes=13, title="frame 0")
    assert out.is_file() and out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and len(im.getbands()) == 3
        a = np.asarray(im)
        assert a.shape[2] == 3 and a.shape[0] > 100 and a.shape[1] > 100
        assert a.std() > 10  # not a blank image
    # logits input and 40 classes also work; bad label raises
    logits = torch.randn(40, 24, 32)
    save_prediction_figure(tmp_path / "f40.png", image, seg, logits, depth, dpred, num_classes=40)
    assert (tmp_path / "f40.png").stat().st_size > 0
    with pytest.raises(ValueError):
        save_prediction_figure(tmp_path / "bad.png", image, seg, pred + 20, depth, dpred, 13)
    with pytest.raises(ValueError):
        save_prediction_figure(tmp_path / "bad.png", image, seg[:-1], pred, depth, dpred, 13)


@pytest.mark.skipif(not (REAL / "rgb").is_dir(), reason="real NYUv2 frames not available")
def test_save_prediction_figure_real_frame(tmp_path):
    from xtc_ext.data import NYUv2Frames

    s = NYUv2Frames(REAL, size=(240, 320))[0]
    pred = s["seg"].clamp(min=0)
    out = save_prediction_figure(tmp_path / "real.png", s["image"], s["seg"], pred, s["depth"],
                                 s["depth"] * 1.1, num_classes=13, title=s["name"])
    with Image.open(out) as im:
        assert im.mode == "RGB"
