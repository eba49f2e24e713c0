"""LoRA on the image encoder (peft) and the partial trunk: encode_until / encode_from, the merged
weights that model.pt holds, the unmerged state that checkpoint.pt holds, and which parameters
train. SAM 2.1 tiny with random weights at 128 px, as tests/test_video.py's small_sam."""

import warnings

import pytest
import torch

from model import (
    MODELS,
    CheckpointError,
    adapter_state,
    add_lora,
    base_state,
    cut_bytes,
    encode_frames,
    encode_from,
    encode_images,
    encode_until,
    freeze_for_finetune,
    load_lora_state,
    lora_first_block,
    merge_lora,
    predict_logits,
)

SIZE = 128


def small_sam(seed: int = 0):
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        over = [f"++model.image_size={SIZE}"]
        return build_sam2(MODELS["tiny"][0], None, device="cpu", hydra_overrides_extra=over)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def trained(sam, seed: int = 2) -> None:
    """Give the adapters values training could give (lora_B starts at zero: no effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if ".lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def max_diff(a, b) -> float:
    pairs = [(a.image_embed, b.image_embed), *zip(a.high_res, b.high_res)]
    assert all(x.shape == y.shape for x, y in pairs)
    return max((x - y).abs().max().item() for x, y in pairs)


def test_zero_adapters_give_the_frozen_model_exactly():
    sam, x = small_sam(), images()
    with torch.no_grad():
        before = encode_images(sam, x)
        params = add_lora(sam, rank=4, blocks=12, targets=("qkv", "proj"), alpha=8)
        after = encode_images(sam, x)
    assert len(params) == 12 * 2 * 2  # A and B on qkv and proj of every block
    assert lora_first_block(sam) == 0
    assert torch.equal(before.image_embed, after.image_embed)
    assert all(torch.equal(a, b) for a, b in zip(before.high_res, after.high_res))
    trained(sam)  # and the adapters do act once they are not zero
    with torch.no_grad():
        assert max_diff(encode_images(sam, x), before) > 1e-3


@pytest.mark.parametrize("lora", [False, True])
def test_partial_trunk_gives_encode_images(lora):
    sam, x = small_sam(), images()
    if lora:
        add_lora(sam, rank=4, blocks=9)  # the last two stages of tiny (1 + 2 + 7 + 2 blocks)
        trained(sam)
    # stages end at blocks 0, 2, 9, 11: cuts at a stage's start, inside one, at both ends
    cuts = (0, 1, 2, 3) if lora else (0, 3, 5, 10, 11, 12)
    with torch.no_grad():
        full, frames = encode_images(sam, x), encode_frames(sam, x)
        for k in cuts:
            cut = encode_until(sam, x, k)
            assert max_diff(encode_from(sam, cut), full) < 1e-5, k
            assert max_diff(encode_from(sam, cut.index([1, 0, 1])), full.index([1, 0, 1])) < 1e-5
            assert max_diff(encode_from(sam, cut, video=True), frames) < 1e-5, k
            assert cut.nbytes() == len(x) * cut_bytes(sam, k), k
    if lora:
        with pytest.raises(ValueError, match="past the first adapted block 3"):
            encode_until(sam, x, 4)


def test_cut_bytes_for_tiny_at_1024():
    """What the cache holds per image (fp32), from the shapes: the last stage's 2 blocks need
    stage 3's (64, 64, 384) plus the projected (32, 256, 256) and (64, 128, 128) maps."""
    sam = small_sam()
    high_res = (32 * 256 * 256 + 64 * 128 * 128) * 4
    assert cut_bytes(sam, 10, size=1024) == 384 * 64 * 64 * 4 + high_res  # 18 MiB
    assert cut_bytes(sam, 3, size=1024) == (192 * 128 * 128 + 32 * 256 * 256) * 4  # 20 MiB
    assert cut_bytes(sam, 0, size=1024) == 96 * 256 * 256 * 4  # 24 MiB
    assert cut_bytes(sam, 10, torch.bfloat16, size=1024) == cut_bytes(sam, 10, size=1024) // 2


