"""train.py on the CPU with SAM 2.1 tiny, random weights, and a small demo dataset."""

import copy
import csv
import os
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


def test_resume_from_a_corrupt_checkpoint_names_it(demo, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(SystemExit, match=r"cannot resume from .*checkpoint\.pt"):
        train.main(["--data", str(demo), "--out", str(tmp_path), "--steps", "2", "--resume", *FAST])


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
    cache = train.FeatureCache(ds, list(range(len(ds))), cfg, sam, torch.device("cpu"), False)
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


def test_sigkill_then_resume(demo, tmp_path):
    """A run killed with SIGKILL mid-run resumes from its last checkpoint and finishes."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--data",
        str(demo),
        "--out",
        str(out),
        "--save-every",
        "1",
        "--eval-every",
        "0",
        *FAST,
    ]
    proc = subprocess.Popen(
        [*cmd, "--steps", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240

    def saved_step():
        path = out / "checkpoint.pt"
        return torch.load(path, weights_only=True)["step"] if path.exists() else -1

    while saved_step() < 1 and time.time() < deadline:
        time.sleep(1)
    # a second run on the same folder refuses at once, naming the live one
    other = subprocess.run([*cmd, "--steps", "50", "--resume"], capture_output=True, text=True)
    assert other.returncode != 0 and f"in use by another train.py (pid {proc.pid})" in other.stderr
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 50
    (out / "model.pt.x1y2.part").write_bytes(b"half a file")  # as a kill mid-save leaves
    res = subprocess.run(
        [*cmd, "--steps", str(step + 2), "--resume"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {out / 'checkpoint.pt'} at step {step}" in res.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 2
    assert not list(out.glob("*.part")) and "removing" in res.stderr  # the stale lock did not block


def test_new_lr_on_resume_is_used(demo, tmp_path, capsys):
    common = ["--data", str(demo), "--out", str(tmp_path), "--eval-every", "0", *FAST]
    run([*common, "--steps", "1"])
    run([*common, "--steps", "2", "--resume", "--lr", "3e-4"])
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["config"]["lr"] == 3e-4
    assert {g["lr"] for g in ck["optimizer"]["param_groups"]} == {3e-4}
    assert "lr 0.0003" in capsys.readouterr().err
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


def torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={port}", str(ROOT / "train.py"), *args, *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_torchrun_resume_equals_uninterrupted(demo, tmp_path):
    """Each rank's click stream resumes as its own: 2 + 2 steps == 4 steps, under torchrun."""
    common = ["--data", str(demo), "--eval-every", "0", "--save-every", "2"]
    whole = torchrun([*common, "--out", str(tmp_path / "a"), "--steps", "4"], 29518)
    assert "replicas identical across ranks" in whole.stderr
    torchrun([*common, "--out", str(tmp_path / "b"), "--steps", "2"], 29519)
    torchrun([*common, "--out", str(tmp_path / "b"), "--steps", "4", "--resume"], 29520)
    a = trainable(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"])
    b = trainable(torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


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
