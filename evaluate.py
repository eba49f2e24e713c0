"""Score a SAM 2 model on a split with click curves: the interactive protocol SAM reports.

    python evaluate.py --data LabPicsV1 --model small                      # official weights
    python evaluate.py --data LabPicsV1 --checkpoint runs/labpics/best.pt  # a fine-tuned model
    python evaluate.py --data demo_data --model tiny --checkpoint none --max-clicks 5 --device cpu
    python evaluate.py --data /data/DAVIS --checkpoint runs/davis/best.pt  # videos: J&F

Every mask of every image is segmented from clicks alone. Click 1 is at the centre of the object;
each next click is at the centre of the largest error of the current prediction (the point
farthest from the error's boundary, over the missed-object and extra-background maps, image
border counting as boundary, as in SAM / RITM), positive on missed object, negative on extra
background. Clicks accumulate, and the previous pass's low-res logits go in as the mask prompt
(what SAM 2 is trained with; micro-sam reports both ways). One click: the output of the three
with the highest predicted IoU, as a user would be shown.

    mIoU@k   mean IoU after k clicks (k = 1, 3, 5)
    NoC@85   mean number of clicks to reach IoU 0.85, at most --max-clicks (never: counts the max)
    NoC@90   the same for IoU 0.90
    box mIoU mean IoU from the ground-truth bounding box as the only prompt

The image encoder runs once per image; every click is a decoder pass on its cached features.
Images are read as the checkpoint's run read them (its --max-side, --min-area, --crowd-instances,
--ignore-index; a flag overrides), so a run's eval.json is reproduced on the same masks.
Results are printed and written to --out (eval.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from sam2.utils.misc import mask_to_box

import data
import model
from model import Features, autocast, decode, encode_images, upscale_logits
from plumbing.cli import add_trained_flags, apply_trained, pick_model
from plumbing.masks import mask_iou

CURVE_AT = (1, 3, 5)  # mIoU reported after these many clicks
NOC_AT = (0.85, 0.90)
MAX_CLICKS = 50  # --max-clicks at most: SAM and RITM report NoC within 20
# How images are read where the checkpoint does not say (train.py's defaults)
TRAINED_DEFAULTS = {"max_side": 1024, "min_area": 16, "crowd_instances": False, "ignore_index": 255}
TRAINED_DEFAULTS |= {"stuff_instances": False}

# predict(points (N, K, 2) | None, labels (N, K) | None, boxes (N, 4) | None, state)
#   -> (masks (N, H, W) bool, state); state is None on the first call of a sequence
Predictor = Callable[[Any, Any, Any, Any], tuple[np.ndarray, Any]]


def _depth(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of `region` to its boundary, the image border included."""
    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def next_clicks(gts: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM's next click per mask: (N, H, W) bool gts and predictions -> points (N, 2) float (x, y)
    pixels, labels (N,) int (1 on missed object, 0 on extra background) and has_error (N,)
    bool (False: the prediction is exact and the click is meaningless)."""
    n, w = len(gts), gts.shape[-1]
    points, labels = np.zeros((n, 2), np.float32), np.zeros(n, np.int64)
    has_error = np.zeros(n, bool)
    for i in range(n):
        missed, extra = _depth(gts[i] & ~preds[i]), _depth(preds[i] & ~gts[i])
        positive = missed.max() > extra.max()
        depth = missed if positive else extra
        idx = int(depth.argmax())
        points[i], labels[i], has_error[i] = (idx % w, idx // w), positive, depth.max() > 0
    return points, labels, has_error


def click_ious(
    predict: Predictor, gts: np.ndarray, max_clicks: int = 20, stop_iou: float = 0.9
) -> np.ndarray:
    """IoU after each of 1..max_clicks clicks, (N, max_clicks), for the (N, H, W) bool `gts`.

    A mask stops receiving clicks once it has had max(CURVE_AT) clicks and reached `stop_iou`
    (all the metrics need); its later entries repeat its last IoU. Stopped masks, and masks
    predicted exactly, repeat their last click, which adds nothing.
    """
    n = len(gts)
    ious = np.zeros((n, max_clicks))
    preds = np.zeros_like(gts)
    points, labels = np.zeros((n, 0, 2), np.float32), np.zeros((n, 0), np.int64)
    active, state = np.ones(n, bool), None
    for k in range(max_clicks):
        pt, lab, has_error = next_clicks(gts, preds)
        if k > 0:
            repeat = ~active | ~has_error
            pt[repeat], lab[repeat] = points[repeat, -1], labels[repeat, -1]
        points = np.concatenate([points, pt[:, None]], 1)
        labels = np.concatenate([labels, lab[:, None]], 1)
        preds, state = predict(points, labels, None, state)
        iou = mask_iou(preds, gts)
        ious[:, k] = np.where(active, iou, ious[:, k - 1])
        active &= ~((iou >= stop_iou) & (k + 1 >= max(CURVE_AT)))
        if not active.any():
            ious[:, k + 1 :] = ious[:, k : k + 1]
            break
    return ious


def gt_boxes(gts: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float xyxy: inclusive pixel bounds (SAM 2's mask_to_box)."""
    return mask_to_box(torch.from_numpy(gts)[:, None])[:, 0].float().numpy()


def score_masks(
    predict: Predictor, gts: np.ndarray, max_clicks: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Click curves (N, max_clicks) and box IoUs (N,) for the (N, H, W) bool `gts` of one image."""
    box_masks, _ = predict(None, None, gt_boxes(gts), None)
    return click_ious(predict, gts, max_clicks), mask_iou(box_masks, gts)


def summarize(curves: np.ndarray, box_ious: np.ndarray) -> dict[str, float]:
    """Per-mask results of a split -> the metrics (means over masks), plus counts."""
    n, max_clicks = curves.shape
    out: dict[str, float] = {}
    for k in CURVE_AT:
        if k <= max_clicks:
            out[f"miou@{k}"] = float(curves[:, k - 1].mean()) if n else float("nan")
    for t in NOC_AT:
        reached = curves >= t
        noc = np.where(reached.any(1), reached.argmax(1) + 1, max_clicks)
        out[f"noc@{round(t * 100)}"] = float(noc.mean()) if n else float("nan")
    out["box_miou"] = float(box_ious.mean()) if n else float("nan")
    out["masks"], out["max_clicks"] = n, max_clicks
    return out


# ----------------------------------------------------------------------------- SAM 2


def model_predictor(sam, feats: Features, hw: tuple[int, int]) -> Predictor:
    """A Predictor for one image's cached `feats` (1 image) of size `hw` (H, W). Its state is
    the low-res logits (N, 1, 256, 256) of the output shown, fed back as the mask prompt."""
    device = feats.image_embed.device
    sizes = torch.tensor([hw], device=device)

    def tensor(a, dtype):
        return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)

    @torch.no_grad()
    def predict(points, labels, boxes, state):
        n = len(points if points is not None else boxes)
        with autocast(device):
            low, scores = decode(
                sam,
                feats,
                torch.zeros(n, dtype=torch.long, device=device),
                sizes,
                tensor(points, torch.float32),
                tensor(labels, torch.int),
                tensor(boxes, torch.float32),
                state,
                multimask=boxes is None and points.shape[1] == 1,
            )
        shown = low[torch.arange(n, device=device), scores.argmax(1)][:, None]
        return (upscale_logits(shown, hw)[:, 0] > 0).cpu().numpy(), shown

    return predict


def evaluate_features(
    sam,
    items: Iterable[tuple[Features, Any, tuple[int, int]]],
    max_clicks: int = 20,
    chunk: int = 32,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, float]:
    """Metrics over images given as (features of 1 image, masks (N, H, W) bool array or tensor,
    (H, W)), e.g. train.py's cached validation items. `chunk` masks are decoded at once.
    Returns summarize()'s dict (means over masks; 'masks' counts them, for combining ranks).
    Runs `sam` in eval mode (as users will) and restores its modes after."""
    from tqdm import tqdm

    modes = [m.training for m in sam.modules()]
    sam.eval()
    curves, boxes = [np.zeros((0, max_clicks))], [np.zeros(0)]
    for feats, masks, hw in tqdm(
        items, total=total, desc="evaluating", unit="img", disable=not progress, file=sys.stderr
    ):
        masks = masks.cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
        predict = model_predictor(sam, feats, tuple(hw))
        for s in range(0, len(masks), chunk):
            c, b = score_masks(predict, masks[s : s + chunk].astype(bool), max_clicks)
            curves.append(c)
            boxes.append(b)
    for m, mode in zip(sam.modules(), modes):
        m.train(mode)
    return summarize(np.concatenate(curves), np.concatenate(boxes))


def evaluate_model(
    sam,
    images_and_masks: Iterable[tuple[np.ndarray, np.ndarray]],
    device,
    max_clicks: int = 20,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, float]:
    """Metrics over (RGB uint8 (H, W, 3) image, (N, H, W) bool masks) pairs, `sam` on `device`;
    the image encoder runs once per image. See evaluate_features."""

    def encoded():
        for image, masks in images_and_masks:
            with torch.no_grad(), autocast(torch.device(device)):
                feats = encode_images(sam, [image])
            yield feats, masks, image.shape[:2]

    return evaluate_features(sam, encoded(), max_clicks, progress=progress, total=total)


# ----------------------------------------------------------------------------- report + CLI

LABELS = {
    "miou@1": "mIoU@1",
    "miou@3": "mIoU@3",
    "miou@5": "mIoU@5",
    "noc@85": "NoC@85",
    "noc@90": "NoC@90",
    "box_miou": "box mIoU",
    "jf_mask": "J&F mask",
    "j_mask": "J mask",
    "f_mask": "F mask",
    "jf_click": "J&F click",
    "j_click": "J click",
    "f_click": "F click",
}


def format_table(after: dict, before: dict | None = None) -> str:
    """The metrics as a small text table; with `before`, one 'before -> after' line each."""
    lines = []
    for key, name in LABELS.items():
        if key not in after:
            continue
        fmt = "{:.2f}" if key.startswith("noc") else "{:.3f}"
        value = fmt.format(after[key])
        if before is not None and key in before:
            value = f"{fmt.format(before[key])} -> {value}"
        lines.append(f"{name:<9} {value}")
    lines.append(f"({after['masks']} masks, at most {after['max_clicks']} clicks)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", required=True, help="dataset root, any layout data.py reads")
    p.add_argument("--split", default="test", help="split to score")
    p.add_argument("--model", help="SAM 2 size; default: the one model.pt names, else small")
    p.add_argument("--checkpoint", help="weights: official if omitted, a file, or 'none' (random)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--max-clicks", type=int, default=20, help=f"clicks per mask at most, 1-{MAX_CLICKS}"
    )
    add_trained_flags(p.add_argument_group("how images are read"), TRAINED_DEFAULTS)
    p.add_argument("--out", default="eval.json", help="where to write the results")
    args = p.parse_args(argv)
    if not 1 <= args.max_clicks <= MAX_CLICKS:  # each click: a decoder pass per mask
        p.error(f"--max-clicks must be between 1 and {MAX_CLICKS}, got {args.max_clicks}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model.plain_warnings()
    try:
        device = model.resolve_device(args.device)
        video = data.detect_format(args.data) == "video"  # DAVIS / YouTube-VOS / MOSE: J&F
        load = data.load_videos if video else data.load_split
        kw = {}
        if not video:  # the validation set train.py scored: its image settings, unless given
            apply_trained(args, args.checkpoint, TRAINED_DEFAULTS)
            kw = dict(max_side=args.max_side, min_area=args.min_area)
            kw |= dict(crowd=args.crowd_instances, ignore_index=args.ignore_index)
            kw |= dict(stuff=args.stuff_instances)
        ds = load(args.data, args.split, **kw)  # before the model: bad paths fail fast
        for note in getattr(ds, "notes", []):
            print(note, file=sys.stderr)  # e.g. "test: 18 crowd (iscrowd=1) annotations skipped"
        name = pick_model(args.model, args.checkpoint)
        sam = model.load_model(name, args.checkpoint, device).eval()
        pairs = ((s.image, s.masks) for s in (ds[i] for i in range(len(ds))) if s and len(s.masks))
        if video:
            metrics = evaluate_videos(sam, encoded_videos(sam, ds, device), total=len(ds))
        else:
            metrics = evaluate_model(sam, pairs, device, args.max_clicks, total=len(ds))
    except (model.CheckpointError, data.DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not metrics["masks"]:
        raise SystemExit(f"error: no usable masks in the '{args.split}' split of {args.data}")
    result = {
        "data": str(args.data),
        "split": args.split,
        "model": name,
        "checkpoint": args.checkpoint,
        "metrics": metrics,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(metrics))
    print(f"written to {out}")
    return result


# ----------------------------------------------------------------------------- video: J&F
#
# DAVIS's semi-supervised protocol (davis2017-evaluation): each object is given on the first frame
# that shows it (by its mask, the standard, or by one click at its centre), tracked to the end in
# eval mode, and scored on the later annotated frames except the video's last (DAVIS leaves out
# both). J is the IoU; F the F-measure of the boundary pixels of prediction and ground truth,
# each matched if the other's boundary is within ceil(0.008 x the frame's diagonal) px. Void
# pixels (255) are background, as davis2017-evaluation's semi-supervised scoring reads them (a
# prediction spilling onto the void ring around an object counts against it); void="ignore"
# makes them count for neither (jaccard's and boundary_f's `void`, as its metrics allow but its
# semi-supervised task never uses). Both are averaged over an object's frames, then over
# objects; J&F is their mean.

BOUND_TH = 0.008
VOID_RULES = ("background", "ignore")  # the first: davis2017-evaluation's


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS's J of two (H, W) bool masks: their IoU outside `void`, 1 when both are empty."""
    keep = ~void if void is not None else np.ones_like(gt)
    union = ((pred | gt) & keep).sum()
    return float(((pred & gt) & keep).sum() / union) if union else 1.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its 1-px boundary as DAVIS draws it: pixels whose right, lower or
    lower-right neighbour differs, the image continuing its last row and column."""
    p = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    return (mask != p[:-1, 1:]) | (mask != p[1:, :-1]) | (mask != p[1:, 1:])


def boundary_f(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """DAVIS's F of two (H, W) bool masks: 2PR / (P + R) of their boundary pixels, a pixel
    matched when the other boundary is within r = ceil(bound_th x diagonal) px (bound_th >= 1:
    r = bound_th). Both boundaries empty: 1; one empty: 0."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    r = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(*gt.shape)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    disk = (x * x + y * y <= r * r).astype(np.uint8)
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() or not bg.any():
        return float(bp.any() == bg.any())
    precision = (bp & cv2.dilate(bg.astype(np.uint8), disk).astype(bool)).sum() / bp.sum()
    recall = (bg & cv2.dilate(bp.astype(np.uint8), disk).astype(bool)).sum() / bg.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


@torch.no_grad()
def score_video(
    sam, frame, labels: list, prompt: str = "mask", void: str = "background"
) -> list[tuple[float, float]]:
    """(J, F) of each object of one video, tracked by `sam` in eval mode (see above).

    frame(t) -> encode_frames features of frame t; labels: per frame (H, W) int object ids
    (data.video_labels), None where not annotated; prompt: "mask" or "click"; void: how label
    255 counts, "background" (davis2017-evaluation's rule) or "ignore" (neither way).
    """
    if void not in VOID_RULES:
        raise ValueError(f"void must be one of {VOID_RULES}, got {void!r}")
    first: dict[int, int] = {}
    for t, lab in enumerate(labels):
        for i in [] if lab is None else np.unique(lab).tolist():
            first.setdefault(i, t)
    first = {i: t for i, t in first.items() if i not in (0, data.VOID)}
    device, scores = next(sam.parameters()).device, []
    for start in sorted(t for t in set(first.values()) if t < len(labels) - 2):  # else no score
        ids = np.array([i for i, t in first.items() if t == start])
        gts = labels[start][None] == ids[:, None, None]
        if prompt == "mask":
            p = model.frame_prompt(sam, gts.shape[1:], masks=torch.from_numpy(gts).to(device))
        else:
            xy = torch.from_numpy(next_clicks(gts, np.zeros_like(gts))[0][:, None]).to(device)
            one = torch.ones(len(ids), 1, dtype=torch.int32, device=device)
            p = model.frame_prompt(sam, gts.shape[1:], xy, one)
        j, f = [[] for _ in ids], [[] for _ in ids]
        with autocast(device):
            for t, _, low_res in model.track_clip(sam, frame, len(labels), len(ids), {start: p}):
                if labels[t] is None or t in (start, len(labels) - 1):
                    continue
                pred = (upscale_logits(low_res, labels[t].shape)[:, 0] > 0).cpu().numpy()
                skip = labels[t] == data.VOID if void == "ignore" else None
                for k, i in enumerate(ids):
                    j[k].append(jaccard(pred[k], labels[t] == i, skip))
                    f[k].append(boundary_f(pred[k], labels[t] == i, skip))
        scores += [(np.mean(a), np.mean(b)) for a, b in zip(j, f) if a]
    return scores


def evaluate_videos(
    sam, videos: Iterable, prompts=("mask", "click"), progress=True, total=None, void="background"
) -> dict[str, float]:
    """J, F and J&F (means over objects) of each prompt protocol over (frame, labels) pairs (see
    score_video, which takes `void`), as keys j_mask, f_mask, jf_mask, j_click, ...; 'masks'
    counts the objects. Runs `sam` in eval mode and restores its modes after."""
    from tqdm import tqdm

    modes = [m.training for m in sam.modules()]
    sam.eval()
    scores: dict[str, list] = {p: [] for p in prompts}
    for frame, labels in tqdm(videos, total=total, desc="J&F", disable=not progress):
        for p in prompts:
            scores[p] += score_video(sam, frame, labels, p, void)
    for m, mode in zip(sam.modules(), modes):
        m.train(mode)
    out: dict[str, float] = {"masks": len(scores[prompts[0]]), "max_clicks": 1}
    for p, s in scores.items():
        j, f = np.array(s).reshape(-1, 2).mean(0) if s else (np.nan, np.nan)
        out |= {f"jf_{p}": float((j + f) / 2), f"j_{p}": float(j), f"f_{p}": float(f)}
    return out


def encoded_videos(sam, videos: list, device):
    """(frame(t) -> encode_frames features, label maps) of each data.Video, for evaluate_videos;
    frames are read and encoded when tracking reaches them."""
    for v in videos:

        def frame(t, v=v):
            with torch.no_grad(), autocast(device):
                return model.encode_frames(sam, [data.read_rgb(v.frames[t])])

        yield frame, [data.video_labels(v, t) for t in range(len(v.frames))]


if __name__ == "__main__":
    main()
