"""The interactive training recipe: boxes, correction clicks and SAM 2's own loss.

Meta's trainer for SAM 2 (training/model/sam2.py, training/loss_fns.py) with its defaults, on
cached encoder features: every pass is a decoder call, the encoder never runs again.

- First prompt per mask: its bounding box with probability 0.5 (each coordinate jittered by up to
  10% of the box side, at most 20 px, clipped to the image), else one positive click drawn
  uniformly inside the mask.
- `clicks` correction passes (default 7): each adds one click drawn uniformly from the error
  region of the previous prediction (positive where the object was missed, negative where
  background was taken; with probability 0.1 from the ground-truth mask instead, positive), and
  feeds the previous pass's low-res logits back as the mask prompt (gradient flows through it,
  as in Meta's trainer).
- Loss per pass, summed over passes, averaged over masks: 20 x focal (alpha 0.25, gamma 2)
  + 1 x dice + 1 x |predicted IoU - real IoU|. With multimask output (one click, no box) only the
  output with the lowest 20 x focal + dice gets the mask terms; the IoU term covers all outputs.

The loss is computed on the decoder's own 256 x 256 grid against each ground-truth mask
area-downscaled to it (soft targets: the fraction of each cell the object covers). Meta upscales
the logits to 1024 x 1024 first: a fixed bilinear map that adds no information but 16x the
loss's time and memory. At --batch-size 4 --max-masks 32 and 8 passes (~1150 output maps), each
float tensor the loss keeps for backward (it keeps several) is 4.5 GiB at 1024^2, 0.28 GiB at
256^2. Correction clicks are drawn at full image resolution (no grad, one output per mask), so
they always lie inside the real error region.

    python train.py --data LabPicsV1 --recipe interactive --clicks 7   # (train.py's flags)

    from functools import partial
    from model import decode
    from recipes import interactive_loss
    decode_fn = partial(decode, sam, feats, sizes=sizes)   # or a DDP module taking these kwargs
    with autocast(device):
        loss, iou = interactive_loss(decode_fn, gts, gen, clicks=7)
    loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.utils.misc import mask_to_box

from data import sample_points
from model import Features, frame_prompt, track_clip, upscale_logits

LOW_RES = 256  # side of the decoder's mask logits (and of the mask prompt it takes)

# decode_fn(img_idx, points=, labels=, boxes=, mask_input=, multimask=) -> (low_res, scores)
DecodeFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------- prompts


def _rand(shape, gen: torch.Generator, device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (CPU generator: same numbers for any device)."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def jittered_boxes(
    masks: torch.Tensor, gen: torch.Generator, noise: float = 0.1, bound: float = 20.0
) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float xyxy: each mask's bounding box (inclusive pixel corners),
    each coordinate moved by U(-1, 1) x min(noise x box side, bound) px, clipped to the image."""
    n, h, w = masks.shape
    box = mask_to_box(masks[:, None])[:, 0].float()  # (N, 4)
    side = (box[:, 2:] - box[:, :2]).repeat(1, 2)  # (w, h, w, h)
    delta = (2 * _rand((n, 4), gen, masks.device) - 1) * (noise * side).clamp(max=bound)
    hi = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=box.dtype, device=box.device)
    return (box + delta).clamp(min=torch.zeros_like(hi), max=hi)


