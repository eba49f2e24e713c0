"""Datasets for fine-tuning SAM 2: LabPics V1, instance-mask folders and COCO JSON.

    python data.py --make-demo demo_data      # small synthetic LabPics-style dataset
    python data.py demo_data                  # what was found: format, splits, instances, skips
    python data.py /data/LabPicsV1 --complex  # include the Complex/ part of LabPics
    python data.py --make-video-demo demo_videos && python data.py demo_videos  # videos
    python -m pytest -q tests/test_data.py

Layouts (picked from what the path points at, see detect_format):
    labpics: root/Simple/{Train,Test}/Image/x.jpg + root/Simple/{Train,Test}/Instance/x.png
             (instance PNG as cv2 reads it: channel 0 = material ids, channel 2 = vessel ids)
    folder:  root/images/x.jpg + root/masks/x.png (one label PNG per image, 0 = background;
             a colour PNG: each distinct colour one instance, black = background),
             or root/{train,test|val}/{images,masks}/...
    coco:    a COCO instances JSON, or root/annotations/*.json. An image's file_name is looked up
             relative to the JSON's folder, then its images/ subfolder, then the same two beside
             the JSON's parent folder (root/images/, root/train2017/ for instances_train2017.json).
Splits: a part named train (Train/, train/, instances_train*.json, *_trainval.json) or test / val
is that split when the other split has a part too; all other images are split 80/20 by a hash
of their file names. Images are read as cv2.imread reads them (EXIF orientation applied); label
PNGs are never rotated.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = """layouts looked for:
  labpics: ROOT/Simple/Train/Image/x.jpg + ROOT/Simple/Train/Instance/x.png (Test/ likewise)
  folder:  ROOT/images/x.jpg + ROOT/masks/x.png, or ROOT/train/{images,masks} + ROOT/test/...
  coco:    ROOT/annotations/instances_train.json + ROOT/images/x.jpg, or a path to a .json
  video:   ROOT/JPEGImages/<video>/00000.jpg + ROOT/Annotations/<video>/00000.png (DAVIS; also
           under ROOT/train/ and ROOT/valid/: YouTube-VOS, MOSE), for --recipe video"""
IMAGES_MASKS = ("images", "masks")  # the folder layout's two subfolders
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
END_MARKERS = {
    b"\xff\xd8": ("JPEG", b"\xff\xd9"),
    PNG_SIGNATURE[:2]: ("PNG", b"IEND"),
}  # start -> (kind, end)
# whole words of a COCO file name that tag its split ("instances_trainval2017" -> train)
SPLIT_WORDS = {"train": "train", "trainval": "train", "training": "train", "val": "test"}
SPLIT_WORDS |= {"valid": "test", "validation": "test", "minival": "test", "test": "test"}


class DataError(Exception):
    """A dataset file or folder is missing, unreadable or inconsistent (the message names it)."""


@dataclass
class Record:
    """One image and its annotation, as found on disk (nothing decoded yet)."""

    image: Path
    annotation: Path | None  # label PNG / LabPics instance PNG; None for COCO
    format: str  # "labpics" | "folder" | "coco"
    coco: list[dict] | None = None  # this image's COCO annotations (format "coco")
    width: int | None = None  # image size the COCO JSON claims
    height: int | None = None


@dataclass
class Sample:
    """One decoded training example.

    image  (H, W, 3) uint8 RGB, longer side == max_side
    masks  (N, H, W) bool, one per instance
    points (N, 2) float32 (x, y), one pixel inside each mask (a positive click)
    """

    image: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    name: str


# ----------------------------------------------------------------------------- reading files


def _read_bytes(path: Path) -> np.ndarray:
    """Whole file as uint8 (np.fromfile copes with non-ASCII paths, unlike cv2.imread)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{path}: zero-byte file")
    return data


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB exactly as cv2.imread reads it: EXIF orientation
    applied, gray / alpha / 16-bit converted. cv2 refuses cut-off files itself."""
    img = cv2.imdecode(_read_bytes(Path(path)), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    return np.ascontiguousarray(img[..., ::-1])


def labpics_merge(ann_bgr: np.ndarray) -> np.ndarray:
    """LabPics instance PNG (H, W, 3) as cv2 reads it -> (H, W) int32 instance ids, 0 = none.

    Channel 0 holds material ids, channel 2 vessel ids. A pixel with a material is that
    material; otherwise its vessel gets an id after all materials. int32 because the article's
    uint8 `vessel * (max + 1)` wraps past 255 and silently merges instances.
    """
    mat = ann_bgr[..., 0].astype(np.int32)
    ves = ann_bgr[..., 2].astype(np.int32)
    return np.where(mat > 0, mat, np.where(ves > 0, ves + mat.max(), 0)).astype(np.int32)


def _colour_ids(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int32 ids: black 0, the others 1..K by (B, G, R) value."""
    c = bgr.astype(np.int64)  # 16 bits a channel fit side by side
    keys, ids = np.unique((c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2], return_inverse=True)
    return (ids.reshape(bgr.shape[:2]) + int(keys[0] != 0)).astype(np.int32)


