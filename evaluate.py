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
import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sam2.utils.misc import mask_to_box

import autoseg
import data
import model
from infer import segment_auto
from model import Features, autocast, decode, encode_images, upscale_logits
from plumbing.cli import (
    PIXEL_DEFAULTS,
    TILE_DEFAULTS,
    add_trained_flags,
    apply_trained,
    pick_model,
    pixel_settings,
)
from plumbing.ddp import mean_over_ranks
from plumbing.lora import finish
from plumbing.masks import mask_iou, next_clicks
from plumbing.video import (  # noqa: F401 (video J&F lives there; tests use evaluate.X)
    BOUND_TH,
    VOID_RULES,
    boundary,
    boundary_f,
    encoded_videos,
    evaluate_videos,
    jaccard,
    score_video,
)

CURVE_AT = (1, 3, 5)  # mIoU reported after these many clicks
NOC_AT = (0.85, 0.90)
MAX_CLICKS = 50  # --max-clicks at most: SAM and RITM report NoC within 20
MAX_AMG_IMAGES = 1000  # --amg-images at most: SAM 2's generator decodes 1024 clicks an image
# How images are read where the checkpoint does not say (train.py's defaults)
TRAINED_DEFAULTS = {"max_side": 1024, "min_area": 16, "crowd_instances": False, "ignore_index": 255}
TRAINED_DEFAULTS |= {"stuff_instances": False} | PIXEL_DEFAULTS | TILE_DEFAULTS

# predict(points (N, K, 2) | None, labels (N, K) | None, boxes (N, 4) | None, state)
#   -> (masks (N, H, W) bool, state); state is None on the first call of a sequence
Predictor = Callable[[Any, Any, Any, Any], tuple[np.ndarray, Any]]


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

    curves, boxes = [np.zeros((0, max_clicks))], [np.zeros(0)]
    bar = tqdm(
        items, total=total, desc="evaluating", unit="img", disable=not progress, file=sys.stderr
    )
    with model.evaluating(sam):
        for feats, masks, hw in bar:
            masks = masks.cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
            predict = model_predictor(sam, feats, tuple(hw))
            for s in range(0, len(masks), chunk):
                c, b = score_masks(predict, masks[s : s + chunk].astype(bool), max_clicks)
                curves.append(c)
                boxes.append(b)
    return summarize(np.concatenate(curves), np.concatenate(boxes))


def evaluate_model(
    sam,
    images_and_masks: Iterable[tuple[np.ndarray, np.ndarray]],
    device,
    max_clicks: int = 20,
    progress: bool = True,
    total: int | None = None,
    head=None,
    amg_images: int = 0,
) -> dict[str, float]:
    """Metrics over (RGB uint8 (H, W, 3) image, (N, H, W) bool masks) pairs, `sam` on `device`;
    the image encoder runs once per image. See evaluate_features. Prompt-free besides
    (autoseg.scores_of, keys "head_..." and "amg_..."): `head` (autoseg.InstanceHead) on the
    same features of every image; SAM 2's generator on the first `amg_images` images."""
    heads, firsts = [], []

    def encoded():
        for image, masks in images_and_masks:
            with torch.no_grad(), autocast(torch.device(device)):
                feats = encode_images(sam, [image])
            if head is not None:
                heads.extend(autoseg.head_predictions(head, [(feats, masks, image.shape[:2])]))
            if len(firsts) < amg_images:
                firsts.append((image, masks))
            yield feats, masks, image.shape[:2]

    metrics = evaluate_features(sam, encoded(), max_clicks, progress=progress, total=total)
    found = [("head", heads)] if head is not None else []
    if amg_images:
        generate = functools.partial(segment_auto, sam)
        found.append(("amg", autoseg.generator_predictions(generate, firsts, amg_images)))
    for name, preds in found:
        metrics |= {f"{name}_{k}": v for k, v in autoseg.scores_of(preds).items()}
    return metrics


# ----------------------------------------------------------------------------- train.py's


@torch.no_grad()
def validation_iou(sam, cache, device, world: int, scores: str = "first", chunk: int = 64) -> float:
    """train.py's validation number: mean IoU of the masks predicted from each image's fixed
    click in a FeatureCache (every rank's): of the first output (scores "first"), as the
    article trains and infers, or of the output with the highest predicted IoU ("best"), as
    SAM 2 shows one (Recipe.scores)."""
    total, count = 0.0, 0
    with model.evaluating(sam):
        for i in cache.ids:
            (im,) = cache.get([i])
            for s in range(0, len(im.masks), chunk):
                pts = im.points[s : s + chunk].float()
                zeros = torch.zeros(len(pts), dtype=torch.long, device=device)
                sizes = torch.tensor([im.hw])
                with autocast(device):
                    feats = finish(sam, im.feats)  # with LoRA: the adapted blocks, in eval mode
                    low_res, predicted = model.predict_logits(sam, feats, zeros, pts, sizes)
                pick = predicted.argmax(1) if scores == "best" else torch.zeros_like(zeros)
                shown = low_res[torch.arange(len(pts), device=device), pick][:, None]
                pred = upscale_logits(shown, im.hw)[:, 0] > 0
                total += mask_iou(pred, im.masks[s : s + chunk]).sum().item()
                count += len(pts)
    if world > 1:
        t = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        total, count = t.tolist()
    return total / count if count else float("nan")


