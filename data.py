"""Datasets for fine-tuning SAM 2: LabPics V1, instance-mask folders and COCO JSON.

    python data.py --make-demo demo_data      # small synthetic LabPics-style dataset
    python data.py demo_data                  # what was found: format, splits, instances, skips
    python data.py /data/LabPicsV1 --complex  # include the Complex/ part of LabPics
    python -m pytest -q tests/test_data.py

Layouts (picked from what the path points at, see detect_format):
    labpics: root/Simple/{Train,Test}/Image/x.jpg + root/Simple/{Train,Test}/Instance/x.png
             (instance PNG as cv2 reads it: channel 0 = material ids, channel 2 = vessel ids)
    folder:  root/images/x.jpg + root/masks/x.png (one label PNG per image, 0 = background),
             or root/{train,test|val}/{images,masks}/...
    coco:    a COCO instances JSON, or root/annotations/*.json. An image's file_name is looked up
             relative to the JSON's folder, then its images/ subfolder, then the same two beside
             the JSON's parent folder (root/images/, root/train2017/ for instances_train2017.json).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = """layouts looked for:
  labpics: ROOT/Simple/Train/Image/x.jpg + ROOT/Simple/Train/Instance/x.png (Test/ likewise)
  folder:  ROOT/images/x.jpg + ROOT/masks/x.png, or ROOT/train/{images,masks} + ROOT/test/...
  coco:    ROOT/annotations/instances_train.json + ROOT/images/x.jpg, or a path to a .json"""


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
    points (N, 2) float32 (x, y), one pixel inside each mask
    labels (N,) int32, all 1 (positive clicks)
    """

    image: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    name: str


# ----------------------------------------------------------------------------- reading files


def _read_bytes(path: Path) -> np.ndarray:
    """Whole file as uint8, after the checks that cv2 itself would silently get wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with non-ASCII paths
    if data.size == 0:
        raise DataError(f"{path}: zero-byte file")
    why = _truncated(data.tobytes())
    if why:
        raise DataError(f"{path}: {why}")
    return data


def _truncated(data: bytes) -> str | None:
    """Reason if a JPEG/PNG is cut short: some cv2/libjpeg builds decode those partially with
    only a warning, so check the end markers ourselves."""
    if data[:2] == b"\xff\xd8":
        # FF D9 can't occur inside entropy-coded data, so the end-of-image marker must follow
        # the last start-of-scan; an EXIF thumbnail's own FF D9 sits before it.
        sos = data.rfind(b"\xff\xda")
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-1024:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _decode(path: Path) -> np.ndarray:
    data = _read_bytes(path)
    # UNCHANGED keeps depth/alpha and ignores EXIF orientation, so an image and its mask (which
    # has no EXIF) always share the same pixel grid.
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise DataError(f"{path}: not a readable image (corrupt or unsupported format)")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB at file size; gray, RGBA and 16-bit are converted."""
    img = _decode(Path(path))
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(img)) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
    if img.shape[2] == 2:  # gray + alpha
        return np.ascontiguousarray(np.repeat(img[..., :1], 3, axis=2))
    return np.ascontiguousarray(img[..., 2::-1])  # BGR(A) -> RGB, alpha dropped


def labpics_merge(ann_bgr: np.ndarray) -> np.ndarray:
    """LabPics instance PNG (H, W, 3) as cv2 reads it -> (H, W) int32 instance ids, 0 = none.

    Channel 0 holds material ids, channel 2 vessel ids. A pixel with a material is that
    material; otherwise its vessel gets an id after all materials. int32 because the article's
    uint8 `vessel * (max + 1)` wraps past 255 and silently merges instances.
    """
    mat = ann_bgr[..., 0].astype(np.int32)
    ves = ann_bgr[..., 2].astype(np.int32)
    return np.where(mat > 0, mat, np.where(ves > 0, ves + mat.max(), 0)).astype(np.int32)