def read_label_map(path: str | Path, labpics: bool = False) -> np.ndarray:
    """Label PNG -> (H, W) int32 instance ids, 0 = none; never EXIF-rotated.

    1-channel 8/16-bit: its values; palette PNG: its indices; 3/4-channel: each distinct colour
    one instance (black = none, alpha ignored), or with labpics=True the LabPics merge.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data[:8].tobytes() == PNG_SIGNATURE and data.size > 25 and data[25] == 3:
        # palette PNG (PASCAL VOC style): cv2 would expand it to colours, we want the indices
        try:
            with Image.open(path) as im:
                return np.asarray(im, dtype=np.int32)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable label image ({e})") from e
    ann = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # keeps depth and channels, ignores EXIF
    if ann is None:
        raise DataError(f"{path}: not a readable label image (corrupt or unsupported format)")
    if ann.dtype.kind not in "ui":
        raise DataError(f"{path}: label image must hold integers, got {ann.dtype}")
    if ann.ndim == 3 and ann.shape[2] >= 3:
        return labpics_merge(ann) if labpics else _colour_ids(ann[..., :3])
    return (ann if ann.ndim == 2 else ann[..., 0]).astype(np.int32)


def _new_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    r = max_side / max(h, w)  # as the article: upscales small images too
    return max(1, round(h * r)), max(1, round(w * r))


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, ...) to (H, W, ...) with hw = (H, W), by index
    lookup: exact for any dtype (int32 ids, bool), where cv2.resize has gaps."""
    h, w = a.shape[:2]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return a[rows][:, cols]


def resize_longest(image: np.ndarray, max_side: int = 1024, nearest: bool = False) -> np.ndarray:
    """Scale (H, W[, C]) so the longer side == max_side -> (H', W'[, C]).

    nearest=True for label maps (ids must not blend); else area (down) / bilinear (up).
    """
    h, w = image.shape[:2]
    nh, nw = _new_size(h, w, max_side)
    if nearest:
        return resize_nearest(image, (nh, nw))
    if (nh, nw) == (h, w):
        return image.copy()
    interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp)


