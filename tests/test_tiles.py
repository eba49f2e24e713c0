"""Tiles for big images (plumbing.tiles): a grid covering every pixel, training tiles that
keep small instances (cut ones keeping their visible part), and stitching per-tile label maps
so an object crossing a tile edge is one label."""

import cv2
import numpy as np
import pytest

from plumbing.tiles import (
    check_tile,
    cut_tiles,
    kept_after_resize,
    stitch_tiles,
    tile_grid,
    to_tile,
)

SIZE, TILE, OVERLAP = 4096, 1024, 128


def disks(n_side=20, size=SIZE, d=12, seed=0, edges=()):
    """(size, size) uint16 label map of n_side**2 disks of diameter d drawn with cv2.circle,
    ids 1..N; the first len(edges) disks are centred on the given (x, y) (tile edges)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint16)
    step = size // n_side
    centres = [
        (j * step + step // 2 + int(rng.integers(-40, 40)), i * step + step // 2)
        for i in range(n_side)
        for j in range(n_side)
    ]
    centres[: len(edges)] = edges
    for k, c in enumerate(centres, 1):
        cv2.circle(lab, c, d // 2, k, -1)
    return lab


@pytest.fixture(scope="module")
def big():
    return disks()


def test_grid_covers_every_pixel_inside_the_image():
    for h, w in [(4096, 4096), (3000, 4000), (1024, 1500), (500, 700), (1025, 2049)]:
        grid = tile_grid(h, w, TILE, OVERLAP)
        hits = np.zeros((h, w), np.int32)
        for y0, x0, y1, x1 in grid:
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            assert y1 - y0 <= TILE and x1 - x0 <= TILE
            assert y1 - y0 == min(TILE, h) and x1 - x0 == min(TILE, w)  # edge tiles shifted in
            hits[y0:y1, x0:x1] += 1
        assert hits.min() >= 1, (h, w)
        ys = sorted({b[0] for b in grid})
        assert all(b - a <= TILE - OVERLAP for a, b in zip(ys, ys[1:]))  # neighbours overlap
    assert len(tile_grid(SIZE, SIZE, TILE, OVERLAP)) == 25
    for tile, overlap, msg in [(32, 0, "--tile must be"), (1024, 600, "--tile-overlap")]:
        with pytest.raises(ValueError, match=msg):
            check_tile(tile, overlap)


def test_tiles_keep_small_instances_that_resizing_loses(big):
    n, kept = kept_after_resize(big, big.shape, 1024, 16)
    assert n == 400 and kept < 40  # 12 px disks become 3 px: under min_area 16
    cuts, counts = cut_tiles(big, big.shape, TILE, OVERLAP, 16)
    assert (counts.instances, counts.small, counts.kept) == (400, 0, 400)
    assert all(c.parts for c in cuts)
    ids = {p.index for c in cuts for p in c.parts}
    assert ids == set(range(400))
    y0, x0, y1, x1 = cuts[0].box
    m = cuts[0].masks()
    assert m.shape == (len(cuts[0].parts), y1 - y0, x1 - x0) and m.dtype == bool
    # each tile mask is the instance's pixels in that tile, at full resolution
    for p, mask in zip(cuts[0].parts, m):
        np.testing.assert_array_equal(mask, big[y0:y1, x0:x1] == p.index + 1)


def test_cut_parts_keep_their_visible_part_and_small_ones_are_counted():
    lab = np.zeros((256, 256), np.uint16)
    lab[70:120, 60:68] = 1  # crosses x = 64 (tile edge, no overlap): 50 x 4 px each side
    lab[10:30, 120:136] = 2  # 20 x 8 px each side of x = 128: both parts under 200
    lab[200:202, 200:204] = 3  # 8 px: small even whole
    cuts, counts = cut_tiles(lab, lab.shape, 64, 0, min_area=200)
    assert (counts.instances, counts.small, counts.kept, counts.cut_dropped) == (3, 1, 1, 2)
    parts = [(c.box, p) for c in cuts for p in c.parts]
    assert len(parts) == 2 and {p.index for _, p in parts} == {0}
    assert [int(p.crop.sum()) for _, p in parts] == [200, 200]
    assert [(box, p.y, p.x) for box, p in parts] == [
        ((64, 0, 128, 64), 6, 60),
        ((64, 64, 128, 128), 6, 0),
    ]
    # masks given one at a time (overlapping allowed) are cut the same way
    masks = [lab == k for k in (1, 2, 3)]
    cuts2, counts2 = cut_tiles(iter(masks), lab.shape, 64, 0, min_area=200)
    assert counts2 == counts and [c.box for c in cuts2] == [c.box for c in cuts]
    for a, b in zip(cuts, cuts2):
        np.testing.assert_array_equal(a.masks(), b.masks())
    # untiled at full size both big instances are whole; at half size none is >= 200 px
    assert kept_after_resize(iter(masks), lab.shape, 256, 200) == (3, 2)
    assert kept_after_resize(lab, lab.shape, 256, 200) == (3, 2)
    assert kept_after_resize(lab, lab.shape, 128, 50) == (3, 2)
    assert kept_after_resize(lab, lab.shape, 128, 200) == (3, 0)


def test_stitching_gives_one_label_per_disk_across_tile_edges(big):
    # disks centred on tile edges and in the corners where four tiles meet
    grid = tile_grid(SIZE, SIZE, TILE, OVERLAP)
    starts = sorted({b[1] for b in grid})
    ends = sorted({b[3] for b in grid})[:-1]
    lines = starts[1:] + ends
    edges = [(x, 300 + 150 * i) for i, x in enumerate(lines)]
    edges += [(300 + 150 * i, y) for i, y in enumerate(lines)]
    edges += [(x, y) for x in ends[:2] for y in starts[1:3]]
    lab = disks(edges=edges)
    assert len(np.unique(lab)) == 401
    seen_in = np.zeros(401, int)  # how many tiles see each disk
    for y0, x0, y1, x1 in grid:
        seen_in[np.unique(lab[y0:y1, x0:x1])] += 1
    crossing = int((seen_in[1:] > 1).sum())
    assert crossing >= len(edges)

    rng = np.random.default_rng(1)

    def tile_labels():  # each tile numbers its objects on its own, as a model would
        for y0, x0, y1, x1 in grid:
            t = lab[y0:y1, x0:x1]
            ids = np.unique(t)[1:]
            lut = np.zeros(int(lab.max()) + 1, np.uint16)
            lut[ids] = rng.permutation(len(ids)) + 1
            yield (y0, x0, y1, x1), lut[t]

    out = stitch_tiles(tile_labels(), lab.shape)
    assert out.shape == lab.shape and out.dtype == np.int32
    np.testing.assert_array_equal(out > 0, lab > 0)
    pairs = np.unique(np.stack([lab[lab > 0], out[lab > 0]]), axis=1)
    assert pairs.shape[1] == 400  # each disk one label, each label one disk
    assert set(out[lab > 0].tolist()) == set(range(1, 401))
    # without merging, the disks on tile edges would be split
    split = stitch_tiles(tile_labels(), lab.shape, iou=1.01)
    assert split.max() > 410


def test_points_to_tile():
    inside, xy = to_tile(np.array([[10, 20], [1100, 5], [1023.5, 900]]), (0, 896, 1024, 1920))
    assert inside.tolist() == [False, True, True]
    np.testing.assert_allclose(xy[1], [204, 5])
