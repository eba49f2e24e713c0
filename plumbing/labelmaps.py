"""Instance label maps: masks stitched into one, best first; scored against ground truth;
coloured, written and shown. Maps are (H, W) uint16 ids, 0 = background."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

MAX_ID = np.iinfo(np.uint16).max

# ----------------------------------------------------------------------------- stitching


def ranked(scores, min_score: float | None = None) -> np.ndarray:
    """Indices of `scores` best first (ties keep their order), those under min_score left out."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return order if min_score is None else order[scores[order] >= min_score]


def stitch(
    masks: Iterable[np.ndarray | torch.Tensor],
    hw: tuple[int, int],
    region: np.ndarray | None = None,
    overlap: float = 0.15,
    ids: list | None = None,
) -> np.ndarray:
    """Merge masks, given best first, into one instance map.

    masks: (H, W) bool arrays or tensors, hw = (H, W); region (H, W) bool or None (everywhere).
    A mask (clipped to the region) is skipped when empty or when more than `overlap` of it is
    already taken; otherwise its free pixels get the next id. Runs on the masks' device.
    `ids`, a list, gets each mask's id in turn (0: skipped).
    Returns (H, W) uint16, 0 = background, ids 1, 2, 3, ... in the masks' order.
    """
    labels = inside = None
    next_id = 1
    for m in masks:
        m = torch.as_tensor(m, dtype=torch.bool)
        if m.shape != tuple(hw):
            raise ValueError(f"a mask is {tuple(m.shape)}, expected {tuple(hw)}")
        if labels is None:
            labels = torch.zeros(hw, dtype=torch.int32, device=m.device)
            if region is not None:
                inside = torch.as_tensor(region, dtype=torch.bool, device=m.device)
        if inside is not None:
            m = m & inside
        area = int(m.sum())
        free = m & (labels == 0)
        if area == 0 or area - int(free.sum()) > overlap * area:
            if ids is not None:
                ids.append(0)
            continue
        if next_id > MAX_ID:
            raise ValueError(f"more than {MAX_ID} segments do not fit a uint16 label map")
        labels[free] = next_id
        if ids is not None:
            ids.append(next_id)
        next_id += 1
    if labels is None:
        return np.zeros(hw, np.uint16)
    return labels.cpu().numpy().astype(np.uint16)


def checked_region(region: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    """`region` as (H, W) bool, or a ValueError when its size differs or it is empty."""
    if region is None:
        return None
    region = np.asarray(region, dtype=bool)
    if region.shape != tuple(hw):
        raise ValueError(
            f"region is {region.shape[1]}x{region.shape[0]} (WxH) but the image is {hw[1]}x{hw[0]}"
        )
    if not region.any():
        raise ValueError("the region is empty: it marks no pixel to segment")
    return region


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
    """Blend `color` over `image` (both (H, W, 3) uint8) where labels > 0, in uint8: a float
    blend of a 24 MP photo would take 1.7 GB."""
    mix = cv2.addWeighted(image, 1 - alpha, color, alpha, 0)
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
