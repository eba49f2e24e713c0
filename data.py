"""Datasets for fine-tuning SAM 2, read as the annotation tools write them: LabPics V1, label-PNG
folders, Pascal VOC, COCO (CVAT, Roboflow, detectron2) and COCO panoptic, YOLO segmentation
(Ultralytics, Roboflow, datumaro), labelme and SA-1B (SAM's own format).

    python data.py --make-demo demo_data      # small synthetic LabPics-style dataset
    python data.py demo_data                  # what was found: layout, splits, instances, skips
    python data.py /data/LabPicsV1 --complex  # include the Complex/ part of LabPics
    python data.py cvat_export --crowd-instances  # CVAT's COCO export: its masks are crowd regions
    python data.py --make-video-demo demo_videos && python data.py demo_videos  # videos
    python -m pytest -q tests/test_data.py

Here: records -> samples (read_sample, SegDataset, load_split) and the summary. How each layout
is found, split and read: layouts/ (one module a layout; LAYOUTS is the table). Images are read
as cv2.imread reads them (EXIF orientation applied); label PNGs are never rotated. Every
instance is decoded and resized one at a time, so memory follows the resized output.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layouts import FORMATS, detect_format, find_records, parts, pick
from layouts.base import (
    MAX_INSTANCES,
    Options,
    Record,
    check_record,
    layout_of,
    record_rgb,
    record_size,
    some,
)
from layouts.coco import crowd_note
from layouts.panoptic import stuff_note
from layouts.video import (
    VIDEO_DIRS,
    VOID,
    Video,
    find_videos,
    first_object_frame,
    load_videos,
    object_ids,
    summarize_videos,
    video_labels,
)
from plumbing.cli import add_data_flags
from plumbing.demo import make_demo, make_video_demo
from plumbing.files import DataError
from plumbing.images import (
    IMAGE_EXTS,
    labpics_merge,
    new_size,
    read_label_map,
    read_rgb,
    resize_longest,
    resize_nearest,
)
from plumbing.masks import sample_points

__all__ = [  # what the scripts, tests and notebooks use: read here, wherever it lives
    "IMAGE_EXTS",
    "MAX_INSTANCES",
    "VIDEO_DIRS",
    "VOID",
    "DataError",
    "Options",
    "Record",
    "Sample",
    "SegDataset",
    "Video",
    "check_record",
    "detect_format",
    "find_records",
    "find_videos",
    "first_object_frame",
    "labpics_merge",
    "load_split",
    "load_videos",
    "main",
    "make_demo",
    "make_video_demo",
    "object_ids",
    "read_label_map",
    "read_rgb",
    "read_sample",
    "resize_longest",
    "resize_nearest",
    "sample_points",
    "summarize",
    "summarize_videos",
    "video_labels",
]


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


# ----------------------------------------------------------------------------- samples


def _instance_masks(record: Record, hw: tuple[int, int], out: tuple[int, int], min_area: int):
    """Instance masks (N, *out) bool of an image of size hw, each resized to out as soon as it
    is decoded (memory follows the output, not H x W x N), those under min_area pixels dropped;
    and why annotations were skipped."""
    layout = layout_of(record)
    if layout.instances is None:
        # the label map is resized before it is split: N full-size masks are never made
        lab = resize_nearest(layout.label_map(record, *hw), out)
        ids, areas = np.unique(lab, return_counts=True)
        return lab[None] == ids[(ids != 0) & (areas >= min_area), None, None], []
    skipped: list[str] = []
    masks = [resize_nearest(m, out) for m in layout.instances(record, *hw, skipped)]
    masks = [m for m in masks if m.sum() >= min_area]
    return (np.stack(masks) if masks else np.zeros((0, *out), bool)), skipped


def read_sample(record: Record, max_side: int = 1024, min_area: int = 16, seed: int = 0) -> Sample:
    """Decode, resize (longer side -> max_side), drop instances < min_area px, pick one click
    per instance. Sample: image (H, W, 3) uint8, masks (N, H, W) bool, points (N, 2) float32.
    DataError names a bad file; annotations without a usable mask are skipped with a warning."""
    image = record_rgb(record)
    hw = image.shape[:2]
    if (record.width, record.height) not in ((None, None), hw[::-1]):
        raise DataError(
            f"{record.image}: image is {hw[1]}x{hw[0]} but its COCO entry says "
            f"{record.width}x{record.height}"
        )
    masks, skipped = _instance_masks(record, hw, new_size(*hw, max_side), max(min_area, 1))
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
    notes = [f"{split}: {n}" for n in (crowd_note(records), stuff_note(records)) if n]
    return SegDataset(good, max_side, min_area, seed, notes)


# ----------------------------------------------------------------------------- summary / CLI


def _count_instances(record: Record) -> tuple[int, list[str]]:
    """Instances in an image's annotation (before min_area) and why annotations were skipped;
    DataError if a file is bad. Masks are decoded one at a time and dropped."""
    why = check_record(record)
    if why is not None:
        raise DataError(why)
    w, h = record_size(record)
    layout = layout_of(record)
    if layout.instances is not None:
        skipped: list[str] = []
        return sum(1 for _ in layout.instances(record, h, w, skipped)), skipped
    return int((np.unique(layout.label_map(record, h, w)) != 0).sum()), []


SPLIT_TEXT = {
    None: "80% train / 20% test by name hash",
    "unused": "not used (the val part is the validation split)",
}


def _summary(root: Path, opts: Options) -> tuple[str, int]:
    """summarize()'s text and the number of usable training images (read, with instances)."""
    fmt = detect_format(root)
    if FORMATS[fmt].summary is not None:  # videos
        return FORMATS[fmt].summary(root)
    found = parts(root, fmt, opts)
    lines = [f"data:    {root} ({fmt} layout)"]
    lines += [f"source:  {s} -> {SPLIT_TEXT.get(t, t)}" for s, t, _ in found]
    bad_files, bad_anns, crowd, empty, records, usable = [], [], [], [], [], 0
    for split in ("train", "test"):
        counts = []
        for r in pick(found, split):
            records.append(r)
            if r.crowd:
                ids = [str(a.get("id")) for a in r.crowd]
                crowd.append(f"  {r.image}: crowd (iscrowd=1) annotation ids {some(ids)}")
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
        lines.append(f"{len(empty)} images without instances (not trained on): {some(empty)}")
    note = crowd_note(records)
    if note:
        lines.append(f"crowd:   {note}")
    note = stuff_note(records)
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
    add_data_flags(p)
    defaults = Options()
    p.set_defaults(
        complex=defaults.complex,
        crowd_instances=defaults.crowd,
        ignore_index=defaults.ignore_index,
        stuff_instances=defaults.stuff,
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


if __name__ == "__main__":
    sys.exit(main())
