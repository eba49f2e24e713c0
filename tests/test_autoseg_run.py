"""Issue 28 wired in: train.py --auto-decoder / --recipe auto, the head in model.pt and
checkpoint.pt, evaluate.py and infer.py --auto with it (tiny model, random weights, CPU)."""

import json
import signal
import warnings

import cv2
import numpy as np
import pytest
import torch
from test_train import logged_step, start, wait_until

import autoseg
import data
import evaluate
import infer
import train
from model import MODELS

FAST = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--workers", "0"]
FAST += ["--batch-size", "2", "--max-masks", "2", "--log-every", "1", "--max-side", "128"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return data.make_demo(tmp_path_factory.mktemp("demo"), n_train=2, n_test=1)


def perfect(sam, pairs, limit):
    """Stands in for SAM 2's generator (minutes per image on a CPU): every ground-truth
    object, scored 1, so its mSA and AP are 1 wherever eval.json reports them."""
    out = []
    for _image, masks in list(pairs)[:limit]:
        masks = np.asarray(masks, bool)
        out.append((autoseg.label_map(masks).astype(np.uint16), np.ones(len(masks)), masks))
    return out


@pytest.fixture(scope="module")
def auto_run(demo, tmp_path_factory):
    """--recipe auto, 3 steps, click curves and the (stubbed) generator scored."""
    out = tmp_path_factory.mktemp("auto")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(autoseg, "generator_predictions", perfect)
        argv = ["--data", str(demo), "--out", str(out), "--recipe", "auto", "--steps", "3"]
        summary = train.train(train.parse_args([*argv, "--eval-clicks", "1", *FAST]))
    return out, summary


def initial_weights():
    """What train.build draws at --seed 0: SAM 2 tiny, then the head."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from model import load_model

        sam = load_model("tiny", "none")
    return sam.state_dict(), autoseg.InstanceHead().state_dict()


def test_recipe_auto_trains_only_the_head(auto_run):
    out, summary = auto_run
    assert train.parse_args(["--data", "d", "--recipe", "auto"]).auto_decoder  # implied
    sam0, head0 = initial_weights()
    saved = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], v) for k, v in sam0.items())  # SAM 2 frozen
    head = saved[autoseg.STATE_KEY]["weights"]
    assert any(not torch.equal(head[k], v) for k, v in head0.items())  # the head trained
    assert summary["step"] == 3 and 0 <= summary["first_iou"] <= 1  # validation: the head's mSA


def test_model_pt_with_the_head_loads_in_build_sam2(auto_run):
    from sam2.build_sam import build_sam2

    out, _ = auto_run
    for name in ("model.pt", "best.pt"):  # strict: only "model" is read, the head is beside it
        sam = build_sam2(MODELS["tiny"][0], str(out / name), device="cpu")
        assert sam is not None
        assert autoseg.read_head(out / name) is not None


def test_eval_json_holds_the_generator_and_the_head(auto_run, demo, tmp_path, monkeypatch):
    out, _ = auto_run
    report = json.loads((out / "eval.json").read_text())
    assert report["base"]["amg_msa"] == 1.0 and report["base"]["amg_ap"] == 1.0
    assert report["base"]["amg_images"] == 1
    best = report["best"]
    assert 0 <= best["head_msa"] <= 1 and 0 <= best["head_ap"] <= 1 and best["head_images"] == 1
    text = evaluate.format_table(report["best"], report["base"])
    assert "prompt-free mSA" in text and "SAM 2 generator 1.000 (1 images) -> instance head" in text
    # evaluate.py scores the checkpoint's head, and the generator on --amg-images images
    monkeypatch.setattr(autoseg, "generator_predictions", perfect)
    args = ["--data", str(demo), "--checkpoint", str(out / "best.pt"), "--device", "cpu"]
    result = evaluate.main([*args, "--max-clicks", "1", "--out", str(tmp_path / "e.json")])
    assert "amg_msa" not in result["metrics"]  # the generator only when asked: minutes an image
    args += ["--amg-images", "1"]
    result = evaluate.main([*args, "--max-clicks", "1", "--out", str(tmp_path / "e.json")])
    m = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert m["amg_msa"] == 1.0 and m["head_images"] == 1 and 0 <= m["head_msa"] <= 1
    assert m["head_msa"] == pytest.approx(best["head_msa"])  # same images, same head
    assert result["metrics"] == m


def test_infer_auto_uses_the_head(auto_run, tmp_path, capsys):
    """A head whose maps say "one object everywhere" (its last layer set so): infer.py --auto
    finds it at the image's own size, scored, and --auto amg does not use it."""
    out, _ = auto_run
    state = torch.load(out / "model.pt", weights_only=True)
    w = state[autoseg.STATE_KEY]["weights"]
    w["out.weight"].zero_()
    w["out.bias"].copy_(torch.tensor([5.0, -5.0, -5.0]))  # foreground, centre 0, boundary 0
    ckpt = tmp_path / "head.pt"
    torch.save(state, ckpt)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (90, 130, 3), np.uint8))
    args = [str(image), "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(tmp_path / "o")]
    assert infer.main([*args, "--auto"]) == 0
    assert "--auto: its trained instance head" in capsys.readouterr().err
    labels = cv2.imread(str(tmp_path / "o" / "photo_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.shape == (90, 130) and (labels == 1).all()
    (r,) = json.loads((tmp_path / "o" / "coco_results.json").read_text())
    assert r["label"] == 1 and r["score"] == pytest.approx(
        float(torch.sigmoid(torch.tensor(5.0))), 1e-3
    )
    assert r["segmentation"]["size"] == [90, 130]
    with pytest.raises(SystemExit):
        infer.main([*args[:2], "none", *args[3:], "--auto", "head"])  # no head there
    assert "has no instance head" in capsys.readouterr().err


def test_sigkill_then_resume_gives_the_same_head(demo, tmp_path):
    """--auto-decoder on the article recipe, killed with SIGKILL mid-run and resumed: the head
    and its optimizer state equal an uninterrupted run's, bit for bit."""
    common = ["--data", str(demo), "--auto-decoder", "--eval-every", "0", "--eval-clicks", "0"]
    common += ["--save-every", "1", *FAST]
    whole = tmp_path / "whole"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.train(train.parse_args([*common, "--out", str(whole), "--steps", "5"]))
    out = tmp_path / "run"
    proc = start([*common, "--out", str(out), "--steps", "50"], tmp_path / "err.txt")
    try:
        wait_until(proc, lambda: logged_step(out) >= 2, "step 2")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 5, step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.train(train.parse_args([*common, "--out", str(out), "--steps", "5", "--resume"]))
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    for name in ("model.pt", "checkpoint.pt"):
        got = torch.load(out / name, weights_only=True)[autoseg.STATE_KEY]["weights"]
        for k, v in a[autoseg.STATE_KEY]["weights"].items():
            assert torch.equal(got[k], v), (name, k)
    head_group = len(a["optimizer"]["param_groups"]) - 1
    assert a["optimizer"]["param_groups"][head_group]["lr_scale"] == autoseg.HEAD_LR_SCALE
    for p in a["optimizer"]["param_groups"][head_group]["params"]:
        for k, v in a["optimizer"]["state"][p].items():
            assert torch.equal(b["optimizer"]["state"][p][k], v), k
