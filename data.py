"""Datasets for fine-tuning SAM 2, read as the annotation tools write them: LabPics V1, label-PNG
folders, Pascal VOC, COCO (CVAT, Roboflow, detectron2) and COCO panoptic, YOLO segmentation
(Ultralytics, Roboflow, datumaro), labelme and SA-1B (SAM's own format).

    python data.py --make-demo demo_data      # small synthetic LabPics-style dataset
    python data.py demo_data                  # what was found: layout, splits, instances, skips
    python data.py /data/LabPicsV1 --complex  # include the Complex/ part of LabPics
    python data.py cvat_export --crowd-instances  # CVAT's COCO export: its masks are crowd regions
    python data.py --make-video-demo demo_videos && python data.py demo_videos  # videos
    python -m pytest -q tests/test_data.py

The layout is picked from what the path points at: the first entry of LAYOUTS whose detect()
accepts it (each entry: which tool writes it and what it looks like; the README has the table).
Splits: parts named train (Train/, train/, instances_train*.json, *_trainval.json) and val (val/,
valid/, instances_val*.json) are the two splits, a test part being the validation split only where
there is no val part; all other images are split 80/20 by a hash of their file names. Images are
read as cv2.imread reads them (EXIF orientation applied); label PNGs are never rotated. Every
instance is decoded and resized one at a time, so memory follows the resized output.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PureWindowsPath

import cv2
import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGES_MASKS = ("images", "masks")  # the folder layout's two subfolders
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
END_MARKERS = {
    b"\xff\xd8": ("JPEG", b"\xff\xd9"),
    PNG_SIGNATURE[:2]: ("PNG", b"IEND"),
}  # start -> (kind, end)
# whole words of a part's name that tag its split ("instances_trainval2017" -> train)
SPLIT_WORDS = {"train": "train", "trainval": "train", "training": "train", "test": "test"}
SPLIT_WORDS |= {"val": "val", "valid": "val", "validation": "val", "minival": "val"}
LABELME_REGIONS = ("polygon", "rectangle", "circle", "oriented_rectangle", "mask")
# instances read per image at most, in file order (the rest are left out and counted): each
# kept one costs up to 1 MiB at 1024 px in every sample, and SA-1B-style files hold hundreds
MAX_INSTANCES = 1000


class DataError(Exception):
    """A dataset file or folder is missing, unreadable or inconsistent (the message names it)."""


@dataclass(frozen=True)
class Options:
    """How a dataset is read: the data flags of data.py and train.py."""

    complex: bool = False  # LabPics: add the Complex/ part
    crowd: bool = False  # COCO crowd regions (iscrowd=1) are instances too (CVAT's masks are)
    ignore_index: int = 255  # this value of an 8-bit or palette label PNG is no instance; -1: none
    stuff: bool = False  # COCO panoptic: stuff segments (isthing 0) are instances too

    def __post_init__(self):
        if not -1 <= self.ignore_index <= 255:
            raise ValueError(f"--ignore-index must be -1 (none) or 0-255, got {self.ignore_index}")


@dataclass
class Record:
    """One image and its annotation, as found on disk (nothing decoded yet)."""

    image: Path
    annotation: Path | None  # label / LabPics / panoptic PNG, YOLO .txt, labelme / SA-1B .json
    format: str  # its reader: labpics | folder | voc (label PNGs), coco | panoptic | yolo |
    # labelme | sa1b
    coco: list[dict] | None = None  # this image's COCO annotations that are read
    width: int | None = None  # image size the COCO JSON claims
    height: int | None = None
    ignore_index: int = -1  # label PNGs: this 8-bit value is no instance (-1: none)
    crowd: list[dict] = field(default_factory=list)  # COCO crowd annotations left out
    looked_in: tuple[Path, ...] = ()  # COCO: the folders searched for the image
    stuff: list[dict] = field(default_factory=list)  # COCO panoptic stuff segments left out
    embedded: bool = False  # labelme: the image is the JSON's imageData (no image file)


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


def _read_json(path: Path, what: str):
    """Parsed JSON; DataError naming the file and, for bad JSON, the line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        why = f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        raise DataError(f"{path}: not a readable {what}: {why}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a readable {what}: not UTF-8 text") from None


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file (list files, YOLO labels); undecodable bytes kept as
    os.fsdecode keeps them, so a listed non-UTF-8 file name still finds its file."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _decode_rgb(data: np.ndarray, name: str | Path) -> np.ndarray:
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    return np.ascontiguousarray(img[..., ::-1])


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB exactly as cv2.imread reads it: EXIF orientation
    applied, gray / alpha / 16-bit converted. cv2 refuses cut-off files itself."""
    return _decode_rgb(_read_bytes(Path(path)), path)


def _embedded_bytes(record: Record) -> bytes:
    """A labelme JSON's imageData (base64 of the image file), decoded."""
    d = _read_json(record.annotation, "labelme JSON")
    try:
        return base64.b64decode(d["imageData"], validate=True)
    except (binascii.Error, TypeError, KeyError, ValueError):
        raise DataError(f"{record.annotation}: 'imageData' is not base64 image data") from None


def record_rgb(record: Record) -> np.ndarray:
    """A record's image (H, W, 3) uint8 RGB: its file, or labelme's embedded imageData."""
    if not record.embedded:
        return read_rgb(record.image)
    name = f"imageData of {record.annotation}"
    return _decode_rgb(np.frombuffer(_embedded_bytes(record), np.uint8), name)


def labpics_merge(ann_bgr: np.ndarray) -> np.ndarray:
    """LabPics instance PNG (H, W, 3) as cv2 reads it -> (H, W) int32 instance ids, 0 = none.

    Channel 0 holds material ids, channel 2 vessel ids. A pixel with a material is that
    material; otherwise its vessel gets an id after all materials. int32 because the article's
    uint8 `vessel * (max + 1)` wraps past 255 and silently merges instances.
    """
    mat = ann_bgr[..., 0].astype(np.int32)
    ves = ann_bgr[..., 2].astype(np.int32)
    return np.where(mat > 0, mat, np.where(ves > 0, ves + mat.max(), 0)).astype(np.int32)


