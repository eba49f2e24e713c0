"""export.py: the tiny SAM 2 with a changed decoder weight (standing in for fine-tuned weights)
goes through ONNX, and the graphs, fed exactly as the annotation tools' SAM 2 clients feed them
(AnyLabeling, X-AnyLabeling and samexporter: inputs and outputs by position, clicks scaled to the
1024x1024 frame, one has_mask_input value for all prompts), give what SAM 2's own predictor gives
on the same image and prompts; the GUIs' config files point at the graphs."""

import copy
import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
yaml = pytest.importorskip("yaml")

import export  # noqa: E402
from model import add_lora, merge_lora, preprocess  # noqa: E402

# fp32 on both sides, so only the order of sums in the runtimes' kernels differs (measured:
# 6e-7 with onnxruntime 1.32 on x86). 1e-4 leaves a 100x margin for other CPUs' kernels and is
# four orders below the logits' scale (units): masks differ only at pixels within 1e-4 of 0.
TOLERANCE = 1e-4
TUNED = "sam_mask_decoder.iou_prediction_head.layers.2.bias"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """A model.pt as train.py writes it, exported by the command line without --model: of a
    LoRA run (issue 27: adapters on the last stage, merged into SAM 2's own weights)."""
    adapted = copy.deepcopy(tiny_model)
    add_lora(adapted, rank=4, blocks=2, targets=("qkv", "proj"))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    tuned = copy.deepcopy(tiny_model)
    tuned.load_state_dict(merge_lora(adapted))  # strict: SAM 2's own keys
    key = "image_encoder.trunk.blocks.11.attn.qkv.weight"
    assert not torch.equal(tuned.state_dict()[key], tiny_model.state_dict()[key])
    with torch.no_grad():
        tuned.state_dict()[TUNED].add_(0.5)
    folder = tmp_path_factory.mktemp("export")
    ckpt = folder / "model.pt"
    torch.save({"model": tuned.state_dict(), "model_name": "tiny", "step": 7}, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert export.main(["--checkpoint", str(ckpt), "--out", str(folder / "onnx")]) == 0
    return tuned, folder / "onnx"


def by_position(session, *inputs):
    """session.run as the clients call it: input i goes to the graph's i-th input name, the
    outputs come back in the graph's order."""
    names = [i.name for i in session.get_inputs()]
    feed = {names[i]: inputs[i] for i in range(len(names))}  # IndexError on an extra input
    return session.run([o.name for o in session.get_outputs()], feed)


def test_graphs_fed_as_the_clients_feed_them_match_sam2_predictor(exported, capsys):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tuned, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "anylabeling.yaml",
        "decoder.onnx",
        "encoder.onnx",
        "x-anylabeling.yaml",
    ]
    for name in ("encoder.onnx", "decoder.onnx"):  # what onnxruntime >= 1.14 loads
        graph = onnx.load(folder / name)
        onnx.checker.check_model(graph, full_check=True)
        assert graph.ir_version <= 8 and max(o.version for o in graph.opset_import) <= 18
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    np.testing.assert_array_equal(weights[f"sam.{TUNED}"], tuned.state_dict()[TUNED].numpy())

    h, w = 120, 200
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cpu = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(folder / "encoder.onnx", providers=cpu)
    decoder = ort.InferenceSession(folder / "decoder.onnx", providers=cpu)
    assert encoder.get_inputs()[0].shape == [1, 3, 1024, 1024]  # clients read the size here
    assert len(decoder.get_inputs()) == 7

    pred = SAM2ImagePredictor(tuned)
    pred.set_image(image)
    x = preprocess([image], 1024, "cpu").numpy()  # SAM 2's transform (the GUIs use cv2's)
    high_res_feats_0, high_res_feats_1, image_embed = by_position(encoder, x)
    assert image_embed.shape == (1, 256, 64, 64) and high_res_feats_0.shape == (1, 32, 256, 256)

    def both(points, labels, mask=None, flags=None):
        """The clients' decoder call (pixels scaled to the 1024 frame, float32 labels, a
        (1,) has_mask_input unless `flags`) against the predictor on the same prompts."""
        m = len(points)
        frame = (points * np.array([1024 / w, 1024 / h])).astype(np.float32)
        if flags is None:
            flags = np.array([float(mask is not None)], np.float32)
        mask_input = np.zeros((m, 1, 256, 256), np.float32) if mask is None else mask
        masks, scores = by_position(
            decoder,
            image_embed,
            high_res_feats_0,
            high_res_feats_1,
            frame,
            labels.astype(np.float32),
            mask_input,
            flags,
        )
        with torch.inference_mode():
            _, ref_scores, ref_masks = pred.predict(
                points, labels, mask_input=mask, multimask_output=True, return_logits=True
            )
        assert masks.shape == (m, 3, 256, 256) and scores.shape == (m, 3)
        ref_masks, ref_scores = ref_masks.reshape(masks.shape), ref_scores.reshape(scores.shape)
        return masks, max(np.abs(masks - ref_masks).max(), np.abs(scores - ref_scores).max())

    # X-AnyLabeling's --auto: one click per prompt, several prompts, has_mask_input (1,)
    clicks = np.array([[[50, 60]], [[150, 30]], [[199, 119]]], np.float64)
    masks, diff = both(clicks, np.ones((3, 1)))
    # AnyLabeling's interactive call: a box and a click in one prompt; prompts padded with -1
    mixed = np.array([[[10, 20], [120, 100], [40, 90]], [[50, 60], [0, 0], [0, 0]]], np.float64)
    _, diff_mixed = both(mixed, np.array([[2, 3, 1], [1, -1, -1]]))
    # a previous mask as prompt: one flag for all, or one flag per prompt
    _, diff_mask = both(clicks[:1], np.ones((1, 1)), mask=masks[:1, :1])
    two = np.concatenate([masks[:1, :1], np.zeros_like(masks[:1, :1])])
    per_prompt, _ = by_position(
        decoder,
        image_embed,
        high_res_feats_0,
        high_res_feats_1,
        (clicks[:2] * np.array([1024 / w, 1024 / h])).astype(np.float32),
        np.ones((2, 1), np.float32),
        two,
        np.array([1.0, 0.0], np.float32),
    )
    with_mask, _ = both(clicks[:1], np.ones((1, 1)), mask=masks[:1, :1])
    without, _ = both(clicks[1:2], np.ones((1, 1)))
    diff_flags = np.abs(per_prompt - np.concatenate([with_mask, without])).max()
    worst = max(diff, diff_mixed, diff_mask, diff_flags)
    with capsys.disabled():
        print(f"\nONNX (as the clients call it) vs SAM 2's predictor: max difference {worst:.2e}")
    assert worst < TOLERANCE
    assert np.abs(per_prompt[0] - per_prompt[1]).max() > 1e-3  # the flags did select


