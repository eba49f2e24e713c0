"""Trained settings travel: evaluate.py and infer.py read images as the checkpoint's run did
(--max-side, --min-area, --crowd-instances, --ignore-index), say so in one line, and a flag
overrides them."""

import json
import warnings

import cv2
import numpy as np
import pytest

import evaluate
import infer
import train
from model import encode_images

TRAINED = ["--max-side", "512", "--min-area", "64"]
FAST = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--workers", "0"]
FAST += ["--steps", "2", "--batch-size", "2", "--max-masks", "2", "--eval-clicks", "1"]


def label_map() -> np.ndarray:
    """A 256 x 256 8-bit label PNG: a 40 px square (id 1), two 3 x 3 specks (ids 2, 3: 36 px at
    --max-side 512, under --min-area 64; 144 px at 1024) and a void square (255)."""
    lab = np.zeros((256, 256), np.uint8)
    lab[20:60, 20:60] = 1
    lab[100:103, 100:103] = 2
    lab[150:153, 30:33] = 3
    lab[180:220, 180:220] = 255
    return lab


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder-layout dataset (2 train images, 1 test) and a 2-step run on it trained with
    --max-side 512 --min-area 64."""
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            for sub, arr in (
                ("images", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
                ("masks", label_map()),
            ):
                (root / "data" / split / sub).mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(root / "data" / split / sub / f"im{i}.png"), arr)
    argv = ["--data", str(root / "data"), "--out", str(root / "run"), *FAST, *TRAINED]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        train.train(train.parse_args(argv))
    return root / "data", root / "run"


def evaluate_run(run, tmp_path, *flags):
    data, out = run
    argv = ["--data", str(data), "--checkpoint", str(out / "best.pt"), "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate.main(
            [*argv, "--max-clicks", "1", "--out", str(tmp_path / "e.json"), *flags]
        )


def test_evaluate_scores_the_masks_of_the_runs_eval_json(run, tmp_path, capsys):
    best = json.loads((run[1] / "eval.json").read_text())["best"]
    result = evaluate_run(run, tmp_path)
    err = capsys.readouterr().err
    assert "--max-side 512, --min-area 64" in err and "(a flag overrides)" in err
    assert result["model"] == "tiny"  # the checkpoint's, as train.py stored it
    assert best["masks"] == result["metrics"]["masks"] == 1  # the square: specks and void left out
    assert result["metrics"] == pytest.approx(best, abs=1e-6)


@pytest.fixture
def count_masks(monkeypatch):
    """evaluate.py counts the masks it would score, without scoring them (the test above does)."""

    def count(sam, pairs, *a, **k):
        return {"masks": sum(len(masks) for _, masks in pairs), "max_clicks": 1}

    monkeypatch.setattr(evaluate, "evaluate_model", count)


def test_a_flag_overrides_the_trained_setting(run, tmp_path, count_masks, capsys):
    result = evaluate_run(run, tmp_path, "--min-area", "16", "--ignore-index", "-1")
    err = capsys.readouterr().err
    assert "--max-side 512" in err and "--min-area" not in err and "--ignore-index" not in err
    assert result["metrics"]["masks"] == 4  # the specks (36 px at 512) and the void square too


def test_evaluate_without_trained_settings_keeps_its_defaults(run, tmp_path, count_masks, capsys):
    data, _ = run
    argv = ["--data", str(data), "--model", "tiny", "--checkpoint", "none", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate.main([*argv, "--max-clicks", "1", "--out", str(tmp_path / "e.json")])
    assert "settings trained with" not in capsys.readouterr().err
    assert result["metrics"]["masks"] == 3  # 1024 px, --min-area 16, 255 void: specks kept


def test_infer_sees_images_at_the_trained_size(run, tmp_path, tiny_model, monkeypatch, capsys):
    data, out = run
    seen, feats = [], []

    def encode(sam, images):  # notes the size; encodes once (features do not matter here)
        seen.append(images[0].shape)
        feats[:] = feats or [encode_images(sam, images)]
        return feats[0]

    monkeypatch.setattr(infer, "load_model", lambda *a: tiny_model)
    monkeypatch.setattr(infer, "encode_images", encode)
    image, gt = data / "test" / "images" / "im0.png", data / "test" / "masks" / "im0.png"
    argv = [str(image), "--points", "2", "--device", "cpu", "--out", str(tmp_path / "o")]

    assert infer.main([*argv, "--checkpoint", str(out / "best.pt"), "--gt", str(gt)]) == 0
    std = capsys.readouterr()
    assert seen[-1][:2] == (512, 512) and "of 3 GT instances" in std.out  # 255: void, as trained
    assert "--max-side 512, --ignore-index 255 (a flag overrides)" in std.err

    flags = ["--max-side", "256", "--ignore-index", "-1", "--gt", str(gt)]
    assert infer.main([*argv, "--checkpoint", str(out / "best.pt"), *flags]) == 0
    std = capsys.readouterr()
    assert seen[-1][:2] == (256, 256) and "of 4 GT instances" in std.out
    assert "settings trained with" not in std.err

    assert infer.main([*argv, "--checkpoint", "none"]) == 0  # no trained size: 1024, as before
    assert seen[-1][:2] == (1024, 1024) and "settings trained with" not in capsys.readouterr().err


def test_infer_ignore_index_needs_label_pngs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        infer.main([str(tmp_path / "x.png"), "--ignore-index", "255"])
    assert (
        e.value.code == 2 and "--ignore-index applies to --gt label PNGs" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as e:
        infer.main([str(tmp_path / "x.png"), "--max-side", "4096"])
    assert e.value.code == 2 and "must be from 1 to 2048, got 4096" in capsys.readouterr().err
