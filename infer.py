"""Segment every object in an image (or a folder of images) with a fine-tuned SAM 2.

Random points are clicked inside a region mask, SAM 2 predicts one mask per point, and the masks
are stitched into one instance label map, best-scored first (the article's recipe, fixed: ids past
255, empty masks, masks leaking out of the region, no window on a headless box).

    python infer.py photo.jpg region.png --checkpoint runs/model.pt      # one image
    python infer.py photo.jpg --checkpoint runs/model.pt --grid 16       # whole image, 16x16 grid
    python infer.py images/ --masks regions/ --checkpoint runs/model.pt --out out/   # a folder
    python infer.py photo.jpg region.png --checkpoint runs/model.pt --gt photo_gt.png  # + quality
    python infer.py photo.jpg --model small                  # official weights (downloaded once)

Writes <stem>_labels.png (uint16 ids at the image's size, 0 = background), <stem>_color.png and
<stem>_overlay.png into --out. In a notebook:

    from infer import load_model, segment
    sam = load_model("small", "runs/model.pt", "cuda")
    labels = segment(sam, rgb, region)   # (H, W) uint16
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data import IMAGE_EXTS, DataError, read_label_map, read_rgb, resize_longest
from model import (
    MODELS,
    CheckpointError,
    autocast,
    encode_images,
    load_model,
    model_name_in,
    plain_warnings,
    predict_logits,
    resolve_device,
    upscale_logits,
)

__all__ = ["colorize", "load_model", "main", "score_labels", "segment", "stitch"]

MAX_SIDE = 1024  # the size SAM 2 sees and train.py trains at
MAX_ID = np.iinfo(np.uint16).max

# ----------------------------------------------------------------------------- points


def random_points(region: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n distinct random pixels inside `region` (H, W) bool -> (min(n, area), 2) float32 (x, y)."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        raise ValueError("the region is empty: no pixel to click on")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
    return np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)


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


def predict_masks(sam, image: np.ndarray, points: np.ndarray, batch_points: int = 64):
    """One mask per point prompt on one image.

    image (H, W, 3) uint8 RGB; points (M, 2) float (x, y) in its pixels.
    Returns masks (M, H, W) bool (SAM's first multimask output) and their scores (M,) float32.
    """
    device = next(sam.parameters()).device
    h, w = image.shape[:2]
    masks, scores = [], []
    with torch.inference_mode(), autocast(device):
        feats = encode_images(sam, [image])
        sizes = torch.tensor([[h, w]], device=device)
        # chunks bound the decoder's memory: every prompt carries its own copy of the features
        for chunk in torch.from_numpy(points).to(device).split(batch_points):
            idx = torch.zeros(len(chunk), dtype=torch.long, device=device)
            low_res, iou = predict_logits(sam, feats, idx, chunk, sizes)
            masks.append((upscale_logits(low_res[:, :1], (h, w))[:, 0] > 0).cpu().numpy())
            scores.append(iou[:, 0].float().cpu().numpy())
    return np.concatenate(masks), np.concatenate(scores)


# ----------------------------------------------------------------------------- stitching


def stitch(
    masks: np.ndarray,
    scores: np.ndarray,
    region: np.ndarray | None = None,
    overlap: float = 0.15,
    min_score: float | None = None,
) -> np.ndarray:
    """Merge overlapping masks into one instance map, best score first.

    masks (M, H, W) bool; scores (M,); region (H, W) bool or None (everywhere).
    A mask (clipped to the region) is skipped when empty, when its score < min_score, or when
    more than `overlap` of it is already taken; otherwise its free pixels get the next id.
    Returns (H, W) uint16, 0 = background, ids 1, 2, 3, ... in score order.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if masks.ndim != 3 or scores.shape != masks.shape[:1]:
        raise ValueError(
            f"expected masks (M, H, W) and scores (M,), got {masks.shape} and {scores.shape}"
        )
    labels = np.zeros(masks.shape[1:], np.uint16)
    next_id = 1
    for i in np.argsort(-scores, kind="stable"):  # stable: ties keep the prompts' order
        if min_score is not None and scores[i] < min_score:
            continue
        m = masks[i] & region if region is not None else masks[i]
        area = np.count_nonzero(m)
        if area == 0:
            continue
        taken = labels[m] > 0
        if np.count_nonzero(taken) > overlap * area:
            continue
        if next_id > MAX_ID:
            raise ValueError(f"more than {MAX_ID} segments do not fit a uint16 label map")
        free = m.copy()
        free[m] = ~taken
        labels[free] = next_id
        next_id += 1
    return labels


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) id map to hw = (H, W); ids never blend."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return labels[rows][:, cols]


def consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..K keeping their order (a small segment can vanish when resizing)."""
    ids, inv = np.unique(labels, return_inverse=True)
    if ids[-1] == len(ids) - 1:
        return labels
    start = 0 if ids[0] == 0 else 1
    return (inv.reshape(labels.shape) + start).astype(labels.dtype)


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
) -> np.ndarray:
    """Segment the objects of one image with a loaded SAM 2 (see load_model).

    image (H, W, 3) uint8 RGB; region (H, W) bool, the part to segment (None: all of it).
    `points` random clicks in the region (seeded), or a `grid` x `grid` grid of clicks over the
    image kept where inside the region. Returns (H, W) uint16 label map, 0 = background.
    """
    h, w = image.shape[:2]
    if region is not None and region.shape != (h, w):
        raise ValueError(
            f"region is {region.shape[1]}x{region.shape[0]} (WxH) but the image is {w}x{h}"
        )
    work = resize_longest(image, MAX_SIDE)
    if region is None:
        work_region = np.ones(work.shape[:2], bool)
    else:
        work_region = resize_longest(region.astype(bool), MAX_SIDE, nearest=True)
        if not work_region.any():
            raise ValueError(
                f"the region is empty (or too small to survive resizing to {MAX_SIDE} pixels)"
            )
    pts = grid_points(work_region, grid) if grid else random_points(work_region, points, seed)
    masks, scores = predict_masks(sam, work, pts, batch_points)
    labels = stitch(masks, scores, work_region, overlap, min_score)
    labels = resize_labels(labels, (h, w))
    if region is not None:  # nearest upscaling can put a boundary pixel just outside
        labels[~region.astype(bool)] = 0
    return consecutive(labels)


# ----------------------------------------------------------------------------- scoring


def score_labels(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> dict:
    """Quality of a predicted instance map against ground truth.

    pred, gt (H, W) int ids, 0 = background; region (H, W) bool restricts both (None: all).
    Returns mean_best_iou (mean over GT instances of the best IoU with any predicted segment),
    matched_50 (share of GT instances whose best IoU >= 0.5) and n_gt; nan scores when n_gt == 0.
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"ground truth is {gt.shape[1]}x{gt.shape[0]} (WxH) but the prediction "
            f"is {pred.shape[1]}x{pred.shape[0]}"
        )
    if region is not None:
        pred, gt = pred[region], gt[region]
    g_ids, g = np.unique(gt.ravel(), return_inverse=True)
    p_ids, p = np.unique(pred.ravel(), return_inverse=True)
    # joint histogram of (gt id, pred id) pairs = every intersection in one pass
    inter = np.bincount(g * len(p_ids) + p, minlength=len(g_ids) * len(p_ids))
    inter = inter.reshape(len(g_ids), len(p_ids))
    inter = inter[g_ids != 0][:, p_ids != 0]
    n_gt = inter.shape[0]
    if n_gt == 0:
        return {"mean_best_iou": float("nan"), "matched_50": float("nan"), "n_gt": 0}
    if inter.shape[1] == 0:
        best = np.zeros(n_gt)
    else:
        g_area = np.bincount(g)[g_ids != 0]
        p_area = np.bincount(p)[p_ids != 0]
        iou = inter / (g_area[:, None] + p_area[None, :] - inter)
        best = iou.max(axis=1)
    return {
        "mean_best_iou": float(best.mean()),
        "matched_50": float((best >= 0.5).mean()),
        "n_gt": n_gt,
    }