def _colour_keys(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int64 keys ordered as (B, G, R) values, black 0."""
    c = bgr.astype(np.int64)  # 16 bits a channel fit side by side
    return (c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2]


def _colour_ids(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int32 ids: black 0, the others 1..K by (B, G, R) value."""
    keys, ids = np.unique(_colour_keys(bgr), return_inverse=True)
    return (ids.reshape(bgr.shape[:2]) + int(keys[0] != 0)).astype(np.int32)


def _decode_label(path: Path) -> np.ndarray:
    """Label PNG -> (H, W) values (1-channel; palette: indices) or (H, W, C >= 3) BGR(A)."""
    data = _read_bytes(path)
    if data[:8].tobytes() == PNG_SIGNATURE and data.size > 25 and data[25] == 3:
        # palette PNG (PASCAL VOC style): cv2 would expand it to colours, we want the indices
        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable label image ({e})") from e
    lab = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # keeps depth and channels, ignores EXIF
    if lab is None:
        raise DataError(f"{path}: not a readable label image (corrupt or unsupported format)")
    if lab.dtype.kind not in "ui":
        raise DataError(f"{path}: label image must hold integers, got {lab.dtype}")
    return lab if lab.ndim == 2 or lab.shape[2] >= 3 else lab[..., 0]


def read_label_map(path: str | Path, labpics: bool = False, ignore_index: int = -1) -> np.ndarray:
    """Label PNG -> (H, W) int32 instance ids, 0 = none; never EXIF-rotated.

    1-channel 8/16-bit: its values; palette PNG: its indices; 3/4-channel: each distinct colour
    one instance (black = none, alpha ignored), or with labpics=True the LabPics merge.
    ignore_index (> 0): that value of an 8-bit or palette PNG becomes 0 (VOC's void border, 255);
    a 16-bit PNG's values are all ids.
    """
    lab = _decode_label(Path(path))
    if lab.ndim == 3:
        return labpics_merge(lab) if labpics else _colour_ids(lab[..., :3])
    out = lab.astype(np.int32)
    if ignore_index > 0 and lab.dtype == np.uint8:
        out[lab == ignore_index] = 0
    return out


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


def sample_points(
    masks: torch.Tensor, generator: torch.Generator | None = None, check: bool = True
) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 2) float32 (x, y): one uniformly random pixel in each mask.

    Inverse-CDF over the flattened mask: draw u ~ U[0, 1) per mask, take the k-th set pixel with
    k = floor(u * area). Needs only N random numbers, drawn on the generator's device and moved,
    so a CPU generator gives the same points for CPU and CUDA masks. check=False skips the
    empty-mask check, a host sync (an empty mask then gives (0, 0)).
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float32, device=masks.device)
    w = masks.shape[-1]
    flat = masks.reshape(n, -1).bool()
    csum = flat.cumsum(1, dtype=torch.int32)  # (N, H*W), non-decreasing: searchsorted-able
    area = csum[:, -1]
    if check and bool((area == 0).any()):
        raise ValueError("sample_points: got an empty mask, it has no pixel to click on")
    gen_device = generator.device if generator is not None else masks.device
    u = torch.rand(n, generator=generator, device=gen_device).to(masks.device)
    k = (u * area).long().minimum(area.long() - 1)  # (N,) 0-based rank
    idx = torch.searchsorted(csum, (k + 1).to(torch.int32)[:, None]).squeeze(1)
    return torch.stack([idx % w, idx // w], dim=1).float()


# ----------------------------------------------------------------------------- instance readers
# Each yields an image's instance masks, (H, W) bool at the image's size, one at a time, and
# appends to `skipped` why an annotation gave none. Label-PNG layouts are read as a label map.


def _rle_length(counts: list[int] | str | bytes) -> int:
    """Pixels an RLE's runs cover (pycocotools' decode() leaves the tail of a short one
    uninitialised, random pixels). A compressed string is read as pycocotools' rleFrString
    reads it: 5 bits a character, 0x20 = more characters follow, 0x10 on the last = negative,
    and from the third run on each stored as the difference to the run two before."""
    if isinstance(counts, list):
        return sum(counts)
    s = counts.encode() if isinstance(counts, str) else counts
    runs, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more and p < len(s):
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + (runs[-2] if len(runs) > 2 else 0))
    return sum(runs)


def _is_polygon(p) -> bool:
    return isinstance(p, list) and len(p) % 2 == 0 and all(isinstance(v, int | float) for v in p)


def _far_off(xy: list[float], h: int, w: int) -> str | None:
    """Why points [x0, y0, x1, y1, ...] cannot be drawn: a coordinate that is not finite or
    lies farther outside the image than its own size (pycocotools allocates per pixel of an
    edge's length: one 1e12 coordinate costs tens of GB). None if they can."""
    for k, v in enumerate(xy):
        side = (w, h)[k % 2]
        if not math.isfinite(v) or not -side <= v <= 2 * side:
            return f"coordinate {v!r:.20} is not finite or far outside the {w}x{h} image"
    return None


def coco_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """One COCO annotation's segmentation (polygons, RLE compressed or not) -> (H, W) bool.
    Raises ValueError (or pycocotools' own errors) saying why there is no usable mask."""
    seg = ann.get("segmentation")
    if not seg:
        raise ValueError("no segmentation (bounding box only)")
    if isinstance(seg, list):
        if not all(map(_is_polygon, seg)):
            raise ValueError("'segmentation' is a list but not of polygons [x0, y0, x1, y1, ...]")
        polys = [p for p in seg if len(p) >= 6]  # under 3 points frPyObjects would read a box
        if not polys:
            raise ValueError("no polygon of 3 or more points")
        for k, p in enumerate(seg):
            if len(p) >= 6 and (why := _far_off(p, h, w)):
                raise ValueError(f"polygon {k}: {why}")
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))) > 0
    if not isinstance(seg, dict):
        raise ValueError(f"'segmentation' must be polygons or an RLE, got {type(seg).__name__}")
    if seg.get("size") != [h, w]:
        raise ValueError(f"RLE size {seg.get('size')} != image size [{h}, {w}]")
    counts = seg.get("counts")
    uncompressed = isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
    if not (uncompressed or isinstance(counts, str | bytes)):
        raise ValueError("RLE 'counts' must be a list of run lengths or a compressed string")
    n = _rle_length(counts)
    if n != h * w:
        raise ValueError(f"RLE runs cover {n} pixels, not the image's {h}x{w} = {h * w}")
    # uncompressed (CVAT and datumaro write those) -> compressed, which decode() takes
    return mask_utils.decode(mask_utils.frPyObjects(seg, h, w) if uncompressed else seg) > 0


def _capped(items: list, skipped: list[str], what: str = "annotations") -> list:
    """The first MAX_INSTANCES items; how many more were left out goes to skipped."""
    if len(items) > MAX_INSTANCES:
        n = len(items) - MAX_INSTANCES
        skipped.append(f"{n} {what} after the first {MAX_INSTANCES} left out (data.MAX_INSTANCES)")
    return items[:MAX_INSTANCES]


def _rle_instances(anns: list, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """COCO-style annotations (polygons or RLE 'segmentation'), the first MAX_INSTANCES."""
    for a in _capped(anns, skipped):
        try:
            m = coco_mask(a, h, w) if isinstance(a, dict) else None
        except Exception as e:  # pycocotools raises bare Exception for unsupported input
            skipped.append(f"annotation id {a.get('id')}: {e}")
            continue
        if m is None:
            skipped.append(f"annotation {a!r:.40}: not an object")
            continue
        yield m


def _coco_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """COCO: each annotation kept when the file was read (crowd regions only with --crowd)."""
    return _rle_instances(record.coco or [], h, w, skipped)


def _sa1b_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """SA-1B (SAM's own format, one JSON per image): an 'image' record (width, height) and
    'annotations', each an RLE 'segmentation' as COCO's."""
    d = _read_json(record.annotation, "SA-1B JSON")
    if not isinstance(d, dict) or not isinstance(d.get("annotations"), list):
        raise DataError(f"{record.annotation}: not an SA-1B JSON (no 'annotations' list)")
    im = d.get("image") if isinstance(d.get("image"), dict) else {}
    if (im.get("height"), im.get("width")) not in ((None, None), (h, w)):
        raise DataError(
            f"{record.image} is {w}x{h} but {record.annotation} says "
            f"{im.get('width')}x{im.get('height')}"
        )
    yield from _rle_instances(d["annotations"], h, w, skipped)


def _panoptic_ids(record: Record, h: int, w: int) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG: R + 256 G + 256^2 B; never rotated."""
    lab = cv2.imdecode(_read_bytes(record.annotation), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.dtype != np.uint8 or lab.ndim != 3:
        raise DataError(f"{record.annotation}: not a readable COCO panoptic PNG (8-bit RGB)")
    if lab.shape[:2] != (h, w):
        raise DataError(
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {lab.shape[1]}x{lab.shape[0]}"
        )
    b, g, r = (lab[..., c].astype(np.int64) for c in range(3))  # cv2's channel order
    return r + 256 * g + 65536 * b


def _panoptic_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """COCO panoptic: each segment kept when the JSON was read is the pixels of its id."""
    segments = _capped(record.coco or [], skipped, "segments")
    if not segments:
        return
    ids = _panoptic_ids(record, h, w)
    for seg in segments:
        m = ids == seg.get("id")
        if m.any():
            yield m
        else:
            skipped.append(
                f"segment id {seg.get('id')}: no pixel of it in {record.annotation.name}"
            )


def _yolo_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """Ultralytics segment label: one instance per line, `class x1 y1 x2 y2 ...` normalized to
    the image's width and height. No label file: no objects (Ultralytics: a background image)."""
    if not record.annotation.is_file():
        return
    seen = set()
    for n, line in _capped(list(enumerate(_read_lines(record.annotation), 1)), skipped, "lines"):
        try:
            v = tuple(float(x) for x in line.split())
        except ValueError:
            skipped.append(f"line {n}: not numbers")
            continue
        if len(v) == 5:
            skipped.append(f"line {n}: a box (class x y w h), no polygon")
        elif len(v) < 7 or len(v) % 2 == 0:
            skipped.append(f"line {n}: {len(v)} numbers, not a class and 3 or more x y points")
        elif not all(map(math.isfinite, v)):  # NaN passes every comparison below
            skipped.append(f"line {n}: a coordinate is not finite ({line:.60})")
        elif min(v[1:]) < -0.01 or max(v[1:]) > 1.01:  # Ultralytics' own tolerance
            skipped.append(f"line {n}: coordinates outside 0-1 (not normalized)")
        elif v in seen:  # Ultralytics drops repeated lines too
            skipped.append(f"line {n}: repeats an earlier line")
        else:
            seen.add(v)
            poly = (np.array(v[1:]).reshape(-1, 2) * (w, h)).ravel().tolist()
            yield mask_utils.decode(mask_utils.frPyObjects([poly], h, w))[..., 0] > 0


def _draw_labelme(canvas: Image.Image, shape: dict) -> None:
    """Draw one labelme shape onto an (H, W) "L" canvas as labelme's own shape_to_mask does."""
    kind, pts = shape.get("shape_type") or "polygon", shape.get("points")
    xy = [(float(x), float(y)) for x, y in pts]
    if why := _far_off([v for p in xy for v in p], canvas.height, canvas.width):
        raise ValueError(why)
    need = {"rectangle": 2, "circle": 2, "mask": 2, "oriented_rectangle": 4}.get(kind, 3)
    if len(xy) < need:
        raise ValueError(f"{len(xy)} points, a {kind} needs {need}")
    draw = ImageDraw.Draw(canvas)
    if kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=1, outline=1)
    elif kind == "circle":
        (cx, cy), (px, py) = xy
        r = ((cx - px) ** 2 + (cy - py) ** 2) ** 0.5
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1, outline=1)
    elif kind == "mask":  # a base64 PNG of the box from points[0] to points[1]
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as im:
            patch = np.asarray(im.convert("L")) > 0
        canvas.paste(1, tuple(round(c) for c in xy[0]), Image.fromarray(patch))
    else:
        draw.polygon(xy, fill=1, outline=1)