def read_label_map(path: str | Path) -> np.ndarray:
    """Label PNG -> (H, W) int32 instance ids, 0 = none.

    1-channel 8/16-bit: its values; palette PNG: its indices; 3/4-channel: LabPics merge.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and data.size > 25 and data[25] == 3:
        # palette PNG (PASCAL VOC style): cv2 would expand it to colours, we want the indices
        try:
            with Image.open(path) as im:
                return np.asarray(im, dtype=np.int32)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable label image ({e})") from e
    ann = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if ann is None:
        raise DataError(f"{path}: not a readable label image (corrupt or unsupported format)")
    if ann.dtype.kind not in "ui":
        raise DataError(f"{path}: label image must hold integers, got {ann.dtype}")
    if ann.ndim == 3 and ann.shape[2] in (3, 4):
        return labpics_merge(ann[..., :3])
    if ann.ndim == 3:
        ann = ann[..., 0]
    return ann.astype(np.int32)


def _new_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    r = max_side / max(h, w)  # as the article: upscales small images too
    return max(1, round(h * r)), max(1, round(w * r))


def _nearest_index(h: int, w: int, nh: int, nw: int) -> tuple[np.ndarray, np.ndarray]:
    """Source rows (nh,) and cols (nw,) for a nearest-neighbour resize by index lookup: exact
    for any dtype (int32 ids, bool), where cv2.resize has gaps."""
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    return rows, cols


def resize_longest(image: np.ndarray, max_side: int = 1024, nearest: bool = False) -> np.ndarray:
    """Scale (H, W[, C]) so the longer side == max_side -> (H', W'[, C]).

    nearest=True for label maps (ids must not blend); else area (down) / bilinear (up).
    """
    h, w = image.shape[:2]
    nh, nw = _new_size(h, w, max_side)
    if nearest:
        rows, cols = _nearest_index(h, w, nh, nw)
        return image[rows][:, cols]
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


def rle_decode(counts: list[int] | str, size: list[int]) -> np.ndarray:
    """COCO RLE (uncompressed list or compressed string), size [H, W] -> (H, W) bool.

    Runs alternate 0s and 1s (starting with 0s) over the mask in column-major order.
    """
    h, w = int(size[0]), int(size[1])
    runs = _rle_string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, expected {h}x{w} = {h * w}")
    vals = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(vals, runs)
    return flat.reshape(w, h).T.copy()


def _rle_string_to_counts(s: str) -> list[int]:
    """Compressed COCO counts: each run is a signed number in 5-bit groups (low bits first,
    0x20 = more groups follow, 0x10 of the last group = sign), stored as chr(48 + group).
    From the fourth run on, the number is the difference to the run two places back."""
    runs: list[int] = []
    i = 0
    while i < len(s):
        value, shift = 0, 0
        while True:
            group = ord(s[i]) - 48
            i += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:  # sign-extend
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def coco_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """One COCO annotation's segmentation (polygons or RLE) -> (H, W) bool."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        size = seg.get("size", [h, w])
        if [int(size[0]), int(size[1])] != [h, w]:
            raise ValueError(f"RLE size {size} != image size [{h}, {w}]")
        return rle_decode(seg["counts"], size)
    canvas = np.zeros((h, w), np.uint8)
    polys = [
        np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32)
        for p in (seg or [])
        if len(p) >= 6
    ]
    if polys:
        cv2.fillPoly(canvas, polys, 1)
    return canvas.astype(bool)


# ----------------------------------------------------------------------------- finding files


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _match_masks(images: list[Path], mask_dir: Path, fmt: str) -> list[Record]:
    """Pair images with masks by stem; an image without one gets the expected .png path so the
    error later names the file that is missing."""
    masks = {}
    for m in _images_in(mask_dir):
        if m.stem not in masks or m.suffix.lower() == ".png":
            masks[m.stem] = m
    return [Record(p, masks.get(p.stem, mask_dir / f"{p.stem}.png"), fmt) for p in images]


