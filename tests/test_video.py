"""A model.pt from train.py loads in SAM 2's video predictor (build_sam2_video_predictor with
the model's config) with its fine-tuned weights, and propagates a click through a few frames."""

import copy

import cv2
import numpy as np
import pytest
import torch

from model import MODELS

TUNED = "sam_mask_decoder.iou_prediction_head.layers.2.bias"


# without the CUDA extension (SAM2_BUILD_CUDA=0) SAM 2 skips filling small holes, and says so
@pytest.mark.filterwarnings("ignore:cannot import name '_C'")
def test_video_predictor_uses_finetuned_weights(tmp_path, tiny_model):
    from sam2.build_sam import build_sam2_video_predictor

    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.state_dict()[TUNED].add_(0.5)  # stands in for fine-tuning
    ckpt = tmp_path / "model.pt"
    meta = {"model_name": "tiny", "config": {"model": "tiny", "steps": 10}, "step": 10}
    torch.save({"model": tuned.state_dict(), **meta}, ckpt)  # the layout train.py writes

    predictor = build_sam2_video_predictor(MODELS["tiny"][0], str(ckpt), device="cpu")
    assert torch.equal(predictor.state_dict()[TUNED], tuned.state_dict()[TUNED])
    assert not torch.equal(predictor.state_dict()[TUNED], tiny_model.state_dict()[TUNED])

    frames = tmp_path / "frames"  # a bright square moving right, as SAM 2 wants: 00000.jpg, ...
    frames.mkdir()
    for i in range(3):
        frame = np.zeros((64, 96, 3), np.uint8)
        frame[20:44, 10 + 8 * i : 34 + 8 * i] = 255
        assert cv2.imwrite(str(frames / f"{i:05d}.jpg"), frame)

    with torch.inference_mode():
        state = predictor.init_state(str(frames))
        _, ids, logits = predictor.add_new_points_or_box(
            state, frame_idx=0, obj_id=1, points=[[22, 32]], labels=[1]
        )
        assert ids == [1] and logits.shape == (1, 1, 64, 96)
        masks = {f: (lg > 0).numpy() for f, _, lg in predictor.propagate_in_video(state)}
    assert sorted(masks) == [0, 1, 2]
    assert all(m.shape == (1, 1, 64, 96) for m in masks.values())
