"""Tiles for images too big for one 1024-px view: small objects keep their pixels instead of
being resized away. Pure numpy, no model.

    grid = tile_grid(h, w, tile=1024, overlap=128)           # boxes covering every pixel
    cuts, counts = cut_tiles(label_map, (h, w), 1024, 128, min_area=16)   # training
    image[y0:y1, x0:x1], cuts[i].masks()                     # one tile's sample
    labels = stitch_tiles((box, segment(tile_of(image, box))) for box in grid, (h, w))  # infer

A box is (y0, x0, y1, x1): the pixels y0 <= y < y1, x0 <= x < x1 of the full image.
Instances are given as an (H, W) integer label map (0 = none; each other value one instance)
or as an iterable of (H, W) bool masks, one at a time (masks may overlap). Memory follows the
instances' bounding boxes and the tile, never H x W x instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from plumbing.images import new_size, resize_nearest

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)
MIN_TILE, MAX_TILE = 64, 8192  # a tile is one model input: below 64 px nothing is seen whole
LUT_IDS = 1 << 24  # label maps with ids below this are compacted by a lookup table


def check_tile(tile: int, overlap: int) -> None:
    """ValueError naming the flag when --tile / --tile-overlap are out of bounds."""
    if not MIN_TILE <= tile <= MAX_TILE:
        raise ValueError(f"--tile must be {MIN_TILE} to {MAX_TILE} pixels, got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"--tile-overlap must be 0 to {tile // 2} (half of --tile), got {overlap}")


def default_overlap(tile: int) -> int:
    """The overlap used when none is given: an eighth of the tile (128 px at 1024)."""
    return tile // 8


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along one side of `length` px: steps of tile - overlap, the last
    tile shifted back inside the image; one start (0) when the side fits one tile."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # ceil: enough tiles to reach the end
    return sorted({min(i * step, length - tile) for i in range(n)})


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[Box]:
    """Boxes of at most tile x tile covering every pixel of an (h, w) image, neighbours sharing
    at least `overlap` px, row by row. check_tile bounds tile and overlap."""
    check_tile(tile, overlap)
    return [
        (y, x, min(y + tile, h), min(x + tile, w))
        for y in tile_starts(h, tile, overlap)
        for x in tile_starts(w, tile, overlap)
    ]


def _meets(a: Box, b: Box) -> Box | None:
    """The intersection of two boxes, None if empty."""
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def compact(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) non-negative ids -> ((H, W) int 0..K, (K + 1,) the ids, ids[0] == 0): the same
    map with ids renumbered in order, 0 kept 0. By a lookup table when ids are small."""
    if lab.size and lab.min() < 0:
        raise ValueError(f"label map has negative ids ({lab.min()})")
    if lab.size == 0 or int(lab.max()) < LUT_IDS:
        present = np.bincount(lab.ravel(), minlength=1) > 0
        present[0] = True
        lut = (np.cumsum(present) - 1).astype(np.int32)  # ids < LUT_IDS fit
        return lut[lab], np.flatnonzero(present)
    ids, inv = np.unique(lab, return_inverse=True)
    if ids[0] != 0:
        ids, inv = np.concatenate([[0], ids]), inv + 1
    return inv.reshape(lab.shape), ids


def _boxes(comp: np.ndarray, k: int) -> np.ndarray:
    """(K + 1, 4) bounding boxes (y0, x0, y1, x1) of ids 1..K of a compacted map (row 0 unused)."""
    ys, xs = np.nonzero(comp)
    ids = comp[ys, xs]
    b = np.zeros((k + 1, 4), np.int64)
    b[:, :2] = np.iinfo(np.int64).max
    np.minimum.at(b[:, 0], ids, ys)
    np.minimum.at(b[:, 1], ids, xs)
    np.maximum.at(b[:, 2], ids, ys + 1)
    np.maximum.at(b[:, 3], ids, xs + 1)
    return b


