"""train.py --recipe video: Meta's optimizer (weight-decay groups, cosine lr, clipping, clips
accumulated a step), the memory check before the first step, and the run's last line when no
validation video can be scored. Tiny runs as in test_video_train.py."""

import copy
import csv
import dataclasses
import io
import math
import re
import shutil
import warnings

import pytest
import torch
from test_video import small_sam

import data
import plumbing.cache
import plumbing.video
import train

FAST = ["--model", "tiny", "--checkpoint", "none", "--device", "cpu", "--recipe", "video"]
FAST += ["--frames", "3", "--objects", "2", "--clicks", "1", "--eval-every", "0"]
FAST += ["--log-every", "1", "--eval-clicks", "0", "--ignore-memory"]
GIB = 2**30


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


def quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def test_video_defaults_are_metas_image_defaults_the_articles():
    v = train.parse_args(["--data", "x", "--recipe", "video"])
    assert (v.lr, v.weight_decay, v.lr_schedule, v.clip_grad) == (5e-6, 0.1, "cosine", 0.1)
    assert (v.batch_size, v.accumulate, v.frames, v.objects) == (1, 8, 8, 3)
    for recipe in ("article", "interactive"):
        a = train.parse_args(["--data", "x", "--recipe", recipe])
        assert (a.lr, a.weight_decay, a.lr_schedule, a.clip_grad, a.accumulate) == (
            1e-5,
            4e-5,
            "constant",
            0.0,
            1,
        )
    demo = train.parse_args(["--demo", "--recipe", "video"])
    assert (demo.accumulate, demo.lr_schedule) == (1, "cosine")  # 6 short steps on a CPU
    for bad in (["--frames", "65"], ["--objects", "17"], ["--accumulate", "65"]):
        with pytest.raises(SystemExit):
            quiet(train.parse_args, ["--data", "x", "--recipe", "video", *bad])
    with pytest.raises(ValueError, match="--accumulate is for --recipe video"):
        train.Config(data="x", accumulate=2)
    with pytest.raises(ValueError, match="--objects 17 is over 16"):
        train.Config(data="x", recipe="video", objects=17)


def test_weight_decay_groups_and_resume_keep_them(base, tmp_path, monkeypatch):
    """Meta's groups: no decay on '*bias*' names and torch.nn.LayerNorm's parameters (that exact
    class: LayerNorm2d's weight decays, as in Meta's trainer); a resume with another
    --weight-decay changes the first group only."""
    monkeypatch.setattr(train, "load_model", lambda *args: copy.deepcopy(base))
    cfg = train.parse_args(["--data", "x", "--recipe", "video", "--model", "tiny"])
    ctx = train.Context(0, 1, torch.device("cpu"), tmp_path)
    sam, opt, scaler, gen, state = quiet(train.build, cfg, ctx, None)
    names = {id(p): n for n, p in sam.named_parameters()}
    decay, plain = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert set(decay) | set(plain) == {n for n, p in sam.named_parameters() if p.requires_grad}
    assert not any(n.startswith("image_encoder.") for n in decay + plain)
    assert all("bias" not in n for n in decay) and any(n.endswith(".bias") for n in plain)
    ln = "memory_attention.layers.0.norm1.weight"  # torch.nn.LayerNorm
    ln2d = "sam_mask_decoder.output_upscaling.1.weight"  # SAM 2's LayerNorm2d
    assert type(sam.get_submodule(ln2d.rsplit(".", 1)[0])).__name__ == "LayerNorm2d"
    assert ln in plain and ln2d in decay and "memory_attention.layers.0.linear1.weight" in decay
    image = train.Config(data="x", model="tiny")
    _, opt, *_ = quiet(train.build, image, ctx, None)
    assert [g["weight_decay"] for g in opt.param_groups] == [4e-5]  # one group, as before
    state.step = 1  # a checkpoint as save_checkpoint writes it, kept in memory
    ck = {"model": sam.state_dict(), "config": dataclasses.asdict(cfg), "state": vars(state)}
    ck |= {"optimizer": opt_video(sam, cfg).state_dict(), "scaler": scaler.state_dict()}
    ck["gen_states"] = [gen.get_state()]
    again = dataclasses.replace(cfg, weight_decay=0.2)
    assert train.resume_changes(ck["config"], again) == ([], [("weight_decay", 0.1, 0.2)])
    _, opt, *_ = quiet(train.build, again, ctx, ck)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    refused, _ = train.resume_changes(ck["config"], dataclasses.replace(cfg, accumulate=4))
    assert refused == [("accumulate", 8, 4)]  # the clips a step: what the run trains