@torch.no_grad()
def correction_clicks(
    low_res: torch.Tensor, gts: list[torch.Tensor], gen: torch.Generator, gt_prob: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from the error region of its prediction, at full resolution.

    low_res: (M, 1, 256, 256) logits, rows grouped by image in the order of `gts`, a list of
    (N_i, H_i, W_i) bool masks (sum N_i = M). Returns points (M, 2) float (x, y) pixels and
    labels (M,) int: drawn uniformly from missed object (label 1) + taken background (label 0);
    with probability `gt_prob` from the mask itself (label 1). A perfect prediction gets a
    negative click on the background, as in Meta's sampler (a mask filling the whole image
    gets a positive one).
    """
    from_gt = _rand(len(low_res), gen, low_res.device) < gt_prob
    points, labels, start = [], [], 0
    for gt in gts:
        n = len(gt)
        if n == 0:
            continue
        pred = upscale_logits(low_res[start : start + n], gt.shape[-2:])[:, 0] > 0
        region = pred ^ gt
        perfect = ~region.flatten(1).any(1)
        region[perfect] = ~gt[perfect]
        use_gt = from_gt[start : start + n] | ~region.flatten(1).any(1)
        region = torch.where(use_gt[:, None, None], gt, region)
        xy = sample_points(region, gen)
        x, y = xy.long().unbind(1)
        points.append(xy)
        labels.append(gt[torch.arange(n, device=gt.device), y, x].int())
        start += n
    return torch.cat(points), torch.cat(labels)


# ----------------------------------------------------------------------------- loss


def low_res_targets(gts: list[torch.Tensor]) -> torch.Tensor:
    """(N_i, H_i, W_i) bool per image -> (M, 256, 256) float in [0, 1]: the fraction of each cell
    of the decoder's grid (the image stretched to a square, as the encoder sees it) inside the
    mask."""
    return torch.cat(
        [F.interpolate(g[:, None].float(), (LOW_RES, LOW_RES), mode="area")[:, 0] for g in gts]
    )


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), mean over pixels: (M, C, h, w) -> (M, C)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft dice, (M, C, h, w) -> (M, C); the L1 form that stays exact for soft targets."""
    p, t = logits.sigmoid().flatten(2), target.flatten(2)
    total = p.sum(-1) + t.sum(-1)
    overlap = total - (p - t).abs().sum(-1)  # = 2 * sum(p * t) when t is 0/1
    return 1 - (overlap + 1) / (total + 1)


@torch.no_grad()
def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with a soft target, (M, C, h, w) -> (M, C): the full-resolution IoU
    of a prediction that is constant within each cell."""
    pred, t = (logits > 0).flatten(2).to(target.dtype), target.flatten(2)
    inter = (pred * t).sum(-1)
    return inter / (pred.sum(-1) + t.sum(-1) - inter).clamp(min=1e-6)


def pass_loss(
    low_res: torch.Tensor,
    scores: torch.Tensor,
    target: torch.Tensor,
    weights: tuple[float, float, float] = (20.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass's loss per mask and the real IoU of each output.

    low_res (M, C, 256, 256) logits, scores (M, C), target (M, 256, 256) soft masks;
    weights (focal, dice, IoU). Returns loss (M,) and IoU (M, C). With C > 1 the focal + dice
    terms come from the output with the lowest weighted focal + dice only (Meta's rule); the
    |score - IoU| term is the mean over all C outputs.
    """
    logits = low_res.float()
    t = target[:, None].expand_as(logits)
    mask = weights[0] * focal_loss(logits, t) + weights[1] * dice_loss(logits, t)  # (M, C)
    best = mask.detach().argmin(1, keepdim=True)
    iou = soft_iou(logits, t)
    score = (scores.float() - iou).abs().mean(1)
    return mask.gather(1, best)[:, 0] + weights[2] * score, iou


# ----------------------------------------------------------------------------- the recipe


