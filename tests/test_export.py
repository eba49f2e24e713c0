"""export.py: the tiny SAM 2 with a changed decoder weight (standing in for fine-tuned weights)
goes through ONNX, and onnxruntime gives what SAM 2's own predictor gives on the same image and
prompts (clicks, a box, a background click, padding and a previous mask)."""

import copy
import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import export  # noqa: E402
from model import preprocess  # noqa: E402

# fp32 on both sides, so only the order of sums in the runtimes' kernels differs (measured:
# 6e-7 with onnxruntime 1.32 on x86). 1e-4 leaves a 100x margin for other CPUs' kernels and is
# four orders below the logits' scale (units): masks differ only at pixels within 1e-4 of 0.
TOLERANCE = 1e-4
TUNED = "sam_mask_decoder.iou_prediction_head.layers.2.bias"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """A model.pt as train.py writes it, exported by the command line without --model."""
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.state_dict()[TUNED].add_(0.5)
    folder = tmp_path_factory.mktemp("export")
    ckpt = folder / "model.pt"
    torch.save({"model": tuned.state_dict(), "model_name": "tiny", "step": 7}, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert export.main(["--checkpoint", str(ckpt), "--out", str(folder / "onnx")]) == 0
    return tuned, folder / "onnx"


def test_export_matches_sam2_predictor(exported, capsys):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tuned, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    decoder_graph = onnx.load(folder / "decoder.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in decoder_graph.graph.initializer}
    np.testing.assert_array_equal(weights[f"sam.{TUNED}"], tuned.state_dict()[TUNED].numpy())

    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    encoder = ort.InferenceSession(folder / "encoder.onnx", providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(folder / "decoder.onnx", providers=["CPUExecutionProvider"])
    feats = encoder.run(None, {"image": preprocess([image], 1024, "cpu").numpy()})
    coords = np.array(
        [[[50, 60], [0, 0]], [[10, 20], [120, 100]], [[150, 30], [40, 90]]], np.float32
    )  # a click and padding; a box; a click and a background click
    labels = np.array([[1, -1], [2, 3], [1, 0]], np.float32)

    pred = SAM2ImagePredictor(tuned)
    pred.set_image(image)

    def both(coords, labels, mask=None):
        m = len(coords)
        masks, scores = decoder.run(
            None,
            dict(
                zip(
                    export.DECODER_INPUTS,
                    [
                        *feats,
                        coords,
                        labels,
                        np.zeros((m, 1, 256, 256), np.float32) if mask is None else mask,
                        np.full(m, float(mask is not None), np.float32),
                        np.array([120, 200], np.int64),
                    ],
                )
            ),
        )
        with torch.inference_mode():
            _, ref_scores, ref_masks = pred.predict(
                coords, labels, mask_input=mask, multimask_output=True, return_logits=True
            )
        assert masks.shape == (m, 3, 256, 256) and scores.shape == (m, 3)
        ref_masks, ref_scores = ref_masks.reshape(masks.shape), ref_scores.reshape(scores.shape)
        logits = np.abs(np.clip(masks, -32, 32) - ref_masks).max()  # the predictor clips them
        diff = max(logits, np.abs(scores - ref_scores).max())
        return masks, diff

    masks, diff = both(coords, labels)  # three prompts, two points each
    _, diff1 = both(coords[:1, :1], labels[:1, :1], mask=masks[:1, :1])  # one, with a mask
    with capsys.disabled():
        print(f"\nONNX vs PyTorch: max abs logit/score difference {max(diff, diff1):.2e}")
    assert max(diff, diff1) < TOLERANCE


def test_export_bad_input(tmp_path, capsys):
    for argv, expect in (
        (["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
        (["--checkpoint", "none", "--out", "/dev/null/x"], "not a writable"),
        ([], "--checkpoint"),
    ):
        with pytest.raises(SystemExit) as e:
            export.main([*argv, "--out", str(tmp_path / "o")] if "--out" not in argv else argv)
        assert e.value.code == 2 and expect in capsys.readouterr().err