def test_merged_weights_load_in_build_sam2_strictly_and_give_the_adapted_outputs():
    sam, x = small_sam(), images()
    add_lora(sam, rank=4, blocks=2, targets=("qkv", "proj"), alpha=16)
    trained(sam)
    with torch.no_grad():
        adapted = encode_images(sam, x)
        merged = merge_lora(sam)
        assert max_diff(encode_images(sam, x), adapted) == 0  # merging left the model as it was
    fresh = small_sam(seed=5)
    fresh.load_state_dict(merged)  # strict: SAM 2's own keys only
    assert set(merged) == set(fresh.state_dict())
    base = base_state(sam)
    key = "image_encoder.trunk.blocks.11.attn.qkv.weight"
    assert not torch.equal(merged[key], base[key])  # the adapted layers' weights did change
    with torch.no_grad():
        assert max_diff(encode_images(fresh, x), adapted) < 1e-5


def test_checkpoint_state_resumes_bit_for_bit():
    sam, x = small_sam(), images()
    add_lora(sam, rank=4, blocks=2)
    trained(sam)
    base, adapters = base_state(sam), adapter_state(sam)
    assert adapters and all(".lora_" in k for k in adapters)
    assert set(base) == set(small_sam().state_dict())
    again = small_sam(seed=7)  # other random weights everywhere: all must come from the files
    add_lora(again, rank=4, blocks=2)
    load_lora_state(again, base, adapters, "checkpoint.pt")
    a, b = sam.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert max_diff(encode_images(again, x), encode_images(sam, x)) == 0
    other = small_sam()
    add_lora(other, rank=2, blocks=2)
    with pytest.raises(CheckpointError, match="checkpoint.pt does not fit: .*wrong-shape"):
        load_lora_state(other, base, adapters, "checkpoint.pt")


def test_only_adapters_of_the_encoder_get_gradients():
    sam, x = small_sam(), images()
    freeze_for_finetune(sam)
    params = add_lora(sam, rank=4, blocks=2, targets=("qkv", "proj"))
    trained(sam)  # lora_B = 0 would leave lora_A's gradient zero
    with torch.no_grad():
        cut = encode_until(sam, x, lora_first_block(sam))
    feats = encode_from(sam, cut)
    points = torch.tensor([[30.0, 40.0], [90.0, 20.0]])
    sizes = torch.tensor([[SIZE, SIZE]] * 2)
    low_res, scores = predict_logits(sam, feats, torch.tensor([0, 1]), points, sizes)
    (low_res.square().mean() + scores.sum()).backward()
    got = {n for n, p in sam.named_parameters() if p.grad is not None}
    adapters = {n for n, p in sam.named_parameters() if any(p is q for q in params)}
    assert {n for n in got if n.startswith("image_encoder.")} == adapters
    assert all(p.grad.abs().sum() > 0 for p in params)
    assert not any(
        n.startswith(("sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")) for n in got
    )
    assert any(n.startswith("sam_mask_decoder.") for n in got)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert got <= trainable and adapters <= trainable


def test_add_lora_bounds():
    sam = small_sam()
    assert add_lora(sam, rank=0, blocks=99) == [] and lora_first_block(sam) is None
    for kw, msg in [
        (dict(rank=4, blocks=13), r"blocks must be 1..12 .* got 13"),
        (dict(rank=4, blocks=0), r"blocks must be 1..12"),
        (dict(rank=97, blocks=12), r"rank must be 1..96 .* got 97"),
        (dict(rank=-1, blocks=2), r"rank must be 1..384"),
        (dict(rank=4, blocks=2, targets=("mlp",)), r"targets must be among qkv, proj"),
        (dict(rank=4, blocks=2, dropout=1.0), r"dropout must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            add_lora(sam, **kw)
    add_lora(sam, rank=4, blocks=2)
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        add_lora(sam, rank=4, blocks=2)
