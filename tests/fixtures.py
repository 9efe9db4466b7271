"""Writers of small datasets in the exact on-disk layouts, shared by the tests."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

H, W = 48, 64
IDS = ["0003", "0007", "0011"]


def decoded_jpeg(path):
    """float32 [3,H,W] in [0, 1] of a JPEG as Pillow decodes it (the fixtures' JPEGs are lossy)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255.0


def _frame_arrays(k):
    """Known arrays for frame k: rgb uint8, depth mm uint16, label13, label40."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([(xx * 4 + k) % 256, (yy * 5 + 2 * k) % 256, np.full_like(xx, 17 * k + 3)],
                   axis=-1).astype(np.uint8)
    depth = (500 + 10 * xx + 100 * yy + 1000 * k).astype(np.uint16)  # mm
    depth[0, 0] = 0  # invalid
    lab13 = ((xx // 4 + yy // 4 + k) % 14).astype(np.uint8)  # 0..13, 0 unlabelled
    lab40 = ((xx + yy + k) % 41).astype(np.uint8)  # 0..40
    return rgb, depth, lab13, lab40


def write_frames(root: Path, ids=IDS):
    for d in ("rgb", "depth", "label13", "label40"):
        (root / d).mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, fid in enumerate(ids):
        rgb, depth, lab13, lab40 = _frame_arrays(k)
        Image.fromarray(rgb).save(root / "rgb" / f"{fid}.png")
        Image.fromarray(depth).save(root / "depth" / f"{fid}.png")
        Image.fromarray(lab13).save(root / "label13" / f"{fid}.png")
        Image.fromarray(lab40).save(root / "label40" / f"{fid}.png")
        arrays[fid] = (rgb, depth, lab13, lab40)
    return arrays


def write_mtan(root: Path, split="train", n=3, h=H, w=W, valid_only=False):
    """MTAN NYUv2 ``.npy`` files; ``valid_only``: no void label and no invalid depth pixel."""
    arrays = []
    rng = np.random.default_rng(0)
    for d in ("image", "label", "depth"):
        (root / split / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.random((h, w, 3))  # float64 in [0,1)
        lab = rng.integers(0 if valid_only else -1, 13, size=(h, w)).astype(np.float32)
        dep = rng.uniform(0.5, 10.0, size=(h, w, 1)).astype(np.float32)
        if not valid_only:
            dep[:2, :3] = 0.0
        np.save(root / split / "image" / f"{i}.npy", img)
        np.save(root / split / "label" / f"{i}.npy", lab)
        np.save(root / split / "depth" / f"{i}.npy", dep)
        arrays.append((img, lab, dep))
    return arrays


# --------------------------------------------------------------------------- #
# Cityscapes, official files: leftImg8bit / gtFine labelIds / disparity
# --------------------------------------------------------------------------- #
CS_H, CS_W = 64, 128
#: (city, name) of the fixture frames, in the sorted order the reader must produce.
CS_FRAMES = (
    ("aachen", "aachen_000000_000019"),
    ("aachen", "aachen_000001_000019"),
    ("bochum", "bochum_000000_000313"),
)
#: 2x2 blocks of known disparity PNG values in row 0..1: columns 0..1 -> 0 (invalid),
#: 2..3 -> 1 (valid, target 0), 4..5 -> 257 (target 1/256), 6..7 -> 65535 (clipped).
CS_SPECIAL_DISPARITY = (0, 1, 257, 65535)


def cityscapes_arrays(k, h=CS_H, w=CS_W):
    """Known arrays of Cityscapes fixture frame k: rgb uint8 (h,w,3), label ids uint8
    (h,w) covering every id 0..33 in 4x4 blocks, disparity uint16 (h,w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 2 + 7 * k) % 256, (yy * 4 + 3 * k) % 256, (xx + yy + 50 * k) % 256],
                   axis=-1).astype(np.uint8)
    ids = ((xx // 4 + (yy // 4) * 5 + k) % 34).astype(np.uint8)
    disp = (1000 + 97 * xx + 211 * yy + 5000 * k).astype(np.uint16)
    for c, v in enumerate(CS_SPECIAL_DISPARITY):
        disp[0:2, 2 * c:2 * c + 2] = v
    # an invalid block and a p == 1 block away from the border, so crops move them
    disp[20:30, 40:60] = 0
    disp[30:36, 40:60] = 1
    return rgb, ids, disp


def cityscapes_paths(root: Path, split, city, name):
    """(image, label, disparity) paths of one frame in the official layout."""
    root = Path(root)
    return (root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
            root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png",
            root / "disparity" / split / city / f"{name}_disparity.png")


def write_cityscapes(root: Path, split="train", frames=CS_FRAMES, h=CS_H, w=CS_W):
    """Write a tiny Cityscapes tree; returns {name: (city, rgb, ids, disparity)}."""
    out = {}
    for k, (city, name) in enumerate(frames):
        rgb, ids, disp = cityscapes_arrays(k, h, w)
        p_img, p_lab, p_disp = cityscapes_paths(root, split, city, name)
        for p in (p_img, p_lab, p_disp):
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(p_img)            # mode RGB
        Image.fromarray(ids).save(p_lab)            # mode L (uint8)
        Image.fromarray(disp).save(p_disp)          # 16-bit grayscale PNG
        out[name] = (city, rgb, ids, disp)
    return out


# --------------------------------------------------------------------------- #
# Cityscapes, MTAN preprocessed .npy: {image,label_7,label_19,depth}/{i}.npy
# --------------------------------------------------------------------------- #
def write_mtan_cityscapes(root: Path, split="train", n=3, h=32, w=64, chw=False):
    """Write MTAN-style Cityscapes .npy files; returns [(img, lab7, lab19, dep)].

    img float64 (h,w,3) in [0,1) ((3,h,w) if ``chw``), labels float32 with -1 void,
    depth float32 (h,w,1) in [0, 0.4922] with a block of zeros (invalid)."""
    rng = np.random.default_rng(1)
    for d in ("image", "label_7", "label_19", "depth"):
        (root / split / d).mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n):
        img = rng.random((h, w, 3))
        lab7 = rng.integers(-1, 7, size=(h, w)).astype(np.float32)
        lab19 = rng.integers(-1, 19, size=(h, w)).astype(np.float32)
        dep = rng.uniform(0.001, 0.4922, size=(h, w, 1)).astype(np.float32)
        dep[2:6, 3:9] = 0.0
        dep[-1, -1] = 0.4922  # the clip value itself is accepted
        np.save(root / split / "image" / f"{i}.npy", np.transpose(img, (2, 0, 1)) if chw else img)
        np.save(root / split / "label_7" / f"{i}.npy", lab7)
        np.save(root / split / "label_19" / f"{i}.npy", lab19)
        np.save(root / split / "depth" / f"{i}.npy", dep)
        arrays.append((img, lab7, lab19, dep))
    return arrays


# --------------------------------------------------------------------------- #
# MT-CP / Vandenhende NYUD_MT: images/*.jpg, segmentation/*.png, depth/*.npy,
# normals/*.npy, gt_sets/{split}.txt
# --------------------------------------------------------------------------- #
MT_H, MT_W = 64, 64
NYUDMT_SPLITS = {"train": ["000003", "000001", "000002"], "val": ["000010"]}


def nyudmt_arrays(k, h=MT_H, w=MT_W):
    """Known arrays of NYUD_MT fixture item k: rgb uint8 (h,w,3), segmentation PNG
    values uint8 (h,w) in 0..40 (every value), depth float32 metres (h,w) with an
    invalid block, normals float32 (h,w,3) unit vectors with a zero (invalid) block."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 3 + 11 * k) % 256, (yy * 3 + 5 * k) % 256, (xx + 2 * yy + 40 * k) % 256],
                   axis=-1).astype(np.uint8)
    seg = ((xx // 2 + yy * 7 + k) % 41).astype(np.uint8)
    depth = (0.5 + 0.05 * xx + 0.1 * yy + 0.25 * k).astype(np.float32)
    depth[10:20, 30:44] = 0.0
    theta = 2 * np.pi * xx / w + 0.3 * k
    phi = 0.2 + 1.2 * yy / h
    normals = np.stack([np.sin(phi) * np.cos(theta), np.sin(phi) * np.sin(theta),
                        -np.cos(phi)], axis=-1).astype(np.float32)
    normals[40:50, 8:20] = 0.0
    return rgb, seg, depth, normals


def write_nyudmt(root: Path, splits=None, h=MT_H, w=MT_W, depth_channel_ids=("000001",)):
    """Write a tiny NYUD_MT tree; returns {id: (rgb, seg, depth (h,w), normals)}.

    ``splits``: {split: [ids]} written to ``gt_sets/{split}.txt`` (default
    ``NYUDMT_SPLITS``, with a blank line in train). Depth of the ids in
    ``depth_channel_ids`` is saved with shape (h,w,1), the others (h,w). Images are
    JPEG (quality 95, lossy), so compare decoded images with Pillow's decoding."""
    root = Path(root)
    splits = NYUDMT_SPLITS if splits is None else splits
    for d in ("images", "segmentation", "depth", "normals", "gt_sets"):
        (root / d).mkdir(parents=True, exist_ok=True)
    out = {}
    k = 0
    for split, ids in splits.items():
        lines = list(ids)
        if split == "train" and len(lines) > 1:
            lines.insert(1, "")  # blank lines are skipped
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for fid in ids:
            rgb, seg, depth, normals = nyudmt_arrays(k, h, w)
            Image.fromarray(rgb).save(root / "images" / f"{fid}.jpg", quality=95)
            Image.fromarray(seg).save(root / "segmentation" / f"{fid}.png")  # mode L
            np.save(root / "depth" / f"{fid}.npy",
                    depth[..., None] if fid in depth_channel_ids else depth)
            np.save(root / "normals" / f"{fid}.npy", normals)
            out[fid] = (rgb, seg, depth, normals)
            k += 1
    return out


# --------------------------------------------------------------------------- #
# MT-CP / Vandenhende PASCAL_MT: JPEGImages, semseg/{VOC12,pascal-context},
# human_parts/*.mat (PASCAL-Part 'anno' struct), sal_distill, ImageSets/Context
# --------------------------------------------------------------------------- #
PM_H, PM_W = 40, 56
PASCALMT_SPLITS = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000009"]}
#: The 24 PASCAL-Part person part names (Vandenhende's pascal_part.json, category 15).
PERSON_PART_NAMES = ("hair", "head", "lear", "lebrow", "leye", "lfoot", "lhand", "llarm", "llleg",
                     "luarm", "luleg", "mouth", "neck", "nose", "rear", "rebrow", "reye", "rfoot",
                     "rhand", "rlarm", "rlleg", "ruarm", "ruleg", "torso")


def pascal_anno(objects, imname="x"):
    """Build the ``anno`` struct as PASCAL-Part stores it, ready for scipy.io.savemat.

    ``objects``: list of (class_name, class_ind, mask, parts) where parts is a list of
    (part_name, mask) (an empty list is saved as MATLAB ``[]``). Field order matches
    the positional access of Vandenhende's reader: anno (imname, objects), object
    (class, class_ind, mask, parts), part (part_name, mask)."""
    objs = np.zeros((1, len(objects)),
                    dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for i, (cname, cind, mask, parts) in enumerate(objects):
        objs[0, i]["class"] = cname
        objs[0, i]["class_ind"] = np.array([[cind]], dtype=np.uint8)
        objs[0, i]["mask"] = np.asarray(mask, dtype=np.uint8)
        if parts:
            pa = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, (pname, pmask) in enumerate(parts):
                pa[0, j]["part_name"] = pname
                pa[0, j]["mask"] = np.asarray(pmask, dtype=np.uint8)
            objs[0, i]["parts"] = pa
        else:
            objs[0, i]["parts"] = np.zeros((0, 0))
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = imname
    anno[0, 0]["objects"] = objs
    return anno


def write_pascal_mat(path: Path, objects, imname="x"):
    import scipy.io as sio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"anno": pascal_anno(objects, imname)})