def sample_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 2) float32 (x, y): one uniformly random pixel in each mask.

    Inverse-CDF over the flattened mask: draw u ~ U[0, 1) per mask, take the k-th set pixel with
    k = floor(u * area). Needs only N random numbers, drawn on the generator's device and moved,
    so a CPU generator gives the same points for CPU and CUDA masks.
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float32, device=masks.device)
    w = masks.shape[-1]
    flat = masks.reshape(n, -1).bool()
    csum = flat.cumsum(1, dtype=torch.int32)  # (N, H*W), non-decreasing: searchsorted-able
    area = csum[:, -1]
    if bool((area == 0).any()):
        raise ValueError("sample_points: got an empty mask, it has no pixel to click on")
    gen_device = generator.device if generator is not None else masks.device
    u = torch.rand(n, generator=generator, device=gen_device).to(masks.device)
    k = (u * area).long().minimum(area.long() - 1)  # (N,) 0-based rank
    idx = torch.searchsorted(csum, (k + 1).to(torch.int32)[:, None]).squeeze(1)
    return torch.stack([idx % w, idx // w], dim=1).float()


# ----------------------------------------------------------------------------- COCO masks


def _rle_short(counts: bytes | str, n: int) -> bool:
    """pycocotools' decode() refuses runs past the mask's end but leaves the tail of a short
    one uninitialised (random pixels): the runs cover n pixels only if n - 1 overflow."""
    try:
        mask_utils.decode({"size": [1, n - 1], "counts": counts})
    except ValueError:
        return False
    return True


def coco_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """One COCO annotation's segmentation (polygons, RLE compressed or not) -> (H, W) bool.
    Raises (ValueError, or pycocotools' own errors) saying why there is no usable mask."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons; under 3 points frPyObjects would read a box
        seg = [p for p in seg if len(p) >= 6]
    if not seg:
        raise ValueError("no segmentation (bounding box only)")
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
        if list(seg.get("size", [])) != [h, w]:
            raise ValueError(f"RLE size {seg.get('size')} != image size [{h}, {w}]")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        if _rle_short(rle["counts"], h * w):
            raise ValueError(f"RLE runs cover fewer than the image's {h}x{w} pixels")
    return mask_utils.decode(rle).astype(bool)


def _coco_masks(record: Record, h: int, w: int) -> tuple[np.ndarray, list[str]]:
    """(H, W, N) bool masks of a COCO image's instances (crowd regions mark many objects at
    once: not instances), and why each annotation without a usable mask was skipped."""
    masks, skipped = [], []
    for a in record.coco or []:
        if a.get("iscrowd", 0):
            continue
        try:
            masks.append(coco_mask(a, h, w))
        except Exception as e:  # pycocotools raises bare Exception for unsupported input
            skipped.append(f"annotation id {a.get('id')}: {e}")
    return (np.stack(masks, -1) if masks else np.zeros((h, w, 0), bool)), skipped


# ----------------------------------------------------------------------------- finding files


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _match_masks(image_dir: Path, mask_dir: Path, fmt: str) -> list[Record]:
    """Pair images with masks by stem; an image without one gets the expected .png path so the
    error later names the file that is missing."""
    masks = {}
    for m in _images_in(mask_dir):
        if m.stem not in masks or m.suffix.lower() == ".png":
            masks[m.stem] = m
    return [
        Record(p, masks.get(p.stem, mask_dir / f"{p.stem}.png"), fmt) for p in _images_in(image_dir)
    ]


def _held_out(records: list[Record], split: str) -> list[Record]:
    """Fixed 80/20 split without a list file: the records whose names hash lowest are test (at
    least one when there are two or more), so adding images barely reshuffles the split."""
    if split == "all":
        return list(records)
    order = sorted(records, key=lambda r: hashlib.md5(r.image.name.encode()).hexdigest())
    n_test = max(1, round(len(records) * 0.2)) if len(records) >= 2 else 0
    test = {id(r) for r in order[:n_test]}
    return [r for r in records if (id(r) in test) == (split == "test")]


def _norm_split(split: str) -> str:
    s = split.lower()
    if s in ("train", "all"):
        return s
    if s in ("test", "val"):
        return "test"
    raise ValueError(f"split must be 'train', 'test', 'val' or 'all', got {split!r}")


def _labpics_base(root: Path) -> Path | None:
    """LabPics root, or None. Also accepts the Simple/ folder itself."""
    if (root / "Simple").is_dir() or (root / "Complex").is_dir():
        return root
    if (root / "Train" / "Image").is_dir() and root.name in ("Simple", "Complex"):
        return root.parent
    return None


def _folder_splits(root: Path) -> list[str]:
    return [
        n for n in ("train", "test", "val") if all((root / n / d).is_dir() for d in IMAGES_MASKS)
    ]


def _coco_jsons(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = sorted((root / "annotations").glob("*.json")) or sorted(root.glob("*.json"))
    # annotations/ often also holds captions / keypoints files: prefer the instances ones
    inst = [p for p in found if "instances" in p.name.lower()]
    return inst or found


def _coco_split(js: Path) -> str | None:
    """'train' / 'test' from the split words in a COCO file's name; None if none or both."""
    tags = {SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", js.stem.lower()) if w in SPLIT_WORDS}
    return tags.pop() if len(tags) == 1 else None


def detect_format(root: str | Path) -> str:
    """'labpics' | 'folder' | 'coco' | 'video' from what root points at; DataError if none fits."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder\n{LAYOUTS}")
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DataError(f"{root}: is a file but not a COCO .json\n{LAYOUTS}")
    if _video_parts(root):
        return "video"
    if _labpics_base(root) is not None:
        return "labpics"
    if all((root / d).is_dir() for d in IMAGES_MASKS) or _folder_splits(root):
        return "folder"
    if _coco_jsons(root):
        return "coco"
    raise DataError(f"{root}: no known dataset layout found\n{LAYOUTS}")


def _coco_image_dirs(js: Path) -> list[Path]:
    d, p = js.parent, js.parent.parent
    dirs = [d, d / "images", p, p / "images"]
    if d.name == "annotations":  # standard COCO: annotations/instances_val2017.json, val2017/
        dirs += sorted(c for c in p.iterdir() if c.is_dir() and c.name in js.stem)
    return dirs


def _coco_records(js: Path) -> list[Record]:
    """A COCO instances JSON -> one Record per image; DataError naming the file if it is not
    one (invalid JSON, no `images` list, entries without id / file_name)."""
    try:
        with open(js, encoding="utf-8") as f:
            d = json.load(f)
        per_image: dict = {im["id"]: [] for im in d["images"]}
        for a in d.get("annotations", []):
            if a.get("image_id") in per_image:
                per_image[a["image_id"]].append(a)
        dirs = _coco_image_dirs(js)
        out = []
        for im in d["images"]:
            cands = [dd / im["file_name"] for dd in dirs]
            path = next((c for c in cands if c.is_file()), cands[0])
            w, h = int(im.get("width", 0)) or None, int(im.get("height", 0)) or None
            out.append(Record(path, None, "coco", per_image[im["id"]], w, h))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{js}: not a readable COCO instances JSON ({e!r})") from e
    return out


Parts = list[tuple[str, str | None, Callable[[], list[Record]]]]


def _parts(root: Path, fmt: str, complex: bool) -> Parts:
    """Where a dataset's records come from: (source, split, loader). A source is its split
    ('train' / 'test') when the other split has a source too; otherwise its split is None and
    its images are held out 80/20 by name hash. Loaders run only when their records are needed."""
    if fmt == "coco":
        jsons = _coco_jsons(root)
        parts = [(j.name, _coco_split(j), partial(_coco_records, j)) for j in jsons]
    else:
        if fmt == "labpics":
            base, (im, ann) = _labpics_base(root), ("Image", "Instance")
            subs = [
                base / p / s
                for p in ("Simple", "Complex")[: 1 + complex]
                for s in ("Train", "Test")
            ]
        else:
            im, ann = IMAGES_MASKS
            subs = [root / n for n in _folder_splits(root)] or [root]
        parts = [
            (
                os.path.relpath(d / im, root),
                SPLIT_WORDS.get(d.name.lower()),
                partial(_match_masks, d / im, d / ann, fmt),
            )
            for d in subs
            if (d / im).is_dir()
        ]
    if not {"train", "test"} <= {t for _, t, _ in parts}:
        parts = [(s, None, load) for s, _, load in parts]
    return parts


def _pick(parts: Parts, split: str) -> list[Record]:
    """The records of one split ('train', 'test'/'val' or 'all') from _parts."""
    split = _norm_split(split)
    fixed = [r for _, t, load in parts if t is not None and split in (t, "all") for r in load()]
    pool = [r for _, t, load in parts if t is None for r in load()]
    return fixed + _held_out(pool, split)


def find_records(root: str | Path, split: str = "train", complex: bool = False) -> list[Record]:
    """All (image, annotation) records of one split ('train', 'test'/'val', or 'all')."""
    root = Path(root)
    fmt = detect_format(root)
    if fmt == "video":
        raise DataError(f"{root} holds videos: train on them with --recipe video")
    recs = _pick(_parts(root, fmt, complex), split)
    if not any(r.format == "coco" or r.annotation.is_file() for r in recs):
        raise DataError(
            f"{root}: found the {fmt} layout but no image-annotation pairs for split "
            f"'{split}' ({len(recs)} images without annotations)\n{LAYOUTS}"
        )
    return recs


# ----------------------------------------------------------------------------- samples


def _load(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 and instances at file size: a (H, W) int32 label map (labpics,
    folder) or (H, W, N) bool masks (coco, where instances may overlap). DataError names files;
    COCO annotations without a usable mask are skipped with a warning."""
    image = read_rgb(record.image)
    h, w = image.shape[:2]
    if record.format == "coco":
        if (record.width, record.height) not in ((None, None), (w, h)):
            raise DataError(
                f"{record.image}: image is {w}x{h} but its COCO entry says "
                f"{record.width}x{record.height}"
            )
        masks, skipped = _coco_masks(record, h, w)
        if skipped:
            warnings.warn(f"{record.image}: skipped " + "; ".join(skipped), stacklevel=3)
        return image, masks
    if record.annotation is None or not Path(record.annotation).is_file():
        raise DataError(f"{record.image}: missing annotation {record.annotation}")
    lab = read_label_map(record.annotation, labpics=record.format == "labpics")
    if lab.shape != (h, w):
        raise DataError(
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {lab.shape[1]}x{lab.shape[0]}"
        )
    return image, lab


def read_sample(record: Record, max_side: int = 1024, min_area: int = 16, seed: int = 0) -> Sample:
    """Decode, resize (longer side -> max_side), drop instances < min_area px, pick one click
    per instance. Sample: image (H, W, 3) uint8, masks (N, H, W) bool, points (N, 2) float32."""
    image, inst = _load(record)
    inst = resize_nearest(inst, _new_size(*image.shape[:2], max_side))
    image = resize_longest(image, max_side)
    min_area = max(min_area, 1)
    if inst.ndim == 2:
        # the label map is resized before it is split: a big photo with many instances would
        # otherwise need N full-size masks
        ids, areas = np.unique(inst, return_counts=True)
        ids = ids[(ids != 0) & (areas >= min_area)]
        masks = inst[None] == ids[:, None, None]
    else:
        masks = np.ascontiguousarray(inst.transpose(2, 0, 1))
        masks = masks[masks.sum((1, 2)) >= min_area]
    points = sample_points(torch.from_numpy(masks), torch.Generator().manual_seed(int(seed)))
    return Sample(image, masks, points.numpy(), str(record.image))


class SegDataset(torch.utils.data.Dataset):
    """Records -> Samples; a bad file gives None (and a warning) instead of killing training."""

    def __init__(
        self, records: list[Record], max_side: int = 1024, min_area: int = 16, seed: int = 0
    ):
        self.records, self.max_side, self.min_area, self.seed = records, max_side, min_area, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample | None:
        # seed from (seed, i) only: the same points whichever worker / process loads item i
        s = int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])
        try:
            return read_sample(self.records[i], self.max_side, self.min_area, s)
        except DataError as e:
            warnings.warn(f"skipping {self.records[i].image}: {e}", stacklevel=2)
            return None