def instance_crops(instances, hw: tuple[int, int]) -> Iterator[tuple[int, Box, np.ndarray]]:
    """(index, bounding box, (y1 - y0, x1 - x0) bool crop) of each non-empty instance, in order:
    label-map ids in increasing order, or masks in the order given."""
    if isinstance(instances, np.ndarray) and instances.ndim == 2 and instances.dtype != bool:
        if instances.shape != tuple(hw):
            raise ValueError(f"label map is {instances.shape}, the image {tuple(hw)}")
        comp, ids = compact(instances)
        for k, (y0, x0, y1, x1) in enumerate(_boxes(comp, len(ids) - 1)[1:].tolist(), 1):
            yield k - 1, (y0, x0, y1, x1), comp[y0:y1, x0:x1] == k
        return
    for i, m in enumerate(instances):
        if m.shape != tuple(hw):
            raise ValueError(f"mask {i} is {m.shape}, the image {tuple(hw)}")
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
            yield i, box, m[box[0] : box[2], box[1] : box[3]].astype(bool)


@dataclass
class Part:
    """An instance's visible part in a tile: `crop` (h, w) bool placed at (y, x) in the tile."""

    index: int  # the instance's number in instance_crops order
    y: int
    x: int
    crop: np.ndarray


@dataclass
class TileCut:
    """A tile and the instance parts it holds (each >= min_area px)."""

    box: Box
    parts: list[Part] = field(default_factory=list)

    def masks(self) -> np.ndarray:
        """(N, h, w) bool, one full-tile mask per part, in the order of parts."""
        y0, x0, y1, x1 = self.box
        out = np.zeros((len(self.parts), y1 - y0, x1 - x0), bool)
        for n, p in enumerate(self.parts):
            out[n, p.y : p.y + p.crop.shape[0], p.x : p.x + p.crop.shape[1]] = p.crop
        return out


@dataclass
class TileCounts:
    """What tiling kept of an image's instances.

    instances    non-empty instances in the image
    small        of them, under min_area even whole (dropped, as without tiles)
    kept         of them, with at least one part >= min_area in some tile
    cut_dropped  parts an edge cut to under min_area, dropped (their instance may be kept whole
                 in a neighbouring tile; `instances - small - kept` lost every part)
    """

    instances: int = 0
    small: int = 0
    kept: int = 0
    cut_dropped: int = 0


def cut_tiles(
    instances, hw: tuple[int, int], tile: int, overlap: int, min_area: int
) -> tuple[list[TileCut], TileCounts]:
    """Training tiles of an (H, W) image: the tile_grid tiles holding instance parts.

    instances: (H, W) int label map or iterable of (H, W) bool masks (module doc). Each
    instance is cut to every tile its box meets, keeping its visible part; a part under
    min_area px is dropped and counted. Returns (tiles with >= 1 part, in grid order; counts).
    """
    grid = tile_grid(*hw, tile, overlap)
    cuts = [TileCut(b) for b in grid]
    counts = TileCounts()
    for i, box, crop in instance_crops(instances, hw):
        counts.instances += 1
        if crop.sum() < min_area:
            counts.small += 1
            continue
        kept = False
        for cut in cuts:
            meet = _meets(box, cut.box)
            if meet is None:
                continue
            part = crop[meet[0] - box[0] : meet[2] - box[0], meet[1] - box[1] : meet[3] - box[1]]
            area = int(part.sum())
            if area == 0:  # the box meets the tile, the instance does not
                continue
            if area < min_area:
                counts.cut_dropped += 1
                continue
            kept = True
            cut.parts.append(Part(i, meet[0] - cut.box[0], meet[1] - cut.box[1], part))
        counts.kept += kept
    return [c for c in cuts if c.parts], counts


