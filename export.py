"""Export a (fine-tuned) SAM 2 to ONNX in the layout annotation tools load (AnyLabeling,
X-AnyLabeling, samexporter): an image encoder and a prompt decoder, plus each GUI's config file.

    python export.py --checkpoint runs/labpics/model.pt --out model_onnx/

--model defaults to the one stored in the checkpoint (as in infer.py). Writes into --out:

encoder.onnx
    image (1, 3, 1024, 1024) float32: the RGB image resized to 1024x1024, scaled to 0..1 and
    normalized with ImageNet's mean and std (what SAM 2's transforms and model.preprocess make)
    -> high_res_feats_0 (1, 32, 256, 256), high_res_feats_1 (1, 64, 128, 128),
       image_embed (1, 256, 64, 64), in that order
decoder.onnx, M prompts (one mask each) of K points, both dynamic; inputs in this order:
    image_embed, high_res_feats_0, high_res_feats_1: the encoder's outputs;
    point_coords (M, K, 2) float32: (x, y) in the 1024x1024 frame (x * 1024 / W, y * 1024 / H);
    point_labels (M, K) float32: 1 click, 0 background click, 2 and 3 a box's top-left and
        bottom-right corner, -1 padding;
    mask_input (M, 1, 256, 256) float32: a previous prediction's logits, used where
    has_mask_input (1,) or (M,) float32 is 1 (0: no mask prompt; one value for all prompts)
    -> masks (M, 3, 256, 256) low-res logits, clipped to +-32 as SAM 2's predictor does (SAM's
       three candidates: resize to the image's H x W and threshold at 0), iou_predictions (M, 3)
x-anylabeling.yaml, anylabeling.yaml
    the configs X-AnyLabeling and AnyLabeling load with "...Load Custom Model"

Opset 18, IR version 8, as samexporter writes: the GUIs' older onnxruntime builds load them
(1.15.0 and 1.16.3 checked, as 1.32.0). Needs onnx and onnxscript (and onnxruntime to run them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import torch

from infer import check_writable, pick_model
from model import MODELS, CheckpointError, encode_images, load_model, plain_warnings

ENCODER_OUTPUTS = ["high_res_feats_0", "high_res_feats_1", "image_embed"]
DECODER_INPUTS = [
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
]
OPSET, IR_VERSION = 18, 8  # what samexporter writes; older runtimes in the GUIs refuse newer


class ImageEncoder(torch.nn.Module):
    """Normalized (B, 3, 1024, 1024) images -> the decoder's three feature maps, high-res first."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor):
        feats = encode_images(self.sam, image)
        return *feats.high_res, feats.image_embed


class PromptDecoder(torch.nn.Module):
    """SAM 2's prompt encoder and mask decoder on one image's features (inputs as in the module
    docstring); the mask prompt is switched per prompt, since an ONNX input cannot be absent."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(
        self,
        image_embed,
        high_res_feats_0,
        high_res_feats_1,
        point_coords,
        point_labels,
        mask_input,
        has_mask_input,
    ):
        pe = self.sam.sam_prompt_encoder
        sparse, no_mask = pe(points=(point_coords, point_labels), boxes=None, masks=None)
        # one flag for all prompts, or one each: row i takes flag min(i, len - 1)
        rows = torch.arange(point_coords.shape[0], device=point_coords.device)
        has = has_mask_input[rows.clamp(max=has_mask_input.shape[0] - 1)].view(-1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * no_mask
        masks, scores, _, _ = self.sam.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,  # all prompts on the one image
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return masks.clamp(-32.0, 32.0), scores


def onnx_export(module, args: tuple, path: Path, inputs, outputs, dims=None) -> None:
    """torch.onnx.export at OPSET, then stamped IR_VERSION (the graph uses nothing newer)."""
    import onnx

    with warnings.catch_warnings():  # torch notes each input that shares the prompts axis
        warnings.filterwarnings("ignore", "# The axis name")
        torch.onnx.export(
            module.eval(),
            args,
            path,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dims,
            opset_version=OPSET,
            external_data=False,  # one file: every SAM 2 size is under ONNX's 2 GB limit
            dynamo=True,
            verbose=False,
        )
    graph = onnx.load(path)
    graph.ir_version = IR_VERSION
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, path)


def export(sam, out: Path) -> list[Path]:
    """Write `sam` (in eval mode, on the CPU) as out/encoder.onnx and out/decoder.onnx."""
    size = sam.image_size
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = encode_images(sam, image)
    files = [out / "encoder.onnx", out / "decoder.onnx"]
    onnx_export(ImageEncoder(sam), (image,), files[0], ["image"], ENCODER_OUTPUTS)
    # example sizes above 1 so that torch.export keeps M, K and the flags' length symbolic
    m, k = torch.export.Dim("prompts", min=1), torch.export.Dim("points", min=1)
    flags = torch.export.Dim("mask_flags", min=1)
    example = (
        feats.image_embed,
        *feats.high_res,
        torch.rand(2, 3, 2) * size,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
        torch.zeros(2, 1, 4 * feats.image_embed.shape[-2], 4 * feats.image_embed.shape[-1]),
        torch.zeros(3),
    )
    dims = [None, None, None, {0: m, 1: k}, {0: m, 1: k}, {0: m}, {0: flags}]
    outputs = ["masks", "iou_predictions"]
    onnx_export(PromptDecoder(sam), example, files[1], DECODER_INPUTS, outputs, dims)
    return files


def write_configs(out: Path, name: str, display_name: str) -> list[Path]:
    """The model configs X-AnyLabeling (type segment_anything_2) and AnyLabeling (type
    segment_anything, which picks its SAM 2 client from the decoder's input names) load, with
    the graphs' paths relative to the config file."""
    common = {
        "name": name,
        "display_name": display_name,
        "encoder_model_path": "encoder.onnx",
        "decoder_model_path": "decoder.onnx",
    }
    configs = {
        out / "x-anylabeling.yaml": {"type": "segment_anything_2", **common},
        out / "anylabeling.yaml": {
            "type": "segment_anything",
            **common,
            "input_size": 1024,
            "max_width": 1024,
            "max_height": 1024,
        },
    }
    for path, config in configs.items():  # a JSON string or number is a YAML scalar too
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return list(configs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="model.pt from train.py, an official SAM 2 checkpoint, or 'none' (random weights)",
    )
    parser.add_argument(
        "--model", choices=list(MODELS), help="SAM 2 size; default: the one in --checkpoint"
    )
    parser.add_argument("--out", default="model_onnx", help="output folder")
    parser.add_argument(
        "--name", help="the model's name in the GUIs' model list; default: from the checkpoint"
    )
    args = parser.parse_args(argv)
    plain_warnings()
    out = check_writable(Path(args.out), parser)
    model = pick_model(args, parser)
    try:
        sam = load_model(model, args.checkpoint, "cpu")
    except (CheckpointError, ValueError) as e:
        parser.error(str(e))
    try:
        files = export(sam, out)
    except ImportError as e:  # torch's exporter needs onnx and onnxscript
        parser.error(f"ONNX export needs the onnx and onnxscript packages ({e})")
    ckpt = Path(args.checkpoint).resolve()
    source = (
        "random weights" if args.checkpoint.lower() == "none" else f"{ckpt.parent.name}/{ckpt.name}"
    )
    display = args.name or f"SAM 2 {model} ({source})"  # e.g. SAM 2 small (labpics/model.pt)
    files += write_configs(out, re.sub(r"\W+", "_", f"sam2_{model}_{source}").lower(), display)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
