"""Dataset layouts, one module each: how a dataset is found on disk, split, and how its records
are read. A new layout is one new module with its Layout row, plus that row in LAYOUTS.

    base       Record, Options, Layout (a row: detect, parts, and the rules that read its
               records), check_record, folder helpers
    labels     label PNGs: LabPics V1, Pascal VOC, images/ + masks/ folders
    coco       the one COCO JSON reader (also infer.py's --gt), COCO instances, COCO masks
    panoptic   COCO panoptic PNGs
    yolo       YOLO segmentation (Ultralytics, Roboflow)
    labelme    labelme JSONs
    sa1b       SA-1B (SAM's own)
    video      DAVIS, YouTube-VOS, MOSE (--recipe video)

The layout is picked from what the path points at: the first row of LAYOUTS whose detect()
accepts a folder, or whose file() accepts a file. Splits: parts named train (Train/, train/,
instances_train*.json, *_trainval.json) and val (val/, valid/, instances_val*.json) are the two
splits, a test part being the validation split only where there is no val part; all other images
are split 80/20 by a hash of their file names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from layouts.base import FORMATS, Layout, Options, Parts, Record, layout_of, norm_split
from layouts.coco import COCO_LAYOUT
from layouts.labelme import LABELME
from layouts.labels import FOLDER, LABPICS, VOC
from layouts.panoptic import PANOPTIC
from layouts.sa1b import SA1B
from layouts.video import VIDEO
from layouts.yolo import YOLO
from plumbing.files import DataError

# tried in this order: the first whose detect() (file() for a file) accepts the path
LAYOUTS: list[Layout] = [VIDEO, LABPICS, VOC, FOLDER, YOLO, SA1B, LABELME, PANOPTIC, COCO_LAYOUT]
FORMATS.update((x.name, x) for x in LAYOUTS)

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


def layouts_help() -> str:
    return "layouts looked for:\n" + "\n".join(f"  {x.name + ':':8} {x.looks}" for x in LAYOUTS)


def detect_format(root: str | Path) -> str:
    """The name of root's layout (a LAYOUTS name: 'labpics', 'voc', 'yolo', 'sa1b', 'coco', ...);
    DataError saying what it looks like, or which layouts were looked for, if none fits."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder\n{layouts_help()}")
    is_file = root.is_file()
    for layout in LAYOUTS:
        if (layout.file if is_file else layout.detect)(root):
            return layout.name
    hint = next((h for pat, head, h in HINTS if _hint_fits(root, pat, head)), None)
    what = f"looks like {hint}" if hint else "no known dataset layout found"
    raise DataError(f"{root}: {what}\n{layouts_help()}")


# ----------------------------------------------------------------------------- splits


def held_out(records: list[Record], split: str) -> list[Record]:
    """Fixed 80/20 split without a list file: the records whose names hash lowest are test (at
    least one when there are two or more), so adding images barely reshuffles the split."""
    if split == "all":
        return list(records)
    # fsencode: the name's bytes on disk, also for names that are not valid UTF-8
    order = sorted(records, key=lambda r: hashlib.md5(os.fsencode(r.image.name)).hexdigest())
    n_test = max(1, round(len(records) * 0.2)) if len(records) >= 2 else 0
    test = {id(r) for r in order[:n_test]}
    return [r for r in records if (id(r) in test) == (split == "test")]


def parts(root: Path, fmt: str, opts: Options) -> Parts:
    """Where a dataset's records come from: (source, split, loader). With a train part and a
    val (else test) part those are 'train' and 'test', a test part beside a val part is
    'unused'; otherwise split is None and the images are held out 80/20 by name hash. Loaders
    run only when their records are needed."""
    found = FORMATS[fmt].parts(root, opts)
    words = {w for _, w, _ in found}
    if "train" in words and words & {"val", "test"}:
        split = {"train": "train", "val" if "val" in words else "test": "test", None: None}
        return [(s, split.get(w, "unused"), load) for s, w, load in found]
    return [(s, None, load) for s, _, load in found]


def pick(found: Parts, split: str) -> list[Record]:
    """The records of one split ('train', 'test'/'val' or 'all') from parts()."""
    split = norm_split(split)
    fixed = [
        r for _, t, load in found if t in ("train", "test") and split in (t, "all") for r in load()
    ]
    pool = [r for _, t, load in found if t is None for r in load()]
    return fixed + held_out(pool, split)


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
    root, opts = Path(root), Options(complex, crowd, ignore_index, stuff)
    fmt = detect_format(root)
    recs = pick(parts(root, fmt, opts), split)
    if not any(layout_of(r).annotated(r) for r in recs):
        raise DataError(
            f"{root}: found the {fmt} layout but no image-annotation pairs for split "
            f"'{split}' ({len(recs)} images without annotations)\n{layouts_help()}"
        )
    return recs
