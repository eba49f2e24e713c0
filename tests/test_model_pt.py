"""Every kind of model.pt / best.pt train.py writes (article, interactive, video) is SAM 2's own
checkpoint: sam2's build_sam2 and build_sam2_video_predictor load it strictly (a missing, extra
or renamed key raises) and hold exactly the weights written.

SAM 2.1 tiny with random weights stands in for load_model: at image_size 64 (as
test_video_train.py), and at SAM 2's 1024 px for the interactive recipe, whose loss works on the
decoder's 256 x 256 grid; the image size changes no weight's shape. One training image, no
validation split: each run encodes one image."""

import copy
import warnings

import pytest
import torch
from sam2.build_sam import build_sam2, build_sam2_video_predictor
from test_video import small_sam

import data
import train
from model import MODELS

RUN = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--steps", "1"]
RUN += ["--log-every", "1", "--eval-clicks", "0", "--lr", "1e-3"]
IMAGES = ["--workers", "0", "--batch-size", "1", "--max-masks", "2", "--clicks", "1"]
CLIPS = ["--batch-size", "1", "--frames", "3", "--objects", "2", "--clicks", "1"]
CLIPS += ["--accumulate", "1"]


@pytest.fixture(scope="module")
def small():
    return small_sam(0, size=64)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_pt")
    images = data.make_demo(root / "images", n_train=1, n_test=0)
    clips = data.make_video_demo(root / "clips", n_train=1, n_test=1, frames=3, size=(40, 56))
    return {"images": images, "clips": clips}


def build(path, video: bool):
    """sam2's own loader of `path` (strict: load_state_dict raises on a key mismatch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make = build_sam2_video_predictor if video else build_sam2
        return make(MODELS["tiny"][0], str(path), device="cpu")


@pytest.mark.parametrize("recipe", ["article", "interactive", "video"])
def test_written_model_pt_loads_in_sam2(recipe, tiny_model, small, datasets, tmp_path, monkeypatch):
    video = recipe == "video"
    base = tiny_model if recipe == "interactive" else small
    monkeypatch.setattr(train, "load_model", lambda *args: copy.deepcopy(base))
    folder = datasets["clips" if video else "images"]
    argv = ["--data", str(folder), "--recipe", recipe, *RUN, *(CLIPS if video else IMAGES)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train.train(train.parse_args([*argv, "--out", str(tmp_path)]))
    trained = summary["model"].state_dict()
    for name in ("model.pt", "best.pt"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert set(saved) == {"model", "model_name", "config", "step"}
        assert saved["model_name"] == "tiny" and saved["config"]["recipe"] == recipe
        loaded = build(tmp_path / name, video).state_dict()
        assert set(loaded) == set(saved["model"])
        for k, v in saved["model"].items():
            torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)
    final = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert final.keys() == trained.keys() and all(torch.equal(final[k], trained[k]) for k in final)