def _labelme_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """labelme: polygon, rectangle, circle and mask shapes are regions; shapes with the same
    label and group_id are one instance (labelme's own converters group them so)."""
    d = _read_json(record.annotation, "labelme JSON")
    if not isinstance(d, dict) or not isinstance(d.get("shapes"), list):
        raise DataError(f"{record.annotation}: not a labelme JSON (no 'shapes' list)")
    if (d.get("imageHeight"), d.get("imageWidth")) not in ((None, None), (h, w)):
        raise DataError(
            f"{record.image} is {w}x{h} but {record.annotation} says "
            f"{d.get('imageWidth')}x{d.get('imageHeight')}"
        )
    groups: dict = {}
    for i, s in enumerate(d["shapes"]):
        kind = s.get("shape_type") or "polygon" if isinstance(s, dict) else type(s).__name__
        if kind not in LABELME_REGIONS:
            skipped.append(f"shape {i} ({kind}): not a region")
            continue
        gid = s.get("group_id")
        if not (gid is None or isinstance(gid, int | str) and not isinstance(gid, bool)):
            skipped.append(
                f"shape {i} ({kind} '{s.get('label')}'): group_id must be an integer or null, "
                f"got {gid!r:.40}"
            )
            continue
        groups.setdefault(i if gid is None else (str(s.get("label")), gid), []).append((i, s))
    for shapes in _capped(list(groups.values()), skipped, "shape groups"):
        canvas, drawn = Image.new("L", (w, h), 0), 0
        for i, s in shapes:
            try:
                _draw_labelme(canvas, s)
                drawn += 1
            except (ValueError, TypeError, KeyError, OSError) as e:
                skipped.append(f"shape {i} ({s.get('shape_type')} '{s.get('label')}'): {e}")
        if drawn:
            yield np.asarray(canvas) > 0


INSTANCE_READERS = {
    "coco": _coco_instances,
    "panoptic": _panoptic_instances,
    "yolo": _yolo_instances,
    "labelme": _labelme_instances,
    "sa1b": _sa1b_instances,
}


def _label_map(record: Record, h: int, w: int) -> np.ndarray:
    """(H, W) int32 ids of a label-PNG record (labpics, folder, voc); DataError on a size that
    is not the image's."""
    if record.annotation is None or not Path(record.annotation).is_file():
        raise DataError(f"{record.image}: missing annotation {record.annotation}")
    lab = read_label_map(record.annotation, record.format == "labpics", record.ignore_index)
    if lab.shape != (h, w):
        raise DataError(
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {lab.shape[1]}x{lab.shape[0]}"
        )
    return lab


def _crowd_note(records: list[Record]) -> str | None:
    """What became of COCO crowd regions (iscrowd=1), for data.py's summary and train.py."""
    left = [a for r in records for a in r.crowd]
    used = sum(a.get("iscrowd") == 1 for r in records for a in r.coco or [])
    if not left:
        return f"{used} crowd (iscrowd=1) annotations used as instances" if used else None
    # CVAT exports COCO through datumaro, which makes every mask shape a crowd region and
    # writes each shape's 'occluded' flag into the annotation's attributes
    cvat = any("occluded" in a["attributes"] for a in left if isinstance(a.get("attributes"), dict))
    why = (
        "this looks like a CVAT export (CVAT's 'occluded' attributes), and CVAT writes every "
        "mask, brush and AI-tool shape as a crowd region"
        if cvat
        else "a crowd region covers many objects, but CVAT exports write mask shapes so too"
    )
    n_img = sum(bool(r.crowd) for r in records)
    return (
        f"{len(left)} crowd (iscrowd=1) annotations skipped in {n_img} images ({why}: "
        "--crowd-instances makes them instances)"
    )


def _stuff_note(records: list[Record]) -> str | None:
    """What became of COCO panoptic stuff segments (categories with isthing 0)."""
    left = sum(len(r.stuff) for r in records)
    if not left:
        return None
    # datumaro cannot tell things from stuff and writes isthing 0 for every category
    none = not any(r.coco for r in records if r.format == "panoptic")
    why = " (no category is a thing: datumaro's panoptic export marks every one stuff)"
    return (
        f"{left} stuff segments (isthing 0) skipped in {sum(bool(r.stuff) for r in records)} "
        f"images{why if none else ''}: --stuff-instances makes them instances"
    )


# ----------------------------------------------------------------------------- finding files


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _split_dirs(root: Path) -> list[Path]:
    """root's subfolders named for a split (train/, val/, valid/, test/, ...)."""
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.name.lower() in SPLIT_WORDS and d.is_dir()]


def _word(d: Path) -> str | None:
    return SPLIT_WORDS.get(d.name.lower())


def _rel(p: Path, root: Path) -> str:
    return os.path.relpath(p, root if root.is_dir() else root.parent)


def _match_masks(image_dir: Path, mask_dir: Path, fmt: str, ignore: int = -1) -> list[Record]:
    """Pair images with masks by stem; an image without one gets the expected .png path so the
    error later names the file that is missing."""
    masks = {}
    for m in _images_in(mask_dir):
        if m.stem not in masks or m.suffix.lower() == ".png":
            masks[m.stem] = m
    return [
        Record(p, masks.get(p.stem, mask_dir / f"{p.stem}.png"), fmt, ignore_index=ignore)
        for p in _images_in(image_dir)
    ]


def _held_out(records: list[Record], split: str) -> list[Record]:
    """Fixed 80/20 split without a list file: the records whose names hash lowest are test (at
    least one when there are two or more), so adding images barely reshuffles the split."""
    if split == "all":
        return list(records)
    # fsencode: the name's bytes on disk, also for names that are not valid UTF-8
    order = sorted(records, key=lambda r: hashlib.md5(os.fsencode(r.image.name)).hexdigest())
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


Parts = list[tuple[str, str | None, Callable[[], list[Record]]]]  # (source, split, loader)


# labpics -----------------------------------------------------------------------------------


def _labpics_base(root: Path) -> Path | None:
    """LabPics root, or None. Also accepts the Simple/ folder itself."""
    if (root / "Simple").is_dir() or (root / "Complex").is_dir():
        return root
    if (root / "Train" / "Image").is_dir() and root.name in ("Simple", "Complex"):
        return root.parent
    return None


def _labpics_parts(root: Path, opts: Options) -> Parts:
    base = _labpics_base(root)
    subs = [
        base / p / s for p in ("Simple", "Complex")[: 1 + opts.complex] for s in ("Train", "Test")
    ]
    load = partial(_match_masks, fmt="labpics")
    return [
        (_rel(d / "Image", root), _word(d), partial(load, d / "Image", d / "Instance"))
        for d in subs
        if (d / "Image").is_dir()
    ]


# folder ------------------------------------------------------------------------------------


def _folder_splits(root: Path) -> list[Path]:
    return [d for d in _split_dirs(root) if all((d / s).is_dir() for s in IMAGES_MASKS)]


def _folder_parts(root: Path, opts: Options) -> Parts:
    load = partial(_match_masks, fmt="folder", ignore=opts.ignore_index)
    subs = _folder_splits(root)
    return [
        (
            _rel(d / "images", root),
            _word(d) if subs else None,
            partial(load, d / "images", d / "masks"),
        )
        for d in subs or [root]
    ]


# voc ---------------------------------------------------------------------------------------


def _voc_records(root: Path, ignore: int, listfile: Path | None) -> list[Record]:
    images = {p.stem: p for p in _images_in(root / "JPEGImages")}
    if listfile is None:
        stems = [p.stem for p in _images_in(root / "SegmentationObject")]
    else:  # VOC's lists hold stems; ImageSets/Main's also a flag after each
        stems = [line.split()[0] for line in _read_lines(listfile)]
    return [
        Record(
            images.get(s, root / "JPEGImages" / f"{s}.jpg"),
            root / "SegmentationObject" / f"{s}.png",
            "voc",
            ignore_index=ignore,
        )
        for s in stems
    ]


def _voc_parts(root: Path, opts: Options) -> Parts:
    """ImageSets/Segmentation/{train,val}.txt when there (trainval.txt alone: one part), else
    every SegmentationObject/ PNG."""
    sets = {p.stem.lower(): p for p in sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))}
    names = [n for n in ("train", "val", "test") if n in sets] if "train" in sets else []
    names = names or (["trainval"] if "trainval" in sets else [])
    load = partial(_voc_records, root, opts.ignore_index)
    if not names:
        return [("SegmentationObject", None, partial(load, None))]
    return [(_rel(sets[n], root), SPLIT_WORDS[n], partial(load, sets[n])) for n in names]


