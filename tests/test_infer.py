"""Tests for infer.py: stitching and scoring on hand-made maps, then the CLI end to end with the
tiny random-weight SAM 2 on the CPU (a handful of images, the model loaded once per session)."""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import infer
from infer import colorize, grid_points, random_points, score_labels, segment, stitch

ROOT = Path(__file__).resolve().parents[1]


def box(hw, y0, y1, x0, x1):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- stitch


@pytest.mark.parametrize("shared, kept", [(10, True), (20, False)])
def test_stitch_overlap_rule(shared, kept):
    a = box((20, 20), 0, 10, 0, 10)  # 100 px, best score
    b = box((20, 20), 0, 10, 10 - shared // 10, 20 - shared // 10)  # 100 px, `shared` on a
    labels = stitch(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.15)
    assert labels.dtype == np.uint16
    assert (labels[a] == 1).all()  # the winner keeps its pixels
    if kept:
        assert (labels[b & ~a] == 2).all() and labels.max() == 2
    else:
        assert labels.max() == 1 and (labels[b & ~a] == 0).all()


def test_stitch_overlap_flag_is_used():
    a, b = box((20, 20), 0, 10, 0, 10), box((20, 20), 0, 10, 8, 18)  # 20% shared
    assert stitch(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.25).max() == 2
    assert stitch(np.stack([a, b]), np.array([0.9, 0.5]), overlap=0.0).max() == 1


def test_stitch_higher_score_wins_contested_pixels():
    low, high = box((20, 20), 0, 10, 0, 10), box((20, 20), 0, 10, 9, 19)  # 10% shared
    labels = stitch(np.stack([low, high]), np.array([0.2, 0.9]))
    assert (labels[high] == 1).all()  # ids follow score, not input order
    assert (labels[low & ~high] == 2).all()


def test_stitch_clips_to_region_and_skips_empty_masks():
    region = box((20, 20), 0, 20, 0, 10)
    half_out = box((20, 20), 0, 5, 5, 15)  # half of it outside the region
    outside = box((20, 20), 10, 20, 12, 20)  # entirely outside: empty after clipping
    empty = np.zeros((20, 20), bool)
    inside = box((20, 20), 10, 15, 0, 5)
    masks = np.stack([empty, outside, half_out, inside])
    labels = stitch(masks, np.array([1.0, 0.9, 0.8, 0.7]), region=region)
    assert (labels[~region] == 0).all()
    assert (labels[half_out & region] == 1).all()  # empty + outside took no id
    assert (labels[inside] == 2).all()
    assert set(np.unique(labels)) == {0, 1, 2}


def test_stitch_more_than_255_ids():
    n, hw = 300, (20, 15)
    masks = np.zeros((n, *hw), bool)
    masks[np.arange(n), np.arange(n) // hw[1], np.arange(n) % hw[1]] = True  # one pixel each
    labels = stitch(masks, np.linspace(1, 0, n))
    assert labels.dtype == np.uint16
    assert sorted(np.unique(labels)) == list(range(1, n + 1))  # all distinct, none wrapped


def test_stitch_min_score_and_id_overflow(monkeypatch):
    masks = np.stack([box((4, 4), i, i + 1, 0, 4) for i in range(4)])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    assert stitch(masks, scores, min_score=0.5).max() == 2
    monkeypatch.setattr(infer, "MAX_ID", 3)
    with pytest.raises(ValueError, match="uint16"):
        stitch(masks, scores)


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


def fake_predict(calls):
    """A stand-in for predict_masks: an 80 px box around each click, first click best."""

    def predict(sam, image, points, batch_points=64):
        calls.append((image.shape, points))
        h, w = image.shape[:2]
        masks = np.zeros((len(points), h, w), bool)
        for i, (x, y) in enumerate(points.astype(int)):
            masks[i, max(0, y - 40) : y + 40, max(0, x - 40) : x + 40] = True
        return masks, np.linspace(1, 0, len(points))

    return predict


def test_segment_sizes_region_and_grid(monkeypatch):
    calls = []
    monkeypatch.setattr(infer, "predict_masks", fake_predict(calls))
    image = np.zeros((150, 260, 3), np.uint8)
    region = box((150, 260), 20, 130, 10, 150)
    labels = segment(None, image, region, points=12, seed=3)
    assert labels.shape == (150, 260) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all() and labels.max() >= 2
    assert list(np.unique(labels)) == list(range(labels.max() + 1))  # consecutive ids
    ((shape, pts),) = calls
    assert shape == (591, 1024, 3)  # SAM sees the longer side at 1024
    assert len(pts) == 12
    assert np.array_equal(labels, segment(None, image, region, points=12, seed=3))

    calls.clear()
    segment(None, image, region, grid=8)
    ((shape, pts),) = calls
    work_region = infer.resize_longest(region, 1024, nearest=True)
    assert 0 < len(pts) < 64 and work_region[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()

    # larger than 1024: the region is downscaled for SAM, labels come back clipped to the original
    big = np.zeros((700, 1300, 3), np.uint8)
    noisy = np.random.default_rng(0).random((700, 1300)) < 0.7
    labels = segment(None, big, noisy, points=5)
    assert labels.shape == (700, 1300) and labels.max() >= 1 and (labels[~noisy] == 0).all()

    with pytest.raises(ValueError, match="260x150"):
        segment(None, image, region[:, :100])
    with pytest.raises(ValueError, match="empty"):
        segment(None, image, np.zeros((150, 260), bool))


def test_segment_with_tiny_model(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    region = box((96, 128), 10, 80, 20, 100)
    labels = segment(tiny_model, image, region, points=4, batch_points=3)
    assert labels.shape == (96, 128) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all()
    assert labels.max() >= 1  # random weights still predict some mask


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


def test_folder_mode_gray_rgba_and_a_corrupt_file(tmp_path, shared_model, capsys):
    import matplotlib

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
    gt = np.zeros((100, 150, 3), np.uint8)  # LabPics-style instance PNG: vessel ids in channel 2
    gt[10:90, 30:120, 2] = 1
    gt[40:60, 50:80, 0] = 1  # a material inside the vessel
    gt = write(tmp_path / "gt.png", gt)
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "infer.py"),
            str(image),
            str(mask),
            "--gt",
            str(gt),
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
    assert "of 2 GT instances" in r.stdout
    assert "RANDOM weights" in r.stderr
    labels = read(tmp_path / "o" / "photo_labels.png")
    assert labels.shape == (100, 150) and labels.dtype == np.uint16
    assert (labels[~region] == 0).all()


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
    ):
        assert flag in text
    assert isinstance(infer.build_parser(), argparse.ArgumentParser)
