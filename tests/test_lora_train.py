"""train.py with --lora-rank (issue 27) on the CPU, SAM 2.1 tiny with random weights: model.pt
holds the merged weights (SAM 2's own keys, loaded strictly by build_sam2, giving the adapted
model's outputs), a frozen run leaves the encoder as it was, only adapters, prompt encoder and
decoder get gradients, kill -9 and --resume give the uninterrupted run bit for bit, and
export.py exports a LoRA model.pt."""

import dataclasses
import re
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from test_train import FAST, logged_step, run, start, wait_until

import data
import train
from model import (
    MODELS,
    encode_from,
    encode_images,
    encode_until,
    load_model,
    lora_first_block,
    predict_logits,
)
from plumbing.checkpoints import match_model_pt
from recipes import RECIPES, sample_batch

# rank 4 on qkv and proj of the last stage (blocks 10, 11); a high lr so that 3 steps move them
LORA = ["--lora-rank", "4", "--lora-blocks", "2", "--lora-targets", "qkv,proj"]
LORA += ["--lora-alpha", "8", "--lr", "1e-3"]
QUICK = [*FAST, "--eval-clicks", "0", "--eval-every", "0", "--save-every", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return data.make_demo(tmp_path_factory.mktemp("demo"), n_train=2, n_test=1)


@pytest.fixture(scope="module")
def lora_run(demo, tmp_path_factory):
    """An uninterrupted 3-step LoRA run."""
    out = tmp_path_factory.mktemp("lora")
    summary = run(["--data", str(demo), "--out", str(out), "--steps", "3", *QUICK, *LORA])
    return out, summary


def base_weights() -> dict:
    torch.manual_seed(0)  # train.build's random init (--seed 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("tiny", "none").state_dict()


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_lora_changes_the_adapted_encoder_weights(lora_run):
    """Only the adapted layers' weights change in the encoder (a frozen run with the same seed
    leaves all of them as they were: test_train.test_only_decoder_and_prompt_encoder_change)."""
    base = base_weights()
    lora = weights(lora_run[0] / "model.pt")
    assert lora.keys() == base.keys()  # SAM 2's own keys: no lora_A / base_layer
    changed = {k for k in base if not torch.equal(lora[k], base[k])}
    assert {k for k in changed if k.startswith("image_encoder.")} == {
        f"image_encoder.trunk.blocks.{b}.attn.{t}.weight" for b in (10, 11) for t in ("qkv", "proj")
    }
    assert all(k.startswith(("image_encoder.", "sam_mask_decoder", "sam_prompt")) for k in changed)
    assert not any(".conv_s0." in k or ".conv_s1." in k for k in changed)
    ck = torch.load(lora_run[0] / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ck["model"][k], base[k]) for k in base if k.startswith("image_enc"))
    assert len(ck["adapters"]) == 8 and ck["config"]["lora_rank"] == 4  # A, B x 2 layers x 2


def test_model_pt_loads_strictly_and_gives_the_adapted_outputs(lora_run):
    """build_sam2 loads model.pt strictly; its outputs are the LoRA model's (1e-5, fp32), also
    on the partial cache's cut (report_best scores best.pt that way)."""
    from sam2.build_sam import build_sam2

    out, summary = lora_run
    adapted = summary["model"].eval()
    disk = build_sam2(MODELS["tiny"][0], str(out / "model.pt"), device="cpu")  # strict
    img = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    args = (torch.tensor([0, 0]), torch.tensor([[10.0, 10.0], [150.0, 100.0]]))
    args += (torch.tensor([[200, 300]]),)
    with torch.no_grad():
        fa, fb = encode_images(adapted, [img]), encode_images(disk, [img])
        torch.testing.assert_close(fb.image_embed, fa.image_embed, rtol=0, atol=1e-5)
        for a, b in zip(fa.high_res, fb.high_res):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        a, b = predict_logits(adapted, fa, *args), predict_logits(disk, fb, *args)
        torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-5)
        cut = encode_until(adapted, [img], lora_first_block(adapted))
        on_cut = encode_from(disk, cut)
        torch.testing.assert_close(on_cut.image_embed, fa.image_embed, rtol=0, atol=1e-5)


def test_match_model_pt_merges_checkpoint_pt(lora_run, tmp_path):
    """A kill between the renames of a save: model.pt is rebuilt from checkpoint.pt's unmerged
    weights and adapters, merged as the live model merged them."""
    out, _ = lora_run
    shutil.copy(out / "checkpoint.pt", tmp_path / "checkpoint.pt")
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    with pytest.warns(UserWarning, match="rewritten"):
        match_model_pt(tmp_path, ck)
    a, b = weights(out / "model.pt"), weights(tmp_path / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-7, msg=k)