def pascal_person_objects(k, h=PM_H, w=PM_W):
    """Objects of PASCAL_MT fixture item k and the expected human-parts map (int64,
    -1 = void). k % 3 == 0: a person with all 24 parts (one 2-px column band each,
    later parts overwriting an overlap) plus a dog with parts (ignored);
    k % 3 == 1: only a cat (no persons) -> all -1; k % 3 == 2: a person without
    parts and a person with two parts."""
    from xtc_ext.data import PART_GROUPS
    full = np.ones((h, w), np.uint8)
    expected = np.zeros((h, w), np.int64)
    if k % 3 == 0:
        parts = []
        for j, name in enumerate(PERSON_PART_NAMES):
            m = np.zeros((h, w), np.uint8)
            m[5:35, 2 * j:2 * j + 2] = 1
            parts.append((name, m))
            expected[m.astype(bool)] = PART_GROUPS[name]
        over = np.zeros((h, w), np.uint8)
        over[30:38, 0:10] = 1  # overlaps hair/head/lear... bands; written last -> wins
        parts.append(("rfoot", over))
        expected[over.astype(bool)] = PART_GROUPS["rfoot"]
        dog_part = np.zeros((h, w), np.uint8)
        dog_part[0:4, 50:56] = 1
        objects = [("person", 15, full, parts), ("dog", 12, full, [("head", dog_part)])]
    elif k % 3 == 1:
        objects = [("cat", 8, full, [])]
        expected[:] = -1
    else:
        a = np.zeros((h, w), np.uint8)
        a[0:10, 0:10] = 1
        b = np.zeros((h, w), np.uint8)
        b[20:30, 30:40] = 1
        objects = [("person", 15, full, []), ("person", 15, full, [("luarm", a), ("rlleg", b)])]
        expected[a.astype(bool)] = 3
        expected[b.astype(bool)] = 6
    return objects, expected