def _image_size(path: Path, oriented: bool = True) -> tuple[int, int]:
    """(W, H) from the header; oriented: as read_rgb returns it (EXIF orientations 5-8 swap the
    sides, as cv2.imread turns them)."""
    with Image.open(path) as im:
        exif = Image.Exif()
        if oriented:  # info["exif"], not im.getexif(): that one decodes a whole PNG
            exif.load(im.info.get("exif", b""))
        return im.size[::-1] if exif.get(0x0112) in (5, 6, 7, 8) else im.size


def check_record(record: Record) -> str | None:
    """Cheap up-front check (headers and file ends only): None if fine, else why not."""
    paths = [record.image] + ([record.annotation] if record.format != "coco" else [])
    for p in paths:
        if p is None:
            return f"{record.image}: missing annotation"
        if not Path(p).is_file():
            what = "image" if p == record.image else "annotation"
            return f"{p}: missing {what}" + ("" if what == "image" else f" for {record.image}")
        try:
            with open(p, "rb") as f:
                head, size = f.read(8), f.seek(0, 2)
                f.seek(max(0, size - 1024))
                tail = f.read()
        except OSError as e:
            return f"{p}: unreadable ({e})"
        if size == 0:
            return f"{p}: zero-byte file"
        # the decoders refuse a cut-off file, but only once they read it all: a missing end
        # marker finds the common cut-off download here at the cost of 1 KiB
        kind, end = END_MARKERS.get(head[:2], ("", b""))
        if end not in tail:
            return f"{p}: truncated {kind} (no end marker)"
    try:
        w, h = _image_size(record.image)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's zoo for broken headers
        return f"{record.image}: unreadable image header ({type(e).__name__})"
    if record.format == "coco":
        if (record.width, record.height) not in ((None, None), (w, h)):
            return (
                f"{record.image}: image is {w}x{h} but its COCO entry says "
                f"{record.width}x{record.height}"
            )
        return None
    try:
        aw, ah = _image_size(record.annotation, oriented=False)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"{record.annotation}: unreadable annotation header ({type(e).__name__})"
    if (aw, ah) != (w, h):
        return (
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {aw}x{ah}"
        )
    return None


