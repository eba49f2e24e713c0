"""Mask helpers shared by training, evaluation and inference: one IoU, one random click, SAM's
next click (at the deepest pixel of the larger error)."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def mask_iou(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray):
    """IoU of (N, H, W) bool masks, row by row -> (N,) (a tensor for tensors, float64 array
    for arrays); an empty union counts 0."""
    numpy = isinstance(pred, np.ndarray)
    pred, gt = (torch.from_numpy(pred), torch.from_numpy(gt)) if numpy else (pred, gt)
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1).clamp(min=1)
    return (inter.double() / union).numpy() if numpy else inter / union


def sample_points(
    masks: torch.Tensor, generator: torch.Generator | None = None, check: bool = True
) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 2) float32 (x, y): one uniformly random pixel in each mask.

    Inverse-CDF over the flattened mask: draw u ~ U[0, 1) per mask, take the k-th set pixel with
    k = floor(u * area). Needs only N random numbers, drawn on the generator's device and moved,
    so a CPU generator gives the same points for CPU and CUDA masks. check=False skips the
    empty-mask check, a host sync (an empty mask then gives (0, 0)).
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float32, device=masks.device)
    w = masks.shape[-1]
    flat = masks.reshape(n, -1).bool()
    csum = flat.cumsum(1, dtype=torch.int32)  # (N, H*W), non-decreasing: searchsorted-able
    area = csum[:, -1]
    if check and bool((area == 0).any()):
        raise ValueError("sample_points: got an empty mask, it has no pixel to click on")
    gen_device = generator.device if generator is not None else masks.device
    u = torch.rand(n, generator=generator, device=gen_device).to(masks.device)
    k = (u * area).long().minimum(area.long() - 1)  # (N,) 0-based rank
    idx = torch.searchsorted(csum, (k + 1).to(torch.int32)[:, None]).squeeze(1)
    return torch.stack([idx % w, idx // w], dim=1).float()


def depth(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of `region` (H, W) bool to its boundary, the image border
    included -> (H, W) float32."""
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
        missed, extra = depth(gts[i] & ~preds[i]), depth(preds[i] & ~gts[i])
        positive = missed.max() > extra.max()
        d = missed if positive else extra
        idx = int(d.argmax())
        points[i], labels[i], has_error[i] = (idx % w, idx // w), positive, d.max() > 0
    return points, labels, has_error
