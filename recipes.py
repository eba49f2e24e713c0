"""Every training recipe in one place: which prompts each mask gets, and which loss it trains.

A recipe's step is run(sam, batch, opts, gen) -> (loss, IoU per mask): `batch` a Batch (cached
encoder features and masks of a step's images), `opts` the options it reads (Recipe.options,
by name: score_weight or clicks), `gen` the run's torch.Generator (all of the recipe's
randomness). The video recipe takes a list of Clip instead of a Batch (its section). Each
recipe's rules (its data, which output validation scores, its defaults, what it trains) are one
Recipe record in RECIPES, at the end; train.py reads them and never a recipe's name.

article (default), "fine-tune SAM 2 in 60 lines":
- one random click inside each mask (drawn by sample_batch), one decoder pass;
- loss: BCE between the first of the 3 outputs, upscaled to the image, and the mask, plus
  score_weight (0.05) x |predicted score - IoU|, averaged per image, then over images.

interactive, Meta's trainer for SAM 2 (training/model/sam2.py, training/loss_fns.py):
- first prompt per mask: its bounding box with probability 0.5, each coordinate jittered by up to
  10% of the box side and at most 20 px, both measured in the 1024 x 1024 frame the encoder sees
  (Meta jitters boxes of masks resized to it); else one positive click uniform inside the mask;
- `clicks` correction passes (default 7): each adds one click drawn uniformly from the error
  region of the previous prediction at full resolution (positive on missed object, negative on
  taken background; with probability 0.1 from the mask itself, positive; after an exact
  prediction, negative on the background) and feeds the previous pass's low-res logits back as
  the mask prompt, gradient flowing through them as in Meta's trainer;
- loss per pass, summed over passes, averaged over masks: 20 x focal (alpha 0.25, gamma 2)
  + 1 x dice + 1 x |predicted IoU - real IoU|; with multimask output (one click, no box) only
  the output with the lowest 20 x focal + dice gets the mask terms, the IoU term covers all;
- each pass (decoder + its loss) is activation-checkpointed (torch.utils.checkpoint, as Meta's
  use_act_ckpt_iterative_pt_sampling), in chunks of 32 masks: backward recomputes one chunk of
  one pass at a time, so a step holds the activations of one pass of at most 32 masks plus
  about 1 MiB per mask per pass, instead of ~100 MiB per mask per pass (fp32), for about 10%
  more compute.

The interactive loss is computed on the decoder's own 256 x 256 grid against each mask
area-downscaled to it (soft targets: the fraction of each cell the object covers). Meta upscales
the logits to 1024 x 1024 first: a fixed bilinear map that adds no information but 16x the loss's
time and memory.

The building blocks (jittered_boxes, uniform_points, correction_clicks, focal_loss, dice_loss,
soft_iou, pass_loss) take plain tensors and are meant for reuse (the video recipe uses them, and
so can a notebook):

    from functools import partial
    from model import decode
    from recipes import interactive_loss
    decode_fn = partial(decode, sam, feats, sizes=sizes)   # or a DDP module taking these kwargs
    with autocast(device):
        loss, iou = interactive_loss(decode_fn, gts, gen, clicks=7)
    loss.backward()
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from sam2.utils.misc import mask_to_box
from torch.utils.checkpoint import checkpoint

from model import (
    Features,
    TrunkCut,
    decode,
    frame_prompt,
    freeze_for_finetune,
    freeze_for_video,
    predict_logits,
    track_clip,
    upscale_logits,
)
from plumbing.cache import CachedImage
from plumbing.lora import finish
from plumbing.masks import mask_iou, sample_points
from plumbing.video import Clip

LOW_RES = 256  # side of the decoder's mask logits (and of the mask prompt it takes)
FRAME = 1024  # side of the square the image encoder sees (sam.image_size)
MAX_CLICKS = 20  # correction clicks per mask at most: each one is a decoder pass per mask

# decode_fn(img_idx, points=, labels=, boxes=, mask_input=, multimask=) -> (low_res, scores)
DecodeFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Batch:
    """One step's input to a recipe: features of B images (with LoRA their cached TrunkCut,
    which the recipe finishes with plumbing.lora.finish inside the step), img_idx (M,) the
    image of each mask, sizes (B, 2) as (H, W), masks per image [(N_i, H_i, W_i) bool]
    (sum N_i = M, in img_idx order) and points (M, 2) one random click (x, y) inside each mask
    (the article's prompt); targets (B, 3, h, w) the instance head's, when the images have
    them (--auto-decoder)."""

    feats: Features | TrunkCut
    img_idx: torch.Tensor
    sizes: torch.Tensor
    masks: list[torch.Tensor]
    points: torch.Tensor
    targets: torch.Tensor | None = None


# ----------------------------------------------------------------------------- the article


def compute_loss(
    low_res: torch.Tensor, scores: torch.Tensor, gts: list[torch.Tensor], score_weight: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """The article's loss, averaged over the images of a batch.

    low_res: (M, C, 256, 256) logits and scores (M, C) for the M prompts, grouped by image in
    the order of `gts`, a list of (N_i, H_i, W_i) bool masks (sum N_i = M). For each image: BCE
    between its first-output logits upscaled to (H_i, W_i) and the masks, plus score_weight *
    mean |score - IoU| (IoU of logits > 0 vs the mask, no grad). Returns (loss, iou (M,)).
    """
    losses, ious, start = [], [], 0
    for gt in gts:
        n = len(gt)
        logits = upscale_logits(low_res[start : start + n, :1], gt.shape[-2:])[:, 0]
        seg = F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype))
        iou = mask_iou(logits.detach() > 0, gt)
        score = (scores[start : start + n, 0].float() - iou).abs().mean()
        losses.append(seg + score_weight * score)
        ious.append(iou)
        start += n
    return torch.stack(losses).mean(), torch.cat(ious)


def sample_batch(images: list[CachedImage], max_masks: int, gen: torch.Generator) -> Batch:
    """A step's Batch from its images: up to `max_masks` random masks per image, one random
    click in each, the article's prompt (no host sync)."""
    masks, points, idx = [], [], []
    for b, im in enumerate(images):
        m = im.masks
        if len(m) > max_masks:
            m = m[torch.randperm(len(m), generator=gen, device=gen.device)[:max_masks]]
        masks.append(m)
        points.append(uniform_points(m, gen))  # cached masks are never empty
        idx.append(torch.full((len(m),), b, dtype=torch.long, device=m.device))
    feats = type(images[0].feats).cat([im.feats for im in images])
    sizes = torch.tensor([im.hw for im in images]).to(images[0].masks.device, non_blocking=True)
    targets = None
    if all(im.targets is not None for im in images):
        targets = torch.stack([im.targets for im in images])
    return Batch(feats, torch.cat(idx), sizes, masks, torch.cat(points), targets)


def article_recipe(sam, batch: Batch, opts, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """The article: each mask's click decoded once; its loss. Returns (loss, IoU per mask)."""
    feats = finish(sam, batch.feats)
    low_res, scores = predict_logits(sam, feats, batch.img_idx, batch.points, batch.sizes)
    return compute_loss(low_res, scores, batch.masks, opts.score_weight)


# ----------------------------------------------------------------------------- prompts


def _rand(shape, gen: torch.Generator, device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (CPU generator: same numbers for any device)."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _to(values: list, device) -> torch.Tensor:
    """A small host list on `device` without waiting for the device's queue (a plain .to()
    of pageable memory synchronizes the CUDA stream)."""
    return torch.tensor(values).to(device, non_blocking=True)


def pad_masks(gts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image masks [(N_i, H_i, W_i) bool] -> all M = sum N_i rows on one canvas
    (M, max H_i, max W_i) bool, each at the top left (False outside it), and hw (M, 2) long:
    each row's own (H, W)."""
    h, w = max(g.shape[-2] for g in gts), max(g.shape[-1] for g in gts)
    rows = [F.pad(g, (0, w - g.shape[-1], 0, h - g.shape[-2])) for g in gts]
    hw = _to([list(g.shape[-2:]) for g in gts for _ in range(len(g))], gts[0].device)
    return torch.cat(rows), hw.long().reshape(-1, 2)


def uniform_points(regions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(N, H, W) bool -> (N, 2) float (x, y): one pixel drawn uniformly from each region, as
    data.sample_points draws it but without its empty-region check (a host sync): an empty
    region gives (0, 0), so callers pass non-empty ones."""
    return sample_points(regions, gen, check=False)


def jittered_boxes(
    masks: torch.Tensor,
    gen: torch.Generator,
    noise: float = 0.1,
    bound: float = 20.0,
    hw: torch.Tensor | None = None,
    frame: int = FRAME,
) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float xyxy pixels: each mask's bounding box (inclusive pixel
    corners), each coordinate moved by U(-1, 1) x min(noise x box side, bound), sides and bound
    measured in the frame x frame square the encoder sees (the image stretched to it, as Meta's
    trainer jitters boxes of 1024 x 1024 masks), then clipped to the image.

    hw: (N, 2) each row's own (H, W) when the rows are padded to a common canvas (pad_masks);
    default the masks' size. A W-pixel-wide image moves x by up to bound x W / frame pixels.
    """
    n, h, w = masks.shape
    if hw is None:
        hw = _to([h, w], masks.device).expand(n, 2)
    box = mask_to_box(masks[:, None])[:, 0].float()  # (N, 4)
    to_frame = (frame / hw.flip(1).float()).repeat(1, 2)  # (N, 4): x, y, x, y
    side = ((box[:, 2:] - box[:, :2]).repeat(1, 2) * to_frame).clamp(min=0)
    delta = (2 * _rand((n, 4), gen, masks.device) - 1) * (noise * side).clamp(max=bound)
    hi = (hw.flip(1).float() - 1).repeat(1, 2)
    return (box + delta / to_frame).clamp(min=torch.zeros_like(hi), max=hi)


def _bilinear_rows(sizes: torch.Tensor, length: int, source: int) -> torch.Tensor:
    """(M,) output lengths -> (M, length, source) weights of F.interpolate's bilinear resize
    (align_corners=False) from `source` to each length; rows past a length are 0."""
    dev = sizes.device
    j = torch.arange(length, device=dev, dtype=torch.float32)
    src = (j + 0.5) * (source / sizes.float())[:, None] - 0.5  # (M, length), as F.interpolate
    src = src.clamp(0, source - 1)
    taps = torch.arange(source, device=dev, dtype=torch.float32)
    weights = (1 - (src[..., None] - taps).abs()).clamp(min=0)  # 2 taps: 1 - frac and frac
    return weights * (j < sizes[:, None])[..., None]


def upscale_rows(low_res: torch.Tensor, hw: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """(M, 1, h, w) logits (h = w = 256 at SAM 2's 1024 px input) -> (M, H, W) float on a
    `canvas` (H, W): row r bilinearly upscaled to its own hw[r] (as model.upscale_logits, up to
    float rounding) at the top left, 0 outside it. One batched pair of matmuls for rows of any
    sizes, in fp32 under autocast."""
    with torch.autocast(low_res.device.type, enabled=False):
        rows = _bilinear_rows(hw[:, 0], canvas[0], low_res.shape[-2])  # (M, H, h)
        cols = _bilinear_rows(hw[:, 1], canvas[1], low_res.shape[-1])  # (M, W, w)
        return rows @ low_res[:, 0].float() @ cols.transpose(1, 2)


@torch.no_grad()
def correction_clicks(
    low_res: torch.Tensor,
    gts: torch.Tensor | list[torch.Tensor],
    gen: torch.Generator,
    gt_prob: float = 0.1,
    hw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from the error region of its prediction, at full resolution, for all
    rows at once (no host sync).

    low_res: (M, 1, 256, 256) logits. gts: (M, H, W) bool, row r at the top left of the canvas
    with its own size hw[r] (M, 2) (default: the whole canvas), as pad_masks gives; or a list of
    per-image (N_i, H_i, W_i) bool masks in row order (padded here). Returns points (M, 2)
    float (x, y) pixels and labels (M,) int: drawn uniformly from missed object (label 1) +
    taken background (label 0); with probability `gt_prob` from the mask itself (label 1). A
    perfect prediction gets a negative click on the background, as in Meta's sampler (a mask
    filling its whole image gets a positive one).
    """
    if isinstance(gts, list):
        gts, hw = pad_masks(gts)
    m, h, w = gts.shape
    if hw is None:
        hw = _to([h, w], gts.device).expand(m, 2)
    from_gt = _rand(m, gen, low_res.device) < gt_prob
    gt = gts.bool()
    region = (upscale_rows(low_res, hw, (h, w)) > 0) ^ gt
    ys, xs = torch.arange(h, device=gts.device), torch.arange(w, device=gts.device)
    inside = (ys[:, None] < hw[:, 0, None, None]) & (xs < hw[:, 1, None, None])  # (M, H, W)
    perfect = ~region.flatten(1).any(1)
    region = torch.where(perfect[:, None, None], ~gt & inside, region)
    use_gt = from_gt | ~region.flatten(1).any(1)
    region = torch.where(use_gt[:, None, None], gt, region)
    xy = uniform_points(region, gen)
    x, y = xy.long().unbind(1)
    return xy, gt[torch.arange(m, device=gt.device), y, x].int()


# ----------------------------------------------------------------------------- interactive loss


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
    IoU term, |predicted IoU - soft_iou|, is the mean over all C outputs.
    """
    logits = low_res.float()
    t = target[:, None].expand_as(logits)
    mask = weights[0] * focal_loss(logits, t) + weights[1] * dice_loss(logits, t)  # (M, C)
    best = mask.detach().argmin(1, keepdim=True)
    iou = soft_iou(logits, t)
    score = (scores.float() - iou).abs().mean(1)
    return mask.gather(1, best)[:, 0] + weights[2] * score, iou


# ----------------------------------------------------------------------------- interactive


def _decode_and_score(decode_fn, target, weights, img_idx, points, labels, boxes, mask_input):
    """One pass: decode, then its loss. Returns (low_res, scores, loss (M,), IoU (M, C))."""
    multimask = boxes is None and points.shape[1] == 1  # SAM 2: one click alone is ambiguous
    low_res, scores = decode_fn(
        img_idx,
        points=points,
        labels=labels,
        boxes=boxes,
        mask_input=mask_input,
        multimask=multimask,
    )
    return low_res, scores, *pass_loss(low_res, scores, target, weights)


def _rollout(
    decode_fn: DecodeFn,
    img_idx: torch.Tensor,
    gts: torch.Tensor,
    hw: torch.Tensor,
    targets: torch.Tensor,
    points: torch.Tensor | None,
    boxes: torch.Tensor | None,
    gen: torch.Generator,
    clicks: int,
    gt_prob: float,
    weights: tuple[float, float, float],
    act_ckpt: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1 + clicks passes for rows (gts (R, H, W) padded, hw (R, 2)) that all start with a box or
    all with one click. Returns the loss summed over passes and rows, and the first pass's IoU
    (R,) of the output with the highest predicted IoU (the one SAM 2 shows)."""
    dev = targets.device
    labels = None if points is None else torch.ones(points.shape[:2], dtype=torch.int, device=dev)
    rows = torch.arange(len(img_idx), device=dev)

    def one_pass(*prompts):  # points, labels, boxes, mask_input
        if not (act_ckpt and torch.is_grad_enabled()):
            return _decode_and_score(decode_fn, targets, weights, img_idx, *prompts)
        parts = []
        for c in range(0, len(rows), chunk):  # backward recomputes one chunk at a time
            cut = slice(c, c + chunk)
            args = (
                targets[cut],
                weights,
                img_idx[cut],
                *(p if p is None else p[cut] for p in prompts),
            )
            parts.append(checkpoint(_decode_and_score, decode_fn, *args, use_reentrant=False))
        return [torch.cat(outputs) for outputs in zip(*parts)]

    mask_input, total, first_iou = None, 0.0, None
    for p in range(clicks + 1):
        low_res, scores, loss, iou = one_pass(points, labels, boxes, mask_input)
        total = total + loss.sum()
        shown = scores.detach().argmax(1)  # the output a user would see, as SAM2Base picks
        if p == 0:
            first_iou = iou[rows, shown]
        if p == clicks:
            break
        mask_input = low_res[rows, shown][:, None]
        pt, lab = correction_clicks(mask_input.detach(), gts, gen, gt_prob, hw)
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
    act_ckpt: bool = True,
    chunk: int = 32,
    frame: int = FRAME,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The interactive recipe's loss for one batch.

    decode_fn(img_idx, points=, labels=, boxes=, mask_input=, multimask=) -> (low_res, scores):
    `decode` with the batch's features and sizes bound (see the module docstring), shapes as
    in `decode`. gts: per image i of the batch, its (N_i, H_i, W_i) bool masks (non-empty),
    on the training device; rows are these masks in order (row r belongs to image i when it is
    among image i's N_i). gen: all randomness (boxes vs clicks, jitter, clicks) comes from it.
    act_ckpt: recompute each pass in backward instead of keeping its activations (same loss
    and gradients), `chunk` rows per checkpointed decoder call, so the step's memory is that of
    one pass of `chunk` masks plus ~1 MiB per mask per pass kept (module docstring).
    frame: the encoder's input side (sam.image_size), where boxes are jittered.
    Returns the loss (summed over the 1 + clicks passes, averaged over the M = sum N_i masks)
    and the first pass's IoU per mask (M,), of the output with the highest predicted IoU.

    Rows starting with a box and rows starting with a click are decoded as two groups (two
    decoder calls per pass), so every row has exactly the prompts SAM 2 saw in training and no
    padding tokens.

    Host syncs in a training step with this recipe (CUDA): 1 here, use_box.tolist() below (the
    two groups' sizes set the decoder calls' shapes); then train.train_step's finiteness check
    (1; the GradScaler's inf check adds 1 under fp16) and train.fit's two .item() reads for the
    running log means. Everything else (boxes, every click, targets, the loss) stays on the
    device; small host lists are copied with non_blocking=True.
    """
    gts = [g for g in gts if len(g)]
    if not gts:
        raise ValueError("interactive_loss: the batch has no masks")
    dev = gts[0].device
    img_idx = torch.cat(
        [torch.full((len(g),), i, dtype=torch.long, device=dev) for i, g in enumerate(gts)]
    )
    m = len(img_idx)
    canvas, hw = pad_masks(gts)
    use_box = _rand(m, gen, dev) < box_prob
    boxes = jittered_boxes(canvas, gen, hw=hw, frame=frame)
    clicks0 = uniform_points(canvas, gen)
    targets = low_res_targets(gts)
    total, first_iou = 0.0, torch.zeros(m, device=dev)
    box_rows = use_box.tolist()  # the step's one sync in this recipe (see the docstring)
    for box_group in (True, False):
        sel = [r for r in range(m) if box_rows[r] == box_group]
        if not sel:
            continue
        sel = _to(sel, dev)
        loss, iou = _rollout(
            decode_fn,
            img_idx[sel],
            canvas[sel],
            hw[sel],
            targets[sel],
            None if box_group else clicks0[sel, None],
            boxes[sel] if box_group else None,
            gen,
            clicks,
            gt_prob,
            weights,
            act_ckpt,
            chunk,
        )
        total = total + loss
        first_iou.index_copy_(0, sel, iou)
    return total / m, first_iou


def interactive_recipe(sam, batch: Batch, opts, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's trainer: a box or a click, then opts.clicks correction clicks (interactive_loss)."""
    decode_fn = functools.partial(decode, sam, finish(sam, batch.feats), sizes=batch.sizes)
    return interactive_loss(decode_fn, batch.masks, gen, clicks=opts.clicks, frame=sam.image_size)


# ----------------------------------------------------------------------------- the video recipe
#
# --recipe video: Meta's MOSE fine-tune (sam2.1_hiera_b+_MOSE_finetune.yaml, training/model/
# sam2.py) on cached features of the frozen encoder: clips tracked by model.track_clip, prompted
# as video_prompts says, scored by Meta's loss (video_loss) on the decoder's low-res grid against
# area-downscaled masks, as the interactive recipe. Void pixels (label 255) count neither way.


def video_prompts(sam, clip: Clip, gen: torch.Generator, p: float = 0.5) -> tuple[dict, list]:
    """Meta's MOSE fine-tune prompts for `clip` (SAM2Train.prepare_prompt_inputs), every
    probability `p`: frame 0, and maybe one more frame drawn uniformly among the later frames
    with ground truth, get each object's mask, else (per frame) its jittered box or one click
    inside it (an object absent there: the inverted box of an empty mask, and a negative click
    uniform on the background, as Meta's samplers give); with boxes and clicks those frames, and
    maybe one more drawn uniformly among the other frames with ground truth, get correction
    clicks. Returns ({frame: model.frame_prompt(...)}, the frames that get correction clicks)."""
    gts, dev = clip.gts, clip.gts[0].device
    u = _rand(5, gen, dev).tolist()
    later = [t for t in range(1, len(gts)) if gts[t] is not None]
    cond = [0] + ([later[int(u[0] * len(later))]] if len(later) > 1 and u[1] < p else [])
    # masks only when a frame with ground truth is left to track (else nothing would learn)
    prompts, use_mask = {}, u[2] < p and len(later) >= len(cond)
    for t in cond:
        g = gts[t]
        if use_mask:
            prompts[t] = frame_prompt(sam, g.shape[-2:], masks=g)
        elif _rand(1, gen, dev).item() < p:
            prompts[t] = frame_prompt(sam, g.shape[-2:], boxes=jittered_boxes(g, gen))
        else:
            there = g.flatten(1).any(1)
            xy = uniform_points(torch.where(there[:, None, None], g, ~g), gen)
            prompts[t] = frame_prompt(sam, g.shape[-2:], xy[:, None], there[:, None].int())
    rest = [t for t in later if t not in cond]
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


def video_recipe(sam, clips: list[Clip], opts, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The video recipe's loss for a batch of clips (averaged over all their objects) and the IoU
    per object (sum B,). opts.clicks correction clicks per corrected frame."""
    dev = clips[0].feats.image_embed.device
    seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
    total, ious = 0.0, []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # memory attention's dropout, repeated by a resumed run
        for clip in clips:
            prompts, correct = video_prompts(sam, clip, gen)
            fix = {t: _video_clicks(sam, clip.gts[t], gen) for t in correct}
            feats = finish(sam, clip.feats, video=True)  # with LoRA: the adapted blocks, once
            n_obj, frame = len(clip.gts[0]), lambda t, f=feats: f.index([t])
            out = track_clip(sam, frame, len(clip.gts), n_obj, prompts, fix, opts.clicks)
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


# ----------------------------------------------------------------------------- what each trains


def image_params(sam, weight_decay: float, train_encoder: bool) -> tuple[list, list[float]]:
    """The image recipes' trained parameters (model.freeze_for_finetune freezes the rest), in
    one weight-decay group. Returns (the optimizer's params, each group's weight decay)."""
    return freeze_for_finetune(sam, train_encoder), [weight_decay]


def video_param_groups(sam, weight_decay: float) -> list[dict]:
    """The trained parameters in Meta's two weight-decay groups (MOSE fine-tune): none on
    biases (every name containing 'bias') and on torch.nn.LayerNorm's own parameters (that
    exact class: SAM 2's LayerNorm2d keeps its weight decay there too), `weight_decay` on the
    rest. Frozen parameters are left out."""
    norms = {
        f"{m}.{n}" if m else n
        for m, mod in sam.named_modules()
        if type(mod) is torch.nn.LayerNorm
        for n, _ in mod.named_parameters(recurse=False)
    }
    decay, plain = [], []
    for name, p in sam.named_parameters():
        if p.requires_grad:
            (plain if "bias" in name or name in norms else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0)]


def video_params(sam, weight_decay: float, train_encoder: bool) -> tuple[list, list[float]]:
    """The video recipe's: all but the image encoder (model.freeze_for_video), in
    video_param_groups. Returns (param groups, each group's weight decay)."""
    freeze_for_video(sam)
    groups = video_param_groups(sam, weight_decay)
    return groups, [g["weight_decay"] for g in groups]


def frozen_params(sam, weight_decay: float, train_encoder: bool) -> tuple[list, list[float]]:
    """--recipe auto: all of SAM 2 frozen; train.py adds the instance head's own group."""
    sam.requires_grad_(False)
    return [], []


def auto_recipe(sam, batch: Batch, opts, gen) -> tuple[None, None]:
    """--recipe auto: no loss of SAM 2's; the instance head's (autoseg.batch_loss, which
    train.Trainable adds to every step of a run with --auto-decoder) is the whole step."""
    return None, None


# --recipe video: Meta's sam2.1_hiera_b+_MOSE_finetune.yaml (AdamW lr 5e-6, cosine to 5e-7,
# weight decay 0.1 but none on biases and LayerNorms, gradient norm clipped at 0.1, 8 clips a
# step: 1 per GPU on 8 GPUs, here 1 clip x 8 accumulated). Image recipes keep the article's.
VIDEO = dict(batch_size=1, lr=5e-6, weight_decay=0.1, lr_schedule="cosine", clip_grad=0.1)
VIDEO |= dict(accumulate=8)
VIDEO_DEMO = dict(data="demo_videos", out="runs/demo_video", batch_size=1, frames=2, objects=2)
VIDEO_DEMO |= dict(clicks=1, steps=6, eval_every=0, save_every=3, log_every=1, eval_clicks=1)
VIDEO_DEMO |= dict(accumulate=1)


@dataclass(frozen=True)
class Recipe:
    """One recipe's rules: all that train.py and bench.py read of it.

    run: its step, (sam, batch, opts, gen) -> (loss, IoU per mask; video: per object).
    data: what a step takes: "images" (a Batch of cached images) or "clips" (a list of Clip).
    scores: which decoder output validation scores: "first" (as the article trains and infers),
      "best" (the highest predicted IoU, as SAM 2 shows one) or "tracked" (J&F of the video).
    options: the Config fields `run` reads, handed over by name (take()).
    passes: decoder passes a mask costs in a step, from opts (bench.py's memory per pass).
    params: (sam, weight_decay, train_encoder) -> (what the optimizer trains, each group's
      weight decay); the rest is frozen.
    defaults, demo: flag defaults with --recipe NAME, and with --demo besides.
    metric: the validation score's name; no_score: why there is none ({n}: validation items).
    lean_cpu_heap: on the CPU, tune glibc's heap (train.lean_cpu_heap) for its many passes.
    train_encoder, accumulate: whether --train-encoder and --accumulate N > 1 are allowed.
    head: it trains autoseg's instance head alone (--auto-decoder implied; run gives no loss)."""

    run: Callable
    data: str
    scores: str
    options: tuple[str, ...]
    passes: Callable[[SimpleNamespace], int]
    params: Callable[..., tuple[list, list[float]]] = image_params
    defaults: dict = field(default_factory=dict)
    demo: dict = field(default_factory=dict)
    metric: str = "IoU"
    no_score: str = "none of the {n} validation images has a usable instance"
    lean_cpu_heap: bool = False
    train_encoder: bool = True
    accumulate: bool = False
    head: bool = False

    def take(self, values) -> SimpleNamespace:
        """The options this recipe reads, from `values` (train.Config, or anything with them)."""
        return SimpleNamespace(**{k: getattr(values, k) for k in self.options})


RECIPES = {
    "article": Recipe(article_recipe, "images", "first", ("score_weight",), lambda o: 1),
    "interactive": Recipe(
        interactive_recipe,
        "images",
        "best",
        ("clicks",),
        lambda o: 1 + o.clicks,
        lean_cpu_heap=True,
    ),
    "video": Recipe(
        video_recipe,
        "clips",
        "tracked",
        ("clicks",),
        lambda o: 1 + o.clicks,  # on a frame that gets correction clicks
        video_params,
        defaults=VIDEO,
        demo=VIDEO_DEMO,
        metric="J&F",
        no_score="no object of the {n} validation videos could be scored (J&F scores an object "
        "on the annotated frames after the one it is prompted on, except the last; skipped "
        "videos are named in the warnings above)",
        train_encoder=False,
        accumulate=True,
    ),
    "auto": Recipe(
        auto_recipe,
        "images",
        "head",  # validation: the head's mSA (train.head_score)
        (),
        lambda o: 0,
        frozen_params,
        metric="mSA",
        train_encoder=False,
        head=True,
    ),
}