def load_split(
    root: str | Path,
    split: str = "train",
    max_side: int = 1024,
    min_area: int = 16,
    seed: int = 0,
    complex: bool = False,
) -> SegDataset:
    """find_records + check_record on each; bad pairs skipped with a warning each, DataError if
    more than half are bad (probably the wrong folder, not a few broken files)."""
    records = find_records(root, split, complex)
    good, bad = [], []
    for r in records:
        why = check_record(r)
        if why is None:
            good.append(r)
        else:
            bad.append(why)
            warnings.warn(f"skipping: {why}", stacklevel=2)
    if len(bad) * 2 > len(records):
        raise DataError(
            f"{root}: {len(bad)} of {len(records)} '{split}' images are bad, e.g. {bad[0]}"
        )
    return SegDataset(good, max_side, min_area, seed)


# ----------------------------------------------------------------------------- demo data


def _demo_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lab photo: BGR image (H, W, 3) uint8 and LabPics instance map (H, W, 3)
    uint8 with material ids in channel 0 and vessel ids in channel 2."""
    h, w = [(240, 320), (320, 240), (300, 400), (360, 480), (480, 360), (480, 640)][rng.integers(6)]
    # textured background: smooth blotches + a lighting gradient + pixel noise
    low = rng.uniform(40, 200, (4, 5, 3)).astype(np.float32)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += np.linspace(-25, 25, w, dtype=np.float32)[None, :, None]
    bg += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    img = bg
    ann = np.zeros((h, w, 3), np.uint8)
    n_vessels = int(rng.integers(1, 4))
    slot = w // n_vessels
    mat_id = 0
    for v in range(n_vessels):
        vw = int(rng.uniform(0.5, 0.85) * slot)
        vh = int(rng.uniform(0.45, 0.8) * h)
        x0 = v * slot + int(rng.integers(0, slot - vw + 1))
        y0 = int(rng.integers(int(0.05 * h), h - vh))
        shape = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:  # flask-like ellipse
            cv2.ellipse(shape, (x0 + vw // 2, y0 + vh // 2), (vw // 2, vh // 2), 0, 0, 360, 1, -1)
        else:  # beaker: rounded rectangle = rectangles + corner circles
            r = max(2, min(vw, vh) // 6)
            cv2.rectangle(shape, (x0 + r, y0), (x0 + vw - r, y0 + vh), 1, -1)
            cv2.rectangle(shape, (x0, y0 + r), (x0 + vw, y0 + vh - r), 1, -1)
            for cx, cy in [
                (x0 + r, y0 + r),
                (x0 + vw - r, y0 + r),
                (x0 + r, y0 + vh - r),
                (x0 + vw - r, y0 + vh - r),
            ]:
                cv2.circle(shape, (cx, cy), r, 1, -1)
        inside = shape.astype(bool)
        # glass: slightly brighter, bluish see-through body, light rim, one highlight streak
        img[inside] = img[inside] * 0.8 + np.array([235, 225, 215], np.float32) * 0.2
        rim = cv2.morphologyEx(shape, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
        img[rim] = 235
        img[y0 + vh // 6 : y0 + vh - vh // 6, x0 + vw // 5 : x0 + vw // 5 + 2][
            inside[y0 + vh // 6 : y0 + vh - vh // 6, x0 + vw // 5 : x0 + vw // 5 + 2]
        ] = 245
        ann[inside, 2] = v + 1
        # 1-3 liquid phases stacked from the bottom, each a horizontal band of one colour
        top = y0 + int(rng.uniform(0.2, 0.6) * vh)
        cuts = np.sort(rng.integers(top, y0 + vh, int(rng.integers(0, 3))))
        edges = [top, *cuts.tolist(), y0 + vh + 1]
        interior = cv2.erode(shape, np.ones((5, 5), np.uint8)).astype(bool)
        for a, b in itertools.pairwise(edges):
            band = np.zeros((h, w), bool)
            band[a:b] = True
            band &= interior
            if band.sum() < 30:
                continue
            mat_id += 1
            colour = rng.uniform(20, 235, 3).astype(np.float32)
            img[band] = img[band] * 0.25 + colour * 0.75 + rng.normal(0, 4, (band.sum(), 1))
            ann[band, 0] = mat_id
    return np.clip(img, 0, 255).astype(np.uint8), ann


def _write(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    ok, buf = cv2.imencode(path.suffix, img, params or [])
    if not ok:
        raise DataError(f"{path}: could not encode")
    buf.tofile(path)  # tofile: non-ASCII paths work, unlike cv2.imwrite on some platforms


def make_demo(root: str | Path, n_train: int = 16, n_test: int = 6, seed: int = 0) -> Path:
    """Write a deterministic synthetic LabPics V1 style dataset (Simple/Train, Simple/Test) of
    vessels with 1-3 liquid phases; returns root."""
    root = Path(root)
    for split, n in (("Train", n_train), ("Test", n_test)):
        (root / "Simple" / split / "Image").mkdir(parents=True, exist_ok=True)
        (root / "Simple" / split / "Instance").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split == "Test", i])
            img, ann = _demo_image(rng)
            name = f"demo_{split.lower()}_{i:03d}"
            _write(
                root / "Simple" / split / "Image" / f"{name}.jpg",
                img,
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            _write(root / "Simple" / split / "Instance" / f"{name}.png", ann)
    return root


# ----------------------------------------------------------------------------- summary / CLI


def _count_instances(record: Record) -> tuple[int, list[str]]:
    """Instances in an image's annotation (before min_area) and the COCO annotations skipped;
    DataError if a file is bad."""
    why = check_record(record)
    if why is not None:
        raise DataError(why)
    if record.format == "coco":
        w, h = _image_size(record.image)
        masks, skipped = _coco_masks(record, h, w)
        return masks.shape[-1], skipped
    ids = np.unique(read_label_map(record.annotation, labpics=record.format == "labpics"))
    return int((ids != 0).sum()), []


def summarize(root: str | Path, complex: bool = False) -> str:
    """Human-readable report: format, which source is which split, images and instances per
    split, skipped files and annotations, images without instances. DataError if unreadable."""
    root = Path(root)
    fmt = detect_format(root)
    if fmt == "video":
        return summarize_videos(root)
    parts = _parts(root, fmt, complex)
    lines = [f"data:    {root} ({fmt} layout)"]
    lines += [f"source:  {s} -> {t or '80% train / 20% test by name hash'}" for s, t, _ in parts]
    bad_files, bad_anns, empty = [], [], []
    for split in ("train", "test"):
        counts = []
        for r in _pick(parts, split):
            try:
                n, notes = _count_instances(r)
            except DataError as e:
                bad_files.append(f"  {e}")
                continue
            counts.append(n)
            bad_anns += [f"  {r.image}: {note}" for note in notes]
            empty += [] if n else [r.image.name]
        c = np.array(counts or [0])
        lines.append(
            f"{split + ':':8} {len(counts)} images, instances per image "
            f"min {c.min()} / mean {c.mean():.1f} / max {c.max()} (before min_area)"
            if counts
            else f"{split + ':':8} no images"
        )
    if empty:
        names = ", ".join(empty[:10]) + (f", ... ({len(empty) - 10} more)" if empty[10:] else "")
        lines.append(f"{len(empty)} images without instances (not trained on): {names}")
    lines.append(f"skipped: {len(bad_files)} files, {len(bad_anns)} annotations")
    return "\n".join(lines + bad_files + bad_anns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Inspect a dataset, or write the demo dataset.")
    p.add_argument("data", nargs="?", help="dataset path (LabPics root, folder or COCO json)")
    p.add_argument("--make-demo", metavar="DIR", help="write the synthetic demo dataset to DIR")
    p.add_argument("--make-video-demo", metavar="DIR", help="write synthetic demo videos to DIR")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complex", action="store_true", help="LabPics: also use Complex/")
    args = p.parse_args(argv)
    if not (args.data or args.make_demo or args.make_video_demo):
        p.print_usage(sys.stderr)
        print("error: give a dataset path or --make-demo DIR", file=sys.stderr)
        return 2
    try:
        if args.make_demo:
            out = make_demo(args.make_demo, args.n_train, args.n_test, args.seed)
            print(f"wrote demo dataset to {out}")
        if args.make_video_demo:
            print(f"wrote demo videos to {make_video_demo(args.make_video_demo, seed=args.seed)}")
        if args.data:
            print(summarize(args.data, args.complex))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- videos
#
# --recipe video data: DAVIS 2017 (ROOT/JPEGImages[/480p]/<video>/00000.jpg + ROOT/Annotations
# [/480p]/<video>/00000.png, split by ROOT/ImageSets/2017/{train,val}.txt), YouTube-VOS and MOSE
# (the same under ROOT/train/ and ROOT/valid/; a valid/ annotated on first frames only cannot be
# scored). Otherwise 20% of the videos by name hash are validation. Label PNGs hold object ids
# (0 background, 255 void); a frame without one has no ground truth (YouTube-VOS: every 5th has).

VOID = 255
VIDEO_DIRS = ("JPEGImages", "Annotations")


@dataclass
class Video:
    """One video: its frames in order and the label PNG of each (None: not annotated)."""

    name: str
    frames: list[Path]
    labels: list[Path | None]


def _video_parts(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(frames folder, annotations folder, split or None) of each part of a video dataset."""
    if all((root / d).is_dir() for d in VIDEO_DIRS):
        level = next(
            (n for n in ("480p", "Full-Resolution") if (root / VIDEO_DIRS[0] / n).is_dir()), ""
        )
        return [(root / VIDEO_DIRS[0] / level, root / VIDEO_DIRS[1] / level, None)]
    return [
        (root / d / VIDEO_DIRS[0], root / d / VIDEO_DIRS[1], SPLIT_WORDS[d])
        for d in ("train", "valid", "val")
        if all((root / d / v).is_dir() for v in VIDEO_DIRS)
    ]