def _stable_key(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


def _held_out(items: list, key, split: str, fraction: float = 0.2) -> list:
    """Deterministic split without a list file: the items whose name hashes lowest are test
    (at least one when there are two or more), so adding images barely reshuffles the split."""
    if split == "all":
        return list(items)
    order = sorted(items, key=lambda it: _stable_key(key(it)))
    n_test = max(1, round(len(items) * fraction)) if len(items) >= 2 else 0
    test = {id(it) for it in order[:n_test]}
    return [it for it in items if (id(it) in test) == (split == "test")]


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


def _folder_splits(root: Path) -> dict[str, Path] | None:
    subs = {}
    for name in ("train", "test", "val"):
        d = root / name
        if (d / "images").is_dir() and (d / "masks").is_dir():
            subs["test" if name == "val" and "test" not in subs else name] = d
    return subs or None


def _coco_jsons(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = sorted((root / "annotations").glob("*.json")) or sorted(root.glob("*.json"))
    # annotations/ often also holds captions / keypoints files: prefer the instances ones
    inst = [p for p in found if "instances" in p.name.lower()]
    return inst or found


def detect_format(root: str | Path) -> str:
    """'labpics' | 'folder' | 'coco' from what root points at; DataError if none fits."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder\n{LAYOUTS}")
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DataError(f"{root}: is a file but not a COCO .json\n{LAYOUTS}")
    if _labpics_base(root) is not None:
        return "labpics"
    if ((root / "images").is_dir() and (root / "masks").is_dir()) or _folder_splits(root):
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
    try:
        with open(js, encoding="utf-8") as f:
            d = json.load(f)
        images, anns = d["images"], d.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{js}: not a readable COCO instances JSON ({e!r})") from e
    per_image: dict = {im["id"]: [] for im in images}
    for a in anns:
        if a.get("image_id") in per_image:
            per_image[a["image_id"]].append(a)
    dirs = _coco_image_dirs(js)
    out = []
    for im in images:
        cands = [dd / im["file_name"] for dd in dirs]
        path = next((c for c in cands if c.is_file()), cands[0])
        out.append(
            Record(
                path,
                None,
                "coco",
                per_image[im["id"]],
                int(im.get("width", 0)) or None,
                int(im.get("height", 0)) or None,
            )
        )
    return out


def find_records(root: str | Path, split: str = "train", complex: bool = False) -> list[Record]:
    """All (image, annotation) records of one split ('train', 'test'/'val', or 'all')."""
    root = Path(root)
    fmt = detect_format(root)
    split = _norm_split(split)
    if fmt == "labpics":
        base = _labpics_base(root)
        parts = ["Simple", "Complex"] if complex else ["Simple"]
        sub = {"train": ["Train"], "test": ["Test"], "all": ["Train", "Test"]}[split]
        recs = [
            r
            for part in parts
            for s in sub
            for r in _match_masks(
                _images_in(base / part / s / "Image"), base / part / s / "Instance", fmt
            )
        ]
    elif fmt == "folder":
        subs = _folder_splits(root)
        if subs:
            names = list(subs) if split == "all" else [split]
            recs = [
                r
                for n in names
                if n in subs
                for r in _match_masks(_images_in(subs[n] / "images"), subs[n] / "masks", fmt)
            ]
        else:
            recs = _match_masks(_images_in(root / "images"), root / "masks", fmt)
            recs = _held_out(recs, lambda r: r.image.name, split)
    else:
        jsons = _coco_jsons(root)
        tagged = {
            "train": [j for j in jsons if "train" in j.stem.lower()],
            "test": [j for j in jsons if "val" in j.stem.lower() or "test" in j.stem.lower()],
        }
        if root.is_dir() and tagged["train"] and tagged["test"]:
            use = jsons if split == "all" else tagged[split]
            recs = [r for j in use for r in _coco_records(j)]
        else:  # one JSON (or untagged ones): held-out fraction over all its images
            recs = [r for j in jsons for r in _coco_records(j)]
            recs = _held_out(recs, lambda r: r.image.name, split)
    ok = [r for r in recs if r.format == "coco" or (r.annotation and r.annotation.is_file())]
    if not ok:
        raise DataError(
            f"{root}: found the {fmt} layout but no image-annotation pairs for split "
            f"'{split}' ({len(recs)} images without annotations)\n{LAYOUTS}"
        )
    return recs


# ----------------------------------------------------------------------------- samples


def _load(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 and instances at file size: a (H, W) int32 label map (labpics,
    folder) or (N, H, W) bool masks (coco, where instances may overlap). DataError names files."""
    image = read_rgb(record.image)
    h, w = image.shape[:2]
    if record.format == "coco":
        if (record.width, record.height) not in ((None, None), (w, h)):
            raise DataError(
                f"{record.image}: image is {w}x{h} but its COCO entry says "
                f"{record.width}x{record.height}"
            )
        masks = []
        for a in record.coco or []:
            if a.get("iscrowd", 0):  # crowd regions mark many objects at once: not an instance
                continue
            try:
                masks.append(coco_mask(a, h, w))
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{record.image}: bad COCO annotation id {a.get('id')}: {e}") from e
        return image, np.stack(masks) if masks else np.zeros((0, h, w), bool)
    if record.annotation is None or not Path(record.annotation).is_file():
        raise DataError(f"{record.image}: missing annotation {record.annotation}")
    lab = read_label_map(record.annotation)
    if lab.shape != (h, w):
        raise DataError(
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {lab.shape[1]}x{lab.shape[0]}"
        )
    return image, lab


def read_sample(record: Record, max_side: int = 1024, min_area: int = 16, seed: int = 0) -> Sample:
    """Decode, resize (longer side -> max_side), drop instances < min_area px, pick one click
    per instance. Sample: image (H, W, 3) uint8, masks (N, H, W) bool, points (N, 2) float32,
    labels (N,) int32."""
    image, inst = _load(record)
    h, w = image.shape[:2]
    nh, nw = _new_size(h, w, max_side)
    image = resize_longest(image, max_side)
    rows, cols = _nearest_index(h, w, nh, nw)
    min_area = max(min_area, 1)
    if inst.ndim == 2:
        # resize the label map before splitting it: a big photo with many instances would
        # otherwise need N full-size masks
        lab = inst[rows][:, cols]
        ids, areas = np.unique(lab, return_counts=True)
        ids = ids[(ids != 0) & (areas >= min_area)]
        masks = lab[None] == ids[:, None, None]
    else:
        masks = inst[:, rows][:, :, cols]
        masks = masks[masks.sum((1, 2)) >= min_area]
    gen = torch.Generator().manual_seed(int(seed))
    points = sample_points(torch.from_numpy(masks), gen).numpy()
    return Sample(
        image,
        np.ascontiguousarray(masks),
        points.astype(np.float32),
        np.ones(len(masks), np.int32),
        str(record.image),
    )


class SegDataset(torch.utils.data.Dataset):
    """Records -> Samples; a bad file gives None (and a warning) instead of killing training."""

    def __init__(
        self, records: list[Record], max_side: int = 1024, min_area: int = 16, seed: int = 0
    ):
        self.records, self.max_side, self.min_area, self.seed = records, max_side, min_area, seed
        self.skipped: list[tuple[str, str]] = []  # (file, why) found by load_split's check

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


def collate(batch: list[Sample | None]) -> list[Sample]:
    """DataLoader collate_fn: images differ in size and instance count, so keep a list; bad
    files (None) and images without instances are dropped."""
    return [s for s in batch if s is not None and len(s.masks) > 0]


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the header only, without EXIF rotation (same grid as read_rgb)."""
    with Image.open(path) as im:
        return im.size


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
                head = f.read(8)
                f.seek(0, 2)
                if f.tell() == 0:
                    return f"{p}: zero-byte file"
                f.seek(max(0, f.tell() - 1024))
                tail = f.read()
        except OSError as e:
            return f"{p}: unreadable ({e})"
        if head[:2] == b"\xff\xd8":
            # reading the whole JPEG here would cost as much as decoding it; the loader checks
            # the real marker order, this catches the common cut-off download
            if b"\xff\xd9" not in tail:
                return f"{p}: truncated JPEG (no end-of-image marker)"
        elif _truncated(head + tail):
            return f"{p}: {_truncated(head + tail)}"
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
        aw, ah = _image_size(record.annotation)
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
    good, skipped = [], []
    for r in records:
        why = check_record(r)
        if why is None:
            good.append(r)
        else:
            skipped.append((str(r.image), why))
            warnings.warn(f"skipping: {why}", stacklevel=2)
    if len(skipped) * 2 > len(records):
        raise DataError(
            f"{root}: {len(skipped)} of {len(records)} '{split}' images are bad, "
            f"e.g. {skipped[0][1]}"
        )
    ds = SegDataset(good, max_side, min_area, seed)
    ds.skipped = skipped
    return ds


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


def _count_instances(record: Record) -> int:
    if record.format == "coco":
        return sum(1 for a in record.coco or [] if not a.get("iscrowd", 0))
    ids = np.unique(read_label_map(record.annotation))
    return int((ids != 0).sum())


def summarize(root: str | Path, complex: bool = False) -> str:
    """Human-readable report: format, images per split, instances per image, skipped files."""
    fmt = detect_format(root)
    lines = [f"data:    {root} ({fmt} layout)"]
    skipped: list[str] = []
    for split in ("train", "test"):
        try:
            records = find_records(root, split, complex)
        except DataError:
            lines.append(f"{split + ':':8} no images")
            continue
        counts = []
        for r in records:
            why = check_record(r)
            if why is None:
                try:
                    counts.append(_count_instances(r))
                except DataError as e:
                    why = str(e)
            if why is not None:
                skipped.append(f"  {why}")
        c = np.array(counts or [0])
        lines.append(
            f"{split + ':':8} {len(counts)} images, instances per image "
            f"min {c.min()} / mean {c.mean():.1f} / max {c.max()} (before min_area)"
        )
    lines.append(f"skipped: {len(skipped)} files" + (":" if skipped else ""))
    return "\n".join(lines + skipped)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Inspect a dataset, or write the demo dataset.")
    p.add_argument("data", nargs="?", help="dataset path (LabPics root, folder or COCO json)")
    p.add_argument("--make-demo", metavar="DIR", help="write the synthetic demo dataset to DIR")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complex", action="store_true", help="LabPics: also use Complex/")
    args = p.parse_args(argv)
    if not args.data and not args.make_demo:
        p.print_usage(sys.stderr)
        print("error: give a dataset path or --make-demo DIR", file=sys.stderr)
        return 2
    try:
        if args.make_demo:
            out = make_demo(args.make_demo, args.n_train, args.n_test, args.seed)
            print(f"wrote demo dataset to {out}")
        if args.data:
            print(summarize(args.data, args.complex))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
