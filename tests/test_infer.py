"""Tests for infer.py: stitching and scoring on hand-made maps, then the CLI end to end with the
tiny random-weight SAM 2 on the CPU (a handful of images, the model loaded once per session)."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm as infer_tqdm

import infer
from infer import (
    colorize,
    grid_points,
    random_points,
    ranked,
    score_labels,
    segment,
    segment_auto,
    stitch,
)
from model import upscale_logits
from plumbing import labelmaps

ROOT = Path(__file__).resolve().parents[1]


def box(hw, y0, y1, x0, x1):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- stitch


def stitch_scored(masks, scores, region=None, overlap=0.15, min_score=None):
    """stitch() the way segment() calls it: the masks best score first."""
    return stitch((masks[i] for i in ranked(scores, min_score)), masks.shape[1:], region, overlap)


@pytest.mark.parametrize("shared, kept", [(10, True), (20, False)])
def test_stitch_overlap_rule(shared, kept):
    a = box((20, 20), 0, 10, 0, 10)  # 100 px, best score
    b = box((20, 20), 0, 10, 10 - shared // 10, 20 - shared // 10)  # 100 px, `shared` on a
    labels = stitch_scored(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.15)
    assert labels.dtype == np.uint16
    assert (labels[a] == 1).all()  # the winner keeps its pixels
    if kept:
        assert (labels[b & ~a] == 2).all() and labels.max() == 2
    else:
        assert labels.max() == 1 and (labels[b & ~a] == 0).all()


def test_stitch_overlap_flag_is_used():
    a, b = box((20, 20), 0, 10, 0, 10), box((20, 20), 0, 10, 8, 18)  # 20% shared
    assert stitch_scored(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.25).max() == 2
    assert stitch_scored(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.0).max() == 1


def test_stitch_higher_score_wins_contested_pixels():
    low, high = box((20, 20), 0, 10, 0, 10), box((20, 20), 0, 10, 9, 19)  # 10% shared
    labels = stitch_scored(np.stack([low, high]), np.array([0.2, 0.9]))
    assert (labels[high] == 1).all()  # ids follow score, not input order
    assert (labels[low & ~high] == 2).all()


def test_stitch_clips_to_region_and_skips_empty_masks():
    region = box((20, 20), 0, 20, 0, 10)
    half_out = box((20, 20), 0, 5, 5, 15)  # half of it outside the region
    outside = box((20, 20), 10, 20, 12, 20)  # entirely outside: empty after clipping
    empty = np.zeros((20, 20), bool)
    inside = box((20, 20), 10, 15, 0, 5)
    masks = np.stack([empty, outside, half_out, inside])
    labels = stitch_scored(masks, np.array([1.0, 0.9, 0.8, 0.7]), region=region)
    assert (labels[~region] == 0).all()
    assert (labels[half_out & region] == 1).all()  # empty + outside took no id
    assert (labels[inside] == 2).all()
    assert set(np.unique(labels)) == {0, 1, 2}
    # torch masks too, and nothing at all
    assert np.array_equal(stitch(torch.from_numpy(masks[2:]), (20, 20), region), labels)
    assert np.array_equal(stitch([], (3, 4)), np.zeros((3, 4), np.uint16))
    with pytest.raises(ValueError, match="expected"):
        stitch([np.ones((3, 3), bool)], (3, 4))


def test_stitch_more_than_255_ids():
    n, hw = 300, (20, 15)
    masks = np.zeros((n, *hw), bool)
    masks[np.arange(n), np.arange(n) // hw[1], np.arange(n) % hw[1]] = True  # one pixel each
    labels = stitch_scored(masks, np.linspace(1, 0, n))
    assert labels.dtype == np.uint16
    assert sorted(np.unique(labels)) == list(range(1, n + 1))  # all distinct, none wrapped


def test_stitch_min_score_and_id_overflow(monkeypatch):
    masks = np.stack([box((4, 4), i, i + 1, 0, 4) for i in range(4)])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    assert stitch_scored(masks, scores, min_score=0.5).max() == 2
    assert list(ranked([0.5, 0.9, 0.5, 0.1], min_score=0.4)) == [1, 0, 2]  # ties keep order
    monkeypatch.setattr(labelmaps, "MAX_ID", 3)
    with pytest.raises(ValueError, match="uint16"):
        stitch_scored(masks, scores)


# ----------------------------------------------------------------------------- score_labels


def test_score_labels_known_numbers():
    gt = np.zeros((4, 4), int)
    gt[:, :2], gt[:, 2:] = 1, 2  # two instances of 8 px
    pred = np.zeros((4, 4), int)
    pred[:, :2] = 5  # gt 1 exactly: IoU 1
    pred[0, 2:] = 7  # 2 px of gt 2: IoU 2/8
    s = score_labels(pred, gt)
    assert s["n_gt"] == 2
    assert s["mean_best_iou"] == pytest.approx((1 + 0.25) / 2)
    assert s["matched_50"] == pytest.approx(0.5)
    assert score_labels(np.zeros_like(gt), gt)["mean_best_iou"] == 0.0
    # only the region counts: the second column pair is outside it
    region = np.zeros((4, 4), bool)
    region[:, :2] = True
    assert score_labels(pred, gt, region) == {"mean_best_iou": 1.0, "matched_50": 1.0, "n_gt": 1}


def test_score_labels_gt_vs_itself_and_vs_brute_force():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 30, (60, 70))
    assert score_labels(gt, gt) == {"mean_best_iou": 1.0, "matched_50": 1.0, "n_gt": 29}
    pred = rng.integers(0, 12, (60, 70)) * 3  # ids need not be consecutive
    best = [
        max(
            ((gt == g) & (pred == p)).sum() / ((gt == g) | (pred == p)).sum()
            for p in range(3, 36, 3)
        )
        for g in range(1, 30)
    ]
    s = score_labels(pred, gt)
    assert s["mean_best_iou"] == pytest.approx(np.mean(best))
    assert s["matched_50"] == pytest.approx(np.mean(np.array(best) >= 0.5))


def test_score_labels_size_mismatch():
    with pytest.raises(ValueError, match=r"4x3.*5x3"):
        score_labels(np.zeros((3, 5), int), np.zeros((3, 4), int))


# ----------------------------------------------------------------------------- points, colours


def test_points_inside_region_and_seeded():
    region = box((50, 80), 10, 20, 30, 70)
    p = random_points(region, 30, seed=1)
    assert p.shape == (30, 2)
    assert region[p[:, 1].astype(int), p[:, 0].astype(int)].all()
    assert len({tuple(x) for x in p}) == 30  # distinct clicks
    assert np.array_equal(p, random_points(region, 30, seed=1))
    assert not np.array_equal(p, random_points(region, 30, seed=2))
    assert len(random_points(box((50, 80), 0, 2, 0, 3), 30)) == 6  # never more than the area
    g = grid_points(region, 10)  # cells 5 high, 8 wide: centres at y 2,7,.. x 4,12,..
    assert region[g[:, 1].astype(int), g[:, 0].astype(int)].all()
    assert len(g) == 2 * 5
    with pytest.raises(ValueError, match="empty"):
        random_points(np.zeros((5, 5), bool), 3)
    with pytest.raises(ValueError, match="grid"):
        grid_points(box((50, 80), 0, 1, 0, 1), 2)


def test_colorize():
    labels = np.array([[0, 1], [2, 300]], np.uint16)
    c = colorize(labels)
    assert c.dtype == np.uint8 and c.shape == (2, 2, 3)
    assert (c[0, 0] == 0).all() and (c[labels > 0] > 0).all()
    assert np.array_equal(c, colorize(labels))


def test_show_without_display(capsys):
    import matplotlib

    matplotlib.use("Agg")
    assert infer.show(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint16), "x") is False
    assert "no display" in capsys.readouterr().err


def test_prefetch_keeps_order_and_passes_errors():
    def load(i):
        if i == 2:
            raise ValueError("bad 2")
        time.sleep(0.01 * (5 - i))
        return i * 10

    got = []
    for i, fut in infer.prefetch(load, list(range(5))):
        try:
            got.append((i, fut.result()))
        except ValueError as e:
            got.append((i, str(e)))
    assert got == [(0, 0), (1, 10), (2, "bad 2"), (3, 30), (4, 40)]


# ----------------------------------------------------------------------------- segment


def fake_prompts(calls):
    """A stand-in for predict_prompts: low-res logits of a disc (radius 20 of 256) around each
    prompt's first point, smooth so that the edge falls between pixels; first prompt best."""

    def predict(sam, image, coords, labels, batch=64, max_side=1024):
        calls.append((image.shape, coords, labels))
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:256, :256] + 0.5
        cx, cy = coords[:, 0, 0] * 256 / w, coords[:, 0, 1] * 256 / h
        dist = np.hypot(xx - cx[:, None, None], yy - cy[:, None, None])
        scores = np.linspace(1, 0, len(coords), dtype=np.float32)
        return torch.from_numpy((20 - dist).astype(np.float32)), scores

    return predict


