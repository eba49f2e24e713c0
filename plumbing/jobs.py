"""The images infer.py works through: one Job per image with its region mask, ground truth and
boxes, found from the command line's paths and read ahead of the model; the output folder checked
before any model work. Usage errors are ValueErrors whose message infer.py hands parser.error."""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumbing.images import IMAGE_EXTS, read_label_map, read_rgb
from plumbing.intensity import DEFAULT_RULE, PixelRule


@dataclass
class Job:
    image: Path
    mask: Path | None = None
    gt: Path | None = None
    boxes: object = None  # formats.Boxes from --boxes, as read (fractions of the size for YOLO txt)


def find_images(
    image: str, mask: str | None, masks: str | None, gt: str | None, png_gt: str | None
) -> list[Job]:
    """The Jobs of IMAGE (a file, or a folder of images), each with its region mask (MASK, or
    --masks' file of the same stem) and ground truth label map (png_gt: a file, or a folder
    matched by stem; None where --gt, `gt`, is a COCO JSON); no boxes yet. Bad paths ->
    ValueError."""
    src = Path(image)
    if not src.exists():
        raise ValueError(f"image {src} does not exist")
    if src.is_dir():
        return find_folder_jobs(src, mask, masks, png_gt)
    if masks is not None:
        raise ValueError("--masks is for a folder of images; give one image's mask as MASK")
    for what, path in (("mask", mask), ("ground truth", gt)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{what} {path} does not exist")
    return [Job(src, Path(mask) if mask else None, Path(png_gt) if png_gt else None)]


def find_folder_jobs(
    src: Path, mask: str | None, masks: str | None, png_gt: str | None
) -> list[Job]:
    if mask is not None:
        raise ValueError("IMAGE is a folder: give its masks as --masks DIR, not MASK")
    images = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {src}")
    dirs = {}
    for flag, value in (("--masks", masks), ("--gt", png_gt)):
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"{flag} {value} must be a folder (or a COCO .json) when IMAGE is one")
        dirs[flag] = by_stem(Path(value)) if value is not None else None
    stems = [p.stem for p in images]
    for stem in {s for s in stems if stems.count(s) > 1}:
        print(
            f"warning: several images share the stem '{stem}': their outputs overwrite each other",
            file=sys.stderr,
        )
    jobs = []
    for p in images:
        region = dirs["--masks"].get(p.stem) if dirs["--masks"] is not None else None
        if dirs["--masks"] is not None and region is None:
            print(
                f"note: no mask for {p.name} in {masks}: segmenting the whole image",
                file=sys.stderr,
            )
        gt = dirs["--gt"].get(p.stem) if dirs["--gt"] is not None else None
        if dirs["--gt"] is not None and gt is None:
            print(f"note: no ground truth for {p.name} in {png_gt}: not scored", file=sys.stderr)
        jobs.append(Job(p, region, gt))
    return jobs


def by_stem(folder: Path) -> dict[str, Path]:
    """Image files of `folder` by stem (the first in sorted order wins a shared stem)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            found.setdefault(p.stem, p)
    return found


def read_job(
    job: Job, gt_labpics: bool = False, ignore_index: int = -1, rule: PixelRule = DEFAULT_RULE
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a job's image files -> image (H, W, 3) uint8, region (H, W) bool | None and gt
    (H, W) ids | None (its 8-bit value `ignore_index` read as 0); a ValueError where the mask
    is empty or a size differs from the image's. rule: the image's pixel rule."""
    image = read_rgb(job.image, rule)
    h, w = image.shape[:2]
    region = gt = None
    if job.mask is not None:
        region = read_label_map(job.mask) > 0
        if region.shape != (h, w):
            raise ValueError(
                f"mask {job.mask} is {region.shape[1]}x{region.shape[0]} (WxH) but "
                f"image {job.image} is {w}x{h}"
            )
        if not region.any():
            raise ValueError(f"mask {job.mask} is empty: it marks no pixel to segment")
    if job.gt is not None:
        gt = read_label_map(job.gt, labpics=gt_labpics, ignore_index=ignore_index)
        if gt.shape != (h, w):
            raise ValueError(
                f"ground truth {job.gt} is {gt.shape[1]}x{gt.shape[0]} (WxH) but "
                f"image {job.image} is {w}x{h}"
            )
    return image, region, gt


def prefetch(load, items: list, depth: int = 2):
    """Yield (item, Future of load(item)) in order, loading up to `depth` items ahead in a
    background thread so decoding files overlaps the model's work."""
    with ThreadPoolExecutor(1, thread_name_prefix="load") as pool:
        it = iter(items)
        queue = deque((x, pool.submit(load, x)) for x in itertools.islice(it, depth))
        while queue:
            item, fut = queue.popleft()
            for x in itertools.islice(it, 1):
                queue.append((x, pool.submit(load, x)))
            yield item, fut


def writable_folder(out: Path) -> Path:
    """`out`, created if need be; a ValueError (for --out) if it cannot be created or written to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"--out {out} is not a writable folder ({e.strerror or e})") from None
    return out
