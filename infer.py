"""Segment every object in an image (or a folder of images) with a fine-tuned SAM 2.

Each prompt (a random click inside a region mask, a grid of clicks, or a box from a detector)
gives one mask; the masks are stitched into one instance label map at the image's own
resolution, best-scored first (the article's recipe, fixed: ids past 255, empty masks, masks
leaking out of the region, blocky edges on big photos, no window on a headless box). --auto
segments with no prompt at all: with the instance head train.py --auto-decoder trained (in
model.pt; one encoder pass, one head pass, a watershed: autoseg.py), else SAM 2's own
automatic mask generator (--auto amg asks for it, --auto head insists on the head).

    python infer.py photo.jpg region.png --checkpoint runs/model.pt      # one image
    python infer.py photo.jpg --checkpoint runs/model.pt --grid 16       # whole image, 16x16 grid
    python infer.py photo.jpg --checkpoint runs/model.pt --boxes boxes.json   # a detector's boxes
    python infer.py val/ --boxes predictions.json --gt instances_val.json     # + COCO segm AP
    python infer.py photo.jpg --checkpoint runs/model.pt --auto          # prompt-free
    python infer.py images/ --masks regions/ --checkpoint runs/model.pt --out out/   # a folder
    python infer.py photo.jpg region.png --checkpoint runs/model.pt --gt photo_gt.png  # + quality
    python infer.py photo.jpg --model small                  # official weights (downloaded once)

Writes <stem>_labels.png (uint16 ids at the image's size, 0 = background), <stem>_color.png and
<stem>_overlay.png into --out, and coco_results.json with every mask (COCO results, with its id
in the label PNG; with a --gt JSON, masks of images it lacks go to coco_results_not_in_gt.json).
Box files and COCO results: formats.py. In a notebook:

    from infer import load_model, segment
    sam = load_model("small", "runs/model.pt", "cuda")
    labels = segment(sam, rgb, region)   # (H, W) uint16
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import autoseg
from data import DataError, resize_longest
from formats import (
    clip_boxes,
    coco_entries,
    describe_dropped,
    drop_bad_scores,
    encode_mask,
    evaluate_coco,
    load_coco,
    match_boxes,
    read_boxes,
    select_boxes,
    split_by_gt,
    write_json,
)
from model import (
    MODELS,
    CheckpointError,
    autocast,
    decode,
    encode_images,
    load_model,
    plain_warnings,
    resolve_device,
    upscale_logits,
)
from plumbing import cli
from plumbing.cli import add_trained_flags, apply_trained, bounded_int, fraction
from plumbing.intensity import DEFAULT_RULE, PixelRule
from plumbing.jobs import Job, find_images, prefetch, read_job, writable_folder
from plumbing.labelmaps import (
    checked_region,
    colorize,
    format_score,
    ranked,
    save_outputs,
    score_labels,
    show,
    stitch,
)
from plumbing.tiled import tiled

__all__ = [
    "colorize",
    "load_model",
    "main",
    "read_boxes",
    "score_labels",
    "segment",
    "segment_auto",
    "stitch",
]

# Where the checkpoint does not say: the size SAM 2 sees (train.py's default), no void value
TRAINED_DEFAULTS = {"max_side": 1024, "ignore_index": -1} | cli.PIXEL_DEFAULTS | cli.TILE_DEFAULTS
NOT_IN_GT = "coco_results_not_in_gt.json"  # masks of images a --gt JSON lacks
UPSCALE_PIXELS = 1 << 25  # mask pixels upscaled at once (128 MB of logits): bounds big images
MAX_PROMPTS = 4096  # prompts decoded per pass: their low-res logits take 256 KB each
MAX_BATCH = 256  # prompts per decoder call: each holds its own copy of the features (~16 MB)
AUTO_BYTES = 12  # bytes SAM 2's mask generator holds per full-size mask pixel (measured)
AUTO_BUDGET = 3 << 29  # 1.5 GiB: --auto's clicks per batch are fitted to it
AUTO_MAX_PIXELS = 100_000_000  # --auto: 3 full-size masks of one click take ~3.4 GB at this
PROGRESS_MIN = 256  # a run over this many prompts or clicks shows a progress bar

# ----------------------------------------------------------------------------- prompts


def random_points(region: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n distinct random pixels inside `region` (H, W) bool -> (min(n, area), 2) float32 (x, y)."""
    inside = np.flatnonzero(region)
    if len(inside) == 0:
        raise ValueError("the region is empty: no pixel to click on")
    rng = np.random.default_rng(seed)
    pick = inside[rng.choice(len(inside), size=min(n, len(inside)), replace=False)]
    ys, xs = np.divmod(pick, region.shape[1])
    return np.stack([xs, ys], axis=1).astype(np.float32)