def _videos_in(frames_dir: Path, ann_dir: Path) -> list[Video]:
    def order(p: Path):  # 5.jpg before 10.jpg, like SAM 2's frame loader
        return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)

    out = []
    for d in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        frames = sorted(_images_in(d), key=order)
        anns = {p.stem: p for p in _images_in(ann_dir / d.name) if p.suffix.lower() == ".png"}
        out.append(Video(d.name, frames, [anns.get(f.stem) for f in frames]))
    return out


def find_videos(root: str | Path, split: str = "train") -> tuple[list[Video], str]:
    """The videos of one split ('train', 'test'/'val' or 'all') and how the split was made."""
    root, split = Path(root), _norm_split(split)
    parts = [(_videos_in(f, a), s) for f, a, s in _video_parts(root)]
    if not parts:
        raise DataError(f"{root}: no video layout (JPEGImages/ + Annotations/) found\n{LAYOUTS}")
    lists = sorted((root / "ImageSets").glob("*/train.txt"))
    if lists and parts[0][1] is None:
        names = {
            s: lists[-1].with_name(f) for s, f in (("train", "train.txt"), ("test", "val.txt"))
        }
        keep = {s: set(p.read_text().split()) if p.is_file() else set() for s, p in names.items()}
        how = f"split lists {lists[-1].parent.relative_to(root)}/"
        return [v for v in parts[0][0] if split == "all" or v.name in keep[split]], how
    scorable = any(
        s == "test" and sum(a is not None for a in v.labels) > 1 for vs, s in parts for v in vs
    )
    if scorable:
        return [v for vs, s in parts for v in vs if split in (s, "all")], "train/ and valid/"
    videos = [v for vs, s in parts if s != "test" for v in vs]
    order = sorted(videos, key=lambda v: hashlib.md5(v.name.encode()).hexdigest())
    test = {v.name for v in order[: max(1, round(0.2 * len(videos))) if len(videos) > 1 else 0]}
    chosen = [v for v in videos if split == "all" or (v.name in test) == (split == "test")]
    how = "80% train / 20% validation by name hash"
    return chosen, how + (" (valid/ has first-frame annotations only)" if len(parts) > 1 else "")


