"""autoseg.py: the prompt-free instance head, its targets, watershed and mSA."""

import numpy as np
import pytest
import torch

import autoseg
from model import Features


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_targets_on_a_disk_and_a_square():
    square = np.zeros((41, 41), bool)
    square[10:31, 10:31] = True  # 21 x 21, centre (20, 20)
    masks = np.stack([disk(41, 41, 20, 20, 8), square])
    for mask in masks:
        fg, centre, boundary = autoseg.make_targets(mask[None], (41, 41))
        assert (fg == mask).all()
        assert centre[20, 20] == 0 and boundary[20, 20] == 0  # the centre is the deepest point
        edge = mask & ~np.pad(mask, 1)[:-2, 1:-1] | mask & ~np.pad(mask, 1)[2:, 1:-1]
        edge |= mask & ~np.pad(mask, 1)[1:-1, :-2] | mask & ~np.pad(mask, 1)[1:-1, 2:]
        # boundary channel = 1 - normalised distance to the edge: the distance is 0 on the edge
        assert np.allclose(boundary[edge], 1) and (boundary[mask & ~edge] < 1).all()
        assert centre[mask].max() == pytest.approx(1) and (centre[mask] >= 0).all()
        assert (centre[~mask] == 1).all() and (boundary[~mask] == 1).all()
    # the square's corners are the farthest from its centre; the same square as a label map
    _, centre, _ = autoseg.make_targets(square.astype(np.uint8) * 7, (41, 41))
    assert centre[10, 10] == centre[30, 30] == pytest.approx(1)


def test_targets_are_resized_to_the_head_grid():
    big = np.stack([disk(512, 384, 200, 100, 60), disk(512, 384, 400, 300, 50)])
    t = autoseg.make_targets(big, (128, 128))
    assert t.shape == (3, 128, 128) and t.dtype == np.float32
    assert t[0].sum() == pytest.approx(big.sum() * 128 * 128 / (512 * 384), rel=0.05)
    assert t[1, 50, 33] < 0.1  # disk 1's centre (200/4, 100/3) on the squashed grid
    with pytest.raises(ValueError, match="label map"):
        autoseg.make_targets(np.zeros((8, 8), np.float32))


def one_label_per_object(gt, labels):
    """Every object got exactly one label covering it almost whole."""
    assert labels.max() == gt.max()
    for k in range(1, gt.max() + 1):
        found, counts = np.unique(labels[gt == k], return_counts=True)
        assert found[np.argmax(counts)] != 0 and counts.max() > 0.9 * (gt == k).sum()
    assert autoseg.msa(labels, gt) > 0.8


def test_watershed_parts_touching_objects():
    a, b = disk(64, 64, 32, 20, 12), disk(64, 64, 32, 44, 12)
    discs = np.zeros((64, 64), np.int32)
    discs[a], discs[b & ~a] = 1, 2
    squares = np.zeros((40, 200), np.int32)
    for i in range(8):
        squares[8:32, 4 + i * 24 : 4 + (i + 1) * 24] = i + 1  # eight squares in a touching row
    for gt in (discs, squares):
        labels, scores = autoseg.watershed(autoseg.make_targets(gt, gt.shape))
        assert labels.dtype == np.uint16 and labels.shape == gt.shape
        one_label_per_object(gt, labels)
        assert len(scores) == gt.max() and ((scores > 0.5) & (scores <= 1)).all()
    # maps on the head's grid -> labels at the image's own, larger size
    maps = autoseg.make_targets(squares, (40, 200))
    labels, _ = autoseg.watershed(maps, (80, 400))
    one_label_per_object(np.kron(squares, np.ones((2, 2), np.int32)), labels)
    # min_size (output pixels) drops objects, labels stay 1..K
    labels, scores = autoseg.watershed(autoseg.make_targets(discs, (64, 64)), min_size=500)
    assert labels.max() == len(scores) == 0
    with pytest.raises(ValueError, match="output size"):
        autoseg.watershed(maps, (10**5, 10**5))


def test_msa_hand_computed():
    gt = np.zeros((10, 10), np.int32)
    gt[0:5, 0:5] = 1
    gt[6:9, 6:9] = 2
    pred = np.zeros_like(gt)
    pred[0:3, 0:5] = 4  # 15 px + 3 px of row 3: IoU 18/25 = 0.72 with object 1
    pred[3, 0:3] = 4
    pred[0:2, 7:10] = 9  # a false positive; object 2 is missed
    # IoU 0.72 matches at 0.50..0.70 (5 thresholds): TP 1, FP 1, FN 1 -> 1/3; above: 0/4
    acc = autoseg.segmentation_accuracy(pred, gt)
    assert np.allclose(acc, [1 / 3] * 5 + [0] * 5)
    assert autoseg.msa(pred, gt) == pytest.approx(1 / 6)
    assert autoseg.msa(gt * 3, gt) == 1  # ids need not agree
    assert autoseg.msa(np.zeros_like(gt), gt) == 0
    assert autoseg.msa(np.zeros_like(gt), np.zeros_like(gt)) == 1
    # ignored pixels count for neither side: the false positive vanishes -> 1/2 at 0.50..0.70
    ignore = np.zeros_like(gt, bool)
    ignore[0:2, 7:10] = True
    assert autoseg.msa(pred, gt, ignore=ignore) == pytest.approx(0.25)


def features(b, side, gen):
    r = lambda c, s: torch.randn(b, c, s, s, generator=gen)  # noqa: E731
    return Features(r(256, side // 16), [r(32, side // 4), r(64, side // 8)])


def test_head_shapes_loss_and_state():
    gen = torch.Generator().manual_seed(0)
    head = autoseg.InstanceHead()
    assert sum(p.numel() for p in head.parameters()) < 500_000  # SAM 2's decoder: 4.2 M
    assert head(features(2, 128, gen)).shape == (2, 3, 32, 32)
    assert head(features(1, 1024, gen)).shape == (1, 3, 256, 256)
    # the loss is ~0 on the targets themselves and far from it on a random head
    gt = np.zeros((32, 32), np.int32)
    gt[4:14, 4:20], gt[16:30, 10:26] = 1, 2
    t = torch.from_numpy(autoseg.make_targets(gt, (32, 32)))[None]
    assert autoseg.head_loss(torch.logit(t.clamp(1e-4, 1 - 1e-4)), t) < 0.01
    feats = features(1, 128, gen)
    first = autoseg.head_loss(head(feats), t).item()
    assert first > 0.3
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        autoseg.head_loss(head(feats), t).backward()
        opt.step()
    assert autoseg.head_loss(head(feats), t).item() < first / 2
    # what model.pt holds gives back the same head
    again = autoseg.load_head(autoseg.head_state(head))
    head.eval()
    assert torch.equal(again(feats), head(feats))
    with pytest.raises(ValueError, match="config"):
        autoseg.load_head({"weights": {}})


def test_segment_image(tiny_model):
    head = autoseg.InstanceHead()
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)
    labels, scores = autoseg.segment_image(tiny_model, head, image)
    assert labels.shape == (60, 90) and labels.dtype == np.uint16
    assert len(scores) == labels.max() and head.training  # its mode is left as it was