def grid_points(region: np.ndarray, k: int) -> np.ndarray:
    """Centres of a k x k grid of cells over the image, those inside `region` -> (M, 2) (x, y)."""
    h, w = region.shape
    ys = ((np.arange(k) + 0.5) * h / k).astype(np.int64)
    xs = ((np.arange(k) + 0.5) * w / k).astype(np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    keep = region[gy, gx]
    if not keep.any():
        raise ValueError(
            f"no point of the {k}x{k} grid falls inside the region; use a finer --grid or --points"
        )
    return np.stack([gx[keep], gy[keep]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- model


def predict_prompts(
    sam,
    image: np.ndarray,
    coords: np.ndarray,
    labels: np.ndarray,
    batch: int = 64,
    max_side: int = 1024,
) -> tuple[torch.Tensor, np.ndarray]:
    """One mask per prompt on one image.

    image (H, W, 3) uint8 RGB, encoded resized to `max_side` (as train.py saw its images);
    coords (M, K, 2) float (x, y) in its pixels; labels (M, K) int: 1 click, 2 and 3 a box's
    top-left and bottom-right corner. A lone click, being ambiguous, gets SAM's first multimask
    output; a box gets its single output.
    Returns low-res logits (M, 256, 256) float32 on sam's device and scores (M,) float32.
    """
    device = next(sam.parameters()).device
    sizes = torch.tensor([image.shape[:2]], device=device)
    logits, scores = [], []
    with torch.inference_mode(), autocast(device):
        feats = encode_images(sam, [resize_longest(image, max_side)])  # what train.py sees
        # chunks bound the decoder's memory: every prompt gets its own copy of the features
        prompts = zip(torch.from_numpy(coords).split(batch), torch.from_numpy(labels).split(batch))
        bar = tqdm(prompts, "decode", -(-len(coords) // batch), **progress(len(coords)))
        for c, lab in bar:
            idx = torch.zeros(len(c), dtype=torch.long, device=device)
            c, lab = c.to(device), lab.to(device)
            low_res, iou = decode(sam, feats, idx, sizes, c, lab, multimask=c.shape[1] == 1)
            logits.append(low_res[:, 0].float())
            scores.append(iou[:, 0].float().cpu())
    return torch.cat(logits), torch.cat(scores).numpy()


def full_size_masks(
    logits: torch.Tensor, hw: tuple[int, int], order: np.ndarray | None = None
) -> Iterator[torch.Tensor]:
    """(M, h, w) low-res logits, taken in `order` (default: as given) -> (H, W) bool masks,
    upscaled bilinearly to the image's own size before thresholding (as SAM 2's
    postprocess_masks), a few at a time: memory stays bounded however large the image."""
    order = torch.arange(len(logits)) if order is None else torch.as_tensor(order)
    step = max(1, UPSCALE_PIXELS // (hw[0] * hw[1]))
    for chunk in order.split(step):
        yield from upscale_logits(logits[chunk.to(logits.device)][:, None], hw)[:, 0] > 0


def progress(n: int) -> dict:
    """tqdm's options for a bar over n items: shown for long runs only, gone when done."""
    return {"disable": n < PROGRESS_MIN, "leave": False, "dynamic_ncols": True}


# ----------------------------------------------------------------------------- segment
# stitch, ranked, the scores and the output files: plumbing/labelmaps.py


def stitch_recorded(
    items: Iterable[tuple[int, float, np.ndarray | torch.Tensor]],
    hw: tuple[int, int],
    region: np.ndarray | None,
    overlap: float,
    records: list | None = None,
) -> np.ndarray:
    """stitch() over (prompt index, score, mask) items given best first. With `records` a list,
    each mask with pixels in the region is appended to it as {"prompt", "score", "label" (its
    id in the label map; 0 where overlap left it out), "segmentation" (COCO RLE, region-clipped:
    the whole mask, however much of it the label map shows)}."""
    found, ids = [], []
    inside = None if region is None else torch.from_numpy(region)

    def masks():
        for prompt, score, m in items:
            if records is not None:
                clipped = torch.as_tensor(m, dtype=torch.bool)
                if inside is not None:
                    clipped = clipped & inside.to(clipped.device)
                rle = encode_mask(clipped.cpu().numpy()) if clipped.any() else None
                found.append((int(prompt), float(score), rle))
            yield m

    labels = stitch(masks(), hw, region, overlap, ids)
    for (prompt, score, rle), label in zip(found, ids):
        if rle is not None:
            records.append({"prompt": prompt, "score": score, "label": label, "segmentation": rle})
    return labels


def segment(
    sam,
    image: np.ndarray,
    region: np.ndarray | None = None,
    points: int = 30,
    grid: int | None = None,
    seed: int = 0,
    overlap: float = 0.15,
    min_score: float | None = None,
    batch_points: int = 64,
    boxes: np.ndarray | None = None,
    records: list | None = None,
    max_side: int = 1024,
) -> np.ndarray:
    """Segment the objects of one image with a loaded SAM 2 (see load_model).

    image (H, W, 3) uint8 RGB; region (H, W) bool, the part to segment (None: all of it).
    Prompts: `points` random clicks in the region (seeded), or a `grid` x `grid` grid of clicks
    over the image kept where inside the region, or `boxes` (N, 4) x0, y0, x1, y1 in pixels
    (clipped to the image; more than MAX_PROMPTS are done that many at a time, in their
    order). Masks scored under `min_score` are dropped. `records`, a list, gets one dict per
    mask (see stitch_recorded; "prompt" indexes the points or `boxes`). The model sees the
    image resized to `max_side` (train.py's --max-side); masks come back at its own size.
    Returns (H, W) uint16 label map, 0 = background.
    """
    hw = image.shape[:2]
    region = checked_region(region, hw)
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        clipped, kept, dropped = clip_boxes(boxes, hw)
        if dropped:
            warnings.warn(
                describe_dropped([("image", i, boxes[i].tolist(), why) for i, why in dropped]),
                stacklevel=2,
            )
        coords, labels = clipped.reshape(-1, 2, 2), np.tile([[2, 3]], (len(clipped), 1))
        prompt_ids = np.flatnonzero(kept)
    else:
        inside = region if region is not None else np.ones(hw, bool)
        pts = grid_points(inside, grid) if grid else random_points(inside, points, seed)
        coords, labels = pts[:, None], np.ones((len(pts), 1), np.int64)
        prompt_ids = np.arange(len(pts))

    def masks():
        for start in range(0, len(coords), MAX_PROMPTS):
            part = slice(start, start + MAX_PROMPTS)
            c, lab = coords[part].astype(np.float32), labels[part]
            logits, scores = predict_prompts(sam, image, c, lab, batch_points, max_side)
            order = ranked(scores, min_score)
            for i, m in zip(order, full_size_masks(logits, hw, order)):
                yield prompt_ids[start + i], scores[i], m

    bar = tqdm(masks(), "stitch", len(coords), unit="mask", **progress(len(coords)))
    return stitch_recorded(bar, hw, region, overlap, records)


def auto_batch(hw: tuple[int, int], batch_points: int) -> int:
    """Clicks per batch of SAM 2's mask generator on an (H, W) image: at most batch_points,
    and few enough that the batch's full-size masks (3 per click) fit AUTO_BUDGET. A ValueError
    where even one click's masks do not fit AUTO_MAX_PIXELS."""
    pixels = hw[0] * hw[1]
    if pixels > AUTO_MAX_PIXELS:
        raise ValueError(
            f"--auto on a {hw[1]}x{hw[0]} image: SAM 2's generator holds 3 full-size masks per "
            f"click (~{3 * AUTO_BYTES * pixels / 2**30:.1f} GB here); it takes images up to "
            f"{AUTO_MAX_PIXELS / 1e6:.0f} megapixels. Downscale it, or give prompts (--points, "
            "--grid, --boxes): they upscale one mask at a time"
        )
    return max(1, min(batch_points, AUTO_BUDGET // (3 * AUTO_BYTES * pixels)))


def segment_auto(
    sam,
    image: np.ndarray,
    region: np.ndarray | None = None,
    points_per_side: int = 32,
    min_score: float = 0.8,
    stability: float = 0.95,
    overlap: float = 0.15,
    batch_points: int = 64,
    records: list | None = None,
) -> np.ndarray:
    """Segment one image without prompts: SAM 2's own SAM2AutomaticMaskGenerator on `sam`
    (a points_per_side^2 grid of clicks; masks kept when their predicted IoU exceeds min_score
    and their stability score reaches `stability`; duplicates removed), stitched as segment().
    Big images get fewer clicks per batch (auto_batch), so memory stays within AUTO_BUDGET.

    image (H, W, 3) uint8 RGB; region (H, W) bool or None; records as in segment(), "prompt"
    numbering the generator's masks. Returns (H, W) uint16 label map.
    """
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.utils.amg import rle_to_mask

    hw = image.shape[:2]
    region = checked_region(region, hw)
    per_batch = auto_batch(hw, batch_points)
    with warnings.catch_warnings():  # as in load_model: sam2 scripts a helper
        warnings.filterwarnings("ignore", r"`torch.jit.script` is deprecated", FutureWarning)
        generator = SAM2AutomaticMaskGenerator(
            sam,
            points_per_side=points_per_side,
            points_per_batch=per_batch,
            pred_iou_thresh=min_score,
            stability_score_thresh=stability,
            output_mode="uncompressed_rle",  # one full-size mask in memory at a time
        )
    # the generator says nothing while it works: count its clicks (its one private hook)
    clicks = points_per_side**2
    bar = tqdm(total=clicks, desc="--auto", unit="click", **progress(clicks))
    process_batch = generator._process_batch

    def counted(points, *args, **kwargs):
        out = process_batch(points, *args, **kwargs)
        bar.update(len(points))
        return out

    generator._process_batch = counted
    device = next(sam.parameters()).device
    with bar, torch.inference_mode(), autocast(device):
        found = generator.generate(image)
    scores = [f["predicted_iou"] for f in found]
    items = ((i, scores[i], rle_to_mask(found[i]["segmentation"])) for i in ranked(scores))
    return stitch_recorded(items, hw, region, overlap, records)


# ----------------------------------------------------------------------------- CLI


def load_job(
    job: Job,
    gt_labpics: bool = False,
    dropped: list | None = None,
    ignore_index: int = -1,
    rule: PixelRule = DEFAULT_RULE,
):
    """Read a job's files -> image (H, W, 3) uint8, region (H, W) bool | None, gt | None (its
    8-bit value `ignore_index` read as 0) and its boxes in pixels, clipped to the image, best
    detector score first | None. Boxes left with no area are appended to `dropped` as (image
    name, place in the file, box, why). rule: the image's pixel rule (--normalize, --channels)."""
    image, region, gt = read_job(job, gt_labpics, ignore_index, rule)
    h, w = image.shape[:2]
    boxes = None
    if job.boxes is not None:
        boxes = job.boxes.in_pixels((h, w))
        clipped, kept, why = clip_boxes(boxes.xyxy, (h, w))
        if dropped is not None:
            dropped += [(job.image.name, boxes.index[i], boxes.xyxy[i].tolist(), y) for i, y in why]
        boxes = boxes.take(kept)
        boxes.xyxy = clipped
        boxes = boxes.take(np.argsort(-np.nan_to_num(boxes.score, nan=-np.inf), kind="stable"))
    return image, region, gt, boxes


def find_jobs(args, parser, gt_ids: dict | None = None) -> list[Job]:
    """The images to segment, with their masks, ground truth label maps and boxes (those
    --conf and --classes keep, counted in one line); bad input -> parser.error."""
    png_gt = args.gt if gt_ids is None else None  # a COCO JSON scores the run as a whole
    try:
        jobs = find_images(args.image, args.mask, args.masks, args.gt, png_gt)
    except ValueError as e:
        parser.error(str(e))
    if args.boxes is not None:
        try:
            table = read_boxes(args.boxes)
            found, notes = match_boxes(table, [j.image for j in jobs], args.boxes, gt_ids)
        except DataError as e:
            parser.error(str(e))
        low = other = 0
        bad = []
        for job, boxes in zip(jobs, found):
            boxes, n_bad = drop_bad_scores(boxes)
            job.boxes, n_low, n_other = select_boxes(boxes, args.conf, args.classes)
            low, other = low + n_low, other + n_other
            bad += [f"{job.image.name} box {i}" for i in n_bad]
        kept = sum(len(j.boxes) for j in jobs)
        counts = [f"{kept + len(bad) + low + other} boxes for these images, {kept} kept"]
        if bad:  # a NaN score would pass any --conf and be written as SAM's
            named = ", ".join(bad[:2]) + ", ..." * (len(bad) > 2)
            counts.append(f"{len(bad)} with a score that is not a number ({named})")
        counts += [f"{low} scored under --conf {args.conf}"] * (low > 0)
        counts += [f"{other} of other classes than --classes"] * (other > 0)
        print(f"note: --boxes {args.boxes}: " + "; ".join(counts + notes), file=sys.stderr)
    return jobs


def check_writable(out: Path, parser) -> Path:
    """Fail before any model work if `out` cannot be created or written to."""
    try:
        return writable_folder(out)
    except ValueError as e:
        parser.error(str(e))


def pick_model(args, parser) -> str:
    """--model, else the name train.py stored in --checkpoint, else 'small'."""
    try:
        return cli.pick_model(args.model, args.checkpoint)
    except ValueError as e:
        parser.error(str(e))


def segmenter(sam, args, head=None) -> Callable[..., np.ndarray]:
    """(image, region, boxes, records) -> labels, as the command line asks (`head`: --auto's
    trained instance head, if it is to be used; --tile: per tile, stitched: plumbing.tiled)."""
    run = whole_image(sam, args, head)
    return tiled(run, args.tile, args.tile_overlap) if args.tile else run


def whole_image(sam, args, head=None) -> Callable[..., np.ndarray]:
    """(image, region, boxes, records) -> labels of one image (or tile) as the flags ask."""
    if head is not None:
        return lambda image, region, boxes, records: autoseg.segment(
            sam, head, image, region, records, args.max_side, args.min_size, args.min_score
        )
    if args.auto:
        return lambda image, region, boxes, records: segment_auto(
            sam,
            image,
            region,
            points_per_side=args.grid or 32,
            min_score=0.8 if args.min_score is None else args.min_score,
            stability=args.stability,
            overlap=args.overlap,
            batch_points=args.batch_points,
            records=records,
        )
    return lambda image, region, boxes, records: segment(
        sam,
        image,
        region,
        points=args.points,
        grid=args.grid,
        seed=args.seed,
        overlap=args.overlap,
        min_score=args.min_score,
        batch_points=args.batch_points,
        boxes=None if boxes is None else boxes.xyxy,
        records=records,
        max_side=args.max_side,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("image", help="an image file, or a folder of images")
    p.add_argument(
        "mask", nargs="?", help="region to segment (non-zero = inside); default: the whole image"
    )
    p.add_argument("--masks", help="folder mode: region masks matched to images by file stem")
    p.add_argument(
        "--gt",
        help="ground truth to score against: a label PNG (ids, or one colour per instance; a "
        "folder matched by stem in folder mode), or a COCO instances JSON (COCOeval segm AP; "
        "its image ids also place --boxes' numeric image ids)",
    )
    p.add_argument(
        "--gt-labpics",
        action="store_true",
        help="--gt files are LabPics instance PNGs (vessel and material ids in two channels)",
    )
    p.add_argument(
        "--checkpoint",
        help="model.pt from train.py, an official SAM 2 checkpoint, "
        "or 'none' (random weights); default: official weights, downloaded once",
    )
    p.add_argument(
        "--model",
        choices=list(MODELS),
        help="SAM 2 size; default: the one stored in --checkpoint, else small",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_trained_flags(p, TRAINED_DEFAULTS)  # --max-side, --ignore-index (of --gt label PNGs)
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument(
        "--boxes",
        help="box prompts, one mask each, instead of clicks: a JSON file of [[x0, y0, x1, y1], "
        '...] (one image), {"image name": boxes}, COCO-style detections (Ultralytics\' '
        "predictions.json, detectron2's coco_instances_results.json), or YOLO txt labels "
        "(a file, or a folder of them)",
    )
    prompts.add_argument(
        "--auto",
        nargs="?",
        const="auto",
        choices=["auto", "head", "amg"],
        help="no prompts: the instance head train.py --auto-decoder trained when --checkpoint "
        "has one (one pass + watershed; --auto head: insist), else (or --auto amg) SAM 2's "
        "automatic mask generator, which clicks a --grid (default 32) and keeps masks scored "
        "above --min-score (default 0.8) and as stable as --stability",
    )
    p.add_argument(
        "--min-size",
        type=bounded_int(0, 1 << 24),
        default=autoseg.MIN_SIZE,
        help="--auto with the head: drop objects under this many pixels (of the image)",
    )
    p.add_argument(
        "--conf",
        type=fraction,
        default=0.25,
        help="--boxes: keep detections scored at least this (default 0.25, as yolo predict; "
        "boxes without a score are kept)",
    )
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        help="--boxes: keep only detections of these category ids (as the file writes them)",
    )
    p.add_argument(
        "--points",
        type=bounded_int(1, MAX_PROMPTS, " (each is a decoder pass and a full-size mask)"),
        default=30,
        help=f"random clicks inside the region per image (default 30, at most {MAX_PROMPTS})",
    )
    p.add_argument(
        "--grid",
        type=bounded_int(1, 64, f" (K x K clicks: at most {MAX_PROMPTS})"),
        help="click a regular KxK grid over the image instead (points outside the region "
        "dropped; K at most 64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random points and colours")
    p.add_argument(
        "--overlap",
        type=fraction,
        default=0.15,
        help="skip a mask when more than this share of it is already taken by better-scored masks",
    )
    p.add_argument("--min-score", type=float, help="skip masks SAM scores below this")
    p.add_argument(
        "--stability",
        type=fraction,
        default=0.95,
        help="--auto: keep masks whose stability score is at least this",
    )
    p.add_argument(
        "--batch-points",
        type=bounded_int(1, MAX_BATCH, " (each prompt holds a ~16 MB copy of the features)"),
        default=64,
        help=f"prompts per decoder call (default 64, at most {MAX_BATCH}; lower it if memory "
        "runs out)",
    )
    p.add_argument(
        "--out", default="out", help="output folder: label PNGs and coco_results.json (out)"
    )
    p.add_argument("--show", action="store_true", help="show each result in a matplotlib window")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.boxes is not None and args.grid is not None:
        parser.error("--boxes and --grid are two kinds of prompt: give one")
    if args.classes is not None and args.boxes is None:
        parser.error("--classes picks among --boxes' detections: give --boxes")
    png_gt = args.gt is not None and Path(args.gt).suffix.lower() != ".json"
    if args.ignore_index is not None and not png_gt:
        parser.error("--ignore-index applies to --gt label PNGs (not a COCO JSON): give --gt")
    if args.ignore_index is not None and not -1 <= args.ignore_index <= 255:
        parser.error(f"--ignore-index must be -1 (none) or 0-255, got {args.ignore_index}")
    # the size, pixel rule and tiles train.py saw (its void value for --gt PNGs), unless given
    used = dict(TRAINED_DEFAULTS)
    if not png_gt:
        del used["ignore_index"]
    apply_trained(args, args.checkpoint, used)
    try:
        rule, args.tile, args.tile_overlap = cli.pixel_settings(args)
    except ValueError as e:
        parser.error(str(e))
    plain_warnings()
    coco = gt_ids = None
    if args.gt is not None and not png_gt:
        try:
            coco, gt_ids = load_coco(args.gt)
        except DataError as e:
            parser.error(str(e))
    jobs = find_jobs(args, parser, gt_ids)
    out = check_writable(Path(args.out), parser)
    folder = Path(args.image).is_dir()
    first, dropped = None, []
    if not folder:  # one image: bad input is a usage error, reported before loading a model
        try:
            first = load_job(jobs[0], args.gt_labpics, dropped, args.ignore_index, rule)
        except (DataError, ValueError) as e:
            parser.error(str(e))
    name = pick_model(args, parser)
    try:
        device = resolve_device(args.device)
        sam = load_model(name, args.checkpoint, device)
    except (CheckpointError, ValueError) as e:
        parser.error(str(e))

    head = None
    if args.auto in ("auto", "head"):
        try:
            head = autoseg.read_head(args.checkpoint, device)
        except (CheckpointError, KeyError, ValueError, RuntimeError) as e:
            parser.error(f"--checkpoint {args.checkpoint}: its instance head: {e}")
        if head is None and args.auto == "head":
            parser.error(f"--auto head: {args.checkpoint} has no instance head (--auto-decoder)")
        which = "its trained instance head" if head else "SAM 2's automatic mask generator"
        print(f"--auto: {which} ({args.checkpoint or 'official weights'})", file=sys.stderr)
    run = segmenter(sam, args, head)
    failed, written, scores, results, done = [], [], [], [], []
    writes: deque[tuple[Job, Future]] = deque()

    def finish(job: Job, fut: Future):
        try:
            written.append(fut.result())
        except OSError as e:
            failed.append(job)
            tqdm.write(f"warning: {job.image}: {e}", file=sys.stderr)

    load = partial(
        load_job,
        gt_labpics=args.gt_labpics,
        dropped=dropped,
        ignore_index=args.ignore_index,
        rule=rule,
    )
    load = load if first is None else lambda job: first
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        bar = tqdm(prefetch(load, jobs), total=len(jobs), unit="img", disable=not folder)
        for job, fut in bar:
            records = []
            try:
                image, region, gt, boxes = fut.result()
                labels = run(image, region, boxes, records)
            except (DataError, ValueError, OSError, RuntimeError) as e:
                failed.append(job)
                tqdm.write(f"warning: skipped {job.image}: {e}", file=sys.stderr)
                continue
            if not labels.any():
                hint = " (lower --min-score or --stability)" if args.auto and not head else ""
                tqdm.write(f"note: {job.image.name}: no segment found{hint}", file=sys.stderr)
            results += coco_entries(job.image.name, records, boxes, gt_ids)
            done.append(job.image.name)
            # PNG encoding runs beside the next image's model work; a few pending at most
            writes.append(
                (job, writer.submit(save_outputs, out, job.image.stem, image, labels, args.seed))
            )
            while len(writes) > 2:
                finish(*writes.popleft())
            if gt is not None:
                s = score_labels(labels, gt, region)
                scores.append(s)
                tqdm.write(f"{job.image.name}: {int(labels.max())} segments; {format_score(s)}")
            if args.show:
                show(image, labels, job.image.name, args.seed)
        while writes:
            finish(*writes.popleft())

    if dropped:
        print(f"warning: {describe_dropped(dropped)}", file=sys.stderr)
    if folder and scores:
        ok = [s for s in scores if s["n_gt"] > 0]
        if ok:
            mean = {k: float(np.mean([s[k] for s in ok])) for k in ("mean_best_iou", "matched_50")}
            print(
                f"mean over {len(ok)} images: mean best IoU {mean['mean_best_iou']:.3f}, "
                f"matched at IoU>=0.5 {mean['matched_50']:.1%}"
            )
    if len(failed) == len(jobs):
        print(f"error: no image could be segmented ({len(failed)} failed)", file=sys.stderr)
        return 1
    others = []
    if coco is not None:  # COCO.loadRes refuses an image id --gt lacks: those go apart
        results, others = split_by_gt(results, gt_ids)
    files = [write_json(out / "coco_results.json", results)]
    files += [write_json(out / NOT_IN_GT, others)] if others else []
    if coco is not None:
        by_class = args.boxes is not None and all(
            np.isfinite(j.boxes.category).all() for j in jobs if j.boxes is not None
        )
        files += [evaluate_coco(coco, gt_ids, results, done, by_class, out)]
    n_files = 3 * len(written) + sum(f is not None for f in files)
    summary = [f"wrote {n_files} files for {len(written)} image(s) to {out}"]
    summary += [f"{len(failed)} failed"] * bool(failed)
    if others:
        n_images = len({r["file_name"] for r in others})
        summary.append(
            f"{len(others)} masks of {n_images} image(s) not in --gt in {NOT_IN_GT}, "
            "not coco_results.json"
        )
    print("; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