# yolo --------------------------------------------------------------------------------------


def _yolo_yaml(root: Path) -> Path | None:
    """The Ultralytics data YAML: root itself, ROOT/data.yaml, or the one *.yaml naming train."""
    if root.is_file():
        return root if root.suffix.lower() in (".yaml", ".yml") else None
    cands = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    named = [y for y in cands if y.stem == "data"]
    return next(iter(named), None) or next(
        (y for y in cands if re.search(r"^train\s*:", y.read_text(errors="replace"), re.M)), None
    )


def _yolo_label(image: Path) -> Path:
    """Ultralytics' rule: the last images/ folder of the path becomes labels/, the suffix .txt."""
    parts = image.parts
    i = max((k for k, p in enumerate(parts[:-1]) if p == "images"), default=None)
    if i is None:
        return image.with_suffix(".txt")
    return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")


def _yolo_records(paths: list[Path], origin: str) -> list[Record]:
    """Images of data.yaml entries (a folder, searched recursively; a .txt list of images,
    ./-relative to its own folder; or one image) with their label paths."""
    images = []
    for p in paths:
        if p.is_dir():
            images += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS)
        elif p.suffix.lower() == ".txt" and p.is_file():
            images += [p.parent / line for line in _read_lines(p)]
        elif p.is_file():
            images.append(p)
        else:
            raise DataError(f"{p}: no such folder or file (named in {origin})")
    return [Record(q, _yolo_label(q), "yolo") for q in images]


def _yolo_dirs(root: Path) -> list[Path]:
    """Image folders without a data.yaml: images/{train,val}/ + labels/..., images/ + labels/,
    or {train,valid,test}/images/ + .../labels/ (Roboflow)."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return _split_dirs(root / "images") or [root / "images"]
    return [d / "images" for d in _split_dirs(root) if (d / "labels").is_dir()]


def _yolo_parts(root: Path, opts: Options) -> Parts:
    y = _yolo_yaml(root)
    if y is None:
        dirs = _yolo_dirs(root)
        return [
            (_rel(d, root), _word(d) or _word(d.parent), partial(_yolo_records, [d], str(root)))
            for d in dirs
        ]
    try:
        cfg = yaml.safe_load(y.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{y}: not a readable data YAML ({e})") from None
    if not isinstance(cfg, dict) or not cfg.get("train"):
        raise DataError(f"{y}: no 'train' entry (an Ultralytics data YAML names train and val)")
    # Ultralytics resolves a relative `path` under its own datasets folder: here, the YAML's
    base = y.parent / str(cfg.get("path") or "")
    base = base if base.is_dir() else y.parent
    parts = []
    for key in ("train", "val", "validation", "test"):
        entries = cfg.get(key) or []
        entries = [str(e) for e in (entries if isinstance(entries, list) else [entries])]
        # Ultralytics drops a leading ../ that leads nowhere (Roboflow writes ../train/images)
        paths = [
            base / e[3:] if not (base / e).exists() and e.startswith("../") else base / e
            for e in entries
        ]
        if paths:
            src = f"{y.name} {key}: {', '.join(_rel(p, root) for p in paths)}"
            parts.append((src, SPLIT_WORDS[key], partial(_yolo_records, paths, y.name)))
    return parts


# labelme -----------------------------------------------------------------------------------


def _labelme_dirs(root: Path) -> list[Path]:
    """root and its split folders where a labelme .json sits beside its image (x.jpg + x.json)."""

    def pairs(d: Path) -> bool:
        stems = {p.stem for p in d.glob("*.json")}
        return bool(stems) and any(p.stem in stems for p in _images_in(d))

    return [d for d in [root, *_split_dirs(root)] if d.is_dir() and pairs(d)]


def _labelme_records(d: Path) -> list[Record]:
    """One record per labelme .json: its image is the one of the same stem, else its
    imagePath (Windows separators too)."""
    images, out = {p.stem: p for p in _images_in(d)}, []
    for js in sorted(d.glob("*.json")):
        image = images.get(js.stem)
        if image is None:
            meta = _read_json(js, "labelme JSON")
            if not isinstance(meta, dict) or not isinstance(meta.get("imagePath"), str):
                warnings.warn(f"skipping {js}: no image {js.stem}.* beside it, no imagePath")
                continue
            image = d / PureWindowsPath(meta["imagePath"]).as_posix()
            if not image.is_file() and isinstance(meta.get("imageData"), str) and meta["imageData"]:
                # labelme's "save image data": the image travels inside the JSON
                out.append(Record(image, js, "labelme", embedded=True))
                continue
        out.append(Record(image, js, "labelme"))
    return out


def _labelme_parts(root: Path, opts: Options) -> Parts:
    dirs = _labelme_dirs(root)
    return [
        (_rel(d, root), _word(d) if d != root else None, partial(_labelme_records, d)) for d in dirs
    ]


# sa1b --------------------------------------------------------------------------------------


def _is_sa1b(js: Path) -> bool:
    """An SA-1B JSON ({"image": {...}, "annotations": [...]}), not a labelme one."""
    try:
        d = _read_json(js, "JSON")
    except DataError:
        return False
    return isinstance(d, dict) and isinstance(d.get("image"), dict) and "annotations" in d


def _sa1b_dirs(root: Path) -> list[Path]:
    """root and its split folders where x.json beside x.jpg is SA-1B's (its first one read)."""
    out = []
    for d in _labelme_dirs(root):
        images = {p.stem for p in _images_in(d)}
        first = next((j for j in sorted(d.glob("*.json")) if j.stem in images), None)
        if first is not None and _is_sa1b(first):
            out.append(d)
    return out


def _sa1b_records(d: Path) -> list[Record]:
    """One record per .json: its image is the one of the same stem, else its 'file_name'."""
    images, out = {p.stem: p for p in _images_in(d)}, []
    for js in sorted(d.glob("*.json")):
        image = images.get(js.stem)
        if image is None:
            meta = _read_json(js, "SA-1B JSON")
            name = meta.get("image", {}).get("file_name") if isinstance(meta, dict) else None
            if not isinstance(name, str):
                warnings.warn(f"skipping {js}: no image {js.stem}.* beside it, no file_name")
                continue
            image = d / name
        out.append(Record(image, js, "sa1b"))
    return out


def _sa1b_parts(root: Path, opts: Options) -> Parts:
    return [
        (_rel(d, root), _word(d) if d != root else None, partial(_sa1b_records, d))
        for d in _sa1b_dirs(root)
    ]


# coco --------------------------------------------------------------------------------------


def _not_coco(js: Path) -> bool:
    """JSONs that sit where COCO's do but are no COCO: datumaro's own format (it starts with
    its dm_format_version) and Open Images' class hierarchy (bbox_labels_600_hierarchy.json)."""
    if "hierarchy" in js.stem.lower():
        return True
    try:
        with open(js, "rb") as f:
            return b'"dm_format_version"' in f.read(512)
    except OSError:
        return False