def check_video(video: Video) -> tuple[Video, list[str]]:
    """The video without its bad frames (check_record on the frame and its annotation), and why
    each was dropped."""
    good, bad = [], []
    for f, a in zip(video.frames, video.labels):
        why = check_record(Record(f, a, "folder") if a else Record(f, None, "coco"))
        (bad if why else good).append(why or (f, a))
    return Video(video.name, [f for f, _ in good], [a for _, a in good]), bad


def load_videos(root: str | Path, split: str = "train") -> list[Video]:
    """find_videos with bad frames dropped and videos without an annotated frame skipped, each
    with a warning naming it; DataError if no video is left."""
    out = []
    for v in find_videos(root, split)[0]:
        v, bad = check_video(v)
        for why in bad:
            warnings.warn(f"skipping frame: {why}", stacklevel=2)
        if any(v.labels):
            out.append(v)
        else:
            warnings.warn(f"skipping video {v.name}: no readable annotated frame", stacklevel=2)
    if not out:
        raise DataError(f"{root}: no usable video in split '{split}'")
    return out


def object_ids(labels: np.ndarray) -> np.ndarray:
    """The object ids a label map shows (not 0, not VOID), sorted."""
    return np.setdiff1d(labels, [0, VOID])


def video_labels(video: Video, t: int) -> np.ndarray | None:
    """Frame t's object ids (H, W) uint16 (0 background, VOID ignored), None if not annotated."""
    return None if video.labels[t] is None else read_label_map(video.labels[t]).astype(np.uint16)


