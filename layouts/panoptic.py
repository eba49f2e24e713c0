"""COCO panoptic (COCO, detectron2, datumaro): panoptic_<subset>.json, read by layouts.coco,
and a PNG per image whose colours are segment ids; each thing segment is an instance."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from layouts.base import Layout, Record, capped, layout_of
from layouts.coco import coco_jsons, coco_parts, not_coco
from plumbing.files import DataError, read_bytes


def _panoptic_ids(record: Record, h: int, w: int) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG: R + 256 G + 256^2 B; never rotated."""
    lab = cv2.imdecode(read_bytes(record.annotation), cv2.IMREAD_UNCHANGED)
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
    segments = capped(record.coco or [], skipped, "segments")
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


def stuff_note(records: list[Record]) -> str | None:
    """What became of COCO panoptic stuff segments (categories with isthing 0)."""
    left = sum(len(r.stuff) for r in records)
    if not left:
        return None
    # datumaro cannot tell things from stuff and writes isthing 0 for every category
    none = not any(r.coco for r in records if layout_of(r) is PANOPTIC)
    why = " (no category is a thing: datumaro's panoptic export marks every one stuff)"
    return (
        f"{left} stuff segments (isthing 0) skipped in {sum(bool(r.stuff) for r in records)} "
        f"images{why if none else ''}: --stuff-instances makes them instances"
    )


def _panoptic_jsons(root: Path) -> list[Path]:
    """COCO panoptic files (panoptic_*.json) where there is no instances file."""
    return [j for j in coco_jsons(root) if "panoptic" in j.stem.lower()]


PANOPTIC = Layout(
    "panoptic",
    "ROOT/annotations/panoptic_train.json + its PNGs in ROOT/annotations/panoptic_train/ "
    "(COCO panoptic: COCO, detectron2, datumaro)",
    lambda r: bool(_panoptic_jsons(r)),
    partial(coco_parts, _panoptic_jsons),
    file=lambda p: p.suffix.lower() == ".json" and not not_coco(p) and "panoptic" in p.stem.lower(),
    instances=_panoptic_instances,
    checks=lambda r: r.annotation is not None,  # an image without segments has no PNG
    ann_size=True,
    annotated=lambda r: True,  # an image without segments is one with no objects
)
