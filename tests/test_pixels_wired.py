"""Issue 26 wired: the pixel rule (--normalize / --channels) is used by train.py, saved in the
checkpoint and applied by infer.py and evaluate.py without flags; a bad --channels names the
file; --tile keeps small objects in training (data.py counts) and infer.py --tile stitches
objects crossing tile edges into one label each. TIFFs written by tifffile as users' tools do."""

import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

import data
import evaluate
import infer
import train
from plumbing import jobs
from plumbing.intensity import PixelRule
from plumbing.tiles import _boxes, compact, tile_grid
from plumbing.weights import load_tensors

sys.path.insert(0, str(Path(__file__).parent))
from test_tiles import OVERLAP, SIZE, TILE, disks  # noqa: E402

FAST = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--workers", "0"]
FAST += ["--steps", "1", "--batch-size", "1", "--max-masks", "2", "--eval-clicks", "0"]
FAST += ["--eval-every", "0"]
KINDS = {  # pixels of a 64 x 64 image, as tifffile writes them: (C, H, W) pages
    "float32-2ch": lambda lab, rng: np.stack([lab * 0.7 + rng.random(lab.shape)] * 2).astype(
        np.float32
    ),
    "uint16-5ch": lambda lab, rng: np.stack(
        [lab * 900 + rng.integers(200, 300, lab.shape)] * 5
    ).astype(np.uint16),
}
RULE = ("percentile:1,99", "1,0")  # channels 1 -> R, 0 -> G: both files have them


def tiff_dataset(root: Path, kinds=tuple(KINDS)) -> Path:
    """A folder-layout dataset of (C, 64, 64) TIFFs with two squares each: one image of each
    kind in train/ and test/."""
    rng = np.random.default_rng(0)
    lab = np.zeros((64, 64), np.uint8)
    lab[8:24, 8:24], lab[36:60, 30:54] = 1, 2
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, kind in enumerate(kinds):
            tifffile.imwrite(
                root / split / "images" / f"im{i}.tif", KINDS[kind](lab.astype(np.int64), rng)
            )
            cv2.imwrite(str(root / split / "masks" / f"im{i}.png"), lab)
    return root


