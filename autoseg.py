"""Prompt-free instance segmentation: a small decoder on SAM 2's features, then a watershed.

SAM 2's automatic mask generator clicks a 32 x 32 grid and decodes every click: slow, and it does
not learn from your masks. This head instead predicts, in one pass over the features the encoder
already computed, three maps on the 256 x 256 low-res grid (at 1024 px):

    foreground    1 inside any object, 0 elsewhere
    centre        per object: distance to the object's centre / its largest value (0 at the
                  centre, 1 at the farthest pixel); 1 on the background
    boundary      per object: 1 - distance to the object's edge / its largest value (1 on the
                  edge, 0 at the deepest point); 1 on the background

A seeded watershed turns them into a label map: seeds where both distances are low (< 0.5) inside
the foreground (> 0.5), flooded over the boundary map, so touching objects part along the ridge
between them. This is micro-sam's "AIS" (InstanceSegmentationWithDecoder with torch_em's
per-object distance targets and watershed), with a light FPN-style decoder on SAM 2's multi-scale
features in place of its UNETR: SAM 2 already hands over stride-4 and stride-8 maps, so there is
nothing to re-learn upwards from the 64 x 64 embedding.

Commands (the trained head travels in model.pt under its own key, beside "model"):

    python train.py --data data/ --auto-decoder          # any image recipe + the head's loss
    python train.py --data data/ --recipe auto           # the head alone, SAM 2 frozen
    python infer.py photo.jpg --checkpoint runs/model.pt --auto       # head when model.pt has one
    python infer.py photo.jpg --checkpoint runs/model.pt --auto amg   # SAM 2's generator

In a notebook:

    import autoseg, torch
    from model import load_model
    sam = load_model("small", "runs/model.pt", "cuda")
    state = torch.load("runs/model.pt", map_location="cpu")
    head = autoseg.load_head(state[autoseg.STATE_KEY], "cuda")
    labels, scores = autoseg.segment_image(sam, head, rgb_uint8_hw3)  # (H, W) uint16, (K,)
    autoseg.msa(labels, gt_labels)                                     # mean seg. accuracy
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STATE_KEY = "auto_decoder"  # model.pt / checkpoint.pt key holding head_state(head)
STRIDE = 4  # the head's output grid: image_size / 4 (256 x 256 at 1024 px)
# micro-sam's defaults (InstanceSegmentationWithDecoder.generate)
FG_THRESHOLD = 0.5
CENTRE_THRESHOLD = 0.5
BOUNDARY_THRESHOLD = 0.5
FG_SMOOTHING = 1.0
DISTANCE_SMOOTHING = 1.6
MAX_LABELS = 65535  # the label PNG is uint16
MAX_OUTPUT_PIXELS = 200_000_000  # the watershed peaks at ~35 bytes per output pixel (7 GB)
MSA_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


# ---------------------------------------------------------------------------------- targets


def label_map(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (H, W) int32 label map 1..N; where masks overlap the smaller one wins,
    so a small object on a large one keeps its pixels."""
    labels = np.zeros(masks.shape[1:], np.int32)
    for i in np.argsort([-int(m.sum()) for m in masks], kind="stable"):
        labels[masks[i]] = i + 1
    return labels