def summarize_videos(root: str | Path) -> str:
    """`python data.py` for a video dataset: the split, and per split the videos, frames (with
    ground truth), objects per video and every skipped frame."""
    lines, skipped = [f"data:    {root} (video layout)"], []
    for split in ("train", "test"):
        videos, how = find_videos(root, split)
        objects, frames, annotated = [], 0, 0
        for v in videos:
            v, bad = check_video(v)
            skipped += [f"  {why}" for why in bad]
            ids = set()
            for t in range(len(v.frames)):
                if (lab := video_labels(v, t)) is not None:
                    ids |= set(object_ids(lab).tolist())
            objects.append(len(ids))
            frames, annotated = frames + len(v.frames), annotated + sum(map(bool, v.labels))
        o = np.array(objects or [0])
        lines.append(
            f"{split + ':':8} {len(videos)} videos, {frames} frames ({annotated} annotated), "
            f"objects per video min {o.min()} / mean {o.mean():.1f} / max {o.max()}"
        )
    lines.insert(1, f"split:   {how}")
    return "\n".join([*lines, f"skipped: {len(skipped)} frames", *skipped])


def make_video_demo(
    root: str | Path, n_train: int = 4, n_test: int = 1, frames: int = 4, size=(120, 160), seed=0
) -> Path:
    """Write a synthetic DAVIS-style dataset of `frames`-frame clips (size (H, W)): a disc and a
    box cross, the box passing in front (occlusion) and leaving the frame, a triangle entering
    from the left, on a textured background; palette label PNGs, ImageSets/2017 lists."""
    root, (h, w) = Path(root), size
    lists = root / "ImageSets" / "2017"
    lists.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_test)):
        names = [f"{split}{i:02d}" for i in range(n)]
        (lists / f"{split}.txt").write_text("".join(f"{v}\n" for v in names))
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, split == "val", i])
            low = rng.uniform(40, 200, (3, 4, 3)).astype(np.float32)
            bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
            y = rng.uniform(0.35, 0.65) * h
            r = rng.uniform(0.08, 0.14) * min(h, w)
            colours = rng.uniform(30, 230, (4, 3))
            for d in VIDEO_DIRS:
                (root / d / name).mkdir(parents=True, exist_ok=True)
            for t in range(frames):
                a = t / max(frames - 1, 1)
                lab = np.zeros((h, w), np.uint8)
                disc = (int((0.15 + 0.45 * a) * w), int(y))
                cv2.circle(lab, disc, int(r), 1, -1)
                tx, ty = (-0.3 + 0.7 * a) * w, 0.25 * h
                tri = np.array([[tx, ty - r], [tx - r, ty + r], [tx + r, ty + r]], np.int32)
                cv2.fillPoly(lab, [tri], 3)
                bx = int((0.9 - 1.15 * a) * w)
                cv2.rectangle(lab, (bx, int(y - r)), (bx + int(1.6 * r), int(y + r)), 2, -1)
                img = bg + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
                for k in (1, 2, 3):
                    img[lab == k] = colours[k] + rng.normal(0, 8, ((lab == k).sum(), 3))
                jpg, png = (root / d / name / f"{t:05d}" for d in VIDEO_DIRS)
                _write(jpg.with_suffix(".jpg"), np.clip(img, 0, 255).astype(np.uint8))
                label = Image.fromarray(lab)
                label.putpalette([0, 0, 0, 200, 40, 40, 40, 200, 40, 40, 40, 220])
                label.save(png.with_suffix(".png"))
    return root


if __name__ == "__main__":
    sys.exit(main())
