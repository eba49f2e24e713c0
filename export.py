"""Export a (fine-tuned) SAM 2 to ONNX: its image encoder and its prompt decoder, for
onnxruntime and the other ONNX runtimes.

    python export.py --checkpoint runs/labpics/model.pt --out model_onnx/

--model defaults to the one stored in the checkpoint (as in infer.py). Writes two graphs (fp32):

encoder.onnx
    image (1, 3, 1024, 1024) float32: the RGB image resized to 1024x1024, scaled to 0..1 and
    normalized with ImageNet's mean and std (what SAM 2's transforms and model.preprocess make)
    -> image_embed (1, 256, 64, 64), high_res_feats_0 (1, 32, 256, 256),
       high_res_feats_1 (1, 64, 128, 128)
decoder.onnx, M prompts (one mask each) of K points, both dynamic
    image_embed, high_res_feats_0, high_res_feats_1: the encoder's outputs;
    point_coords (M, K, 2) float32: (x, y) in the original image's pixels;
    point_labels (M, K) float32: 1 click, 0 background click, 2 and 3 a box's top-left and
        bottom-right corner, -1 padding;
    mask_input (M, 1, 256, 256) float32: a previous prediction's logits, used where
    has_mask_input (M,) float32 is 1 (0: no mask prompt);
    orig_im_size (2,) int64: the original image's [H, W]
    -> masks (M, 3, 256, 256) low-res logits (SAM's three candidates: upscale bilinearly to
       [H, W] and threshold at 0), iou_predictions (M, 3)

Needs `pip install onnx onnxscript` (and onnxruntime to run the graphs).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from infer import check_writable, pick_model
from model import MODELS, CheckpointError, encode_images, load_model, plain_warnings

ENCODER_OUTPUTS = ["image_embed", "high_res_feats_0", "high_res_feats_1"]
DECODER_INPUTS = [
    *ENCODER_OUTPUTS,
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]


class ImageEncoder(torch.nn.Module):
    """Normalized (B, 3, 1024, 1024) images -> the decoder's three feature maps."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor):
        feats = encode_images(self.sam, image)
        return feats.image_embed, *feats.high_res


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
        orig_im_size,
    ):
        pe = self.sam.sam_prompt_encoder
        coords = point_coords * (self.sam.image_size / orig_im_size.flip(0).to(point_coords))
        sparse, no_mask = pe(points=(coords, point_labels), boxes=None, masks=None)
        has = has_mask_input.view(-1, 1, 1, 1)
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
        return masks, scores


def export(sam, out: Path) -> list[Path]:
    """Write `sam` (in eval mode, on the CPU) as out/encoder.onnx and out/decoder.onnx."""
    size = sam.image_size
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = encode_images(sam, image)
    files = [out / "encoder.onnx", out / "decoder.onnx"]
    torch.onnx.export(
        ImageEncoder(sam).eval(),
        (image,),
        files[0],
        input_names=["image"],
        output_names=ENCODER_OUTPUTS,
        external_data=False,  # one file: every SAM 2 size is under ONNX's 2 GB limit
        dynamo=True,
        verbose=False,
    )
    # example sizes above 1 so that torch.export keeps M and K symbolic
    m, k = torch.export.Dim("prompts", min=1), torch.export.Dim("points", min=1)
    example = (
        feats.image_embed,
        *feats.high_res,
        torch.rand(2, 3, 2) * size,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
        torch.zeros(2, 1, 4 * feats.image_embed.shape[-2], 4 * feats.image_embed.shape[-1]),
        torch.zeros(2),
        torch.tensor([size, size]),
    )
    dims = [None, None, None, {0: m, 1: k}, {0: m, 1: k}, {0: m}, {0: m}, None]
    with warnings.catch_warnings():  # torch notes each input that shares the prompts axis
        warnings.filterwarnings("ignore", "# The axis name")
        torch.onnx.export(
            PromptDecoder(sam).eval(),
            example,
            files[1],
            input_names=DECODER_INPUTS,
            output_names=["masks", "iou_predictions"],
            dynamic_shapes=dims,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    return files


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
    args = parser.parse_args(argv)
    plain_warnings()
    out = check_writable(Path(args.out), parser)
    try:
        sam = load_model(pick_model(args, parser), args.checkpoint, "cpu")
    except (CheckpointError, ValueError) as e:
        parser.error(str(e))
    try:
        files = export(sam, out)
    except ImportError as e:  # torch's exporter needs onnx and onnxscript
        parser.error(f"ONNX export needs the onnx and onnxscript packages ({e})")
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