def _coco_jsons(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = [
        p
        for p in sorted((root / "annotations").glob("*.json")) or sorted(root.glob("*.json"))
        if not _not_coco(p)
    ]
    # Roboflow: ROOT/{train,valid,test}/_annotations.coco.json, the images beside each
    found = found or [p for d in _split_dirs(root) for p in sorted(d.glob("*.json"))]
    # annotations/ often also holds captions / keypoints files: prefer the instances ones
    inst = [p for p in found if "instances" in p.name.lower()]
    return inst or found


def _coco_split(js: Path) -> str | None:
    """'train' / 'val' / 'test' from the split words in a COCO file's name (None if none or
    several), else from its folder's name (Roboflow's train/, valid/, test/)."""
    tags = {SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", js.stem.lower()) if w in SPLIT_WORDS}
    return tags.pop() if len(tags) == 1 else None if tags else _word(js.parent)


def _coco_image_dirs(js: Path) -> list[Path]:
    """Where a COCO file's images may be: beside it, in images/ or images/<subset>/ (datumaro
    and CVAT: annotations/instances_<subset>.json), the same beside its folder, and for
    annotations/instances_val2017.json also ROOT/val2017/."""
    d, p = js.parent, js.parent.parent
    subset = js.stem.split("_", 1)[-1]
    dirs = [d, d / "images", d / "images" / subset, p, p / "images", p / "images" / subset]
    if d.name == "annotations":
        dirs += sorted(c for c in p.iterdir() if c.is_dir() and c.name in js.stem)
    return list(dict.fromkeys(dirs))


def _size(v) -> int | None:
    """A COCO image's width or height: None when unknown (absent, or 0 as datumaro writes it),
    else a whole number; ValueError otherwise."""
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == 0):
        return None
    if not (isinstance(v, int | float) and not isinstance(v, bool) and v > 0 and v == int(v)):
        raise ValueError(f"must be a positive integer, got {v!r:.40}")
    return int(v)


def _coco_records(js: Path, crowd: bool, stuff: bool = False) -> list[Record]:
    """A COCO instances (or panoptic) JSON -> one Record per image. DataError naming the file,
    the entry and what was expected when it is not one; crowd regions are left out (counted)
    unless crowd, panoptic stuff segments unless stuff."""
    d = _read_json(js, "COCO instances JSON")

    def bad(why: str) -> DataError:
        return DataError(f"{js}: not a readable COCO instances JSON: {why}")

    if not isinstance(d, dict):
        hint = " (a Label Studio JSON export? export COCO from it)" if isinstance(d, list) else ""
        raise bad(f"it holds a JSON {type(d).__name__}, not an object with 'images'{hint}")
    if "shapes" in d:
        raise bad("it is a labelme file: put each labelme .json beside its image")
    images, anns = d.get("images"), d.get("annotations", [])
    if not isinstance(images, list) or not isinstance(anns, list):
        raise bad("it needs an 'images' list and an 'annotations' list")
    per_image: dict = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int | str):
            raise bad(f"images[{i}] needs an 'id' (a number or string), got {im!r:.80}")
        if not isinstance(im.get("file_name"), str):
            got = im.get("file_name")
            raise bad(f"image id {im['id']}: 'file_name' must be a string, got {got!r:.80}")
        size = []
        for k in ("width", "height"):
            try:
                size.append(_size(im.get(k)))
            except ValueError as e:
                raise bad(f"image id {im['id']}: '{k}' {e}") from None
        if im["id"] in per_image:
            raise bad(f"image id {im['id']} appears twice in 'images'")
        per_image[im["id"]] = ([], [], *size)  # annotations read, crowd left out, width, height
    if any(isinstance(a, dict) and "segments_info" in a for a in anns):
        return _panoptic_records(js, d, per_image, Options(crowd=crowd, stuff=stuff), bad)
    orphans = []
    for j, a in enumerate(anns):
        if not isinstance(a, dict):
            raise bad(f"annotations[{j}] must be an object, got {a!r:.80}")
        iid = a.get("image_id")
        if not isinstance(iid, int | str) or iid not in per_image:
            orphans.append(f"annotation id {a.get('id')} (image_id {iid!r:.40})")
            continue
        per_image[iid][a.get("iscrowd") == 1 and not crowd].append(a)
    _warn_orphans(js, orphans)
    out = []
    for im in images:
        path, where = _coco_image(js, im["file_name"])
        keep, left, w, h = per_image[im["id"]]
        out.append(Record(path, None, "coco", keep, w, h, crowd=left, looked_in=where))
    return out


def _coco_image(js: Path, name: str) -> tuple[Path, tuple[Path, ...]]:
    """A COCO image's path, and the folders searched when it is in none of them."""
    dirs = _coco_image_dirs(js)
    cands = [d / name for d in dirs]
    path = next((c for c in cands if c.is_file()), None)
    return (path, ()) if path else (cands[0], tuple(dirs))


def _warn_orphans(js: Path, orphans: list[str]) -> None:
    if orphans:
        warnings.warn(
            f"{js}: skipped {len(orphans)} annotations whose image_id is in no 'images' entry: "
            + ", ".join(orphans[:5])
            + (", ..." if orphans[5:] else ""),
            stacklevel=3,
        )


def _panoptic_records(
    js: Path, d: dict, per_image: dict, opts: Options, bad: Callable[[str], DataError]
) -> list[Record]:
    """COCO panoptic (COCO, detectron2, datumaro): an annotation per image names its PNG
    (ROOT/annotations/panoptic_<subset>/x.png, segment id = R + 256 G + 256^2 B) and lists its
    'segments_info'. Things are instances; stuff (a category with isthing 0) and crowd segments
    are left out, counted, unless opts.stuff / opts.crowd. An image without an entry has none."""
    cats = d.get("categories") if isinstance(d.get("categories"), list) else []
    isthing = {c.get("id"): c.get("isthing", 1) for c in cats if isinstance(c, dict)}
    entries, orphans = {}, []
    for j, a in enumerate(d["annotations"]):
        if not (isinstance(a, dict) and isinstance(a.get("segments_info"), list)):
            raise bad(f"annotations[{j}] needs a 'segments_info' list, got {a!r:.80}")
        if not isinstance(a.get("file_name"), str):
            raise bad(f"annotations[{j}]: 'file_name' (its PNG) must be a string")
        if a.get("image_id") in per_image:
            entries[a["image_id"]] = a
        else:
            orphans.append(f"annotation of {a['file_name']} (image_id {a.get('image_id')!r:.40})")
    _warn_orphans(js, orphans)
    out = []
    for im in d["images"]:
        im_id, (_, _, w, h) = im["id"], per_image[im["id"]]
        path, where = _coco_image(js, im["file_name"])
        a = entries.get(im_id)
        keep, crowd, stuff = [], [], []
        for k, seg in enumerate(a["segments_info"] if a else []):
            if not (isinstance(seg, dict) and isinstance(seg.get("id"), int)):
                raise bad(f"image id {im_id}: segments_info[{k}] needs an integer 'id'")
            if seg.get("iscrowd") == 1 and not opts.crowd:
                crowd.append(seg)
            elif isthing.get(seg.get("category_id"), 1) == 0 and not opts.stuff:
                stuff.append(seg)
            else:
                keep.append(seg)
        png = js.with_suffix("") / a["file_name"] if a else None
        rec = Record(path, png, "panoptic", keep, w, h, crowd=crowd, looked_in=where, stuff=stuff)
        out.append(rec)
    return out


def _coco_parts(root: Path, opts: Options) -> Parts:
    return [
        (_rel(j, root), _coco_split(j), partial(_coco_records, j, opts.crowd, opts.stuff))
        for j in _coco_jsons(root)
    ]


def _panoptic_jsons(root: Path) -> list[Path]:
    """COCO panoptic files (panoptic_*.json) where there is no instances file."""
    return [j for j in _coco_jsons(root) if "panoptic" in j.stem.lower()]


def _panoptic_parts(root: Path, opts: Options) -> Parts:
    return [
        (_rel(j, root), _coco_split(j), partial(_coco_records, j, opts.crowd, opts.stuff))
        for j in _panoptic_jsons(root)
    ]


# the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A dataset layout: what it looks like (help), whether a folder is one, and its parts."""

    name: str
    looks: str  # one line: what it looks like and who writes it
    detect: Callable[[Path], bool]  # a folder (a file's layout comes from its suffix)
    parts: Callable[[Path, Options], Parts]


