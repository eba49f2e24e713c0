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
from plumbing.cli import MAX_SIDE, add_data_flags
from plumbing.demo import make_demo, make_video_demo
from plumbing.files import DataError
from plumbing.images import (
    IMAGE_EXTS,
    channel_count,
    decode_raw,
    labpics_merge,
    new_size,
    pixel_info,
    read_label_map,
    read_rgb,
    resize_longest,
    resize_nearest,
)
from plumbing.intensity import DEFAULT_RULE, PixelInfo, PixelRule, describe, source_channels
from plumbing.masks import sample_points
from plumbing.tiles import (
    Box,
    TileCounts,
    check_tile,
    cut_tiles,
    default_overlap,
    kept_after_resize,
)

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
    "read_tile",
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


def as_rule(rule: PixelRule | tuple[str, str] | dict | None) -> PixelRule:
    """A PixelRule from itself, its two strings (normalize, channels) or its dict; None: the
    default (auto, default channels)."""
    if rule is None:
        return DEFAULT_RULE
    if isinstance(rule, PixelRule):
        return rule
    if isinstance(rule, dict):
        return PixelRule.from_dict(rule)
    return PixelRule.parse(*rule)


def _checked_rgb(record: Record, rule: PixelRule) -> np.ndarray:
    """record_rgb, refused (DataError) when its size is not the one its COCO entry says."""
    image = record_rgb(record, rule)
    hw = image.shape[:2]
    if (record.width, record.height) not in ((None, None), hw[::-1]):
        raise DataError(
            f"{record.image}: image is {hw[1]}x{hw[0]} but its COCO entry says "
            f"{record.width}x{record.height}"
        )
    return image


def read_sample(
    record: Record,
    max_side: int = 1024,
    min_area: int = 16,
    seed: int = 0,
    rule: PixelRule | tuple[str, str] | None = None,
) -> Sample:
    """Decode (pixels by `rule`: --normalize / --channels, see plumbing.intensity), resize
    (longer side -> max_side), drop instances < min_area px, pick one click per instance.
    Sample: image (H, W, 3) uint8, masks (N, H, W) bool, points (N, 2) float32.
    DataError names a bad file; annotations without a usable mask are skipped with a warning."""
    image = _checked_rgb(record, as_rule(rule))
    hw = image.shape[:2]
    masks, skipped = _instance_masks(record, hw, new_size(*hw, max_side), max(min_area, 1))
    if skipped:
        warnings.warn(f"{record.image}: skipped " + "; ".join(skipped), stacklevel=2)
    image = resize_longest(image, max_side)
    points = sample_points(torch.from_numpy(masks), torch.Generator().manual_seed(int(seed)))
    return Sample(image, masks, points.numpy(), str(record.image))


def _full_instances(record: Record, hw: tuple[int, int], skipped: list[str]):
    """An image's instances at full resolution, as plumbing.tiles takes them: its (H, W) label
    map, or its (H, W) bool masks one at a time."""
    layout = layout_of(record)
    if layout.instances is None:
        return layout.label_map(record, *hw)
    return layout.instances(record, *hw, skipped)


def tile_masks(instances, box: Box, min_area: int) -> np.ndarray:
    """The visible parts (N, h, w) bool of `instances` (label map or mask iterable) inside
    `box`, those under min_area px dropped: what cut_tiles keeps of that tile."""
    y0, x0, y1, x1 = box
    if isinstance(instances, np.ndarray):
        lab = instances[y0:y1, x0:x1]
        ids, areas = np.unique(lab, return_counts=True)
        return lab[None] == ids[(ids != 0) & (areas >= min_area), None, None]
    parts = [m[y0:y1, x0:x1] for m in instances]
    parts = [m for m in parts if m.sum() >= min_area]
    return np.stack(parts) if parts else np.zeros((0, y1 - y0, x1 - x0), bool)