def box_prompts(sam, image, coords, labels, batch=64, max_side=1024):
    """A stand-in for predict_prompts whose mask is the prompt's box (logits: the signed
    distance to the box's edge, in low-res cells), scored from 0.9 down."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:256, :256] + 0.5
    c = coords * [256 / w, 256 / h]  # (M, 2, 2): the corners in low-res cells
    x0, y0, x1, y1 = (c[:, i // 2, i % 2, None, None] for i in range(4))
    inside = np.minimum.reduce([xx - x0, x1 - xx, yy - y0, y1 - yy])
    return torch.from_numpy(inside.astype(np.float32)), np.linspace(0.9, 0.5, len(coords))


def test_segment_sizes_region_and_grid(monkeypatch):
    calls = []
    monkeypatch.setattr(infer, "predict_prompts", fake_prompts(calls))
    image = np.zeros((150, 260, 3), np.uint8)
    region = box((150, 260), 20, 130, 10, 150)
    labels = segment(None, image, region, points=12, seed=3)
    assert labels.shape == (150, 260) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all() and labels.max() >= 2
    assert list(np.unique(labels)) == list(range(labels.max() + 1))  # consecutive ids
    ((shape, coords, lab),) = calls
    assert shape == (150, 260, 3) and coords.shape == (12, 1, 2) and (lab == 1).all()
    assert region[coords[:, 0, 1].astype(int), coords[:, 0, 0].astype(int)].all()
    assert np.array_equal(labels, segment(None, image, region, points=12, seed=3))

    calls.clear()
    segment(None, image, region, grid=8)
    ((_, coords, _),) = calls
    assert 0 < len(coords) < 64
    assert region[coords[:, 0, 1].astype(int), coords[:, 0, 0].astype(int)].all()

    # larger than 1024, a speckled region: clicks and labels stay inside it
    big = np.zeros((700, 1300, 3), np.uint8)
    noisy = np.random.default_rng(0).random((700, 1300)) < 0.7
    labels = segment(None, big, noisy, points=5)
    assert labels.shape == (700, 1300) and labels.max() >= 1 and (labels[~noisy] == 0).all()

    with pytest.raises(ValueError, match="260x150"):
        segment(None, image, region[:, :100])
    with pytest.raises(ValueError, match="empty"):
        segment(None, image, np.zeros((150, 260), bool))


def test_segment_full_resolution_edges(monkeypatch):
    """Issue 8 h: a mask is thresholded at the image's own size (bilinear logits, as SAM 2's
    postprocess_masks), not at 1024 and then upsized by nearest neighbour into staircases;
    a big image is upscaled a few masks at a time."""
    calls = []
    monkeypatch.setattr(infer, "predict_prompts", fake_prompts(calls))
    hw = (1500, 2000)
    image = np.zeros((*hw, 3), np.uint8)
    labels = segment(None, image, points=1)
    logits, _ = fake_prompts([])(None, image, *calls[0][1:])
    direct = upscale_logits(logits[:, None], hw)[0, 0].numpy() > 0
    assert np.array_equal(labels > 0, direct)

    chunks = []
    real = infer.upscale_logits
    monkeypatch.setattr(infer, "upscale_logits", lambda x, hw: chunks.append(len(x)) or real(x, hw))
    monkeypatch.setattr(infer, "UPSCALE_PIXELS", 2 * hw[0] * hw[1] + 5)
    several = segment(None, image, points=5)
    assert chunks == [2, 2, 1]
    monkeypatch.setattr(infer, "UPSCALE_PIXELS", 1 << 40)
    assert np.array_equal(several, segment(None, image, points=5))


def test_segment_with_tiny_model(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    region = box((96, 128), 10, 80, 20, 100)
    labels = segment(tiny_model, image, region, points=4, batch_points=3)
    assert labels.shape == (96, 128) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all()
    assert labels.max() >= 1  # random weights still predict some mask


def test_boxes_decode_as_sam2_predictor(tiny_model):
    """Box prompts give SAM2ImagePredictor's single-mask logits and scores (clicks: see
    test_model). An image whose longer side is 1024 reaches the encoder unresized both ways."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = np.random.default_rng(3).integers(0, 256, (256, 1024, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 300, 200], [500, 0, 1000, 250], [0, 0, 1024, 256]], np.float32)
    ours, scores = infer.predict_prompts(
        tiny_model, image, boxes.reshape(-1, 2, 2), np.tile([[2, 3]], (3, 1)), batch=2
    )
    pred = SAM2ImagePredictor(tiny_model)
    with torch.inference_mode():
        pred.set_image(image)
        _, s, low = pred.predict(box=boxes, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(ours.clamp(-32, 32).numpy(), low[:, 0], atol=1e-4)
    np.testing.assert_allclose(scores, s[:, 0], atol=1e-5)


# ----------------------------------------------------------------------------- boxes


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_segment_boxes_one_mask_each(monkeypatch):
    calls = []
    monkeypatch.setattr(infer, "predict_prompts", fake_prompts(calls))
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = [[10, 10, 60, 60], [90, 90, 70, 95], [150, 50, 250, 150], [80, 80, 80, 90]]
    records = []
    with pytest.warns(UserWarning) as rec:
        labels = segment(None, image, boxes=boxes, points=99, grid=None, records=records)
    (warning,) = rec  # one line for all the boxes dropped, each named with its reason
    assert "skipped 2 boxes: 1 inverted (x1 < x0 or y1 < y0): image box 1" in str(warning.message)
    assert "1 with no area inside their image: image box 3" in str(warning.message)
    ((_, coords, lab),) = calls
    assert coords.tolist() == [[[10, 10], [60, 60]], [[150, 50], [200, 100]]]  # clipped
    assert lab.tolist() == [[2, 3], [2, 3]]
    assert labels.max() == 2
    # a record per mask: which box it came from, SAM's score, its id in the label map
    assert [(r["prompt"], r["label"]) for r in records] == [(0, 1), (2, 2)]
    for r in records:
        assert np.array_equal(mask_utils.decode(r["segmentation"]) > 0, labels == r["label"])
    calls.clear()
    assert not segment(None, image, boxes=np.zeros((0, 4))).any() and not calls


def test_segment_many_prompts_in_parts_with_progress(monkeypatch, capsys):
    """Prompts past MAX_PROMPTS are decoded that many at a time (low-res logits held: one
    part's), and a long run shows progress bars."""
    calls = []
    monkeypatch.setattr(infer, "predict_prompts", fake_prompts(calls))
    monkeypatch.setattr(infer, "PROGRESS_MIN", 3)
    image = np.zeros((60, 90, 3), np.uint8)
    boxes = [[x, 5, x + 8, 20] for x in range(0, 80, 16)]  # 5 boxes, apart
    records = []
    whole = segment(None, image, boxes=boxes, records=records)
    assert "stitch" in capsys.readouterr().err
    monkeypatch.setattr(infer, "MAX_PROMPTS", 2)
    parts, calls[:] = [], []
    assert np.array_equal(segment(None, image, boxes=boxes, records=parts), whole)
    assert [len(c) for _, c, _ in calls] == [2, 2, 1]
    prompts = sorted(r["prompt"] for r in parts)
    assert prompts == sorted(r["prompt"] for r in records) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- prompt-free


def test_segment_auto_with_tiny_model(tiny_model, monkeypatch, capsys):
    """SAM 2's generator on the tiny model, its clicks in batches sized to the memory budget
    (here 2 of the 9), with a progress bar and a record per mask."""
    monkeypatch.setattr(infer, "AUTO_BUDGET", 2 * 3 * infer.AUTO_BYTES * 64 * 80)
    monkeypatch.setattr(infer, "PROGRESS_MIN", 9)
    bars = []  # tqdm redraws at most every 0.1 s, so its last count is read from the bar itself
    monkeypatch.setattr(infer, "tqdm", lambda *a, **k: bars.append(infer_tqdm(*a, **k)) or bars[-1])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    region = box((64, 80), 0, 64, 0, 40)
    records = []
    labels = segment_auto(
        tiny_model, image, region, points_per_side=3, min_score=0, stability=0, records=records
    )
    assert labels.shape == (64, 80) and labels.dtype == np.uint16
    assert labels.max() >= 1 and (labels[~region] == 0).all()
    assert list(np.unique(labels)) == list(range(labels.max() + 1))
    assert "0/9" in capsys.readouterr().err  # shown from the start
    assert (bars[-1].n, bars[-1].total) == (9, 9)  # every click counted, 2 at a time
    assert {r["label"] for r in records} >= set(range(1, labels.max() + 1))
    for r in records:
        mask = mask_utils.decode(r["segmentation"]) > 0
        assert not mask[~region].any() and (mask[labels == r["label"]]).all()


def test_auto_batch_fits_big_images():
    assert infer.auto_batch((64, 80), 64) == 64
    assert infer.auto_batch((4000, 6000), 64) == 1  # 3 masks of 24 MP: ~0.8 GB a click
    assert infer.auto_batch((1000, 1500), 64) == 29  # 1.5 GiB / (3 masks x 12 B x 1.5 MP)
    with pytest.raises(ValueError, match=r"20000x10000 image.*up to 100 megapixels"):
        infer.auto_batch((10000, 20000), 64)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def shared_model(monkeypatch, tiny_model):
    """main() gets the session's tiny model instead of building one; counts the loads."""
    loads = []

    def load(name, checkpoint, device):
        loads.append((name, checkpoint, str(device)))
        return tiny_model

    monkeypatch.setattr(infer, "load_model", load)
    return loads


@pytest.fixture
def no_model(monkeypatch):
    """Any model work fails the test: bad input must be caught before it."""

    def load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(infer, "load_model", load)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def run_main(args, capsys):
    try:
        rc = infer.main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_folder_mode_gray_rgba_and_a_corrupt_file(tmp_path, shared_model, monkeypatch, capsys):
    import matplotlib

    monkeypatch.setattr(infer, "predict_prompts", fake_prompts([]))  # the model: tested above

    matplotlib.use("Agg")  # --show must not block, even where a display exists
    rng = np.random.default_rng(0)
    images, masks, gts, out = (tmp_path / d for d in ("images", "masks", "gt", "out"))
    write(images / "gray.png", rng.integers(0, 256, (120, 200), dtype=np.uint8))
    write(images / "rgba.png", rng.integers(0, 256, (90, 70, 4), dtype=np.uint8))
    (images / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (images / "notes.txt").write_text("not an image, not even looked at")
    region = box((120, 200), 30, 100, 40, 160)
    write(masks / "gray.png", region.astype(np.uint8) * 255)
    gt = np.zeros((120, 200), np.uint16)
    gt[30:60, 40:160], gt[60:100, 40:160] = 1, 300
    write(gts / "gray.png", gt)

    rc, stdout, stderr = run_main(
        [images, "--masks", masks, "--gt", gts, "--out", out, "--points", 3, "--show"], capsys
    )
    assert rc == 0
    assert len(shared_model) == 1  # one model for the whole folder
    assert "bad.jpg" in stderr and "warning" in stderr
    assert "no mask for rgba.png" in stderr and "no display" in stderr
    assert "gray.png:" in stdout and "mean over 1 images" in stdout
    assert "mean best IoU" in stdout and "IoU>=0.5" in stdout
    assert not list(out.glob("bad*"))
    for stem, hw in (("gray", (120, 200)), ("rgba", (90, 70))):
        labels = read(out / f"{stem}_labels.png")
        assert labels.dtype == np.uint16 and labels.shape == hw
        assert read(out / f"{stem}_color.png").shape == (*hw, 3)
        assert read(out / f"{stem}_overlay.png").shape == (*hw, 3)
    labels = read(out / "gray_labels.png")
    assert (labels[~region] == 0).all() and labels.max() >= 1
    assert (read(out / "gray_color.png")[labels == 0] == 0).all()  # background black


def test_folder_mode_all_bad_exits_nonzero(tmp_path, shared_model, capsys):
    for name in ("a.png", "b.jpg"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"garbage")
    rc, _, stderr = run_main([tmp_path / "in", "--out", tmp_path / "out"], capsys)
    assert rc == 1
    assert "a.png" in stderr and "b.jpg" in stderr and "no image could be segmented" in stderr


def test_real_cli_single_image_with_gt(tmp_path):
    """The real command line (its own process, its own model), with --gt."""
    rng = np.random.default_rng(1)
    image = write(tmp_path / "photo.jpg", rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    region = box((100, 150), 10, 90, 30, 120)
    mask = write(tmp_path / "region.png", region.astype(np.uint8))
    gt = np.zeros((100, 150, 3), np.uint8)  # LabPics instance PNG: vessel ids in channel 2
    gt[10:90, 30:75, 2], gt[10:90, 75:120, 2] = 1, 2
    gt[40:60, 50:100, 0] = 1  # one material across both vessels: 3 instances, 4 colours
    gt = write(tmp_path / "gt.png", gt)
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "infer.py"),
            str(image),
            str(mask),
            "--gt",
            str(gt),
            "--gt-labpics",
            "--checkpoint",
            "none",
            "--model",
            "tiny",
            "--points",
            "3",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == 0, r.stderr
    assert "mean best IoU" in r.stdout and "matched at IoU>=0.5" in r.stdout
    assert "of 3 GT instances" in r.stdout
    assert "RANDOM weights" in r.stderr
    labels = read(tmp_path / "o" / "photo_labels.png")
    assert labels.shape == (100, 150) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all()


def test_cli_colour_gt_and_labpics_gt(tmp_path, shared_model, monkeypatch, capsys):
    """Issue 9 item 6: a colour-coded ground truth is one instance per colour; LabPics PNGs
    merge their channels only with --gt-labpics."""
    monkeypatch.setattr(infer, "predict_prompts", fake_prompts([]))
    image = write(tmp_path / "img.png", np.zeros((40, 60, 3), np.uint8))
    gt = np.zeros((40, 60, 3), np.uint8)
    for i, bgr in enumerate([(0, 0, 255), (0, 255, 0), (0, 255, 255), (255, 0, 0)]):  # R G Y B
        gt[5:35, 2 + 14 * i : 14 + 14 * i] = bgr
    write(tmp_path / "gt.png", gt)
    args = [image, "--gt", tmp_path / "gt.png", "--points", 2, "--out", tmp_path / "o"]
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "of 4 GT instances" in stdout
    gt[...] = 0  # LabPics: two vessels (channel 2), one material across both (channel 0)
    gt[5:35, 2:30, 2], gt[5:35, 30:58, 2], gt[15:25, 10:50, 0] = 1, 2, 1
    job = infer.Job(image, gt=write(tmp_path / "gt.png", gt))
    assert len(np.unique(infer.load_job(job)[2])) == 1 + 4  # 4 colours
    assert len(np.unique(infer.load_job(job, gt_labpics=True)[2])) == 1 + 3


def test_cli_boxes_folder_mode(tmp_path, shared_model, monkeypatch, capsys):
    monkeypatch.setattr(infer, "predict_prompts", box_prompts)  # masks = boxes: traceable
    rng = np.random.default_rng(4)
    for name in ("a.jpg", "b.png", "c.png"):
        write(tmp_path / "in" / name, rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    dets = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"image_id": 1, "bbox": [5, 5, 40, 30], "score": 0.9},
            {"image_id": 1, "bbox": [50, 10, 80, 80]},  # runs off the image: clipped
            {"image_id": 2, "bbox": [100, 100, 10, 10]},  # outside: skipped, said once
            {"image_id": 2, "bbox": [30, 20, -10, 10]},  # inverted: said as such
            {"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1},  # under --conf 0.25
            {"image_id": 3, "bbox": [0, 0, 5, 5]},  # an image not in the folder
        ],
    }
    boxes = write_json(tmp_path / "dets.json", dets)
    rc, stdout, stderr = run_main(
        [tmp_path / "in", "--boxes", boxes, "--out", tmp_path / "o"], capsys
    )
    assert rc == 0, stderr
    assert (
        f"note: --boxes {boxes}: 5 boxes for these images, 4 kept; 1 scored under --conf 0.25; "
        "1 boxes of 1 images not here (3) ignored; 1 images without boxes (c.png)"
    ) in stderr
    assert "warning: skipped 2 boxes: 1 with no area inside their image: b.png box 2" in stderr
    assert "1 inverted (x1 < x0 or y1 < y0): b.png box 3 [30.0, 20.0, 20.0, 30.0]" in stderr
    assert stderr.count("skipped") == 1 and "b.png: no segment found" in stderr
    labels = read(tmp_path / "o" / "a_labels.png")
    assert labels.max() == 2 and read(tmp_path / "o" / "b_labels.png").max() == 0
    assert "wrote 10 files for 3 image(s)" in stdout  # 3 PNGs each and coco_results.json

    results = json.loads((tmp_path / "o" / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {"a"} and len(results) == 2
    by_detection = {r["detection"]: r for r in results}  # each box's place in dets.json
    assert set(by_detection) == {0, 1}
    assert by_detection[0]["score"] == 0.9  # the detector's score; SAM's alongside
    assert by_detection[1]["score"] == by_detection[1]["sam_score"]  # none given: SAM's
    for r in results:  # the label PNG's ids lead to their detections
        assert np.array_equal(mask_utils.decode(r["segmentation"]) > 0, labels == r["label"])
    assert by_detection[1]["bbox"] == [50, 10, 40, 50]  # the box [50, 10, 80, 80], clipped

    rc, _, stderr = run_main(
        [tmp_path / "in", "--boxes", write_json(tmp_path / "l.json", [[1, 2, 3, 4]])], capsys
    )
    assert rc == 2 and "one list of boxes, for one image" in stderr


def test_cli_detector_files_and_coco_ap(tmp_path, shared_model, monkeypatch, capsys):
    """Ultralytics' predictions.json (numeric stems as int ids) and --save-txt labels, as their
    writers write them, with the dataset's COCO JSON as --gt: boxes reach their images, --conf
    and --classes apply, and COCOeval's segm AP is printed and saved."""
    monkeypatch.setattr(infer, "predict_prompts", box_prompts)
    h, w = 80, 120
    gt = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    preds, txt = [], {}
    objects = {139: [(10, 10, 50, 40, 1), (60, 30, 110, 75, 2)], 285: [(20, 5, 90, 60, 1)]}
    for image_id, objs in objects.items():
        name = f"{image_id:012d}.jpg"  # as COCO names its files
        write(tmp_path / "val" / name, np.zeros((h, w, 3), np.uint8))
        gt["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
        for x0, y0, x1, y1, cat in objs:
            xywh = [x0, y0, x1 - x0, y1 - y0]
            ann = {"image_id": image_id, "category_id": cat, "bbox": xywh, "iscrowd": 0}
            ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]  # a polygon
            ann |= {"id": len(gt["annotations"]) + 1, "area": xywh[2] * xywh[3]}
            gt["annotations"].append(ann)
            preds.append({"image_id": image_id, "category_id": cat, "bbox": xywh, "score": 0.8})
            line = (cat - 1, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, xywh[2] / w, xywh[3] / h, 0.8)
            txt.setdefault(name[:-4], []).append(("%g " * 6).rstrip() % line)  # save_txt's
    preds.append({"image_id": 139, "category_id": 1, "bbox": [0, 0, 30, 30], "score": 0.004})
    preds.append({"image_id": 285, "category_id": 3, "bbox": [0, 0, 30, 30], "score": 0.9})
    write(tmp_path / "val" / "extra.jpg", np.zeros((h, w, 3), np.uint8))  # not in the JSON
    gt_json = write_json(tmp_path / "gt.json", gt)
    pred_json = write_json(tmp_path / "predictions.json", preds)

    args = [tmp_path / "val", "--boxes", pred_json, "--gt", gt_json, "--classes", 1, 2]
    rc, stdout, stderr = run_main([*args, "--out", tmp_path / "o"], capsys)
    assert rc == 0, stderr
    assert "5 boxes for these images, 3 kept; 1 scored under --conf 0.25; 1 of other" in stderr
    assert "1 images without boxes (extra.jpg)" in stderr
    assert "note: 1 images are not in --gt: not scored" in stderr
    assert "COCO segm AP" in stdout and "over 2 images (per category)" in stdout
    stats = json.loads((tmp_path / "o" / "coco_eval.json").read_text())
    assert stats["AP50"] == 1.0 and stats["AP"] > 0.5 and stats["use_categories"]
    results = json.loads((tmp_path / "o" / "coco_results.json").read_text())
    found = sorted((r["image_id"], r["category_id"]) for r in results)
    assert found == [(139, 1), (139, 2), (285, 1)]

    for stem, lines in txt.items():  # yolo predict --save-txt --save-conf: classes from 0
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    args = [tmp_path / "val", "--boxes", tmp_path / "labels", "--gt", gt_json, "--conf", 0.9]
    rc, stdout, stderr = run_main([*args, "--out", tmp_path / "o2"], capsys)
    assert rc == 0 and "3 boxes for these images, 0 kept; 3 scored under --conf 0.9" in stderr
    rc, stdout, stderr = run_main([*args[:-2], "--out", tmp_path / "o2"], capsys)
    assert rc == 0 and "3 boxes for these images, 3 kept" in stderr
    results = json.loads((tmp_path / "o2" / "coco_results.json").read_text())
    found = sorted((r["image_id"], r["category_id"]) for r in results)
    assert found == [(139, 0), (139, 1), (285, 0)]
    assert "warning: --boxes has categories [0]" in stderr  # 0-based classes vs the JSON's ids
    args = [tmp_path / "val", "--boxes", gt_json, "--gt", gt_json, "--out", tmp_path / "o3"]
    rc, stdout, stderr = run_main(args, capsys)
    assert rc == 0 and "AP50 1.000" in stdout  # masks from the ground truth's own boxes


def test_cli_auto_with_gt_and_an_empty_image(tmp_path, shared_model, capsys):
    """--auto on a blank image: no mask passes the thresholds, which is said, and scored."""
    image = write(tmp_path / "blank.png", np.full((48, 64, 3), 128, np.uint8))
    gt = write(tmp_path / "gt.png", box((48, 64), 10, 30, 10, 40).astype(np.uint8))
    rc, stdout, stderr = run_main(
        [image, "--auto", "--grid", 2, "--gt", gt, "--out", tmp_path / "o"], capsys
    )
    assert rc == 0, stderr
    assert "no segment found (lower --min-score or --stability)" in stderr
    assert "blank.png: 0 segments; mean best IoU 0.000" in stdout and "of 1 GT instances" in stdout
    assert read(tmp_path / "o" / "blank_labels.png").max() == 0


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(2)
    return {
        "image": write(tmp_path / "img.png", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)),
        "mask": write(tmp_path / "mask.png", box((60, 80), 5, 50, 5, 70).astype(np.uint8)),
        "small_mask": write(tmp_path / "small.png", np.ones((50, 80), np.uint8)),
        "empty_mask": write(tmp_path / "empty.png", np.zeros((60, 80), np.uint8)),
        "corrupt": write(tmp_path / "c.png", np.ones((60, 80), np.uint8)),
        "gt_small": write(tmp_path / "gt.png", np.ones((60, 79), np.uint16)),
        "bad_json": write_json(tmp_path / "bad.json", {"img.png": [[1, 2, 3]]}),
        "other_boxes": write_json(tmp_path / "other.json", {"photo.jpg": [[1, 2, 3, 4]]}),
    }


@pytest.mark.parametrize(
    "case, args, expect",
    [
        ("missing image", ["{tmp}/nope.jpg"], "nope.jpg"),
        ("corrupt image", ["{corrupt}"], "c.png"),
        ("missing mask", ["{image}", "{tmp}/nomask.png"], "nomask.png"),
        ("corrupt mask", ["{image}", "{corrupt}"], "c.png"),
        ("mask size", ["{image}", "{small_mask}"], "80x50"),
        ("empty region", ["{image}", "{empty_mask}"], "empty"),
        ("gt size", ["{image}", "--gt", "{gt_small}"], "79x60"),
        ("out not writable", ["{image}", "--out", "{image}/sub"], "not a writable"),
        ("points 0", ["{image}", "--points", "0"], "--points"),
        ("grid 0", ["{image}", "--grid", "0"], "--grid"),
        ("overlap > 1", ["{image}", "--overlap", "1.5"], "--overlap"),
        ("overlap < 0", ["{image}", "--overlap", "-0.1"], "--overlap"),
        ("unknown model", ["{image}", "--model", "huge"], "--model"),
        ("masks for one image", ["{image}", "--masks", "{tmp}"], "--masks"),
        ("missing boxes", ["{image}", "--boxes", "{tmp}/nob.json"], "nob.json"),
        ("corrupt boxes", ["{image}", "--boxes", "{corrupt}"], "not valid JSON"),
        ("bad box", ["{image}", "--boxes", "{bad_json}"], "x0, y0, x1, y1"),
        ("boxes of other images", ["{image}", "--boxes", "{other_boxes}"], "photo.jpg"),
        ("boxes and grid", ["{image}", "--boxes", "{other_boxes}", "--grid", "4"], "--grid"),
        ("boxes and auto", ["{image}", "--boxes", "{other_boxes}", "--auto"], "--auto"),
        ("stability > 1", ["{image}", "--auto", "--stability", "2"], "--stability"),
        ("points > 4096", ["{image}", "--points", "5000"], "from 1 to 4096"),
        ("grid > 64", ["{image}", "--grid", "65"], "K x K clicks"),
        ("batch > 256", ["{image}", "--batch-points", "1000"], "copy of the features"),
        ("classes, no boxes", ["{image}", "--classes", "1"], "--classes picks among --boxes"),
        ("conf > 1", ["{image}", "--boxes", "{other_boxes}", "--conf", "2"], "--conf"),
        ("gt json not COCO", ["{image}", "--gt", "{bad_json}"], "not a readable COCO"),
    ],
)
def test_cli_bad_input(case, args, expect, tmp_path, files, no_model, capsys):
    if case.startswith("corrupt"):
        files["corrupt"].write_bytes(files["corrupt"].read_bytes()[:40])  # truncated PNG
    args = [a.format(tmp=tmp_path, **files) for a in args]
    rc, _, stderr = run_main(
        [*args, "--out", tmp_path / "out"] if "--out" not in args else args, capsys
    )
    assert rc == 2, case
    assert expect in stderr, stderr
    assert "Traceback" not in stderr
    if case == "mask size":
        assert "80x60" in stderr  # both sizes
    if case == "gt size":
        assert "80x60" in stderr


def test_cli_bad_checkpoint(tmp_path, files, capsys):
    rc, _, stderr = run_main(
        [files["image"], "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "out"], capsys
    )
    assert rc == 2 and "missing.pt" in stderr


def test_model_defaults_to_the_checkpoints(tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save({"model_name": "tiny", "model": {}}, ckpt)
    parser = infer.build_parser()

    def pick(*argv):
        return infer.pick_model(parser.parse_args(["x.jpg", *argv]), parser)

    assert pick("--checkpoint", str(ckpt)) == "tiny"
    assert pick() == "small"
    assert pick("--checkpoint", "none", "--model", "large") == "large"
    with pytest.raises(SystemExit):
        pick("--checkpoint", str(ckpt), "--model", "small")


def test_import_has_no_side_effects():
    r = subprocess.run(
        [sys.executable, "-c", "import infer; print(infer.segment.__name__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "segment" and r.stderr == ""


def test_parser_help_mentions_every_flag():
    text = infer.build_parser().format_help()
    for flag in (
        "--checkpoint",
        "--model",
        "--device",
        "--points",
        "--grid",
        "--seed",
        "--overlap",
        "--min-score",
        "--batch-points",
        "--out",
        "--show",
        "--masks",
        "--gt",
        "--gt-labpics",
        "--boxes",
        "--auto",
        "--stability",
        "--conf",
        "--classes",
    ):
        assert flag in text
    assert isinstance(infer.build_parser(), argparse.ArgumentParser)