def make_targets(masks: np.ndarray, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Instance masks -> the head's targets (3, h, w) float32: foreground, centre, boundary.

    masks: (N, H, W) bool, or an (H, W) integer label map (0 background, each other value one
    object). size: the head's output grid (h, w): output_size(sam.image_size). The masks are
    resized to it the way the encoder sees the image (squashed to a square), nearest neighbour;
    an object too small to keep a pixel there has no target. Computed once per image.
    """
    import scipy.ndimage as ndi
    from skimage.measure import label as connected
    from skimage.measure import regionprops

    masks = np.asarray(masks)
    if masks.ndim == 3:
        labels = label_map(masks.astype(bool))
    elif masks.ndim == 2 and np.issubdtype(masks.dtype, np.integer):
        labels = masks.astype(np.int32)
    else:
        raise ValueError(
            f"make_targets: expected (N, H, W) bool masks or an (H, W) integer label map, got "
            f"{masks.dtype} {masks.shape}"
        )
    h, w = size
    if labels.shape != (h, w):  # nearest neighbour at pixel centres, as cv2's INTER_NEAREST_EXACT
        rows = ((np.arange(h) + 0.5) * labels.shape[0] / h).astype(int)
        cols = ((np.arange(w) + 0.5) * labels.shape[1] / w).astype(int)
        labels = labels[rows[:, None], cols[None, :]]
    # One label per connected piece: a centre only means something for a connected object.
    labels = connected(labels, background=0, connectivity=1)

    out = np.ones((3, h, w), np.float32)
    out[0] = labels > 0
    yy, xx = np.mgrid[:h, :w]
    for prop in regionprops(labels):
        y0, x0, y1, x1 = prop.bbox
        obj = prop.image  # (y1 - y0, x1 - x0) bool
        # Distance to the nearest pixel outside the object (the frame counts as outside, so an
        # object cut by the image border has its edge there), minus one: 0 on the edge pixels.
        edge = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1] - 1
        cy, cx = np.round(prop.centroid).astype(int) - (y0, x0)
        if not obj[cy, cx]:  # a ring or a crescent: its deepest point stands in for the centre
            cy, cx = np.unravel_index(np.argmax(edge), edge.shape)
        centre = np.hypot(yy[y0:y1, x0:x1] - y0 - cy, xx[y0:y1, x0:x1] - x0 - cx)
        centre = centre / max(centre[obj].max(), 1e-6)
        boundary = 1 - edge / max(edge[obj].max(), 1e-6)
        out[1, y0:y1, x0:x1][obj] = centre[obj]
        out[2, y0:y1, x0:x1][obj] = boundary[obj]
    return out


def output_size(image_size: int = 1024) -> tuple[int, int]:
    """The head's output grid (h, w) for SAM 2 at `image_size` (sam.image_size)."""
    return image_size // STRIDE, image_size // STRIDE


# ------------------------------------------------------------------------------------- head


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.GELU()
    )