def read_tile(
    record: Record,
    box: Box,
    max_side: int = 1024,
    min_area: int = 16,
    seed: int = 0,
    rule: PixelRule | tuple[str, str] | None = None,
    image: np.ndarray | None = None,
) -> Sample:
    """One training tile (y0, x0, y1, x1) of a record's full-resolution image: the image's
    pixels there and each instance's visible part (>= min_area px); resized to max_side only
    where the tile is larger. `image`: the record's full (H, W, 3) image if already read.
    Only this tile's masks are made (label maps are cut before they are split)."""
    image = _checked_rgb(record, as_rule(rule)) if image is None else image
    skipped: list[str] = []
    masks = tile_masks(_full_instances(record, image.shape[:2], skipped), box, max(min_area, 1))
    if skipped:
        warnings.warn(f"{record.image}: skipped " + "; ".join(skipped), stacklevel=2)
    y0, x0, y1, x1 = box
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    if max(crop.shape[:2]) > max_side:
        out = new_size(*crop.shape[:2], max_side)
        crop = resize_longest(crop, max_side)
        masks = resize_nearest(masks.transpose(1, 2, 0), out).transpose(2, 0, 1)
        masks = np.ascontiguousarray(masks[masks.sum((1, 2)) >= max(min_area, 1)])
    points = sample_points(torch.from_numpy(masks), torch.Generator().manual_seed(int(seed)))
    return Sample(crop, masks, points.numpy(), f"{record.image} tile {box}")


class SegDataset(torch.utils.data.Dataset):
    """Records -> Samples; a bad file gives None (and a warning) instead of killing training.
    notes: lines worth printing when a run starts (crowd regions skipped, ...). rule: the
    pixel rule (as_rule). tiles: None (one Sample per record), or [(record index, box)], one
    Sample per training tile (read_tile)."""

    def __init__(
        self,
        records: list[Record],
        max_side: int = 1024,
        min_area: int = 16,
        seed: int = 0,
        notes: list[str] | None = None,
        rule: PixelRule | tuple[str, str] | None = None,
        tiles: list[tuple[int, Box]] | None = None,
    ):
        self.records, self.max_side, self.min_area, self.seed = records, max_side, min_area, seed
        self.notes = notes or []
        self.rule, self.tiles = as_rule(rule), tiles
        self._last: tuple[int, np.ndarray] | None = None  # the image its last tile came from

    def __len__(self) -> int:
        return len(self.records) if self.tiles is None else len(self.tiles)

    def _read(self, i: int, s: int) -> Sample:
        if self.tiles is None:
            return read_sample(self.records[i], self.max_side, self.min_area, s, self.rule)
        r, box = self.tiles[i]
        if self._last is None or self._last[0] != r:  # a big image's tiles come in a row
            self._last = None  # drop the previous image before reading the next
            self._last = (r, _checked_rgb(self.records[r], self.rule))
        rec = self.records[r]
        return read_tile(rec, box, self.max_side, self.min_area, s, self.rule, self._last[1])

    def __getitem__(self, i: int) -> Sample | None:
        # seed from (seed, i) only: the same points whichever worker / process loads item i
        s = int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])
        try:
            return self._read(i, s)
        except DataError as e:
            name = self.records[i if self.tiles is None else self.tiles[i][0]].image
            warnings.warn(f"skipping {name}: {e}", stacklevel=2)
            return None


def pixel_problem(record: Record, rule: PixelRule) -> str | None:
    """Why the rule cannot read a record's image (its channels do not fit --channels), from
    the file's header; None if it can."""
    if record.embedded:
        return None  # a labelme imageData: read (and refused, naming it) when sampled
    try:
        source_channels(channel_count(record.image), rule, record.image)
    except DataError as e:
        return str(e)
    except OSError as e:
        return f"{record.image}: unreadable ({e})"
    return None


def add_counts(total: TileCounts, c: TileCounts) -> None:
    """total += c, field by field."""
    for f in ("instances", "small", "kept", "cut_dropped"):
        setattr(total, f, getattr(total, f) + getattr(c, f))


def tile_index(
    records: list[Record], tile: int, overlap: int, min_area: int
) -> tuple[list[tuple[int, Box]], TileCounts, int]:
    """The training tiles of `records` (plumbing.tiles.cut_tiles on each full-resolution image)
    -> ([(record index, box)] of the tiles holding instance parts, the summed counts, how many
    records could not be read (skipped with a warning)). Reads every annotation once; keeps
    only the boxes, not the parts."""
    items, total, bad = [], TileCounts(), 0
    for r, rec in enumerate(records):
        try:
            w, h = record_size(rec)
            cuts, counts = cut_tiles(
                _full_instances(rec, (h, w), []), (h, w), tile, overlap, min_area
            )
        except DataError as e:
            warnings.warn(f"skipping {rec.image}: {e}", stacklevel=2)
            bad += 1
            continue
        items += [(r, c.box) for c in cuts]
        add_counts(total, counts)
    return items, total, bad


