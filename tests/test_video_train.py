"""train.py --recipe video on generated clips: outputs, J&F before and after, bit-for-bit resume.

SAM 2.1 tiny with random weights at image_size 64 (see test_video.py) stands in for load_model.
"""

import copy
import csv
import json
import shutil
import warnings

import pytest
import torch
from test_video import small_sam

import data
import train

FAST = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--recipe", "video"]
FAST += ["--batch-size", "1", "--frames", "3", "--objects", "2", "--clicks", "1", "--lr", "1e-4"]
FAST += ["--eval-every", "0", "--log-every", "1", "--eval-clicks", "1", "--accumulate", "1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return data.make_video_demo(root, n_train=2, n_test=1, frames=3, size=(40, 56))


@pytest.fixture(scope="module")
def base():
    return small_sam(0, size=64)


@pytest.fixture
def small(monkeypatch, base):
    """load_model for --seed 0 (random init), at image_size 64."""
    monkeypatch.setattr(train, "load_model", lambda *args: copy.deepcopy(base))


def run(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train.train(train.parse_args(argv))


def trained(path):
    sd = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}


def test_video_run_writes_outputs_and_resumes_bit_for_bit(clips, small, base, tmp_path):
    """1 + 1 steps == 2 steps exactly (clip starts, objects, prompts, correction clicks and the
    memory attention's dropout all come from the checkpointed generator); the run writes
    model.pt, curves.png and eval.json with J&F of the base model and of best.pt."""
    a = run(["--data", str(clips), *FAST, "--out", str(tmp_path / "a"), "--steps", "2"])
    no_val = shutil.copytree(clips, tmp_path / "no_val")  # same training clips, nothing to score
    (no_val / "ImageSets" / "2017" / "val.txt").write_text("")
    common = ["--data", str(no_val), *FAST, "--out", str(tmp_path / "b"), "--eval-clicks", "0"]
    run([*common, "--steps", "1"])
    run([*common, "--steps", "2", "--resume"])
    wa, wb = trained(tmp_path / "a" / "model.pt"), trained(tmp_path / "b" / "model.pt")
    init = {k: v for k, v in base.state_dict().items() if k in wa}
    assert any(not torch.equal(wa[k], init[k]) for k in wa if k.startswith("memory_attention."))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [r["step"] for r in rows] == ["0", "1", "2"] and float(rows[-1]["loss"]) > 0
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    scores = json.loads((tmp_path / "a" / "eval.json").read_text())
    (val,) = data.load_videos(clips, "val")
    first = [min(t for t in range(3) if k in data.video_labels(val, t)) for k in (1, 2, 3)]
    for model in ("base", "best"):
        m = scores[model]
        assert m["masks"] == sum(t < 1 for t in first)  # scored on frame 1 only (of 0, 1, 2)
        for p in ("mask", "click"):
            assert 0 <= m[f"j_{p}"] <= 1 and 0 <= m[f"f_{p}"] <= 1
            assert m[f"jf_{p}"] == pytest.approx((m[f"j_{p}"] + m[f"f_{p}"]) / 2)
    assert a["first_iou"] == pytest.approx(scores["base"]["jf_mask"])


def test_video_flags(tmp_path):
    cfg = train.parse_args(["--demo", "--recipe", "video"])
    assert (cfg.data, cfg.frames, cfg.batch_size, cfg.model) == ("demo_videos", 2, 1, "tiny")
    cfg = train.parse_args(["--data", "x", "--recipe", "video"])
    assert (cfg.frames, cfg.objects, cfg.batch_size) == (8, 3, 1)  # 1 clip a step (memory)
    assert (
        train.parse_args(["--data", "x", "--recipe", "video", "--batch-size", "2"]).batch_size == 2
    )
    assert train.parse_args(["--data", "x"]).batch_size == 4
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "x", "--recipe", "video", "--frames", "0"])
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "x", "--recipe", "video", "--train-encoder"])
    with pytest.raises(data.DataError, match="--recipe video"):
        train.open_data(train.Config(data=str(data.make_video_demo(tmp_path, 2, 1, 2))))


def test_evaluate_cli_scores_videos(clips, base, tmp_path, monkeypatch):
    """evaluate.py on a video dataset: J&F of each protocol, written to --out."""
    import evaluate
    import model

    monkeypatch.setattr(model, "load_model", lambda *args: copy.deepcopy(base))
    out = tmp_path / "eval.json"
    argv = ["--data", str(clips), "--checkpoint", "none", "--device", "cpu", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate.main(argv)
    m = json.loads(out.read_text())["metrics"]
    assert m == result["metrics"] and m["masks"] >= 2 and 0 <= m["jf_mask"] <= 1
    assert set(m) >= {"j_mask", "f_mask", "jf_click", "j_click", "f_click"}