LAYOUTS = [  # tried in this order
    Layout(
        "video",
        "ROOT/JPEGImages/<video>/00000.jpg + ROOT/Annotations/<video>/00000.png (DAVIS; "
        "YouTube-VOS, MOSE: under ROOT/train/ and ROOT/valid/), for --recipe video",
        lambda r: bool(_video_parts(r)),
        lambda r, opts: _videos_only(r),
    ),
    Layout(
        "labpics",
        "ROOT/Simple/Train/Image/x.jpg + ROOT/Simple/Train/Instance/x.png (Test/ likewise)",
        lambda r: _labpics_base(r) is not None,
        _labpics_parts,
    ),
    Layout(
        "voc",
        "ROOT/JPEGImages/x.jpg + ROOT/SegmentationObject/x.png (Pascal VOC, labelme2voc)",
        lambda r: (r / "JPEGImages").is_dir() and (r / "SegmentationObject").is_dir(),
        _voc_parts,
    ),
    Layout(
        "folder",
        "ROOT/images/x.jpg + ROOT/masks/x.png, or ROOT/train/{images,masks} + ROOT/test/...",
        lambda r: all((r / d).is_dir() for d in IMAGES_MASKS) or bool(_folder_splits(r)),
        _folder_parts,
    ),
    Layout(
        "yolo",
        "ROOT/data.yaml + ROOT/images/train/x.jpg + ROOT/labels/train/x.txt (Ultralytics, "
        "Roboflow YOLOv8), or a path to the .yaml",
        lambda r: _yolo_yaml(r) is not None or bool(_yolo_dirs(r)),
        _yolo_parts,
    ),
    Layout(
        "sa1b",
        "ROOT/sa_1.jpg + ROOT/sa_1.json with 'image' and 'annotations' (SA-1B, SAM's own; "
        "datumaro's segment_anything), or ROOT/train/... + ROOT/val/...",
        lambda r: bool(_sa1b_dirs(r)),
        _sa1b_parts,
    ),
    Layout(
        "labelme",
        "ROOT/x.jpg + ROOT/x.json (labelme), or ROOT/train/... + ROOT/val/...",
        lambda r: bool(_labelme_dirs(r)),
        _labelme_parts,
    ),
    Layout(
        "panoptic",
        "ROOT/annotations/panoptic_train.json + its PNGs in ROOT/annotations/panoptic_train/ "
        "(COCO panoptic: COCO, detectron2, datumaro)",
        lambda r: bool(_panoptic_jsons(r)),
        _panoptic_parts,
    ),
    Layout(
        "coco",
        "ROOT/annotations/instances_train.json + ROOT/images/x.jpg (CVAT: images/default/), "
        "ROOT/train/_annotations.coco.json (Roboflow), or a path to the .json",
        lambda r: bool(_coco_jsons(r)),
        _coco_parts,
    ),
]
DATUM = (
    "convert it with datumaro (`datum convert -i PATH -f coco_instances -o OUT -- --save-media`)"
)
# recognised, not read: (glob under the path given, or its name; b"" or bytes that the first
# 4 KiB of the first file it matches must hold -> what it is, what to do). First match wins.
HINTS = [
    (
        "*.xml",
        b"<annotations>",
        "CVAT's XML: export the task as 'COCO 1.0' instead, with --crowd-instances",
    ),
    ("VOC20*/SegmentationObject", b"", "a VOCdevkit folder: give the VOC20xx folder inside it"),
    (
        "Annotations/*.xml",
        b"<bndbox>",
        "Pascal VOC boxes without SegmentationObject/: SAM 2 "
        "needs masks (export VOC segmentation or COCO with masks)",
    ),
    (
        "*.xml",
        b"<bndbox>",
        "Pascal VOC box XMLs (labelImg): SAM 2 needs masks (export COCO "
        "with masks, or label polygons in labelme)",
    ),
    ("Annotations/*.xml", b"<polygon>", f"LabelMe XML (MIT LabelMe): {DATUM}"),
    ("Annotations/*/*.xml", b"<polygon>", f"LabelMe XML (MIT LabelMe): {DATUM}"),
    ("*/*.xml", b"<polygon>", f"LabelMe XML (datumaro's label_me): {DATUM}"),
    ("*.xml", b"<polygon>", f"LabelMe XML: {DATUM}"),
    ("gtFine", b"", f"Cityscapes (gtFine/ + leftImg8bit/): {DATUM}"),
    ("leftImg8bit", b"", f"Cityscapes (leftImg8bit/ + gtFine/): {DATUM}"),
    ("*/image_2", b"", f"KITTI (image_2/ + instance/, or label_2/ boxes without masks): {DATUM}"),
    ("image_2", b"", f"KITTI (image_2/ + instance/, or label_2/ boxes without masks): {DATUM}"),
    (
        "*instances_txt",
        b"",
        "MOTS (instances/ PNGs of class x 1000 + track id per frame): "
        "video tracks; lay them out as DAVIS (JPEGImages/<video>/ + Annotations/<video>/ PNGs of "
        f"object ids) for --recipe video, or {DATUM}",
    ),
    (
        "*/instances/*/*.png",
        b"",
        "MOTS (instances/<sequence>/ PNGs of class x 1000 + track "
        "id): video tracks; lay them out as DAVIS for --recipe video, or " + DATUM,
    ),
    (
        "*annot",
        b"",
        "CamVid (train/ + trainannot/): class maps, one class per pixel and no "
        "instances; as images/ + masks/ (the folder layout) each class becomes one mask",
    ),
    (
        "label_colors.txt",
        b"",
        "CamVid (label_colors.txt + class maps): no instances; as "
        "images/ + masks/ (the folder layout) each class becomes one mask",
    ),
    (
        "*-annotations-object-segmentation.csv",
        b"",
        f"Open Images (segmentation CSV + a mask PNG per object): {DATUM}",
    ),
    (
        "annotations/*-annotations-object-segmentation.csv",
        b"",
        f"Open Images (segmentation CSV + a mask PNG per object): {DATUM}",
    ),
    ("annotations/*hierarchy*.json", b"", f"Open Images (boxes, no masks found): {DATUM}"),
    (
        "annotations/*.json",
        b'"dm_format_version"',
        "datumaro's own format (annotations/"
        "<subset>.json with 'items'): export it as COCO (`datum convert -i PATH -if datumaro -f "
        "coco_instances -o OUT -- --save-media`)",
    ),
    ("*.zip", b"", "a folder of archives: unzip the export first"),
    ("images", b"", "an images/ folder without masks/ (label PNGs) or labels/ (YOLO) beside it"),
]


def _hint_fits(root: Path, pattern: str, head: bytes) -> bool:
    """root is named so, or holds a path so (the first one found starting with head)."""
    if root.match(pattern):
        first = root
    else:
        first = next(root.glob(pattern), None) if root.is_dir() else None
    if first is None or not head:
        return first is not None
    try:
        with open(first, "rb") as f:
            return head in f.read(4096)
    except OSError:
        return False


def _layouts_help() -> str:
    return "layouts looked for:\n" + "\n".join(f"  {x.name + ':':8} {x.looks}" for x in LAYOUTS)