def test_tiffs_train_infer_evaluate_with_the_saved_rule(tmp_path, monkeypatch, capsys):
    """float32 2-channel and uint16 5-channel TIFFs: one run trains on both by one rule."""
    root = tiff_dataset(tmp_path / "d")
    normalize, channels = RULE
    rule = PixelRule.parse(normalize, channels)
    argv = ["--data", str(root), "--out", str(tmp_path / "run"), *FAST]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        train.train(train.parse_args([*argv, "--normalize", normalize, "--channels", channels]))
    model_pt = tmp_path / "run" / "model.pt"
    cfg = load_tensors(model_pt)["config"]
    assert (cfg["normalize"], cfg["channels"]) == (rule.normalize, rule.channel_text)
    capsys.readouterr()

    seen = []  # the rule each image was read with
    real = jobs.read_rgb
    monkeypatch.setattr(jobs, "read_rgb", lambda p, r: seen.append(r) or real(p, r))
    image = root / "test" / "images" / "im1.tif"  # the uint16 5-channel one
    out = tmp_path / "out"
    assert (
        infer.main(
            [
                str(image),
                "--checkpoint",
                str(model_pt),
                "--device",
                "cpu",
                "--points",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert seen == [rule]
    said = capsys.readouterr().err
    assert f"--normalize {rule.normalize}" in said and f"--channels {channels}" in said
    assert cv2.imread(str(out / "im1_labels.png"), cv2.IMREAD_UNCHANGED).shape == (64, 64)

    read = []
    real_rgb = data.record_rgb
    monkeypatch.setattr(data, "record_rgb", lambda rec, r: read.append(r) or real_rgb(rec, r))
    result = evaluate.main(
        [
            "--data",
            str(root),
            "--checkpoint",
            str(model_pt),
            "--device",
            "cpu",
            "--max-clicks",
            "1",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert read == [rule, rule] and result["metrics"]["masks"] == 4


def test_bad_channels_names_the_file(tmp_path, capsys):
    root = tiff_dataset(tmp_path / "d", ("uint16-5ch",))
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(root), "--out", str(tmp_path / "run"), *FAST, "--channels", "7"])
    assert "im0.tif: --channels 7 asks for channel 7 but the file has 5 channels" in str(e.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:  # 5 channels and no --channels: asks for one
        train.main(["--data", str(root), "--out", str(tmp_path / "run"), *FAST])
    assert "im0.tif: has 5 channels; choose" in str(e.value)
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(root), "--normalize", "range:5,1"])
    assert "LO < HI" in capsys.readouterr().err


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 4096 x 4096 image of 400 disks of 12 px (train/) and a small one (test/)."""
    root = tmp_path_factory.mktemp("big")
    lab = disks()
    for split, a in (("train", lab), ("test", lab[:512, :512])):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        cv2.imwrite(
            str(root / split / "images" / "big.png"), np.where(a > 0, 200, 30).astype(np.uint8)
        )
        cv2.imwrite(str(root / split / "masks" / "big.png"), a)
    return root, lab


def test_tiles_keep_the_small_objects(big, capsys):
    root, _ = big
    assert data.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "train:   --max-side 1024 --min-area 16: 0 of 400 instances kept" in text
    assert "try --tile 1024" in text and "uint8 x1 (30 to 200)" in text
    assert data.main([str(root), "--tile", "1024"]) == 0
    assert (
        "25 tiles with instances from 1 images; 400 of 400 instances kept"
        in capsys.readouterr().out
    )
    ds = data.load_split(root, "train", tile=TILE)
    assert len(ds) == 25 and "400 of 400 instances kept" in ds.notes[0]
    s = ds[0]  # a tile at full resolution: its disks keep their ~113 px
    assert s.image.shape == (TILE, TILE, 3) and len(s.masks) >= 16
    assert s.masks.sum((1, 2)).max() > 100
    plain = data.load_split(root, "train")  # no --tile: today's reader
    assert len(plain) == 1 and len(plain[0].masks) == 0


def test_infer_tile_stitches_objects_across_tile_edges(big, tmp_path, monkeypatch):
    root, lab = big

    # a stub segmenter: each tile's own disks (ids renumbered per tile, as a model's would be)
    def whole_image(sam, args, head=None):
        def run(image, region, boxes, records):
            found.append(image.shape[:2])
            y0, x0 = boxes_left.pop(0)
            comp, _ = compact(lab[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]])
            comp = np.where(comp > 0, comp.max() + 1 - comp, 0)
            records += [{"prompt": 0, "score": 0.9, "label": int(k)} for k in np.unique(comp)[1:]]
            return comp.astype(np.uint16)

        return run

    found, boxes_left = [], [b[:2] for b in tile_grid(SIZE, SIZE, TILE, OVERLAP)]
    monkeypatch.setattr(infer, "whole_image", whole_image)
    monkeypatch.setattr(infer, "load_model", lambda *a, **k: torch.nn.Linear(1, 1))
    out = tmp_path / "out"
    assert (
        infer.main(
            [
                str(root / "train" / "images" / "big.png"),
                "--checkpoint",
                "none",
                "--tile",
                "1024",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert found == [(TILE, TILE)] * 25
    got = cv2.imread(str(out / "big_labels.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (SIZE, SIZE) and got.dtype == np.uint16
    pairs = np.unique(np.stack([lab[lab > 0], got[lab > 0]]), axis=1)
    assert len(pairs[0]) == 400 == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))
    assert (got[lab == 0] == 0).all()
    ends = {b[2] for b in tile_grid(SIZE, SIZE, TILE, OVERLAP)} - {SIZE}
    bb = _boxes(*(lambda c: (c[0], len(c[1]) - 1))(compact(lab)))[1:]
    cut = [(y0 < e < y1) or (x0 < e < x1) for y0, x0, y1, x1 in bb.tolist() for e in ends]
    assert sum(cut) >= 5  # disks that a tile's end cuts: each one label all the same