def cached_curves(
    sam, cache, device, world: int, max_clicks: int, progress: bool, head=None, amg_images=0
) -> dict:
    """evaluate_features' click curves on a FeatureCache (means over every rank's masks); `sam`
    finishes a LoRA run's cached trunk cut. Also prompt-free mSA and AP: of `head` when given,
    else of `sam`'s automatic mask generator on at most `amg_images` images (it is slow)."""

    def item(i: int):
        (im,) = cache.get([i])
        with torch.no_grad(), model.evaluating(sam), autocast(device):
            return finish(sam, im.feats), im.masks, im.hw

    items = (item(i) for i in cache.ids)
    m = evaluate_features(sam, items, max_clicks, progress=progress, total=len(cache.ids))
    m = mean_over_ranks(m, world, device)
    if head is not None:
        return m | autoseg.cached_scores(cache, device, world, head=head, sam=sam)
    if amg_images:
        generate = functools.partial(segment_auto, sam)  # SAM 2's generator on this model
        m |= autoseg.cached_scores(cache, device, world, generate=generate, limit=amg_images)
    return m


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
    both = {**(before or {}), **after}  # prompt-free: the generator (before), the head (after)
    for key, name in (("msa", "mSA"), ("ap", "mask AP")):
        parts = [
            f"{who} {both[f'{pre}_{key}']:.3f} ({both[f'{pre}_images']} images)"
            for pre, who in (("amg", "SAM 2 generator"), ("head", "instance head"))
            if f"{pre}_{key}" in both
        ]
        if parts:
            lines.append(f"{'prompt-free ' + name:<20} " + " -> ".join(parts))
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
    p.add_argument(
        "--amg-images",
        type=int,
        default=0,
        help="prompt-free: also score SAM 2's automatic mask generator on the first N images "
        f"(mSA, mask AP; at most {MAX_AMG_IMAGES}). It decodes 1024 clicks per image: minutes "
        "each on a CPU. A checkpoint with a trained instance head (train.py --auto-decoder) "
        "has the head scored on every image",
    )
    add_trained_flags(p.add_argument_group("how images are read"), TRAINED_DEFAULTS)
    p.add_argument("--out", default="eval.json", help="where to write the results")
    args = p.parse_args(argv)
    if not 1 <= args.max_clicks <= MAX_CLICKS:  # each click: a decoder pass per mask
        p.error(f"--max-clicks must be between 1 and {MAX_CLICKS}, got {args.max_clicks}")
    if not 0 <= args.amg_images <= MAX_AMG_IMAGES:  # each: minutes of the generator on a CPU
        p.error(f"--amg-images must be between 0 and {MAX_AMG_IMAGES}, got {args.amg_images}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model.plain_warnings()
    try:
        device = model.resolve_device(args.device)
        video = data.detect_format(args.data) == "video"  # DAVIS / YouTube-VOS / MOSE: J&F
        load = data.load_videos if video else data.load_split
        # the validation set train.py scored: its image settings (videos: its pixel rule)
        apply_trained(args, args.checkpoint, PIXEL_DEFAULTS if video else TRAINED_DEFAULTS)
        rule, tile, overlap = pixel_settings(args)
        kw = dict(rule=rule)
        if not video:  # --tile: scored per tile, each tile-cut instance a mask (as trained)
            kw |= dict(max_side=args.max_side, min_area=args.min_area)
            kw |= dict(crowd=args.crowd_instances, ignore_index=args.ignore_index)
            kw |= dict(stuff=args.stuff_instances, tile=tile, tile_overlap=overlap)
        ds = load(args.data, args.split, **kw)  # before the model: bad paths fail fast
        for note in getattr(ds, "notes", []):
            print(note, file=sys.stderr)  # e.g. "test: 18 crowd (iscrowd=1) annotations skipped"
        name = pick_model(args.model, args.checkpoint)
        sam = model.load_model(name, args.checkpoint, device).eval()
        pairs = ((s.image, s.masks) for s in (ds[i] for i in range(len(ds))) if s and len(s.masks))
        if video:
            metrics = evaluate_videos(sam, encoded_videos(sam, ds, device), total=len(ds))
        else:
            head = autoseg.read_head(args.checkpoint, device)
            if head is not None:
                print(f"{args.checkpoint} has a trained instance head: scored too", file=sys.stderr)
            n = len(ds)
            kw = dict(total=n, head=head, amg_images=args.amg_images)
            metrics = evaluate_model(sam, pairs, device, args.max_clicks, **kw)
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


if __name__ == "__main__":
    main()
