"""YOLO segmentation (Ultralytics, Roboflow YOLOv8, datumaro): a data.yaml naming image
folders, and beside each images/ folder a labels/ folder of one .txt per image, one polygon a
line, normalized to the image's size."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from layouts.base import (
    SPLIT_WORDS,
    Layout,
    Options,
    Parts,
    Record,
    capped,
    rel,
    split_dirs,
    word,
)
from plumbing.files import DataError, read_lines
from plumbing.images import IMAGE_EXTS


def _yolo_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """Ultralytics segment label: one instance per line, `class x1 y1 x2 y2 ...` normalized to
    the image's width and height. No label file: no objects (Ultralytics: a background image)."""
    if not record.annotation.is_file():
        return
    seen = set()
    for n, line in capped(list(enumerate(read_lines(record.annotation), 1)), skipped, "lines"):
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


def _has_labels(record: Record) -> bool:
    """A label file with lines: without one, or with an empty one (datumaro, supervision), an
    image has no objects."""
    ann = Path(record.annotation)
    return ann.is_file() and ann.stat().st_size > 0


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
            images += [p.parent / line for line in read_lines(p)]
        elif p.is_file():
            images.append(p)
        else:
            raise DataError(f"{p}: no such folder or file (named in {origin})")
    return [Record(q, _yolo_label(q), "yolo") for q in images]


def _yolo_dirs(root: Path) -> list[Path]:
    """Image folders without a data.yaml: images/{train,val}/ + labels/..., images/ + labels/,
    or {train,valid,test}/images/ + .../labels/ (Roboflow)."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return split_dirs(root / "images") or [root / "images"]
    return [d / "images" for d in split_dirs(root) if (d / "labels").is_dir()]


def _yolo_parts(root: Path, opts: Options) -> Parts:
    y = _yolo_yaml(root)
    if y is None:
        dirs = _yolo_dirs(root)
        return [
            (rel(d, root), word(d) or word(d.parent), partial(_yolo_records, [d], str(root)))
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
            src = f"{y.name} {key}: {', '.join(rel(p, root) for p in paths)}"
            parts.append((src, SPLIT_WORDS[key], partial(_yolo_records, paths, y.name)))
    return parts


YOLO = Layout(
    "yolo",
    "ROOT/data.yaml + ROOT/images/train/x.jpg + ROOT/labels/train/x.txt (Ultralytics, "
    "Roboflow YOLOv8), or a path to the .yaml",
    lambda r: _yolo_yaml(r) is not None or bool(_yolo_dirs(r)),
    _yolo_parts,
    file=lambda p: p.suffix.lower() in (".yaml", ".yml"),
    instances=_yolo_instances,
    checks=_has_labels,
)
