"""train.py on the CPU with SAM 2.1 tiny, random weights, and a small demo dataset."""

import copy
import csv
import dataclasses
import errno
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench
import data
import recipes
import train
from model import MODELS, encode_images, freeze_for_finetune, predict_logits

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--model",
    "tiny",
    "--checkpoint",
    "none",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--batch-size",
    "2",
    "--max-masks",
    "3",
    "--log-every",
    "1",
    "--eval-clicks",
    "2",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return data.make_demo(tmp_path_factory.mktemp("demo"), n_train=3, n_test=1)


def run(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train.train(train.parse_args(argv))


@pytest.fixture(scope="module")
def base_run(demo, tmp_path_factory):
    """An uninterrupted 4-step run (checkpoints every 2 steps)."""
    out = tmp_path_factory.mktemp("base")
    summary = run(
        [
            "--data",
            str(demo),
            "--out",
            str(out),
            "--steps",
            "4",
            "--save-every",
            "2",
            "--eval-every",
            "2",
            *FAST,
        ]
    )
    return out, summary


def trainable(sd):
    return {k: v for k, v in sd.items() if k.startswith(("sam_mask_decoder", "sam_prompt"))}


def test_outputs_and_log(base_run):
    out, summary = base_run
    for name in ("checkpoint.pt", "model.pt", "best.pt", "log.csv", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.part"))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["val_iou"] and rows[2]["val_iou"] and rows[4]["val_iou"]
    assert all(float(r["loss"]) > 0 for r in rows[1:])
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and ck["config"]["steps"] == 4 and ck["model_name"] == "tiny"
    assert ck["config"]["lr"] == 1e-5 and ck["config"]["weight_decay"] == 4e-5
    assert summary["step"] == 4 and 0 <= summary["first_iou"] <= 1


def test_model_pt_loads_with_build_sam2_and_predicts_the_same(base_run):
    from sam2.build_sam import build_sam2

    out, summary = base_run
    mem = summary["model"].eval()
    disk = build_sam2(MODELS["tiny"][0], str(out / "model.pt"), device="cpu")
    from model import encode_images

    img = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    args = (
        torch.tensor([0, 0]),
        torch.tensor([[10.0, 10.0], [150.0, 100.0]]),
        torch.tensor([[200, 300]]),
    )
    with torch.no_grad():
        a = predict_logits(mem, encode_images(mem, [img]), *args)
        b = predict_logits(disk, encode_images(disk, [img]), *args)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_only_decoder_and_prompt_encoder_change(base_run):
    out, _ = base_run
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from model import load_model

        init = load_model("tiny", "none").state_dict()
    final = torch.load(out / "model.pt", weights_only=True)["model"]
    changed = {k for k in final if not torch.equal(final[k], init[k])}
    assert changed and all(k.startswith(("sam_mask_decoder", "sam_prompt")) for k in changed)
    assert not any("conv_s0" in k or "conv_s1" in k for k in changed)


def test_resume_equals_uninterrupted(demo, base_run, tmp_path):
    out, _ = base_run
    common = [
        "--data",
        str(demo),
        "--out",
        str(tmp_path),
        "--save-every",
        "2",
        "--eval-every",
        "0",
        *FAST,
    ]
    run([*common, "--steps", "2"])
    with pytest.raises(SystemExit, match="--resume"):  # never overwrites a run by accident
        run([*common, "--steps", "4"])
    summary = run([*common, "--steps", "4", "--resume"])
    assert summary["step"] == 4
    a = trainable(torch.load(out / "model.pt", weights_only=True)["model"])
    b = trainable(torch.load(tmp_path / "model.pt", weights_only=True)["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    # the running means and the clock carry over: the same curve as the uninterrupted run
    base_rows = list(csv.DictReader(open(out / "log.csv")))
    for r, b in zip(rows[1:], base_rows[1:]):
        assert float(r["loss"]) == pytest.approx(float(b["loss"]), abs=2e-5), r["step"]
        assert float(r["train_iou"]) == pytest.approx(float(b["train_iou"]), abs=2e-4)
    secs = [float(r["seconds"]) for r in rows]
    assert secs == sorted(secs)


class Trap:
    """Unpickling this runs a shell command (as a malicious checkpoint would)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_from_a_corrupt_checkpoint_names_it(demo, tmp_path):
    argv = ["--data", str(demo), "--out", str(tmp_path), "--steps", "2", "--resume", *FAST]
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(SystemExit, match=r"cannot resume from .*checkpoint\.pt"):
        train.main(argv)
    torch.save({"config": {}, "x": Trap(tmp_path / "ran")}, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match=r"checkpoint\.pt is not a plain weights file") as e:
        train.main(argv)
    assert "weights_only" not in str(e.value) and not (tmp_path / "ran").exists()


def test_resume_refuses_what_changes_the_training(demo, base_run):
    """An article run resumed as an interactive one (whose loss was silently averaged into the
    article's): refused before anything is written, each difference named, with the flags that
    continue the run as it was."""
    out, _ = base_run
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    argv = ["--data", str(demo), "--out", str(out), *FAST, "--steps", "6", "--resume"]
    with pytest.raises(SystemExit) as e:
        train.main([*argv, "--recipe", "interactive", "--clicks", "2", "--max-masks", "5"])
    msg = str(e.value)
    assert "--recipe: article in the checkpoint, interactive now" in msg
    assert "--clicks: 7 in the checkpoint, 2 now" in msg
    assert "--max-masks: 3 in the checkpoint, 5 now" in msg
    assert "give its values (--max-masks 3, --recipe article, --clicks 7)" in msg
    assert "new run with another --out" in msg and "--steps" not in msg
    with pytest.raises(SystemExit, match=r"--seed: 0 in the checkpoint, 1 now"):
        train.main([*argv, "--seed", "1", "--train-encoder"])
    assert (out / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_every_config_field_is_refused_or_allowed_on_resume(demo, tmp_path):
    """What --resume may change is a list; every other field, including any added later (a
    subclass stands for it here), is refused."""
    cfg = train.Config(data=str(demo))
    allowed = {"steps", "minutes", "lr", "weight_decay", "save_every", "eval_every", "log_every"}
    allowed |= {"amg_images"}  # what the end of an --auto-decoder run scores
    allowed |= {"device", "workers", "cache", "encode_batch", "lr_schedule", "clip_grad"}
    must_refuse = {"data", "model", "checkpoint", "batch_size", "max_masks", "recipe", "clicks"}
    must_refuse |= {"seed", "score_weight", "max_side", "min_area", "complex", "train_encoder"}
    must_refuse |= {"frames", "objects", "accumulate", "normalize", "channels", "tile"}
    must_refuse |= {"tile_overlap", "auto_decoder", "lora_rank", "lora_blocks", "lora_targets"}
    must_refuse |= {"lora_alpha", "lora_dropout"}
    refused_seen = set()
    for f in dataclasses.fields(cfg):
        saved = dataclasses.asdict(cfg) | {f.name: "other"}
        refused, changed = train.resume_changes(saved, cfg)
        refused_seen |= {r[0] for r in refused}
        if f.name in ("out", "resume", "demo", "ignore_memory"):  # how this process started
            assert refused == changed == [], f.name
        elif f.name in allowed:
            assert refused == [] and changed == [(f.name, "other", getattr(cfg, f.name))]
        else:
            assert refused == [(f.name, "other", getattr(cfg, f.name))] and changed == []
    assert must_refuse <= refused_seen and "eval_clicks" in refused_seen
    later = dataclasses.make_dataclass("Later", [("frames", int, 8)], bases=(train.Config,))
    new = later(data=str(demo))
    assert train.resume_changes(dataclasses.asdict(cfg), new) == ([], [])  # absent: the default
    saved = dataclasses.asdict(new) | {"frames": 16}
    assert train.resume_changes(saved, new) == ([("frames", 16, 8)], [])
    same_folder = train.Config(data=str(demo) + "/.")  # one folder, spelled another way
    assert train.resume_changes(dataclasses.asdict(cfg), same_folder) == ([], [])


def cached(sam, samples) -> list:
    """CachedImages of `samples` on the CPU, fp32 (what train.FeatureCache holds)."""
    with torch.no_grad():
        feats = encode_images(sam, [s.image for s in samples])
    return [
        train.CachedImage(
            feats.index([k]),
            torch.from_numpy(s.masks),
            torch.from_numpy(s.points),
            s.image.shape[:2],
        )
        for k, s in enumerate(samples)
    ]


def test_loss_falls(demo):
    """A few dozen steps on cached demo features lower the loss."""
    cfg = train.parse_args(["--data", str(demo), "--out", "unused", *FAST, "--lr", "1e-4"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from model import load_model

        sam = load_model("tiny", "none")
    params = freeze_for_finetune(sam)
    sam.train()
    ds = data.load_split(demo, "train")
    cache = train.feature_cache(ds, list(range(len(ds))), cfg, sam, torch.device("cpu"), False)
    assert cache.mode == "cpu" and len(cache.images) == len(cache.ids) == 3
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(0)
    fixed = cache.get(cache.ids)

    def fixed_loss():
        with torch.no_grad():
            batch = train.sample_batch(fixed, 3, torch.Generator().manual_seed(123))
            return recipes.article_recipe(sam, batch, cfg, None)[0].item()

    before = fixed_loss()
    for step in range(24):
        images = cache.get(train.batch_indices(step, cache.ids, 2, 0))
        batch = train.sample_batch(images, cfg.max_masks, gen)
        loss, _ = train.train_step(
            train.Trainable(sam), batch, opt, scaler, cfg, gen, torch.device("cpu")
        )
        assert loss is not None and torch.isfinite(loss)
    assert fixed_loss() < 0.8 * before


def test_loss_matches_the_article(demo, tiny_model):
    """Our batched loss equals the article's per-step computation on one fixed sample."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    sam = copy.deepcopy(tiny_model)
    sample = data.load_split(demo, "train")[0]
    predictor = SAM2ImagePredictor(sam)
    input_point = sample.points[:, None, :]
    input_label = np.ones((len(sample.points), 1))
    article, iou = bench.article_loss(
        predictor, sample.image, sample.masks, input_point, input_label, torch.device("cpu")
    )

    with torch.no_grad():
        items = cached(sam, [sample])
        n = len(sample.masks)
        ours_low, ours_scores = predict_logits(
            sam,
            items[0].feats,
            torch.zeros(n, dtype=torch.long),
            torch.from_numpy(sample.points),
            torch.tensor([sample.image.shape[:2]]),
        )
        ours, ours_iou = recipes.compute_loss(
            ours_low, ours_scores, [torch.from_numpy(sample.masks)]
        )
    torch.testing.assert_close(ours, article.detach(), rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(ours_iou, iou.detach(), rtol=0, atol=1e-6)


def test_batch_keeps_each_images_own_features(demo, tiny_model):
    """Decoding two images in one call equals decoding each alone (the article's multi-image
    variant gave every image the last image's high-res features)."""
    ds = data.load_split(demo, "train")
    samples = [ds[0], ds[1]]
    items = cached(tiny_model, samples)
    with torch.no_grad():
        batch = train.sample_batch(items, 3, torch.Generator().manual_seed(0))
        idx, pts, sizes = batch.img_idx, batch.points, batch.sizes
        both, _ = predict_logits(tiny_model, batch.feats, idx, pts, sizes)
        for b in range(2):
            sel = idx == b
            alone, _ = predict_logits(
                tiny_model, items[b].feats, idx[sel] * 0, pts[sel], sizes[b : b + 1]
            )
            torch.testing.assert_close(both[sel], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(both[idx == 0][:1], both[idx == 1][:1])


def test_compute_loss_is_stable_on_extreme_logits():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4] = True
    low = torch.full((1, 3, 256, 256), -1e4, requires_grad=True)
    loss, iou = recipes.compute_loss(low, torch.zeros(1, 3), [gt])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(low.grad).all()
    assert iou.item() == 0.0
    ref = F.binary_cross_entropy_with_logits(torch.full((8, 8), -1e4), gt[0].float())
    torch.testing.assert_close(loss, ref)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    train.save_atomic({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are in it, as on a full disk."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def small_run(tmp_path):
    """A small module with optimizer state, and what save_checkpoint needs beside it."""
    net = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 64)).sum().backward()
    opt.step()
    cfg = train.Config(data="x", out=str(tmp_path))
    return net, opt, torch.amp.GradScaler("cpu", enabled=False), cfg


@pytest.mark.parametrize("room_for", ["nothing", "model.pt and best.pt"])
def test_failed_save_says_why_and_keeps_previous_files(tmp_path, monkeypatch, room_for):
    """Disk full while saving step 2, at the first file or at checkpoint.pt after model.pt and
    best.pt were written: one line naming the file, the reason and the free space; every file
    of step 1 unchanged (model.pt never ahead of checkpoint.pt); no *.part left."""
    net, opt, scaler, cfg = small_run(tmp_path)
    train.save_checkpoint(tmp_path, net, opt, scaler, cfg, train.State(step=1), [], best=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    room = 0 if room_for == "nothing" else len(before["model.pt"]) + 100
    assert len(before["checkpoint.pt"]) > room  # optimizer state makes it the larger one
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), room))
    net.weight.data += 1
    with pytest.raises(train.SaveError) as e:
        train.save_checkpoint(tmp_path, net, opt, scaler, cfg, train.State(step=2), [], best=True)
    monkeypatch.undo()
    failed = tmp_path / ("model.pt" if room_for == "nothing" else "checkpoint.pt")
    assert re.fullmatch(
        rf"could not write {re.escape(str(failed))} \(No space left on device; [\d.]+ [MG]iB "
        rf"free there\): {re.escape(str(tmp_path / 'checkpoint.pt'))} from before is intact; "
        "make room, then --resume",
        str(e.value),
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    def train_that_fails(cfg):
        raise e.value

    monkeypatch.setattr(train, "train", train_that_fails)
    with pytest.raises(SystemExit, match=r"^error: could not write .*--resume$"):  # exit code 1
        train.main(["--data", "x", "--out", str(tmp_path)])


def test_resume_rewrites_a_model_pt_left_behind(tmp_path):
    """A kill between the renames of one save can leave model.pt a step behind checkpoint.pt;
    the resumed run writes model.pt again from checkpoint.pt, so both hold the same step."""
    net, opt, scaler, cfg = small_run(tmp_path)
    train.save_checkpoint(tmp_path, net, opt, scaler, cfg, train.State(step=1), [])
    net.weight.data += 1
    (tmp_path / "next").mkdir()
    train.save_checkpoint(tmp_path / "next", net, opt, scaler, cfg, train.State(step=2), [])
    os.replace(tmp_path / "next" / "checkpoint.pt", tmp_path / "checkpoint.pt")
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    with pytest.warns(UserWarning, match=r"model\.pt held step 1, not checkpoint\.pt's 2"):
        train.match_model_pt(tmp_path, ck)
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    assert model["step"] == 2 and torch.equal(model["model"]["weight"], net.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.match_model_pt(tmp_path, ck)  # in step: left alone


def test_refuses_to_save_nan_weights(tmp_path, tiny_model):
    sam = copy.deepcopy(tiny_model)
    params = freeze_for_finetune(sam)
    with torch.no_grad():
        params[0].fill_(float("nan"))
    opt = torch.optim.AdamW(params)
    cfg = train.Config(data="x", out=str(tmp_path))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(RuntimeError, match="non-finite"):
        train.save_checkpoint(tmp_path, sam, opt, scaler, cfg, train.State(step=3), [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--lr", "-1"], "--lr must be a positive"),
        (["--model", "huge"], "--model: invalid choice: 'huge'"),
        (["--cache", "disk"], "--cache: invalid choice: 'disk'"),
        (["--batch-size", "x"], "invalid int value"),
        (["--max-masks", "1000"], "--max-masks 1000 is over 256: masks per image per step"),
        (["--batch-size", "1000"], "--batch-size 1000 is over 256: images per step"),
        (["--batch-size", "64", "--max-masks", "64"], "64 x --max-masks 64 = 4096 masks per step"),
        (["--max-side", "5000"], "--max-side 5000 is over 2048: SAM 2 sees images at 1024 px"),
        (["--encode-batch", "500"], "--encode-batch 500 is over 64"),
        (["--eval-clicks", "1000"], "--eval-clicks 1000 is over 50"),
        (["--clicks", "21"], "--clicks 21 is over 20: each click is one more decoder pass"),
        (["--workers", "1000"], "--workers 1000 is over 64"),
    ],
)
def test_bad_flags(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--data", "d", *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_missing_data_and_bad_checkpoint(tmp_path, demo, capsys):
    with pytest.raises(SystemExit, match=r"nowhere"):
        train.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *FAST])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(SystemExit, match=r"bad\.pt"):
        train.main(
            ["--data", str(demo), "--out", str(tmp_path / "o2"), *FAST, "--checkpoint", str(bad)]
        )
    # A checkpoint for another model size: named, never partly loaded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from model import load_model

        small = load_model("small", "none")
    torch.save({"model": small.state_dict()}, bad)
    with pytest.raises(SystemExit, match=r"bad\.pt.*'tiny'.*does not fit"):
        train.main(
            ["--data", str(demo), "--out", str(tmp_path / "o3"), *FAST, "--checkpoint", str(bad)]
        )


def logged_step(out: Path) -> int:
    """The last step in OUT/log.csv (-1 if none yet)."""
    try:
        rows = (out / "log.csv").read_text().splitlines()[1:]
        return max((int(r.split(",")[0]) for r in rows if r.count(",") == 5), default=-1)
    except (OSError, ValueError):
        return -1


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def start(args: list[str], err: Path, torchrun_port: int = 0) -> subprocess.Popen:
    """train.py ARGS (under torchrun with 2 processes if a port is given), stderr to `err`."""
    if torchrun_port:
        cmd, env = torchrun_cmd(args, torchrun_port), TORCHRUN_ENV
    else:
        cmd, env = [sys.executable, str(ROOT / "train.py"), *args], None
    with open(err, "w") as f:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env)


def stop_line(err: Path) -> str:
    text = err.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    return text.rstrip().rsplit("\n", 1)[-1]


def test_sigkill_then_resume(demo, tmp_path, capsys):
    """A run killed with SIGKILL mid-run (as when a scheduler's grace time runs out) resumes
    from its last checkpoint and finishes; while it ran, a second run on its folder refused at
    once, naming it."""
    out = tmp_path / "run"
    args = ["--data", str(demo), "--out", str(out), "--save-every", "1", "--eval-every", "0"]
    args += FAST
    proc = start([*args, "--steps", "50"], tmp_path / "err.txt")
    try:
        wait_until(proc, lambda: logged_step(out) >= 2, "step 2")  # step 1 is saved
        with pytest.raises(SystemExit, match=rf"in use by another train\.py \(pid {proc.pid}\)"):
            train.main([*args, "--steps", "50", "--resume"])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 50
    (out / "model.pt.x1y2.part").write_bytes(b"half a file")  # as a kill mid-save leaves
    with pytest.warns(UserWarning, match=r"removing .*model\.pt\.x1y2\.part"):
        summary = train.train(train.parse_args([*args, "--steps", str(step + 2), "--resume"]))
    assert summary["step"] == step + 2  # the dead run's lock did not block
    assert f"resuming {out / 'checkpoint.pt'} at step {step}" in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 2
    assert not list(out.glob("*.part"))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """Two training images and no validation split: each process encodes only those."""
    return data.make_demo(tmp_path_factory.mktemp("small_demo"), n_train=2, n_test=0)


QUICK = [*FAST, "--eval-clicks", "0", "--eval-every", "0"]


@pytest.fixture(scope="module")
def whole_run(small_demo, tmp_path_factory):
    """An uninterrupted 4-step run on small_demo: what the stopped and resumed runs must equal."""
    out = tmp_path_factory.mktemp("whole")
    run(["--data", str(small_demo), "--out", str(out), "--steps", "4", *QUICK])
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_step_and_resumes(sig, small_demo, whole_run, tmp_path):
    """SIGTERM (what schedulers send) and SIGINT (Ctrl-C) mid-run: the step ends and is saved,
    one line says which, exit 128 + signal; resumed, the run equals an uninterrupted one (4
    steps). --save-every 50: the only save after step 0 is the stop's."""
    out, err = tmp_path / "run", tmp_path / "err.txt"
    args = ["--data", str(small_demo), "--out", str(out), *QUICK]
    proc = start([*args, "--steps", "50", "--save-every", "50"], err)
    try:
        wait_until(proc, lambda: logged_step(out) >= 1, "step 1")
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig
    finally:
        proc.kill()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 4
    assert stop_line(err) == (
        f"stopped at step {step} ({sig.name}); {out / 'checkpoint.pt'} holds step {step}; "
        "resume with --resume"
    )
    assert torch.load(out / "model.pt", weights_only=True)["step"] == step
    assert not list(out.glob("*.part"))
    assert run([*args, "--steps", "4", "--resume"])["step"] == 4
    a = trainable(torch.load(whole_run / "model.pt", weights_only=True)["model"])
    b = trainable(torch.load(out / "model.pt", weights_only=True)["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [0, 1, 2, 3, 4]


def test_second_ctrl_c_stops_at_once(small_demo, tmp_path):
    """Ctrl-C, then Ctrl-C again while the step ends: out at once, exit 130, still one line and
    no traceback; whatever was saved is whole (model.pt and checkpoint.pt at the same step)."""
    out, err = tmp_path / "run", tmp_path / "err.txt"
    args = ["--data", str(small_demo), "--out", str(out), *QUICK]
    proc = start([*args, "--steps", "50", "--save-every", "50"], err)
    try:
        wait_until(proc, lambda: logged_step(out) >= 1, "step 1")
        proc.send_signal(signal.SIGINT)
        wait_until(proc, lambda: "Ctrl-C again" in err.read_text(), "the first Ctrl-C's notice")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert re.fullmatch(
        rf"stopped at once at step \d+ \(second SIGINT\); .*checkpoint\.pt holds step {saved}; "
        "resume with --resume",
        stop_line(err),
    )
    assert torch.load(out / "model.pt", weights_only=True)["step"] == saved
    assert not list(out.glob("*.part"))


def test_new_lr_on_resume_is_used(demo, tmp_path, capsys):
    common = ["--data", str(demo), "--out", str(tmp_path), "--eval-every", "0", *FAST]
    run([*common, "--steps", "1"])
    run([*common, "--steps", "2", "--resume", "--lr", "3e-4"])
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["config"]["lr"] == 3e-4
    assert {g["lr"] for g in ck["optimizer"]["param_groups"]} == {3e-4}
    assert "resume: --steps 1 -> 2, --lr 1e-05 -> 0.0003\n" in capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [float(r["lr"]) for r in rows] == [1e-5, 1e-5, 3e-4]


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_out_is_a_file(demo, tmp_path, where):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit, match=rf"--out .*{where} is not a writable folder"):
        train.main(["--data", str(demo), "--out", str(tmp_path / where), *FAST])


def test_failed_run_leaves_no_folder(tmp_path):
    root = data.make_demo(tmp_path / "d", n_train=1, n_test=0)
    (ann,) = (root / "Simple" / "Train" / "Instance").glob("*.png")
    cv2_write_zeros(ann)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="no usable training image"):
        train.main(["--data", str(root), "--out", str(out), *FAST])
    assert not out.exists()


def cv2_write_zeros(png: Path) -> None:
    import cv2

    cv2.imwrite(str(png), np.zeros_like(cv2.imread(str(png))))


def test_diverging_run_stops_cleanly(demo, tmp_path):
    """lr 1e3 blows the weights up: updates with non-finite loss or gradients are skipped,
    the run stops with a clear message, and what was saved is finite."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--data", str(demo), "--out", str(tmp_path)]
        + ["--steps", "30", "--lr", "1e3", "--eval-every", "0", "--save-every", "1", *FAST],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    if res.returncode != 0:
        assert (
            "non-finite steps in a row" in res.stderr and "last checkpoint is intact" in res.stderr
        )
    sd = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_cmd(args: list[str], port: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    return cmd + [f"--master_port={port}", str(ROOT / "train.py"), *args, *FAST]


def torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(args, port)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=TORCHRUN_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def worker(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process of `rank` (Linux /proc)."""
    for d in Path("/proc").iterdir():
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in env:
            return int(d.name)
    raise AssertionError(f"no rank {rank} worker under pid {torchrun_pid}")


def test_torchrun_stop_and_resume_equal_uninterrupted(small_demo, tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop at the same step, which rank 0 saves with both
    ranks' click streams; resumed, the run equals an uninterrupted one bit for bit (a rank that
    stopped at another step would hang, or resume with the wrong clicks)."""
    common = ["--data", str(small_demo), "--eval-every", "0", "--eval-clicks", "0"]
    b, err = tmp_path / "b", tmp_path / "err.txt"
    proc = start([*common, "--out", str(b), "--steps", "50", "--save-every", "50"], err, 29519)
    try:
        wait_until(proc, lambda: logged_step(b) >= 1, "step 1")
        os.kill(worker(proc.pid, rank=1), signal.SIGTERM)
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
            proc.wait(timeout=60)
    ck = torch.load(b / "checkpoint.pt", weights_only=True)
    step, text = ck["step"], err.read_text()
    assert step >= 1 and len(ck["gen_states"]) == 2
    assert f"stopped at step {step} (SIGTERM); {b / 'checkpoint.pt'} holds step {step}" in text
    assert text.count("stopped at step") == 1  # rank 0 speaks for all
    torchrun([*common, "--out", str(b), "--steps", str(step + 1), "--resume"], 29520)
    whole = torchrun([*common, "--out", str(tmp_path / "a"), "--steps", str(step + 1)], 29518)
    assert "replicas identical across ranks" in whole.stderr
    whole_w = trainable(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"])
    resumed_w = trainable(torch.load(b / "model.pt", weights_only=True)["model"])
    for k in whole_w:
        torch.testing.assert_close(resumed_w[k], whole_w[k], rtol=0, atol=0, msg=k)


def test_torchrun_one_usable_image(tmp_path):
    """Two ranks, one usable image: the images are dealt out after filtering, nobody hangs."""
    root = data.make_demo(tmp_path / "d", n_train=2, n_test=1)
    cv2_write_zeros(sorted((root / "Simple" / "Train" / "Instance").glob("*.png"))[1])
    out = tmp_path / "out"
    torchrun(["--data", str(root), "--out", str(out), "--steps", "2", "--eval-every", "0"], 29521)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2


def test_interactive_recipe_resumes_bit_for_bit(demo, tmp_path):
    """--recipe interactive: 2 + 1 steps == 3 steps (its boxes, jitter and correction clicks
    all come from the checkpointed generator)."""
    common = ["--data", str(demo), "--eval-every", "0", "--recipe", "interactive", "--clicks", "1"]
    common += [*FAST, "--eval-clicks", "0"]
    run([*common, "--out", str(tmp_path / "a"), "--steps", "3"])
    run([*common, "--out", str(tmp_path / "b"), "--steps", "2"])
    run([*common, "--out", str(tmp_path / "b"), "--steps", "3", "--resume"])
    a = trainable(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"])
    b = trainable(torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert float(rows[-1]["loss"]) > 0  # focal + dice + IoU, summed over the 2 passes