def opt_video(sam, cfg):
    return torch.optim.AdamW(train.video_param_groups(sam, cfg.weight_decay), lr=cfg.lr)


def test_cosine_lr_meta_scheduler_values():
    """fvcore's CosineParamScheduler at where = step / steps: 5e-6 -> 5e-7."""
    cfg = train.Config(data="x", recipe="video", lr=5e-6, lr_schedule="cosine", steps=100)
    assert train.lr_at(cfg, 0) == pytest.approx(5e-6, rel=1e-12)
    assert train.lr_at(cfg, 50) == pytest.approx(2.75e-6, rel=1e-12)
    assert train.lr_at(cfg, 99) == pytest.approx(5e-7 + 2.25e-6 * (1 + math.cos(0.99 * math.pi)))
    assert train.lr_at(cfg, 100) == pytest.approx(5e-7, rel=1e-12)
    lrs = [train.lr_at(cfg, s) for s in range(101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    flat = train.Config(data="x", lr=1e-5, steps=100)
    assert {train.lr_at(flat, s) for s in (0, 50, 99)} == {1e-5}


def test_gradient_norm_clipped_at_clip_grad():
    """finish_step clips the L2 norm of all trained gradients to --clip-grad, then steps."""
    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for clip, expect in ((0.1, 0.1), (0.0, None)):
        opt = torch.optim.AdamW([{"params": w[:1]}, {"params": w[1:]}], lr=0.0)
        grads = [torch.full((5,), 3.0), torch.full((3,), -4.0)]
        for p, g in zip(w, grads):
            p.grad = g.clone()
        cfg = train.Config(data="x", recipe="video", clip_grad=clip)
        loss = train.finish_step(torch.tensor(1.0), opt, scaler, cfg)
        norm = torch.linalg.vector_norm(torch.cat([p.grad for p in w]))
        full = torch.linalg.vector_norm(torch.cat(grads))
        assert loss == 1.0 and norm.item() == pytest.approx(expect or full.item(), rel=1e-5)
        if expect:  # the direction is kept
            torch.testing.assert_close(w[1].grad / w[0].grad[0], grads[1] / grads[0][0])
    w[0].grad[0] = float("nan")  # still skipped when not finite
    assert train.finish_step(torch.tensor(1.0), opt, scaler, cfg) is None


def test_accumulated_clips_average_over_every_object(clips, base, tmp_path):
    """--accumulate 2: the step's gradient is the mean loss's over the objects of both clips,
    i.e. each clip's mean-loss gradient weighted by its objects (Meta's normalization)."""
    cfg = train.Config(data=str(clips), recipe="video", frames=3, objects=2, clicks=1)
    cfg.accumulate, cfg.batch_size = 2, 1
    sam = copy.deepcopy(base)
    train.freeze_for_video(sam)
    ctx = train.Context(0, 1, torch.device("cpu"), tmp_path)
    cache = quiet(train.clip_cache, data.load_videos(clips, "train"), [0, 1], cfg, sam, ctx.device)
    trainer, scaler = train.Trainable(sam), torch.amp.GradScaler("cpu", enabled=False)
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: weights stay, gradients are kept

    def step(parts, gen):
        loss, iou = train.video_step(trainer, parts, cache, opt, scaler, cfg, gen, ctx)
        return (
            loss,
            len(iou),
            [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params],
        )

    both, n, g = step([[0], [1]], torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws, one clip a step
    (l0, n0, g0), (l1, n1, g1) = step([[0]], gen), step([[1]], gen)
    assert n == n0 + n1 and both.item() == pytest.approx((n0 * l0 + n1 * l1).item() / n, 1e-6)
    for a, b, c in zip(g, g0, g1):
        torch.testing.assert_close(a, (n0 * b + n1 * c) / n, rtol=1e-4, atol=1e-9)
    assert any(a.abs().sum() > 0 for a in g)


def test_free_memory_is_memavailable(monkeypatch):
    """A full page cache leaves MemFree near 0: the check reads MemAvailable."""
    meminfo = "MemTotal:  24000000 kB\nMemFree:     100000 kB\nMemAvailable: 7340032 kB\n"
    real = open
    monkeypatch.setattr(
        plumbing.cache,
        "open",
        lambda path, *a, **k: io.StringIO(meminfo) if path == "/proc/meminfo" else real(path),
        raising=False,
    )
    assert train.free_bytes(torch.device("cpu")) == 7 * GIB


def test_refuses_before_first_step_with_flags_that_fit(clips, small, tmp_path, monkeypatch, capsys):
    """Too little memory for the estimate: the run refuses before anything is written, naming
    flags that fit; with them it trains, on Meta's cosine lr (and, with no validation video to
    score, says why best.pt is the base model); --ignore-memory only warns."""
    per = train.object_frame_bytes(torch.device("cpu"), 64)  # fp32, 64 px: 6 MiB
    assert per == 1.5 * GIB / 256
    free = 3.2 * per  # 3 object-frames
    monkeypatch.setattr(plumbing.video, "free_bytes", lambda device: free)
    no_val = shutil.copytree(clips, tmp_path / "no_val")
    (no_val / "ImageSets" / "2017" / "val.txt").write_text("")
    argv = ["--data", str(no_val), *FAST[:-1], "--batch-size", "2", "--accumulate", "1"]
    argv += ["--steps", "2", "--lr", "1e-4", "--out", str(tmp_path / "a")]
    with pytest.raises(SystemExit) as e:
        quiet(train.main, argv)
    text = str(e.value)
    assert "needs about 72.0 MiB of RAM (fp32 on the CPU)" in text  # 2 x 3 x 2 x 6 MiB
    assert "19.2 MiB are available" in text
    assert "These fit: --batch-size 1 --accumulate 2 --objects 1 " in text
    assert "--ignore-memory" in text and not (tmp_path / "a").exists()
    flags = re.search(r"These fit: (.*?) \(", text)[1].split()
    cfg = train.parse_args([*argv, *flags])
    assert train.video_step_bytes(cfg, per) <= free
    capsys.readouterr()
    assert quiet(train.main, [*argv, *flags]) is None and (tmp_path / "a" / "model.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [r["step"] for r in rows] == ["0", "1", "2"] and float(rows[1]["loss"]) > 0
    assert [float(r["lr"]) for r in rows[1:]] == [1e-4, pytest.approx(5.5e-5)]  # cosine
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "No val J&F: there is no validation split" in last
    assert "best.pt stays the base model (step 0)" in last and "best val" not in last
    ignore = dataclasses.replace(cfg, batch_size=2, objects=2, ignore_memory=True)
    ctx = train.Context(0, 1, torch.device("cpu"), tmp_path)
    with pytest.warns(UserWarning, match="72.0 MiB .* going on \\(--ignore-memory\\)"):
        train.check_video_memory(ignore, ctx, 64)
    with pytest.raises(ValueError, match="These fit"):
        train.check_video_memory(dataclasses.replace(ignore, ignore_memory=False), ctx, 64)


def test_no_fitting_flags_says_so():
    cfg = train.Config(data="x", recipe="video", **train.VIDEO)  # as the command line's
    cpu = train.object_frame_bytes(torch.device("cpu"))  # fp32 at 1024 px
    assert cpu == 1.5 * GIB and train.video_step_bytes(cfg, cpu) == 36 * GIB
    assert train.fitting_flags(cfg, cpu, 2.9 * GIB) is None
    assert train.fitting_flags(cfg, cpu, 3.0 * GIB) == "--frames 2 --objects 1"
    assert train.fitting_flags(cfg, cpu, 16 * GIB) == "--frames 5 --objects 2"
    assert train.fitting_flags(cfg, cpu, 36 * GIB) == ""  # fits as it is
    notebook = train.Config(data="x", recipe="video")  # Config's batch of 4: kept 4 clips a step
    flags = train.fitting_flags(notebook, cpu, 3.0 * GIB)
    assert flags == "--batch-size 1 --accumulate 4 --frames 2 --objects 1"
