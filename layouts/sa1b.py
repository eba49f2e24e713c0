"""SA-1B (SAM's own format; datumaro's segment_anything): sa_1.json beside sa_1.jpg, with an
'image' record and 'annotations', each an RLE 'segmentation' as COCO's."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from layouts.base import Layout, Options, Parts, Record, images_in, rel, word
from layouts.coco import rle_instances
from layouts.labelme import json_dirs
from plumbing.files import DataError, read_json


def _sa1b_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """SA-1B (SAM's own format, one JSON per image): an 'image' record (width, height) and
    'annotations', each an RLE 'segmentation' as COCO's."""
    d = read_json(record.annotation, "SA-1B JSON")
    if not isinstance(d, dict) or not isinstance(d.get("annotations"), list):
        raise DataError(f"{record.annotation}: not an SA-1B JSON (no 'annotations' list)")
    im = d.get("image") if isinstance(d.get("image"), dict) else {}
    if (im.get("height"), im.get("width")) not in ((None, None), (h, w)):
        raise DataError(
            f"{record.image} is {w}x{h} but {record.annotation} says "
            f"{im.get('width')}x{im.get('height')}"
        )
    yield from rle_instances(d["annotations"], h, w, skipped)


def _is_sa1b(js: Path) -> bool:
    """An SA-1B JSON ({"image": {...}, "annotations": [...]}), not a labelme one."""
    try:
        d = read_json(js, "JSON")
    except DataError:
        return False
    return isinstance(d, dict) and isinstance(d.get("image"), dict) and "annotations" in d


def _sa1b_dirs(root: Path) -> list[Path]:
    """root and its split folders where x.json beside x.jpg is SA-1B's (its first one read)."""
    out = []
    for d in json_dirs(root):
        images = {p.stem for p in images_in(d)}
        first = next((j for j in sorted(d.glob("*.json")) if j.stem in images), None)
        if first is not None and _is_sa1b(first):
            out.append(d)
    return out


def _sa1b_records(d: Path) -> list[Record]:
    """One record per .json: its image is the one of the same stem, else its 'file_name'."""
    images, out = {p.stem: p for p in images_in(d)}, []
    for js in sorted(d.glob("*.json")):
        image = images.get(js.stem)
        if image is None:
            meta = read_json(js, "SA-1B JSON")
            name = meta.get("image", {}).get("file_name") if isinstance(meta, dict) else None
            if not isinstance(name, str):
                warnings.warn(f"skipping {js}: no image {js.stem}.* beside it, no file_name")
                continue
            image = d / name
        out.append(Record(image, js, "sa1b"))
    return out


def _sa1b_parts(root: Path, opts: Options) -> Parts:
    return [
        (rel(d, root), word(d) if d != root else None, partial(_sa1b_records, d))
        for d in _sa1b_dirs(root)
    ]


SA1B = Layout(
    "sa1b",
    "ROOT/sa_1.jpg + ROOT/sa_1.json with 'image' and 'annotations' (SA-1B, SAM's own; "
    "datumaro's segment_anything), or ROOT/train/... + ROOT/val/...",
    lambda r: bool(_sa1b_dirs(r)),
    _sa1b_parts,
    instances=_sa1b_instances,
)