def detect_format(root: str | Path) -> str:
    """The name of root's layout (a LAYOUTS name: 'labpics', 'voc', 'yolo', 'sa1b', 'coco', ...);
    DataError saying what it looks like, or which layouts were looked for, if none fits."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder\n{_layouts_help()}")
    if root.is_file():
        kind = {".json": "coco", ".yaml": "yolo", ".yml": "yolo"}.get(root.suffix.lower())
        if kind == "coco" and _not_coco(root):
            kind = None
        if kind:
            return "panoptic" if kind == "coco" and "panoptic" in root.stem.lower() else kind
    else:
        for layout in LAYOUTS:
            if layout.detect(root):
                return layout.name
    hint = next((h for pat, head, h in HINTS if _hint_fits(root, pat, head)), None)
    what = f"looks like {hint}" if hint else "no known dataset layout found"
    raise DataError(f"{root}: {what}\n{_layouts_help()}")


def _parts(root: Path, fmt: str, opts: Options) -> Parts:
    """Where a dataset's records come from: (source, split, loader). With a train part and a
    val (else test) part those are 'train' and 'test', a test part beside a val part is
    'unused'; otherwise split is None and the images are held out 80/20 by name hash. Loaders
    run only when their records are needed."""
    parts = next(x for x in LAYOUTS if x.name == fmt).parts(root, opts)
    words = {w for _, w, _ in parts}
    if "train" in words and words & {"val", "test"}:
        split = {"train": "train", "val" if "val" in words else "test": "test", None: None}
        return [(s, split.get(w, "unused"), load) for s, w, load in parts]
    return [(s, None, load) for s, _, load in parts]


def _pick(parts: Parts, split: str) -> list[Record]:
    """The records of one split ('train', 'test'/'val' or 'all') from _parts."""
    split = _norm_split(split)
    fixed = [
        r for _, t, load in parts if t in ("train", "test") and split in (t, "all") for r in load()
    ]
    pool = [r for _, t, load in parts if t is None for r in load()]
    return fixed + _held_out(pool, split)


def _annotated(r: Record) -> bool:
    # a COCO (panoptic) image without annotations is one with no objects
    return r.format in ("coco", "panoptic") or (
        r.annotation is not None and Path(r.annotation).is_file()
    )


def _find(root: Path, split: str, opts: Options) -> list[Record]:
    fmt = detect_format(root)
    recs = _pick(_parts(root, fmt, opts), split)
    if not any(map(_annotated, recs)):
        raise DataError(
            f"{root}: found the {fmt} layout but no image-annotation pairs for split "
            f"'{split}' ({len(recs)} images without annotations)\n{_layouts_help()}"
        )
    return recs


def find_records(
    root: str | Path,
    split: str = "train",
    complex: bool = False,
    crowd: bool = False,
    ignore_index: int = 255,
    stuff: bool = False,
) -> list[Record]:
    """All (image, annotation) records of one split ('train', 'test'/'val', or 'all').
    crowd: COCO crowd regions are instances too; ignore_index: the label-PNG value that is no
    instance (-1: none); stuff: COCO panoptic stuff segments are instances too."""
    return _find(Path(root), split, Options(complex, crowd, ignore_index, stuff))


# ----------------------------------------------------------------------------- samples


def _instance_masks(record: Record, hw: tuple[int, int], out: tuple[int, int], min_area: int):
    """Instance masks (N, *out) bool of an image of size hw, each resized to out as soon as it
    is decoded (memory follows the output, not H x W x N), those under min_area pixels dropped;
    and why annotations were skipped."""
    if record.format not in INSTANCE_READERS:
        # the label map is resized before it is split: N full-size masks are never made
        lab = resize_nearest(_label_map(record, *hw), out)
        ids, areas = np.unique(lab, return_counts=True)
        return lab[None] == ids[(ids != 0) & (areas >= min_area), None, None], []
    skipped: list[str] = []
    masks = [resize_nearest(m, out) for m in INSTANCE_READERS[record.format](record, *hw, skipped)]
    masks = [m for m in masks if m.sum() >= min_area]
    return (np.stack(masks) if masks else np.zeros((0, *out), bool)), skipped


def read_sample(record: Record, max_side: int = 1024, min_area: int = 16, seed: int = 0) -> Sample:
    """Decode, resize (longer side -> max_side), drop instances < min_area px, pick one click
    per instance. Sample: image (H, W, 3) uint8, masks (N, H, W) bool, points (N, 2) float32.
    DataError names a bad file; annotations without a usable mask are skipped with a warning."""
    image = record_rgb(record)
    hw = image.shape[:2]
    if record.format in ("coco", "panoptic") and (record.width, record.height) not in (
        (None, None),
        hw[::-1],
    ):
        raise DataError(
            f"{record.image}: image is {hw[1]}x{hw[0]} but its COCO entry says "
            f"{record.width}x{record.height}"
        )
    masks, skipped = _instance_masks(record, hw, _new_size(*hw, max_side), max(min_area, 1))
    if skipped:
        warnings.warn(f"{record.image}: skipped " + "; ".join(skipped), stacklevel=2)
    image = resize_longest(image, max_side)
    points = sample_points(torch.from_numpy(masks), torch.Generator().manual_seed(int(seed)))
    return Sample(image, masks, points.numpy(), str(record.image))


class SegDataset(torch.utils.data.Dataset):
    """Records -> Samples; a bad file gives None (and a warning) instead of killing training.
    notes: lines worth printing when a run starts (crowd regions skipped, ...)."""

    def __init__(
        self,
        records: list[Record],
        max_side: int = 1024,
        min_area: int = 16,
        seed: int = 0,
        notes: list[str] | None = None,
    ):
        self.records, self.max_side, self.min_area, self.seed = records, max_side, min_area, seed
        self.notes = notes or []

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


def _record_size(record: Record) -> tuple[int, int]:
    """(W, H) of a record's image as read_sample reads it (labelme's imageData too)."""
    if record.embedded:
        return _image_size(io.BytesIO(_embedded_bytes(record)))
    return _image_size(record.image)


def check_record(record: Record) -> str | None:
    """Cheap up-front check (headers and file ends only): None if fine, else why not."""
    ann = record.annotation
    # COCO has no annotation file, nor a panoptic image without segments; a YOLO image without
    # a label file, or with an empty one (datumaro, supervision), has no objects
    skip_ann = (
        record.format == "coco"
        or (record.format == "panoptic" and ann is None)
        or (record.format == "yolo" and (not Path(ann).is_file() or Path(ann).stat().st_size == 0))
    )
    # labelme's embedded imageData stands in for a missing image file
    files = ([] if record.embedded else [record.image]) + ([] if skip_ann else [ann])
    for p in files:
        if p is None:
            return f"{record.image}: missing annotation"
        if not Path(p).is_file():
            if p != record.image:
                return f"{p}: missing annotation for {record.image}"
            where = ", ".join(map(str, record.looked_in))
            return f"{p}: missing image" + (f" (looked in {where})" if where else "")
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
        w, h = _record_size(record)
    except DataError as e:
        return str(e)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's zoo for broken headers
        what = f"imageData of {ann}" if record.embedded else record.image
        return f"{what}: unreadable image header ({type(e).__name__})"
    coco = record.format in ("coco", "panoptic")
    if coco and (record.width, record.height) not in ((None, None), (w, h)):
        return (
            f"{record.image}: image is {w}x{h} but its COCO entry says "
            f"{record.width}x{record.height}"
        )
    if record.format in INSTANCE_READERS and not (record.format == "panoptic" and ann):
        return None  # YOLO is normalized; labelme's and SA-1B's sizes are checked when read
    try:
        aw, ah = _image_size(ann, oriented=False)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"{ann}: unreadable annotation header ({type(e).__name__})"
    if (aw, ah) != (w, h):
        return f"size mismatch: image {record.image} is {w}x{h} but annotation {ann} is {aw}x{ah}"
    return None


def load_split(
    root: str | Path,
    split: str = "train",
    max_side: int = 1024,
    min_area: int = 16,
    seed: int = 0,
    complex: bool = False,
    crowd: bool = False,
    ignore_index: int = 255,
    stuff: bool = False,
) -> SegDataset:
    """find_records + check_record on each; bad pairs skipped with a warning each, DataError if
    more than half are bad (probably the wrong folder, not a few broken files). The dataset's
    notes say what became of COCO crowd regions and panoptic stuff segments."""
    records = find_records(root, split, complex, crowd, ignore_index, stuff)
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
    notes = [f"{split}: {n}" for n in (_crowd_note(records), _stuff_note(records)) if n]
    return SegDataset(good, max_side, min_area, seed, notes)


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
    """Instances in an image's annotation (before min_area) and why annotations were skipped;
    DataError if a file is bad. Masks are decoded one at a time and dropped."""
    why = check_record(record)
    if why is not None:
        raise DataError(why)
    w, h = _record_size(record)
    if record.format in INSTANCE_READERS:
        skipped: list[str] = []
        return sum(1 for _ in INSTANCE_READERS[record.format](record, h, w, skipped)), skipped
    return int((np.unique(_label_map(record, h, w)) != 0).sum()), []


def _some(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f", ... ({len(items) - k} more)" if items[k:] else "")


SPLIT_TEXT = {
    None: "80% train / 20% test by name hash",
    "unused": "not used (the val part is the validation split)",
}


def _summary(root: Path, opts: Options) -> tuple[str, int]:
    """summarize()'s text and the number of usable training images (read, with instances)."""
    fmt = detect_format(root)
    if fmt == "video":
        return summarize_videos(root)
    parts = _parts(root, fmt, opts)
    lines = [f"data:    {root} ({fmt} layout)"]
    lines += [f"source:  {s} -> {SPLIT_TEXT.get(t, t)}" for s, t, _ in parts]
    bad_files, bad_anns, crowd, empty, records, usable = [], [], [], [], [], 0
    for split in ("train", "test"):
        counts = []
        for r in _pick(parts, split):
            records.append(r)
            if r.crowd:
                ids = [str(a.get("id")) for a in r.crowd]
                crowd.append(f"  {r.image}: crowd (iscrowd=1) annotation ids {_some(ids)}")
            try:
                n, notes = _count_instances(r)
            except DataError as e:
                bad_files.append(f"  {e}")
                continue
            counts.append(n)
            usable += split == "train" and n > 0
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
        lines.append(f"{len(empty)} images without instances (not trained on): {_some(empty)}")
    note = _crowd_note(records)
    if note:
        lines.append(f"crowd:   {note}")
    note = _stuff_note(records)
    if note:
        lines.append(f"stuff:   {note}")
    lines.append(f"skipped: {len(bad_files)} files, {len(bad_anns)} annotations")
    return "\n".join(lines + bad_files + bad_anns + crowd), usable


def summarize(
    root: str | Path,
    complex: bool = False,
    crowd: bool = False,
    ignore_index: int = 255,
    stuff: bool = False,
) -> str:
    """Human-readable report: layout, which source is which split, images and instances per
    split, skipped files and annotations (each named), crowd regions, panoptic stuff segments,
    images without instances. DataError if unreadable."""
    return _summary(Path(root), Options(complex, crowd, ignore_index, stuff))[0]