def pascalmt_arrays(k, h=PM_H, w=PM_W):
    """rgb uint8 (h,w,3), semseg PNG values uint8 (h,w) in 0..20 plus 255 blocks, and
    saliency uint8 (h,w) with the 127/128 threshold pair present."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 4 + 9 * k) % 256, (yy * 6 + 13 * k) % 256, (3 * xx + yy) % 256],
                   axis=-1).astype(np.uint8)
    sem = ((xx // 3 + yy + k) % 21).astype(np.uint8)
    sem[0:3, :] = 255
    sal = ((xx * 5 + yy * 3 + 17 * k) % 256).astype(np.uint8)
    sal[0, 0], sal[0, 1], sal[0, 2], sal[0, 3] = 127, 128, 0, 255
    return rgb, sem, sal


def write_pascalmt(root: Path, splits=None, h=PM_H, w=PM_W, context_ids=("2008_000003",)):
    """Write a tiny PASCAL_MT tree; returns {id: (rgb, semseg, sal, expected_parts)}.

    Semseg of the ids in ``context_ids`` goes to ``semseg/pascal-context``, the others
    to ``semseg/VOC12`` (palette-mode PNG, like the VOC files). Human parts as
    :func:`pascal_person_objects` with k the running index."""
    root = Path(root)
    splits = PASCALMT_SPLITS if splits is None else splits
    for d in ("JPEGImages", "semseg/VOC12", "semseg/pascal-context", "human_parts", "sal_distill",
              "ImageSets/Context"):
        (root / d).mkdir(parents=True, exist_ok=True)
    palette = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]
    out = {}
    k = 0
    for split, ids in splits.items():
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for fid in ids:
            rgb, sem, sal = pascalmt_arrays(k, h, w)
            Image.fromarray(rgb).save(root / "JPEGImages" / f"{fid}.jpg", quality=95)
            im = Image.frombytes("P", (w, h), sem.tobytes())  # raw indices, as VOC
            im.putpalette(palette)
            sub = "pascal-context" if fid in context_ids else "VOC12"
            im.save(root / "semseg" / sub / f"{fid}.png")
            Image.fromarray(sal).save(root / "sal_distill" / f"{fid}.png")  # mode L
            objects, expected = pascal_person_objects(k, h, w)
            write_pascal_mat(root / "human_parts" / f"{fid}.mat", objects, fid)
            out[fid] = (rgb, sem, sal, expected)
            k += 1
    return out


# --------------------------------------------------------------------------- #
# one tiny tree per --dataset layout, with a train and (where the layout has one) a val split
# --------------------------------------------------------------------------- #
def _write_mtan_nyuv2(root: Path):
    write_mtan(root, "train", n=4)
    write_mtan(root, "val", n=2)


def _write_cityscapes_files(root: Path):
    write_cityscapes(root, "train")
    write_cityscapes(root, "val", frames=CS_FRAMES[:2])


def _write_cityscapes_mtan(root: Path):
    write_mtan_cityscapes(root, "train", n=4)
    write_mtan_cityscapes(root, "val", n=2)


#: ``--dataset`` name -> writer of a tiny tree in its on-disk layout (``writer(root)``).
DATASET_WRITERS = {
    "frames": write_frames,
    "nyuv2": _write_mtan_nyuv2,
    "cityscapes": _write_cityscapes_files,
    "cityscapes-mtan": _write_cityscapes_mtan,
    "nyudmt": write_nyudmt,
    "pascal": write_pascalmt,
}