class InstanceHead(nn.Module):
    """Foreground / centre / boundary maps from SAM 2's multi-scale features.

    Input: model.Features: image_embed (B, 256, h/16, w/16), high_res [(B, 32, h/4, w/4),
    (B, 64, h/8, w/8)] for an (h, w) encoder input (1024 x 1024: 64, 256, 128).
    Output: logits (B, 3, h/4, w/4). Top-down like an FPN: the embedding is reduced, upsampled
    2x and fused with the stride-8 map, then again with the stride-4 map. ~0.26 M parameters
    at width 64 (SAM 2's mask decoder: 4.2 M).
    """

    def __init__(self, embed_dim: int = 256, high_res_dims=(32, 64), width: int = 64):
        super().__init__()
        self.config = {
            "embed_dim": int(embed_dim),
            "high_res_dims": [int(d) for d in high_res_dims],
            "width": int(width),
        }
        self.embed = _block(embed_dim, width)
        self.fuse8 = _block(width + high_res_dims[1], width)
        self.fuse4 = nn.Sequential(
            _block(width + high_res_dims[0], width // 2), _block(width // 2, width // 2)
        )
        self.out = nn.Conv2d(width // 2, 3, 1)

    def forward(self, feats) -> torch.Tensor:
        dtype = self.out.weight.dtype  # cached features may be stored in half precision
        s4, s8 = (h.to(dtype) for h in feats.high_res)
        x = self.embed(feats.image_embed.to(dtype))
        x = F.interpolate(x, size=s8.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse8(torch.cat([x, s8], 1))
        x = F.interpolate(x, size=s4.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse4(torch.cat([x, s4], 1)))


def head_state(head: InstanceHead) -> dict:
    """What model.pt / checkpoint.pt hold under STATE_KEY: {"config": ..., "weights": ...}
    (CPU tensors)."""
    return {
        "config": dict(head.config),
        "weights": {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }


def load_head(state: dict, device="cpu") -> InstanceHead:
    """InstanceHead from head_state(...) (as read back from model.pt), in eval mode."""
    if not isinstance(state, dict) or not {"config", "weights"} <= state.keys():
        raise ValueError(f"{STATE_KEY}: expected a dict with 'config' and 'weights'")
    head = InstanceHead(**state["config"])
    head.load_state_dict(state["weights"])
    return head.to(device).eval()


# ------------------------------------------------------------------------------------- loss


def _dice(p: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return 1 - 2 * (p * t).sum() / ((p * p).sum() + (t * t).sum()).clamp_min(eps)


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """micro-sam's loss: dice on each of the three maps over the whole batch, the two distance
    maps only inside the foreground; summed. logits, targets: (B, 3, h, w).

    Why dice and not BCE/MSE: each term is a ratio in [0, 1], so the three maps weigh the same
    without tuning weights, and the foreground term does not drown small objects in background
    pixels. Masking the distances to the foreground leaves the background's constant 1 to the
    foreground map and spends the head on the shapes. It is also what micro-sam's published
    AIS numbers were trained with, so the two stay comparable.
    """
    if logits.shape != targets.shape or logits.shape[1] != 3:
        raise ValueError(f"head_loss: logits {tuple(logits.shape)} vs targets {targets.shape}")
    p, t = logits.float().sigmoid(), targets.float()
    fg = t[:, 0:1]
    return (
        _dice(p[:, 0:1], fg)
        + _dice(p[:, 1:2] * fg, t[:, 1:2] * fg)
        + _dice(p[:, 2:3] * fg, t[:, 2:3] * fg)
    )


# -------------------------------------------------------------------------- post-processing


def _upsample(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    if x.shape == tuple(hw):
        return x
    return cv2.resize(x, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def watershed(
    maps: np.ndarray | torch.Tensor,
    out_hw: tuple[int, int] | None = None,
    *,
    fg_threshold: float = FG_THRESHOLD,
    centre_threshold: float = CENTRE_THRESHOLD,
    boundary_threshold: float = BOUNDARY_THRESHOLD,
    fg_smoothing: float = FG_SMOOTHING,
    distance_smoothing: float = DISTANCE_SMOOTHING,
    min_size: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Three maps (3, h, w) of probabilities (sigmoid of the head's logits, or make_targets) ->
    labels (H, W) uint16 at out_hw (default (h, w)), 0 background, 1..K, and scores (K,)
    float32: each instance's mean foreground probability.

    The maps are smoothed on their own grid (sigmas in grid pixels, micro-sam's defaults), then
    upsampled bilinearly to out_hw, where seeds, flooding and min_size (in output pixels) work,
    so edges are as fine as the image. Memory follows the output: ~35 bytes per output pixel,
    whatever the number of objects.
    """
    from skimage.filters import gaussian
    from skimage.measure import label as connected
    from skimage.segmentation import relabel_sequential
    from skimage.segmentation import watershed as flood

    maps = maps.detach().float().cpu().numpy() if torch.is_tensor(maps) else np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3:
        raise ValueError(f"watershed: expected maps (3, h, w), got {maps.shape}")
    out_hw = tuple(int(v) for v in (out_hw or maps.shape[1:]))
    if min(out_hw) < 1 or out_hw[0] * out_hw[1] > MAX_OUTPUT_PIXELS:
        raise ValueError(
            f"watershed: output size {out_hw[1]}x{out_hw[0]} must be 1 to {MAX_OUTPUT_PIXELS:,} "
            "pixels"
        )
    if min_size < 0:
        raise ValueError(f"watershed: min_size must be >= 0, got {min_size}")

    def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
        x = x.astype(np.float32)
        return gaussian(x, sigma=sigma, preserve_range=True).astype(np.float32) if sigma else x

    fg = _upsample(smooth(maps[0], fg_smoothing), out_hw)
    inside = fg > fg_threshold
    seeds = _upsample(smooth(maps[1], distance_smoothing), out_hw) < centre_threshold
    ridge = _upsample(smooth(maps[2], distance_smoothing), out_hw)
    seeds &= ridge < boundary_threshold
    seeds &= inside
    markers = connected(seeds, connectivity=1)
    del seeds
    labels = flood(ridge, markers=markers, mask=inside)
    del markers, ridge, inside
    if min_size:
        sizes = np.bincount(labels.ravel())
        labels[(sizes < min_size)[labels] & (labels > 0)] = 0
    labels = relabel_sequential(labels)[0]
    k = int(labels.max())
    if k > MAX_LABELS:
        raise ValueError(
            f"watershed: {k} instances do not fit a uint16 label map (at most {MAX_LABELS}); "
            "raise min_size or fg_threshold"
        )
    area = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    total = np.bincount(labels.ravel(), weights=fg.ravel(), minlength=k + 1)[1:]
    scores = (total / np.maximum(area, 1)).astype(np.float32)
    return labels.astype(np.uint16), scores


# ----------------------------------------------------------------------------------- metric


def segmentation_accuracy(
    pred: np.ndarray, gt: np.ndarray, thresholds=MSA_THRESHOLDS, ignore: np.ndarray | None = None
) -> np.ndarray:
    """TP / (TP + FP + FN) at each IoU threshold (len(thresholds),), pred and gt (H, W) label
    maps (0 background). A pair matches at t when IoU >= t, one-to-one, chosen to maximise the
    matches (then the IoU), as elf's matching does. ignore: (H, W) bool pixels left out of
    both. No objects in either: 1.0 (nothing missed, nothing invented)."""
    from scipy.optimize import linear_sum_assignment

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"segmentation_accuracy: pred {pred.shape} vs gt {gt.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        pred, gt = pred[keep], gt[keep]
    gt_ids, gi = np.unique(gt, return_inverse=True)
    pr_ids, pi = np.unique(pred, return_inverse=True)
    inter = np.bincount(gi.ravel() * len(pr_ids) + pi.ravel(), minlength=len(gt_ids) * len(pr_ids))
    inter = inter.reshape(len(gt_ids), len(pr_ids))
    area_g, area_p = inter.sum(1), inter.sum(0)
    rows, cols = np.flatnonzero(gt_ids != 0), np.flatnonzero(pr_ids != 0)
    n_gt, n_pred = len(rows), len(cols)
    thresholds = np.asarray(thresholds, float)
    if n_gt == 0 or n_pred == 0:
        return np.full(len(thresholds), float(n_gt == n_pred))
    inter = inter[np.ix_(rows, cols)]
    iou = inter / (area_g[rows][:, None] + area_p[cols][None, :] - inter)
    out = []
    for t in thresholds:
        hit = iou >= t
        r, c = linear_sum_assignment(-(hit + iou / (2 * iou.size)))  # matches first, then IoU
        tp = int(hit[r, c].sum())
        out.append(tp / (n_gt + n_pred - tp))
    return np.asarray(out)


def msa(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean segmentation accuracy over IoU 0.50:0.05:0.95 (micro-sam's / elf's mSA) of one
    image: pred and gt (H, W) label maps. Average it over images for a split."""
    return float(segmentation_accuracy(pred, gt, ignore=ignore).mean())


# -------------------------------------------------------------------------------------- use


def predict_maps(head: InstanceHead, feats) -> torch.Tensor:
    """Probabilities (B, 3, h/4, w/4) float32 from model.Features."""
    return head(feats).float().sigmoid()


@torch.inference_mode()
def segment_image(
    sam, head: InstanceHead, image: np.ndarray, out_hw: tuple[int, int] | None = None, **post
) -> tuple[np.ndarray, np.ndarray]:
    """One image, no prompts: one encoder pass, one head pass, a watershed at full size.

    image: RGB uint8 (H, W, 3) (infer.py may pass it resized to --max-side, as training saw it);
    out_hw: the label map's size (default the image's). post: watershed()'s keywords.
    Returns labels (H, W) uint16 and scores (K,) float32 (label k has scores[k - 1]).
    """
    from model import autocast, encode_images

    device = next(sam.parameters()).device
    was = head.training
    head.eval()
    try:
        with autocast(device):
            maps = predict_maps(head, encode_images(sam, [image]))[0]
    finally:
        head.train(was)
    return watershed(maps, out_hw or image.shape[:2], **post)


MIN_SIZE = 50  # infer.py --min-size: objects under this many pixels dropped (micro-sam's)


def segment(
    sam,
    head: InstanceHead,
    image: np.ndarray,
    region: np.ndarray | None = None,
    records: list | None = None,
    max_side: int = 1024,
    min_size: int = MIN_SIZE,
    min_score: float | None = None,
) -> np.ndarray:
    """infer.py --auto with a trained head: segment_image on `image` resized to `max_side`
    (as train.py saw it), labels at the image's own size (H, W) uint16, best-scored first
    wherever ids are numbered; instances scored under `min_score` and pixels outside `region`
    (H, W) bool dropped. `records`, a list, gets label_records' dicts (COCO RLE, score)."""
    from skimage.segmentation import relabel_sequential

    from plumbing.images import resize_longest

    hw = image.shape[:2]
    labels, scores = segment_image(
        sam, head, resize_longest(image, max_side), hw, min_size=min_size
    )
    drop = np.zeros(len(scores) + 1, bool)
    if min_score is not None:
        drop[1:] = scores < min_score
    if region is not None:
        labels[~region] = 0
        drop[1:] |= np.bincount(labels.ravel(), minlength=len(scores) + 1)[1:] == 0
    if drop.any():
        labels[drop[labels]] = 0
        scores = scores[~drop[1:]]
        labels = relabel_sequential(labels)[0].astype(np.uint16)
    order = np.argsort(-scores, kind="stable")  # id 1: the best-scored, as the other modes
    rank = np.zeros(len(scores) + 1, np.uint16)
    rank[order + 1] = np.arange(1, len(scores) + 1)
    labels, scores = rank[labels], scores[order]
    if records is not None:
        records += label_records(labels, scores)
    return labels


# ------------------------------------------------------------------------------- training

# The head starts from random weights while SAM 2's decoder starts trained: at the article's
# 1e-5 a fresh conv net barely moves in a demo's 40 steps. It learns at this many times --lr
# (1e-3 at 1e-5, AdamW's usual rate for a net trained from scratch).
HEAD_LR_SCALE = 100.0


def add_head(params: list, decays: list[float], lr: float, weight_decay: float):
    """A new InstanceHead (on the CPU) and the optimizer's param groups with its own appended
    (lr x HEAD_LR_SCALE; "lr_scale" travels in the optimizer's state, so a resumed run and an
    lr schedule keep the ratio). params, decays: a Recipe.params' (a list of parameters or of
    groups; empty groups are dropped). Returns (head, groups, each group's weight decay)."""
    head = InstanceHead()
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    keep = [(g, d) for g, d in zip(groups, decays) if g["params"]]
    scale = HEAD_LR_SCALE
    mine = {"params": list(head.parameters()), "lr": lr * scale, "lr_scale": scale}
    return head, [g for g, _ in keep] + [mine], [d for _, d in keep] + [weight_decay]


def targets_for(sam):
    """masks (N, H, W) bool -> make_targets at `sam`'s head grid: what FeatureCache keeps."""
    import functools

    return functools.partial(make_targets, size=output_size(sam.image_size))


def batch_loss(head: InstanceHead, feats, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The head's loss on a step's features (model.Features of B images) and their cached
    targets (B, 3, h, w), and each image's foreground IoU (B,) (head > 0.5 vs target; what a
    head-only run logs as its train IoU)."""
    logits = head(feats)
    targets = targets.to(logits.device, logits.dtype)
    with torch.no_grad():
        p, t = logits.detach() > 0, targets[:, 0] > 0.5
        inter = (p[:, 0] & t).flatten(1).sum(1)
        iou = inter / (p[:, 0] | t).flatten(1).sum(1).clamp(min=1)
    return head_loss(logits, targets), iou


def read_head(path, device="cpu") -> InstanceHead | None:
    """The trained head a model.pt / best.pt / checkpoint.pt holds under STATE_KEY, in eval
    mode; None for a file without one (an official SAM 2 checkpoint) or no file."""
    from model import load_tensors

    if path is None or str(path) == "none":
        return None
    state = load_tensors(path, mmap=True)
    return load_head(state[STATE_KEY], device) if STATE_KEY in state else None


# ------------------------------------------------------------------------------ scoring


def label_records(labels: np.ndarray, scores: np.ndarray) -> list[dict]:
    """A label map (H, W) and its scores (K,) -> infer.py's records, best first: one
    {"prompt": k - 1, "score", "label": k, "segmentation": COCO RLE at full size} per label
    with pixels. One full-size buffer, each object written only inside its bounding box."""
    import scipy.ndimage as ndi

    from formats import encode_mask

    buf, out = np.zeros(labels.shape, bool), []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        buf[sl] = labels[sl] == k
        rle = encode_mask(buf)
        buf[sl] = False
        out.append(
            {"prompt": k - 1, "score": float(scores[k - 1]), "label": k, "segmentation": rle}
        )
    return sorted(out, key=lambda r: -r["score"])


def scores_of(preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Prompt-free results of a split -> {"msa": mean over images of msa(), "ap": COCO mask AP
    (pycocotools, class-agnostic, maxDets 100; instances ranked by their scores), "ap50",
    "images"}. preds: per image (predicted labels (H, W), their scores (K,), ground-truth
    masks (N, H, W) bool)."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from formats import encode_mask

    if not preds:
        return {"msa": float("nan"), "ap": float("nan"), "ap50": float("nan"), "images": 0}
    images, gts, dts = [], [], []
    msas = []
    for i, (labels, scores, masks) in enumerate(preds):
        masks = np.asarray(masks, bool)
        msas.append(msa(labels, label_map(masks)))
        images.append({"id": i, "height": labels.shape[0], "width": labels.shape[1]})
        for m in masks:
            rle = encode_mask(m)
            box = [float(v) for v in mask_utils.toBbox(rle)]
            area = float(m.sum())
            gts.append(
                dict(id=len(gts) + 1, image_id=i, category_id=1, segmentation=rle, area=area)
                | dict(bbox=box, iscrowd=0)
            )
        dts += [
            dict(image_id=i, category_id=1, segmentation=r["segmentation"], score=r["score"])
            for r in label_records(labels, scores)
        ]
    ap = ap50 = 0.0
    if dts and gts:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1}]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dts), "segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ap, ap50 = (max(float(v), 0.0) for v in ev.stats[:2])  # -1: no ground truth
    return {"msa": float(np.mean(msas)), "ap": ap, "ap50": ap50, "images": len(preds)}


@torch.inference_mode()
def head_predictions(head: InstanceHead, items, **post) -> list:
    """(features of 1 image, masks (N, H, W), (H, W)) items, e.g. train.py's cached validation
    images -> scores_of()'s list: the head's labels at each image's size."""
    out = []
    was = head.training
    head.eval()
    try:
        for feats, masks, hw in items:
            maps = predict_maps(head, feats)[0]
            labels, scores = watershed(maps, tuple(hw), **post)
            masks = masks.cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
            out.append((labels, scores, masks))
    finally:
        head.train(was)
    return out


def generator_predictions(generate, pairs, limit: int) -> list:
    """SAM 2's automatic mask generator `generate` (infer.segment_auto with its model and
    defaults: (image, records=list) -> labels) on the first `limit` (RGB image (H, W, 3),
    masks (N, H, W)) pairs -> scores_of()'s list. Slow: a 32 x 32 grid of clicks per image."""
    from plumbing.labelmaps import MAX_ID

    out = []
    for image, masks in pairs:
        if len(out) >= limit:
            break
        records: list = []
        labels = generate(image, records=records)
        scores = np.zeros(MAX_ID, np.float32)
        for r in records:
            if r["label"]:
                scores[r["label"] - 1] = r["score"]
        masks = masks.cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
        out.append((labels, scores[: int(labels.max())], masks))
    return out


def cached_scores(
    cache, device, world: int, head=None, sam=None, generate=None, limit: int = 0
) -> dict:
    """Prompt-free scores of a train.py FeatureCache (this process's share of a split):
    of `head` on every image ({"head_msa", "head_ap", "head_ap50", "head_images"}; `sam`, if
    given, finishes a LoRA run's cached trunk cut), or of the generator `generate`
    (generator_predictions) on at most `limit` images ("amg_..."; ceil(limit / world) a
    process).
    With several processes, each one's means weigh by its images (AP so combined is close to,
    not exactly, the AP of the whole split)."""
    from plumbing.ddp import mean_over_ranks

    if head is not None:  # with LoRA the cache holds a trunk cut that `sam` finishes
        from plumbing.lora import finish

        def item(i: int):
            (im,) = cache.get([i])
            with torch.no_grad():
                return (im.feats if sam is None else finish(sam, im.feats)), im.masks, im.hw

        got, name = scores_of(head_predictions(head, (item(i) for i in cache.ids))), "head"
    else:
        pairs = ((s.image, s.masks) for s in (cache.dataset[i] for i in cache.ids))
        got = scores_of(generator_predictions(generate, pairs, -(-limit // world)))
        name = "amg"
    m = {"masks": got.pop("images"), "max_clicks": 0} | got
    m = mean_over_ranks(m, world, torch.device(device))
    m["images"] = m.pop("masks")
    return {f"{name}_{k}": v for k, v in m.items() if k != "max_clicks"}