def test_gui_configs(exported):
    _, folder = exported
    decoder_inputs = [i.name for i in onnx.load(folder / "decoder.onnx").graph.input]
    assert decoder_inputs == export.DECODER_INPUTS
    x = yaml.safe_load((folder / "x-anylabeling.yaml").read_text())
    a = yaml.safe_load((folder / "anylabeling.yaml").read_text())
    assert x["type"] == "segment_anything_2" and a["type"] == "segment_anything"
    for config in (x, a):
        assert {"name", "display_name", "encoder_model_path", "decoder_model_path"} <= set(config)
        assert "tiny" in config["display_name"] and "model" in config["display_name"]
        for key in ("encoder_model_path", "decoder_model_path"):
            assert (folder / config[key]).is_file()  # relative to the config file
    assert a["input_size"] == a["max_width"] == a["max_height"] == 1024
    assert "high_res_feats_0" in decoder_inputs  # how AnyLabeling tells SAM 2 from SAM


def test_export_bad_input(tmp_path, capsys):
    for argv, expect in (
        (["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
        (["--checkpoint", "none", "--out", "/dev/null/x"], "not a writable"),
        ([], "--checkpoint"),
    ):
        with pytest.raises(SystemExit) as e:
            export.main([*argv, "--out", str(tmp_path / "o")] if "--out" not in argv else argv)
        assert e.value.code == 2 and expect in capsys.readouterr().err
