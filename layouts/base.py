"""What the layout modules share: Record (one image and its annotation), Options (the data
flags), Layout (a layout's table row: how it is found and how its records are read), FORMATS
(Record.format -> its Layout), check_record, and small folder helpers."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plumbing.files import DataError
from plumbing.images import IMAGE_EXTS, decode_image, file_problem, image_size, read_image
from plumbing.intensity import DEFAULT_RULE, PixelRule

# whole words of a part's name that tag its split ("instances_trainval2017" -> train)
SPLIT_WORDS = {"train": "train", "trainval": "train", "training": "train", "test": "test"}
SPLIT_WORDS |= {"val": "val", "valid": "val", "validation": "val", "minival": "val"}
# instances read per image at most, in file order (the rest are left out and counted): each
# kept one costs up to 1 MiB at 1024 px in every sample, and SA-1B-style files hold hundreds
MAX_INSTANCES = 1000


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
    format: str  # its layout's name (FORMATS: how it is read): labpics | folder | voc (label
    # PNGs), coco | panoptic | yolo | labelme | sa1b, video (a frame)
    coco: list[dict] | None = None  # this image's COCO annotations that are read
    width: int | None = None  # image size the COCO JSON claims (checked when given)
    height: int | None = None
    ignore_index: int = -1  # label PNGs: this 8-bit value is no instance (-1: none)
    crowd: list[dict] = field(default_factory=list)  # COCO crowd annotations left out
    looked_in: tuple[Path, ...] = ()  # COCO: the folders searched for the image
    stuff: list[dict] = field(default_factory=list)  # COCO panoptic stuff segments left out
    embedded: bool = False  # labelme: the image is the JSON's imageData (no image file)


Parts = list[tuple[str, str | None, Callable[[], list[Record]]]]  # (source, split, loader)


def has_annotation(record: Record) -> bool:
    """The record's annotation file is there."""
    return record.annotation is not None and Path(record.annotation).is_file()


def always(record: Record) -> bool:
    return True


def never(path: Path) -> bool:
    return False


@dataclass(frozen=True)
class Layout:
    """A dataset layout, one row of layouts.LAYOUTS: what it looks like (help), how it is found
    (detect, parts) and its rules for reading its records (Record.format names it)."""

    name: str
    looks: str  # one line: what it looks like and who writes it
    detect: Callable[[Path], bool]  # a folder is one
    parts: Callable[[Path, Options], Parts]
    file: Callable[[Path], bool] = never  # a file given as the path is one (a .json, a .yaml)
    # an image's instances: a label map of ids (H, W) int32, split after it is resized, or
    # instance masks (H, W) bool one at a time, appending to `skipped` why an annotation gave none
    label_map: Callable[[Record, int, int], np.ndarray] | None = None
    instances: Callable[[Record, int, int, list[str]], Iterator[np.ndarray]] | None = None
    checks: Callable[[Record], bool] = always  # check_record checks the annotation file
    ann_size: bool = False  # the annotation is an image of the image's size (headers compared)
    annotated: Callable[[Record], bool] = has_annotation  # the record has annotations to read
    image_data: Callable[[Record], bytes] | None = None  # the image a record.embedded carries
    summary: Callable[[Path], tuple[str, int]] | None = None  # its own `python data.py PATH`


FORMATS: dict[str, Layout] = {}  # Record.format -> its Layout: the rows of layouts.LAYOUTS


def layout_of(record: Record) -> Layout:
    """The Layout whose rules read `record`."""
    return FORMATS[record.format]


# ----------------------------------------------------------------------------- folders


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def split_dirs(root: Path) -> list[Path]:
    """root's subfolders named for a split (train/, val/, valid/, test/, ...)."""
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.name.lower() in SPLIT_WORDS and d.is_dir()]


def word(d: Path) -> str | None:
    return SPLIT_WORDS.get(d.name.lower())


def rel(p: Path, root: Path) -> str:
    return os.path.relpath(p, root if root.is_dir() else root.parent)


def norm_split(split: str) -> str:
    s = split.lower()
    if s in ("train", "all"):
        return s
    if s in ("test", "val"):
        return "test"
    raise ValueError(f"split must be 'train', 'test', 'val' or 'all', got {split!r}")


def some(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f", ... ({len(items) - k} more)" if items[k:] else "")


def capped(items: list, skipped: list[str], what: str = "annotations") -> list:
    """The first MAX_INSTANCES items; how many more were left out goes to skipped."""
    if len(items) > MAX_INSTANCES:
        n = len(items) - MAX_INSTANCES
        skipped.append(f"{n} {what} after the first {MAX_INSTANCES} left out (data.MAX_INSTANCES)")
    return items[:MAX_INSTANCES]


# ----------------------------------------------------------------------------- records


def record_rgb(record: Record, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """A record's image (H, W, 3) uint8 RGB by the pixel rule: its file, or the image its
    annotation embeds."""
    if not record.embedded:
        return read_image(record.image, rule)
    name = f"imageData of {record.annotation}"
    return decode_image(np.frombuffer(layout_of(record).image_data(record), np.uint8), name, rule)


def record_size(record: Record) -> tuple[int, int]:
    """(W, H) of a record's image as read_sample reads it (an embedded one too)."""
    if record.embedded:
        return image_size(io.BytesIO(layout_of(record).image_data(record)))
    return image_size(record.image)


def check_record(record: Record) -> str | None:
    """Cheap up-front check (headers and file ends only): None if fine, else why not."""
    layout, ann = layout_of(record), record.annotation
    checked = layout.checks(record)
    # an embedded image stands in for a missing image file
    files = ([] if record.embedded else [record.image]) + ([ann] if checked else [])
    for p in files:
        if p is None:
            return f"{record.image}: missing annotation"
        if not Path(p).is_file():
            if p != record.image:
                return f"{p}: missing annotation for {record.image}"
            where = ", ".join(map(str, record.looked_in))
            return f"{p}: missing image" + (f" (looked in {where})" if where else "")
        if why := file_problem(p):
            return why
    try:
        w, h = record_size(record)
    except DataError as e:
        return str(e)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's zoo for broken headers
        what = f"imageData of {ann}" if record.embedded else record.image
        return f"{what}: unreadable image header ({type(e).__name__})"
    if (record.width, record.height) not in ((None, None), (w, h)):
        return (
            f"{record.image}: image is {w}x{h} but its COCO entry says "
            f"{record.width}x{record.height}"
        )
    if not (layout.ann_size and checked):
        return None  # YOLO is normalized; labelme's and SA-1B's sizes are checked when read
    try:
        aw, ah = image_size(ann, oriented=False)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"{ann}: unreadable annotation header ({type(e).__name__})"
    if (aw, ah) != (w, h):
        return f"size mismatch: image {record.image} is {w}x{h} but annotation {ann} is {aw}x{ah}"
    return None
