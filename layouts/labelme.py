"""labelme: x.json beside x.jpg, its 'shapes' the regions (polygons, rectangles, circles,
masks); the image may travel inside the JSON as its imageData."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, ImageDraw

from layouts.base import Layout, Options, Parts, Record, capped, images_in, rel, split_dirs, word
from layouts.coco import far_off
from plumbing.files import DataError, read_json

LABELME_REGIONS = ("polygon", "rectangle", "circle", "oriented_rectangle", "mask")


def _embedded_bytes(record: Record) -> bytes:
    """A labelme JSON's imageData (base64 of the image file), decoded."""
    d = read_json(record.annotation, "labelme JSON")
    try:
        return base64.b64decode(d["imageData"], validate=True)
    except (binascii.Error, TypeError, KeyError, ValueError):
        raise DataError(f"{record.annotation}: 'imageData' is not base64 image data") from None


def _draw_labelme(canvas: Image.Image, shape: dict) -> None:
    """Draw one labelme shape onto an (H, W) "L" canvas as labelme's own shape_to_mask does."""
    kind, pts = shape.get("shape_type") or "polygon", shape.get("points")
    xy = [(float(x), float(y)) for x, y in pts]
    if why := far_off([v for p in xy for v in p], canvas.height, canvas.width):
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
    d = read_json(record.annotation, "labelme JSON")
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
    for shapes in capped(list(groups.values()), skipped, "shape groups"):
        canvas, drawn = Image.new("L", (w, h), 0), 0
        for i, s in shapes:
            try:
                _draw_labelme(canvas, s)
                drawn += 1
            except (ValueError, TypeError, KeyError, OSError) as e:
                skipped.append(f"shape {i} ({s.get('shape_type')} '{s.get('label')}'): {e}")
        if drawn:
            yield np.asarray(canvas) > 0


def json_dirs(root: Path) -> list[Path]:
    """root and its split folders where a .json sits beside its image (x.jpg + x.json)."""

    def pairs(d: Path) -> bool:
        stems = {p.stem for p in d.glob("*.json")}
        return bool(stems) and any(p.stem in stems for p in images_in(d))

    return [d for d in [root, *split_dirs(root)] if d.is_dir() and pairs(d)]


def _labelme_records(d: Path) -> list[Record]:
    """One record per labelme .json: its image is the one of the same stem, else its
    imagePath (Windows separators too)."""
    images, out = {p.stem: p for p in images_in(d)}, []
    for js in sorted(d.glob("*.json")):
        image = images.get(js.stem)
        if image is None:
            meta = read_json(js, "labelme JSON")
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
    dirs = json_dirs(root)
    return [
        (rel(d, root), word(d) if d != root else None, partial(_labelme_records, d)) for d in dirs
    ]


LABELME = Layout(
    "labelme",
    "ROOT/x.jpg + ROOT/x.json (labelme), or ROOT/train/... + ROOT/val/...",
    lambda r: bool(json_dirs(r)),
    _labelme_parts,
    instances=_labelme_instances,
    image_data=_embedded_bytes,
)