def format_score(s: dict) -> str:
    return (
        f"mean best IoU {s['mean_best_iou']:.3f}, matched at IoU>=0.5 {s['matched_50']:.1%}"
        f" of {s['n_gt']} GT instances"
    )


# ----------------------------------------------------------------------------- outputs


def colorize(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 RGB, a seeded random bright colour per id, 0 = black."""
    palette = np.random.default_rng(seed).integers(60, 256, (int(labels.max()) + 1, 3))
    palette[0] = 0
    return palette.astype(np.uint8)[labels]


def overlay(image: np.ndarray, color: np.ndarray, labels: np.ndarray, alpha=0.5) -> np.ndarray:
    """Blend `color` over `image` (both (H, W, 3) uint8) where labels > 0."""
    mix = (image * (1 - alpha) + color * alpha).astype(np.uint8)
    return np.where(labels[..., None] > 0, mix, image)


def save_outputs(
    out: Path, stem: str, image: np.ndarray, labels: np.ndarray, seed: int = 0
) -> list[Path]:
    """Write <stem>_labels.png (uint16), <stem>_color.png and <stem>_overlay.png into `out`."""
    color = colorize(labels, seed)
    files = {
        out / f"{stem}_labels.png": labels.astype(np.uint16),
        out / f"{stem}_color.png": color[..., ::-1],
        out / f"{stem}_overlay.png": overlay(image, color, labels)[..., ::-1],
    }
    for path, arr in files.items():
        if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
            raise OSError(f"could not write {path}")
    return list(files)


def show(image: np.ndarray, labels: np.ndarray, title: str, seed: int = 0) -> bool:
    """Show image and overlay in a matplotlib window; False (and a note) without a display."""
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    backend = plt.get_backend()
    if backend.lower() not in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        print(
            f"--show: no display available (matplotlib backend '{backend}'), not showing "
            f"{title}; the images are saved in --out",
            file=sys.stderr,
        )
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    axes[0].imshow(image)
    axes[1].imshow(overlay(image, colorize(labels, seed), labels))
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title}: {int(labels.max())} segments")
    plt.show()
    return True


# ----------------------------------------------------------------------------- CLI


@dataclass
class Job:
    image: Path
    mask: Path | None = None
    gt: Path | None = None


def load_job(job: Job):
    """Read a job's files -> image (H, W, 3) uint8, region (H, W) bool | None, gt | None."""
    image = read_rgb(job.image)
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
        gt = read_label_map(job.gt)
        if gt.shape != (h, w):
            raise ValueError(
                f"ground truth {job.gt} is {gt.shape[1]}x{gt.shape[0]} (WxH) but "
                f"image {job.image} is {w}x{h}"
            )
    return image, region, gt


def by_stem(folder: Path) -> dict[str, Path]:
    """Image files of `folder` by stem (the first in sorted order wins a shared stem)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            found.setdefault(p.stem, p)
    return found


def find_jobs(args, parser) -> list[Job]:
    """The images to segment, with their masks and ground truth; bad paths -> parser.error."""
    src = Path(args.image)
    if not src.exists():
        parser.error(f"image {src} does not exist")
    if not src.is_dir():
        if args.masks is not None:
            parser.error("--masks is for a folder of images; give one image's mask as MASK")
        for what, path in (("mask", args.mask), ("ground truth", args.gt)):
            if path is not None and not Path(path).is_file():
                parser.error(f"{what} {path} does not exist")
        return [
            Job(src, Path(args.mask) if args.mask else None, Path(args.gt) if args.gt else None)
        ]

    if args.mask is not None:
        parser.error("IMAGE is a folder: give its masks as --masks DIR, not MASK")
    images = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        parser.error(f"no images ({', '.join(IMAGE_EXTS)}) in folder {src}")
    dirs = {}
    for flag, value in (("--masks", args.masks), ("--gt", args.gt)):
        if value is not None and not Path(value).is_dir():
            parser.error(f"{flag} {value} must be a folder when IMAGE is a folder")
        dirs[flag] = by_stem(Path(value)) if value is not None else None
    stems = [p.stem for p in images]
    for stem in {s for s in stems if stems.count(s) > 1}:
        print(
            f"warning: several images share the stem '{stem}': their outputs overwrite each other",
            file=sys.stderr,
        )
    jobs = []
    for p in images:
        mask = dirs["--masks"].get(p.stem) if dirs["--masks"] is not None else None
        if dirs["--masks"] is not None and mask is None:
            print(
                f"note: no mask for {p.name} in {args.masks}: segmenting the whole image",
                file=sys.stderr,
            )
        gt = dirs["--gt"].get(p.stem) if dirs["--gt"] is not None else None
        if dirs["--gt"] is not None and gt is None:
            print(f"note: no ground truth for {p.name} in {args.gt}: not scored", file=sys.stderr)
        jobs.append(Job(p, mask, gt))
    return jobs


def check_writable(out: Path, parser) -> Path:
    """Fail before any model work if `out` cannot be created or written to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        parser.error(f"--out {out} is not a writable folder ({e.strerror or e})")
    return out


def pick_model(args, parser) -> str:
    """--model, else the name train.py stored in --checkpoint, else 'small'."""
    stored = None
    if args.checkpoint and args.checkpoint.lower() != "none" and Path(args.checkpoint).is_file():
        stored = model_name_in(args.checkpoint)
    if args.model and stored and args.model != stored:
        parser.error(
            f"--checkpoint {args.checkpoint} was trained with --model {stored}, not {args.model}"
        )
    return args.model or stored or "small"


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


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def fraction(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


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
        help="ground-truth label PNG (LabPics instance PNGs too) to score "
        "against; a folder matched by stem in folder mode",
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
    p.add_argument(
        "--points", type=positive_int, default=30, help="random clicks inside the region per image"
    )
    p.add_argument(
        "--grid",
        type=positive_int,
        help="click a regular KxK grid over the image instead (points outside the region dropped)",
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
        "--batch-points",
        type=positive_int,
        default=64,
        help="points per decoder call (lower it if memory runs out)",
    )
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--show", action="store_true", help="show each result in a matplotlib window")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plain_warnings()
    jobs = find_jobs(args, parser)
    out = check_writable(Path(args.out), parser)
    folder = Path(args.image).is_dir()
    first = None
    if not folder:  # one image: bad input is a usage error, reported before loading a model
        try:
            first = load_job(jobs[0])
        except (DataError, ValueError) as e:
            parser.error(str(e))
    name = pick_model(args, parser)
    try:
        device = resolve_device(args.device)
        sam = load_model(name, args.checkpoint, device)
    except (CheckpointError, ValueError) as e:
        parser.error(str(e))

    opts = {
        "points": args.points,
        "grid": args.grid,
        "seed": args.seed,
        "overlap": args.overlap,
        "min_score": args.min_score,
        "batch_points": args.batch_points,
    }
    failed, written, scores = [], [], []
    writes: deque[tuple[Job, Future]] = deque()

    def finish(job: Job, fut: Future):
        try:
            written.append(fut.result())
        except OSError as e:
            failed.append(job)
            tqdm.write(f"warning: {job.image}: {e}", file=sys.stderr)

    load = (lambda job: first) if first is not None else load_job
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        bar = tqdm(prefetch(load, jobs), total=len(jobs), unit="img", disable=not folder)
        for job, fut in bar:
            try:
                image, region, gt = fut.result()
                labels = segment(sam, image, region, **opts)
            except (DataError, ValueError, OSError, RuntimeError) as e:
                failed.append(job)
                tqdm.write(f"warning: skipped {job.image}: {e}", file=sys.stderr)
                continue
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
    print(
        f"wrote {3 * len(written)} files for {len(written)} image(s) to {out}"
        + (f"; {len(failed)} failed" if failed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