def _rollout(
    decode_fn: DecodeFn,
    gts: list[torch.Tensor],
    targets: torch.Tensor,
    points: torch.Tensor | None,
    boxes: torch.Tensor | None,
    gen: torch.Generator,
    clicks: int,
    gt_prob: float,
    weights: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """1 + clicks passes for rows that all start with a box or all with one click.
    Returns the loss summed over passes and masks, and the first pass's IoU (M,)."""
    dev = targets.device
    img_idx = torch.cat(
        [torch.full((len(g),), i, dtype=torch.long, device=dev) for i, g in enumerate(gts)]
    )
    labels = None if points is None else torch.ones(points.shape[:2], dtype=torch.int, device=dev)
    rows = torch.arange(len(img_idx), device=dev)
    mask_input, total, first_iou = None, 0.0, None
    for p in range(clicks + 1):
        multimask = boxes is None and points.shape[1] == 1  # SAM 2: one click is ambiguous
        low_res, scores = decode_fn(
            img_idx,
            points=points,
            labels=labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask=multimask,
        )
        loss, iou = pass_loss(low_res, scores, targets, weights)
        total = total + loss.sum()
        shown = scores.detach().argmax(1)  # the output a user would see, as SAM2Base picks
        if p == 0:
            first_iou = iou[rows, shown]
        if p == clicks:
            break
        mask_input = low_res[rows, shown][:, None]
        pt, lab = correction_clicks(mask_input.detach(), gts, gen, gt_prob)
        points = pt[:, None] if points is None else torch.cat([points, pt[:, None]], 1)
        labels = lab[:, None] if labels is None else torch.cat([labels, lab[:, None]], 1)
    return total, first_iou


def interactive_loss(
    decode_fn: DecodeFn,
    gts: list[torch.Tensor],
    gen: torch.Generator,
    clicks: int = 7,
    box_prob: float = 0.5,
    gt_prob: float = 0.1,
    weights: tuple[float, float, float] = (20.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The interactive recipe's loss for one batch.

    decode_fn(img_idx, points=, labels=, boxes=, mask_input=, multimask=) -> (low_res, scores):
    `decode` with the batch's features and sizes bound (see the module docstring), shapes as
    in `decode`. gts: per image i of the batch, its (N_i, H_i, W_i) bool masks (non-empty),
    on the training device; rows are these masks in order (row r belongs to image i when it is
    among image i's N_i). gen: all randomness (boxes vs clicks, jitter, clicks) comes from it.
    Returns the loss (summed over the 1 + clicks passes, averaged over the M = sum N_i masks)
    and the first pass's IoU per mask (M,), of the output with the highest predicted IoU.

    Rows starting with a box and rows starting with a click are decoded as two groups (two
    decoder calls per pass), so every row has exactly the prompts SAM 2 saw in training and no
    padding tokens.
    """
    counts = [len(g) for g in gts]
    m = sum(counts)
    if m == 0:
        raise ValueError("interactive_loss: the batch has no masks")
    dev = gts[0].device
    use_box = _rand(m, gen, dev) < box_prob
    boxes = torch.cat([jittered_boxes(g, gen) for g in gts if len(g)])
    clicks0 = torch.cat([sample_points(g, gen) for g in gts if len(g)])
    targets = low_res_targets([g for g in gts if len(g)])
    total, first_iou = 0.0, torch.zeros(m, device=dev)
    for box_group in (True, False):
        sel = (use_box == box_group).nonzero()[:, 0]
        if len(sel) == 0:
            continue
        split = (use_box == box_group).split(counts)
        group_gts = [g[s] for g, s in zip(gts, split)]
        loss, iou = _rollout(
            decode_fn,
            group_gts,
            targets[sel],
            None if box_group else clicks0[sel, None],
            boxes[sel] if box_group else None,
            gen,
            clicks,
            gt_prob,
            weights,
        )
        total = total + loss
        first_iou[sel] = iou
    return total / m, first_iou


# ----------------------------------------------------------------------------- the video recipe
#
# --recipe video: Meta's MOSE fine-tune (sam2.1_hiera_b+_MOSE_finetune.yaml, training/model/
# sam2.py) on cached features of the frozen encoder: clips tracked by model.track_clip, prompted
# as video_prompts says, scored by Meta's loss (video_loss) on the decoder's low-res grid against
# area-downscaled masks, as the interactive recipe. Void pixels (label 255) count neither way.


@dataclass
class Clip:
    """A training clip of T frames and B objects: feats, T rows of encode_frames features; gts,
    per frame (B, H, W) bool masks of the objects (None: no ground truth there); void, per frame
    (H, W) bool pixels to ignore, or None."""

    feats: Features
    gts: list[torch.Tensor | None]
    void: list[torch.Tensor | None]


def video_prompts(sam, clip: Clip, gen: torch.Generator, p: float = 0.5) -> tuple[dict, list]:
    """Meta's MOSE fine-tune prompts for `clip`, every probability `p`: frame 0, and maybe one
    more frame, get each object's mask, else (per frame) its jittered box or one click inside it;
    with boxes and clicks those frames, and maybe one more, get correction clicks. Extra frames
    are drawn among those with ground truth showing every object (Meta draws any). Returns
    ({frame: model.frame_prompt(...)}, the frames that get correction clicks)."""
    gts, dev = clip.gts, clip.gts[0].device
    u = _rand(5, gen, dev).tolist()
    later = [t for t in range(1, len(gts)) if gts[t] is not None]
    full = [t for t in later if gts[t].flatten(1).any(1).all()]
    cond = [0] + ([full[int(u[0] * len(full))]] if len(later) > 1 and full and u[1] < p else [])
    # masks only when a frame with ground truth is left to track (else nothing would learn)
    prompts, use_mask = {}, u[2] < p and len(later) >= len(cond)
    for t in cond:
        g = gts[t]
        if use_mask:
            prompts[t] = frame_prompt(sam, g.shape[-2:], masks=g)
        elif _rand(1, gen, dev).item() < p:
            prompts[t] = frame_prompt(sam, g.shape[-2:], boxes=jittered_boxes(g, gen))
        else:
            one = torch.ones(len(g), 1, dtype=torch.int32, device=dev)
            prompts[t] = frame_prompt(sam, g.shape[-2:], sample_points(g, gen)[:, None], one)
    rest = [t for t in full if t not in cond]
    extra = [rest[int(u[3] * len(rest))]] if len(cond) == 1 and rest and u[4] < p else []
    return prompts, [] if use_mask else cond + extra


def video_loss(
    frames, clip: Clip, weights: tuple[float, ...] = (20.0, 1.0, 1.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's MultiStepMultiMasksAndIous on model.track_clip's output `frames` (its (t, passes,
    final) items) times the number of objects B: per object, frame with ground truth and pass,
    20 x focal + dice + |score - IoU| if the object is there (3 outputs: the best one's mask
    terms), + BCE of its object score against "there". Returns that sum and the IoU per object
    (B,) of the mask shown, averaged over those frames."""
    total, iou, n = 0.0, 0.0, 0
    for t, passes, final in frames:
        g = clip.gts[t]
        if g is None:
            continue
        size = final.shape[-2:]
        target = F.interpolate(g[:, None].float(), size, mode="area")[:, 0]
        void = clip.void[t]
        if void is not None:
            void = F.interpolate(void[None, None].float(), size, mode="area")[0, 0] > 0.5
            target = target.masked_fill(void, 0.0)
        present = g.flatten(1).any(1).float()
        for masks, scores, obj in passes:
            logits = masks.float() if void is None else masks.float().masked_fill(void, -20.0)
            loss, _ = pass_loss(logits, scores, target, weights[:3])
            bce = F.binary_cross_entropy_with_logits(obj[:, 0].float(), present, reduction="none")
            total = total + (present * loss + weights[3] * bce).sum()
        iou, n = iou + soft_iou(final.float(), target[:, None])[:, 0], n + 1
    return total, iou / max(n, 1)


def video_recipe(sam, clips: list[Clip], cfg, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The video recipe's loss for a batch of clips (averaged over all their objects) and the IoU
    per object (sum B,). cfg.clicks correction clicks per corrected frame."""
    dev = clips[0].feats.image_embed.device
    seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
    total, ious = 0.0, []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # memory attention's dropout, repeated by a resumed run
        for clip in clips:
            prompts, correct = video_prompts(sam, clip, gen)
            fix = {t: _video_clicks(sam, clip.gts[t], gen) for t in correct}
            n_obj, frame = len(clip.gts[0]), lambda t, c=clip: c.feats.index([t])
            out = track_clip(sam, frame, len(clip.gts), n_obj, prompts, fix, cfg.clicks)
            loss, iou = video_loss(out, clip)
            total, ious = total + loss, [*ious, iou]
    iou = torch.cat(ious)
    return total / len(iou), iou


def _video_clicks(sam, gt: torch.Tensor, gen: torch.Generator):
    """A track_clip correction: one click per object from its error region (correction_clicks)."""

    def click(low_res):
        xy, lab = correction_clicks(low_res, [gt], gen)
        p = frame_prompt(sam, gt.shape[-2:], xy[:, None], lab[:, None])
        return p["point_coords"], p["point_labels"]

    return click