def tile_note(tile: int, overlap: int, n_tiles: int, n_images: int, c: TileCounts) -> str:
    """One line: what --tile kept of a split's instances."""
    lost = c.instances - c.small - c.kept
    return (
        f"--tile {tile} (overlap {overlap}): {n_tiles} tiles with instances from {n_images} "
        f"images; {c.kept} of {c.instances} instances kept, {c.small} under --min-area even "
        f"whole, {c.cut_dropped} parts cut by a tile edge to under --min-area dropped"
        + (f" ({lost} instances lost every part)" if lost else "")
    )


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
    rule: PixelRule | tuple[str, str] | None = None,
    tile: int = 0,
    tile_overlap: int = -1,
) -> SegDataset:
    """find_records + check_record on each (and the pixel rule's channels, from headers); bad
    pairs skipped with a warning each, DataError if more than half are bad (probably the wrong
    folder or --channels, not a few broken files). The dataset's notes say what became of COCO
    crowd regions and panoptic stuff segments, and with `tile` (px; 0: none) what the tiles
    kept (tile_index)."""
    rule = as_rule(rule)
    records = find_records(root, split, complex, crowd, ignore_index, stuff)
    good, bad = [], []
    for r in records:
        why = check_record(r) or pixel_problem(r, rule)
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
    tiles = None
    if tile:
        overlap = default_overlap(tile) if tile_overlap < 0 else tile_overlap
        tiles, counts, _ = tile_index(good, tile, overlap, max(min_area, 1))
        notes.append(f"{split}: " + tile_note(tile, overlap, len(tiles), len(good), counts))
    return SegDataset(good, max_side, min_area, seed, notes, rule, tiles)


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


@dataclass(frozen=True)
class Look:
    """How `python data.py` reads a dataset beyond its layout: the sizes, the pixel rule and
    the tiles train.py would use."""

    max_side: int = 1024
    min_area: int = 16
    tile: int = 0
    tile_overlap: int = -1
    rule: PixelRule = DEFAULT_RULE


PIXEL_SAMPLE = 24  # images per split whose pixels are read for the dtype / range line
SUGGEST_TILE = 0.1  # suggest --tile when resizing drops more than this share of instances


def _sizes(record: Record, look: Look) -> tuple[int, int, tuple[int, TileCounts] | None]:
    """(instances, kept after resizing to max_side with min_area, (tiles holding instances,
    the tile counts) with look.tile) of one record, its annotation read at full resolution."""
    w, h = record_size(record)
    n, kept = kept_after_resize(
        _full_instances(record, (h, w), []), (h, w), look.max_side, max(look.min_area, 1)
    )
    counts = None
    if look.tile:
        overlap = default_overlap(look.tile) if look.tile_overlap < 0 else look.tile_overlap
        inst = _full_instances(record, (h, w), [])
        cuts, c = cut_tiles(inst, (h, w), look.tile, overlap, max(look.min_area, 1))
        counts = len(cuts), c
    return n, kept, counts


def _pixels(records: list[Record], rule: PixelRule) -> str:
    """describe() of up to PIXEL_SAMPLE of the records' images (evenly spread)."""
    pick = sorted({round(x) for x in np.linspace(0, len(records) - 1, PIXEL_SAMPLE)})
    pick = pick if records else []
    infos = []
    for i in pick:
        r = records[i]
        try:
            if r.embedded:
                raw, note = decode_raw(np.frombuffer(layout_of(r).image_data(r), np.uint8), r.image)
                infos.append(PixelInfo.of(raw, note))
            else:
                infos.append(pixel_info(r.image))
        except DataError:
            continue  # named in the skipped files
    sampled = f" ({len(infos)} of {len(records)} images read)" if len(pick) < len(records) else ""
    return describe(infos, rule) + sampled