def kept_after_resize(
    instances, hw: tuple[int, int], max_side: int, min_area: int
) -> tuple[int, int]:
    """(instances, kept) without tiles: each instance resized with the image to longer side
    max_side (nearest, as data.read_sample does), kept when it still has >= min_area px."""
    out = new_size(*hw, max_side)
    if isinstance(instances, np.ndarray) and instances.ndim == 2 and instances.dtype != bool:
        comp, ids = compact(instances)
        n = len(ids) - 1
        areas = np.bincount(resize_nearest(comp, out).ravel(), minlength=n + 1)[1:]
        return n, int((areas >= min_area).sum())
    n = kept = 0
    for m in instances:
        if m.any():
            n += 1
            kept += int(resize_nearest(m, out).sum() >= min_area)
    return n, kept


# ----------------------------------------------------------------------------- inference


def to_tile(xy: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Prompt points (M, 2) (x, y) in image pixels -> ((M,) bool inside the box, (M, 2) the
    points in the tile's pixels)."""
    y0, x0, y1, x1 = box
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    return inside, xy - [x0, y0]


def _root(parent: list[int], a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def stitch_tiles(
    tiles: Iterable[tuple[Box, np.ndarray]], hw: tuple[int, int], iou: float = 0.5
) -> np.ndarray:
    """Per-tile instance label maps -> one (H, W) int32 label map, ids 1..M, 0 = none.

    tiles: (box, (y1 - y0, x1 - x0) int label map of that tile, 0 = none), e.g. over tile_grid.
    Where a tile overlaps tiles already placed, each of its instances is compared with the
    labels there, inside that overlap only (the part both tiles saw): IoU >= `iou` merges them
    (one object crossing a tile edge = one label; several earlier labels it matches become
    one). Otherwise it gets a new label. A pixel keeps the label placed first. Memory: the
    output and one tile's arrays.
    """
    out = np.zeros(hw, np.int32)
    parent = [0]  # union-find over labels; 0 = none
    placed: list[Box] = []
    for box, lab in tiles:
        y0, x0, y1, x1 = box
        if lab.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"tile {box}: label map is {lab.shape}, expected {(y1 - y0, x1 - x0)}")
        comp, ids = compact(lab)
        k = len(ids) - 1
        window = out[y0:y1, x0:x1]
        seen = np.zeros(lab.shape, bool)  # what earlier tiles covered of this one
        for b in placed:
            if m := _meets(box, b):
                seen[m[0] - y0 : m[2] - y0, m[1] - x0 : m[3] - x0] = True
        placed.append(box)
        roots = np.array([_root(parent, a) for a in range(len(parent))], np.int64)
        wcomp, wids = compact(roots[window])
        g = len(wids) - 1
        lut = np.zeros(k + 1, np.int64)
        if k and g:
            a_area = np.bincount(comp[seen], minlength=k + 1)
            b_area = np.bincount(wcomp.ravel(), minlength=g + 1)
            both = seen & (comp > 0) & (wcomp > 0)
            keys, inter = np.unique(comp[both] * (g + 1) + wcomp[both], return_counts=True)
            kk, gg = keys // (g + 1), keys % (g + 1)
            score = inter / (a_area[kk] + b_area[gg] - inter)
            for a, b in zip(kk[score >= iou].tolist(), gg[score >= iou].tolist()):
                old = _root(parent, int(wids[b]))
                if lut[a] == 0:
                    lut[a] = old
                else:  # one object that earlier tiles split: one label from now on
                    parent[old] = _root(parent, int(lut[a]))
        for a in np.flatnonzero(lut[1:] == 0) + 1:
            lut[a] = len(parent)
            parent.append(len(parent))
        new = lut[comp]
        np.copyto(window, new.astype(np.int32), where=(window == 0) & (comp > 0))
    roots = np.array([_root(parent, a) for a in range(len(parent))], np.int64)
    present = np.flatnonzero(np.bincount(out.ravel(), minlength=len(parent)))
    used = np.unique(roots[present])
    final = np.zeros(len(parent), np.int32)
    final[used] = np.arange(len(used), dtype=np.int32) + (used[0] != 0 if used.size else 0)
    final[0] = 0
    return final[roots][out]