def _printable(text: str) -> str:
    """File names that are not valid UTF-8 (kept as os.fsdecode keeps them) as \\xNN escapes:
    print() would otherwise fail on them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Inspect a dataset, or write the demo dataset.")
    p.add_argument("data", nargs="?", help="dataset path (a folder, a COCO .json, a data.yaml)")
    p.add_argument("--make-demo", metavar="DIR", help="write the synthetic demo dataset to DIR")
    p.add_argument("--make-video-demo", metavar="DIR", help="write synthetic demo videos to DIR")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complex", action="store_true", help="LabPics: also use Complex/")
    p.add_argument(
        "--crowd-instances",
        action="store_true",
        help="COCO: crowd regions (iscrowd=1) are instances too (CVAT's mask shapes are crowd)",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="value of 8-bit / palette label PNGs that is no instance (VOC's void); -1: none",
    )
    p.add_argument(
        "--stuff-instances",
        action="store_true",
        help="COCO panoptic: stuff segments (isthing 0) are instances too (datumaro marks all so)",
    )
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
            opts = Options(
                args.complex, args.crowd_instances, args.ignore_index, args.stuff_instances
            )
            text, usable = _summary(Path(args.data), opts)
            print(_printable(text))
            if not usable:
                raise DataError(
                    f"{args.data}: no usable training image (each one is unreadable or has no "
                    "instance, see above)"
                )
    except (DataError, ValueError) as e:
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
    """One video: its frames in order and the label PNG of each (None: not annotated).
    orphans: label PNGs whose frame image is missing (not used); colours: the video's colour
    table, built when a colour (RGB) label PNG of it is first read (see video_labels)."""

    name: str
    frames: list[Path]
    labels: list[Path | None]
    orphans: list[Path] = field(default_factory=list)
    colours: np.ndarray | None = field(default=None, repr=False, compare=False)


def _has_videos(root: Path) -> bool:
    """JPEGImages/ holds a folder per video (Pascal VOC's JPEGImages/ + Annotations/ hold files)."""
    frames = root / VIDEO_DIRS[0]
    return (
        (root / VIDEO_DIRS[1]).is_dir()
        and frames.is_dir()
        and any(p.is_dir() for p in frames.iterdir())
    )


def _video_parts(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(frames folder, annotations folder, split or None) of each part of a video dataset."""
    if _has_videos(root):
        level = next(
            (n for n in ("480p", "Full-Resolution") if (root / VIDEO_DIRS[0] / n).is_dir()), ""
        )
        return [(root / VIDEO_DIRS[0] / level, root / VIDEO_DIRS[1] / level, None)]
    return [
        (root / d / VIDEO_DIRS[0], root / d / VIDEO_DIRS[1], s)
        for d, s in (("train", "train"), ("valid", "test"), ("val", "test"))
        if _has_videos(root / d)
    ]


def _videos_in(frames_dir: Path, ann_dir: Path) -> list[Video]:
    def order(p: Path):  # 5.jpg before 10.jpg, like SAM 2's frame loader
        return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)

    out = []
    for d in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        frames = sorted(_images_in(d), key=order)
        anns = {p.stem: p for p in _images_in(ann_dir / d.name) if p.suffix.lower() == ".png"}
        stems = {f.stem for f in frames}
        orphans = [p for s, p in sorted(anns.items()) if s not in stems]
        out.append(Video(d.name, frames, [anns.get(f.stem) for f in frames], orphans))
    return out


def _videos_only(root: Path) -> Parts:
    raise DataError(f"{root} holds videos: train on them with --recipe video")


def find_videos(root: str | Path, split: str = "train") -> tuple[list[Video], str]:
    """The videos of one split ('train', 'test'/'val' or 'all') and how the split was made; a
    split list's names with no video folder are named in a warning."""
    root, split = Path(root), _norm_split(split)
    parts = [(_videos_in(f, a), s, f) for f, a, s in _video_parts(root)]
    if not parts:
        raise DataError(f"{root}: no video layout (JPEGImages/ + Annotations/) found")
    lists = sorted((root / "ImageSets").glob("*/train.txt"))
    if lists and parts[0][1] is None:
        videos, keep = parts[0][0], {}
        found = {v.name for v in videos}
        for s, f in (("train", "train.txt"), ("test", "val.txt")):
            path = lists[-1].with_name(f)
            names = (
                [n for line in _read_lines(path) for n in line.split()] if path.is_file() else []
            )
            keep[s] = set(names)
            missing = [n for n in names if n not in found]
            if missing and split in (s, "all"):
                warnings.warn(
                    f"{path}: {len(missing)} listed video(s) not in {parts[0][2]}, not used: "
                    f"{_some(missing)}",
                    stacklevel=2,
                )
        how = f"split lists {lists[-1].parent.relative_to(root)}/"
        return [v for v in videos if split == "all" or v.name in keep[split]], how
    scorable = any(
        s == "test" and sum(a is not None for a in v.labels) > 1 for vs, s, _ in parts for v in vs
    )
    if scorable:
        return [v for vs, s, _ in parts for v in vs if split in (s, "all")], "train/ and valid/"
    videos = [v for vs, s, _ in parts if s != "test" for v in vs]
    order = sorted(videos, key=lambda v: hashlib.md5(v.name.encode()).hexdigest())
    test = {v.name for v in order[: max(1, round(0.2 * len(videos))) if len(videos) > 1 else 0]}
    chosen = [v for v in videos if split == "all" or (v.name in test) == (split == "test")]
    how = "80% train / 20% validation by name hash"
    return chosen, how + (" (valid/ has first-frame annotations only)" if len(parts) > 1 else "")


def check_video(video: Video) -> tuple[Video, list[str]]:
    """The video without its bad frames (check_record on the frame and its annotation), and why
    each was dropped, annotations whose frame image is missing included."""
    good, bad = [], []
    for f, a in zip(video.frames, video.labels):
        why = check_record(Record(f, a, "folder") if a else Record(f, None, "coco"))
        (bad if why else good).append(why or (f, a))
    bad += [f"{a}: video {video.name}, frame {a.stem}: its image is missing" for a in video.orphans]
    return Video(video.name, [f for f, _ in good], [a for _, a in good]), bad


def load_videos(root: str | Path, split: str = "train") -> list[Video]:
    """find_videos with bad frames dropped, and videos without an annotated frame showing an
    object skipped, each with a warning naming it; DataError if no video is left. Training and
    evaluation start a video at its first frame with an object (first_object_frame)."""
    out = []
    for v in find_videos(root, split)[0]:
        v, bad = check_video(v)
        for why in bad:
            warnings.warn(f"skipping frame: {why}", stacklevel=2)
        if not any(v.labels):
            warnings.warn(f"skipping video {v.name}: no readable annotated frame", stacklevel=2)
        elif first_object_frame(v) is None:
            warnings.warn(
                f"skipping video {v.name}: no annotated frame shows an object", stacklevel=2
            )
        else:
            out.append(v)
    if not out:
        raise DataError(f"{root}: no usable video in split '{split}'")
    return out


def object_ids(labels: np.ndarray) -> np.ndarray:
    """The object ids a label map shows (not 0, not VOID), sorted."""
    return np.setdiff1d(labels, [0, VOID])


def first_object_frame(video: Video) -> int | None:
    """The first annotated frame that shows an object (Meta's sampler starts clips only on
    such frames), None if none does; reads the labels up to it."""
    shows = (t for t, a in enumerate(video.labels) if a and len(object_ids(video_labels(video, t))))
    return next(shows, None)


def _colour_table(video: Video) -> np.ndarray:
    """The video's colour table: the sorted colour keys (_colour_keys) of all its colour label
    PNGs, black left out; read once, then kept on the video."""
    if video.colours is None:
        keys = [np.zeros(0, np.int64)]
        for a in video.labels:
            if a is not None and (lab := _decode_label(a)).ndim == 3:
                keys.append(np.unique(_colour_keys(lab[..., :3])))
        table = np.setdiff1d(np.concatenate(keys), [0])
        if len(table) > np.iinfo(np.uint16).max - 2:  # ids are uint16, VOID skipped
            raise DataError(f"video {video.name}: {len(table)} colours in its label PNGs")
        video.colours = table
    return video.colours


def video_labels(video: Video, t: int) -> np.ndarray | None:
    """Frame t's object ids (H, W) uint16 (0 background, VOID ignored), None if not annotated.

    Colour (RGB) label PNGs: black is background, each other colour one object whose id is its
    rank in the video's colour table (1, 2, ...; VOID skipped), so the same in every frame.
    """
    path = video.labels[t]
    if path is None:
        return None
    lab = _decode_label(path)
    if lab.ndim == 2:
        return lab.astype(np.uint16)
    table = _colour_table(video)
    keys, inverse = np.unique(_colour_keys(lab[..., :3]), return_inverse=True)
    if not np.isin(keys[keys != 0], table).all():  # the file changed after the table was read
        raise DataError(f"{path}: colours not in video {video.name}'s other label PNGs")
    ids = np.where(keys == 0, 0, np.searchsorted(table, keys) + 1)
    ids += ids >= VOID
    return ids[inverse].reshape(lab.shape[:2]).astype(np.uint16)


def summarize_videos(root: str | Path) -> tuple[str, int]:
    """`python data.py` for a video dataset: the split, and per split the videos, frames (with
    ground truth), objects per video, every skipped frame and video, and the videos that start
    after an empty annotated frame; and the number of usable training videos (as load_videos:
    an annotated frame shows an object)."""
    lines, skipped, dropped, notes, usable = [f"data:    {root} (video layout)"], [], [], [], 0
    for split in ("train", "test"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            videos, how = find_videos(root, split)
        notes += [f"warning: {w.message}" for w in caught]
        objects, frames, annotated, late = [], 0, 0, []
        for v in videos:
            v, bad = check_video(v)
            skipped += [f"  {why}" for why in bad]
            ids, shows = set(), []
            for t in range(len(v.frames)):
                if (lab := video_labels(v, t)) is not None:
                    shows.append(len(found := object_ids(lab)) > 0)
                    ids |= set(found.tolist())
            objects.append(len(ids))
            if not shows:
                dropped.append(f"  {v.name}: no readable annotated frame")
            elif not any(shows):
                dropped.append(f"  {v.name}: no annotated frame shows an object")
            else:
                usable += split == "train"
                late += [] if shows[0] else [v.name]
            frames, annotated = frames + len(v.frames), annotated + len(shows)
        o = np.array(objects or [0])
        lines.append(
            f"{split + ':':8} {len(videos)} videos, {frames} frames ({annotated} annotated), "
            f"objects per video min {o.min()} / mean {o.mean():.1f} / max {o.max()}"
        )
        if late:
            lines.append(
                f"{'':8} {len(late)} start at their first frame with an object (the first "
                f"annotated one shows none): {_some(late)}"
            )
    lines.insert(1, f"split:   {how}")
    lines += notes + [f"skipped: {len(skipped)} frames", *skipped]
    if dropped:
        lines += [f"skipped: {len(dropped)} videos", *dropped]
    return "\n".join(lines), usable


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
