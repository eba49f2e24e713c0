"""infer.py --tile: segment a big image tile by tile (any segmenter: points, grid, boxes,
--auto) and stitch the tiles' label maps into one, an object crossing a tile edge one label
(plumbing.tiles.stitch_tiles merges masks that meet in the overlap by IoU). Memory follows the
tile: the model sees one tile at a time; the image-sized arrays are the image, the output label
map and one bool column strip per object for its COCO RLE.

    labels = segment_tiles(run, image, region, boxes, tile=1024, overlap=128, records=[])
    run_tiled = tiled(run, 1024, 128)   # the same, as infer.py's segmenter
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pycocotools import mask as mask_utils

from plumbing.labelmaps import MAX_ID
from plumbing.tiles import _boxes, stitch_tiles, tile_grid

# run(tile image (h, w, 3), region (h, w) bool | None, boxes (K, 4) xyxy | None, records list)
#   -> (h, w) uint16 labels; records gets {"prompt", "score", "label", ...} per mask
Segmenter = Callable[..., np.ndarray]


def _tile_boxes(xyxy: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) boxes in image pixels -> (their indices meeting the tile, those boxes clipped to
    the tile in its pixels)."""
    y0, x0, y1, x1 = box
    c = np.clip(xyxy - [x0, y0, x0, y0], 0, [x1 - x0, y1 - y0] * 2)
    keep = np.flatnonzero((c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1]))
    return keep, c[keep]


def label_rle(labels: np.ndarray, label: int, x0: int, x1: int) -> dict:
    """COCO RLE of `labels == label` (H, W) whose pixels lie in columns x0 to x1, built from
    that column strip only (no full-size mask)."""
    h, w = labels.shape
    strip = (labels[:, x0:x1] == label).T.ravel()  # column-major, as COCO RLE
    change = np.flatnonzero(strip[1:] != strip[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [strip.size]])).tolist()
    if strip[0]:
        runs = [0] + runs
    runs[0] += x0 * h  # the columns left of the strip: background
    if len(runs) % 2:  # ends on background
        runs[-1] += (w - x1) * h
    else:
        runs.append((w - x1) * h)
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def segment_tiles(
    run: Segmenter,
    image: np.ndarray,
    region: np.ndarray | None,
    boxes: np.ndarray | None,
    tile: int,
    overlap: int,
    records: list | None = None,
    iou: float = 0.5,
) -> np.ndarray:
    """Segment (H, W, 3) `image` tile by tile (tile_grid: tile x tile, neighbours sharing
    `overlap` px) with `run`, stitched into one (H, W) uint16 label map (ids 1..M).

    region (H, W) bool or None: tiles without a pixel of it are skipped. boxes (K, 4) xyxy in
    image pixels or None: each tile gets the boxes meeting it, clipped to it. `records`, a list,
    gets one dict per output label: "label", "score" (the best of its tiles' masks), "prompt"
    (with boxes: the box's index; else its tile's prompt number), "segmentation" (COCO RLE).
    More than MAX_ID objects: ValueError (a uint16 label map holds no more)."""
    hw = image.shape[:2]
    found: list[tuple[int, int, np.ndarray, float, int]] = []  # y, x, crop, score, prompt

    def tiles():
        for box in tile_grid(*hw, tile, overlap):
            y0, x0, y1, x1 = box
            empty = np.zeros((y1 - y0, x1 - x0), np.int32)
            part = None if region is None else region[y0:y1, x0:x1]
            tb, keep = None, None
            if boxes is not None:
                keep, tb = _tile_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), box)
            if (part is not None and not part.any()) or (tb is not None and not len(tb)):
                yield box, empty
                continue
            recs: list[dict] = []
            lab = run(np.ascontiguousarray(image[y0:y1, x0:x1]), part, tb, recs)
            if records is not None and recs:
                ids = np.asarray(lab, np.int64)
                bb = _boxes(ids, int(ids.max()))
                for r in recs:
                    if r["label"]:
                        a, b, c, d = bb[r["label"]].tolist()
                        prompt = int(keep[r["prompt"]]) if keep is not None else r["prompt"]
                        crop = ids[a:c, b:d] == r["label"]
                        found.append((y0 + a, x0 + b, crop, r["score"], prompt))
            yield box, np.asarray(lab, np.int32)

    labels = stitch_tiles(tiles(), hw, iou)
    n = int(labels.max()) if labels.size else 0
    if n > MAX_ID:
        raise ValueError(f"more than {MAX_ID} segments do not fit a uint16 label map")
    if records is not None and n:
        best: dict[int, tuple[float, int]] = {}
        for y, x, crop, score, prompt in found:  # the output label each tile mask became
            under = labels[y : y + crop.shape[0], x : x + crop.shape[1]][crop]
            hits = np.bincount(under, minlength=n + 1)
            hits[0] = 0
            if hits.any() and score > best.get(k := int(hits.argmax()), (-np.inf, 0))[0]:
                best[k] = (float(score), prompt)
        spans = _boxes(labels, n)
        for k in range(1, n + 1):
            score, prompt = best.get(k, (0.0, -1))
            x0, x1 = int(spans[k, 1]), int(spans[k, 3])
            seg = label_rle(labels, k, x0, x1)
            records.append({"prompt": prompt, "score": score, "label": k, "segmentation": seg})
    return labels.astype(np.uint16)


class TileBoxes:
    """A tile's boxes, as a segmenter reads a job's (their xyxy, (K, 4))."""

    def __init__(self, xyxy: np.ndarray):
        self.xyxy = xyxy


def tiled(run: Segmenter, tile: int, overlap: int) -> Segmenter:
    """A segmenter (image, region, boxes with .xyxy | None, records) -> labels that runs `run`
    per tile (segment_tiles)."""

    def per_tile(image, region, boxes, records):
        return segment_tiles(
            lambda im, reg, xyxy, recs: run(
                im, reg, None if xyxy is None else TileBoxes(xyxy), recs
            ),
            image,
            region,
            None if boxes is None else boxes.xyxy,
            tile,
            overlap,
            records,
        )

    return per_tile
