"""Label-PNG layouts: LabPics V1, Pascal VOC and a folder of images/ + masks/. Each image's
annotation is a PNG of instance ids (or colours) of the image's size, read as a label map."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from layouts.base import (
    SPLIT_WORDS,
    Layout,
    Options,
    Parts,
    Record,
    images_in,
    rel,
    split_dirs,
    word,
)
from plumbing.files import DataError, read_lines
from plumbing.images import read_label_map

IMAGES_MASKS = ("images", "masks")  # the folder layout's two subfolders


def label_map(record: Record, h: int, w: int, labpics: bool = False) -> np.ndarray:
    """(H, W) int32 ids of a label-PNG record (LabPics' merge with labpics); DataError on a
    size that is not the image's."""
    if record.annotation is None or not Path(record.annotation).is_file():
        raise DataError(f"{record.image}: missing annotation {record.annotation}")
    lab = read_label_map(record.annotation, labpics, record.ignore_index)
    if lab.shape != (h, w):
        raise DataError(
            f"size mismatch: image {record.image} is {w}x{h} but annotation "
            f"{record.annotation} is {lab.shape[1]}x{lab.shape[0]}"
        )
    return lab


def _match_masks(image_dir: Path, mask_dir: Path, fmt: str, ignore: int = -1) -> list[Record]:
    """Pair images with masks by stem; an image without one gets the expected .png path so the
    error later names the file that is missing."""
    masks = {}
    for m in images_in(mask_dir):
        if m.stem not in masks or m.suffix.lower() == ".png":
            masks[m.stem] = m
    return [
        Record(p, masks.get(p.stem, mask_dir / f"{p.stem}.png"), fmt, ignore_index=ignore)
        for p in images_in(image_dir)
    ]


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
        (rel(d / "Image", root), word(d), partial(load, d / "Image", d / "Instance"))
        for d in subs
        if (d / "Image").is_dir()
    ]


# folder ------------------------------------------------------------------------------------


def _folder_splits(root: Path) -> list[Path]:
    return [d for d in split_dirs(root) if all((d / s).is_dir() for s in IMAGES_MASKS)]


def _folder_parts(root: Path, opts: Options) -> Parts:
    load = partial(_match_masks, fmt="folder", ignore=opts.ignore_index)
    subs = _folder_splits(root)
    return [
        (
            rel(d / "images", root),
            word(d) if subs else None,
            partial(load, d / "images", d / "masks"),
        )
        for d in subs or [root]
    ]


# voc ---------------------------------------------------------------------------------------


def _voc_records(root: Path, ignore: int, listfile: Path | None) -> list[Record]:
    images = {p.stem: p for p in images_in(root / "JPEGImages")}
    if listfile is None:
        stems = [p.stem for p in images_in(root / "SegmentationObject")]
    else:  # VOC's lists hold stems; ImageSets/Main's also a flag after each
        stems = [line.split()[0] for line in read_lines(listfile)]
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
    return [(rel(sets[n], root), SPLIT_WORDS[n], partial(load, sets[n])) for n in names]


LABPICS = Layout(
    "labpics",
    "ROOT/Simple/Train/Image/x.jpg + ROOT/Simple/Train/Instance/x.png (Test/ likewise)",
    lambda r: _labpics_base(r) is not None,
    _labpics_parts,
    label_map=partial(label_map, labpics=True),
    ann_size=True,
)
VOC = Layout(
    "voc",
    "ROOT/JPEGImages/x.jpg + ROOT/SegmentationObject/x.png (Pascal VOC, labelme2voc)",
    lambda r: (r / "JPEGImages").is_dir() and (r / "SegmentationObject").is_dir(),
    _voc_parts,
    label_map=label_map,
    ann_size=True,
)
FOLDER = Layout(
    "folder",
    "ROOT/images/x.jpg + ROOT/masks/x.png, or ROOT/train/{images,masks} + ROOT/test/...",
    lambda r: all((r / d).is_dir() for d in IMAGES_MASKS) or bool(_folder_splits(r)),
    _folder_parts,
    label_map=label_map,
    ann_size=True,
)