def test_only_adapters_prompt_encoder_and_decoder_get_gradients(demo):
    """A real step of each image recipe (cache, batch, recipe, backward) with LoRA: gradients
    reach only the adapters, the prompt encoder and the decoder (not conv_s0/s1), and the
    optimizer holds exactly the trainable parameters."""
    argv = ["--data", str(demo), "--out", "unused", "--clicks", "1", *QUICK, *LORA]
    cfg = train.parse_args(argv)
    ctx = train.Context(0, 1, torch.device("cpu"), cfg.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam, opt, *_ = train.build(cfg, ctx, None)
    trainable = {id(p) for p in sam.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    with torch.no_grad():  # lora_B starts at zero: lora_A's gradient would be zero too
        for n, p in sam.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.01)
    train_set, _ = train.open_data(cfg)
    cache = train.feature_cache(train_set, [0, 1], cfg, sam, ctx.device)
    assert cache.images[0].feats.first_block == 10  # the cut, not the features
    for recipe in ("article", "interactive"):  # the image recipes train the same parameters
        sam.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(0)
        batch = sample_batch(cache.get([0, 1]), cfg.max_masks, gen)
        loss, _ = RECIPES[recipe].run(sam, batch, RECIPES[recipe].take(cfg), gen)
        loss.backward()
        got = {n for n, p in sam.named_parameters() if p.grad is not None and p.grad.any()}
        assert {n for n in got if n.startswith("image_encoder.")} == {
            f"image_encoder.trunk.blocks.{b}.attn.{t}.lora_{ab}.default.weight"
            for b in (10, 11)
            for t in ("qkv", "proj")
            for ab in "AB"
        }, recipe
        assert all(n.startswith(("image_encoder.", "sam_mask_decoder.", "sam_prompt")) for n in got)
        assert not any(".conv_s0." in n or ".conv_s1." in n for n in got)
        assert {id(p) for n, p in sam.named_parameters() if n in got} <= trainable


def test_sigkill_then_resume_equals_uninterrupted(demo, lora_run, tmp_path):
    """kill -9 mid-run, then --resume to the uninterrupted run's step: the same model.pt and the
    same unmerged adapters, bit for bit."""
    out = tmp_path / "run"
    args = ["--data", str(demo), "--out", str(out), *QUICK, *LORA]
    proc = start([*args, "--steps", "50"], tmp_path / "err.txt")
    try:
        wait_until(proc, lambda: logged_step(out) >= 2, "step 2")  # step 1 is saved
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 3
    run([*args, "--steps", "3", "--resume"])
    a, b = weights(lora_run[0] / "model.pt"), weights(out / "model.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    ca = torch.load(lora_run[0] / "checkpoint.pt", weights_only=True)
    cb = torch.load(out / "checkpoint.pt", weights_only=True)
    for k in ca["adapters"]:
        torch.testing.assert_close(cb["adapters"][k], ca["adapters"][k], rtol=0, atol=0, msg=k)


def test_resume_refuses_other_adapters(demo, lora_run):
    out, _ = lora_run
    argv = ["--data", str(demo), "--out", str(out), *QUICK, *LORA, "--steps", "4", "--resume"]
    with pytest.raises(SystemExit, match=r"--lora-rank: 4 in the checkpoint, 8 now"):
        run([*argv, "--lora-rank", "8"])
    with pytest.raises(SystemExit, match=r"--lora-blocks: 2 in the checkpoint, 9 now"):
        run([*argv, "--lora-blocks", "9"])


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--lora-rank", "4", "--train-encoder"], "--lora-rank with --train-encoder"),
        (["--lora-rank", "4", "--lora-blocks", "13"], r"--lora-blocks must be 1..12 .*tiny"),
        (["--lora-rank", "300"], r"--lora-rank 300 is over 256"),
        (["--lora-rank", "-1"], r"--lora-rank must be >= 0"),
        (["--lora-rank", "4", "--lora-targets", "qkv,mlp"], r"--lora-targets must be .*qkv, p"),
        (["--lora-rank", "4", "--lora-alpha", "0"], r"--lora-alpha must be a positive number"),
        (["--lora-rank", "4", "--lora-dropout", "1"], r"--lora-dropout must be in \[0, 1\)"),
    ],
)
def test_bad_lora_flags(argv, msg, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "x", "--model", "tiny", *argv])
    assert re.search(msg, capsys.readouterr().err)


def test_config_records_the_adapters():
    cfg = train.Config(data="x", model="tiny", lora_rank=4, lora_targets="qkv, proj")
    assert cfg.targets() == ("qkv", "proj")
    assert {"lora_rank", "lora_blocks", "lora_targets", "lora_alpha", "lora_dropout"} <= {
        f.name for f in dataclasses.fields(cfg)
    }