def _size_lines(split: str, n: int, kept: int, tiles, look: Look, images: int) -> list[str]:
    """What --max-side / --min-area keep of a split's instances, and what --tile keeps."""
    drop = n - kept
    line = (
        f"{split + ':':8} --max-side {look.max_side} --min-area {look.min_area}: {kept} of {n} "
        f"instances kept, {drop} under --min-area after resizing"
    )
    if n and drop > SUGGEST_TILE * n and not look.tile:
        line += "; small objects are lost: try --tile 1024 (full-resolution tiles keep them)"
    lines = [line]
    if tiles is not None:
        overlap = default_overlap(look.tile) if look.tile_overlap < 0 else look.tile_overlap
        lines.append(f"{'':9}" + tile_note(look.tile, overlap, tiles[0], images, tiles[1]))
    return lines


SPLIT_TEXT = {
    None: "80% train / 20% test by name hash",
    "unused": "not used (the val part is the validation split)",
}


def _summary(root: Path, opts: Options, look: Look = Look()) -> tuple[str, int]:
    """summarize()'s text and the number of usable training images (read, with instances)."""
    fmt = detect_format(root)
    if FORMATS[fmt].summary is not None:  # videos
        return FORMATS[fmt].summary(root)
    found = parts(root, fmt, opts)
    lines = [f"data:    {root} ({fmt} layout)"]
    lines += [f"source:  {s} -> {SPLIT_TEXT.get(t, t)}" for s, t, _ in found]
    bad_files, bad_anns, crowd, empty, records, usable = [], [], [], [], [], 0
    extra = []
    for split in ("train", "test"):
        counts, good = [], []
        total, kept, tiles = 0, 0, [0, TileCounts()] if look.tile else None
        for r in pick(found, split):
            records.append(r)
            if r.crowd:
                ids = [str(a.get("id")) for a in r.crowd]
                crowd.append(f"  {r.image}: crowd (iscrowd=1) annotation ids {some(ids)}")
            try:
                n, notes = _count_instances(r)
                why = pixel_problem(r, look.rule)
                if why:
                    raise DataError(why)
                n_all, n_kept, t = _sizes(r, look)
            except DataError as e:
                bad_files.append(f"  {e}")
                continue
            good.append(r)
            counts.append(n)
            total, kept = total + n_all, kept + n_kept
            if t is not None:
                tiles[0] += t[0]
                add_counts(tiles[1], t[1])
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
        if good:
            extra.append(f"{'pixels:':8} {split}: {_pixels(good, look.rule)}")
            extra += _size_lines(split, total, kept, tiles, look, len(good))
    lines += extra
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
    look: Look = Look(),
) -> str:
    """Human-readable report: layout, which source is which split, images and instances per
    split, the pixels found (dtype, channels, range) and the rule applied, what --max-side /
    --min-area (and --tile) keep, skipped files and annotations (each named), crowd regions,
    panoptic stuff segments, images without instances. DataError if unreadable."""
    return _summary(Path(root), Options(complex, crowd, ignore_index, stuff), look)[0]


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
    g = p.add_argument_group("what train.py would see (its flags, same defaults)")
    g.add_argument("--max-side", type=int, default=1024, help="longer side images resize to")
    g.add_argument("--min-area", type=int, default=16, help="instances under this are dropped")
    g.add_argument("--normalize", default="auto", help="pixel rule (train.py --help)")
    g.add_argument("--channels", default="", help="channels -> R,G,B (train.py --help)")
    g.add_argument("--tile", type=int, default=0, help="count what N x N tiles keep (0: none)")
    g.add_argument("--tile-overlap", type=int, default=-1, help="default: an eighth of --tile")
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
            rule = PixelRule.parse(args.normalize, args.channels)
            if args.tile:
                overlap = default_overlap(args.tile) if args.tile_overlap < 0 else args.tile_overlap
                check_tile(args.tile, overlap)
            if not 1 <= args.max_side <= MAX_SIDE:
                raise ValueError(f"--max-side must be 1 to {MAX_SIDE}, got {args.max_side}")
            look = Look(args.max_side, args.min_area, args.tile, args.tile_overlap, rule)
            text, usable = _summary(Path(args.data), opts, look)
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
