"""model.py: loading, checkpoint checks, download, and that our batched encoder/decoder path
computes what SAM 2's own predictor computes."""

import http.server
import os
import pickle
import threading
import types
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model import (
    CheckpointError,
    encode_images,
    freeze_for_finetune,
    load_model,
    predict_logits,
    resolve_checkpoint,
    resolve_device,
    upscale_logits,
)


def test_matches_sam2_predictor(tiny_model):
    """Two images of different sizes in one call give, per image, the predictor's results."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    rng = np.random.default_rng(0)
    imgs = [
        rng.integers(0, 255, (300, 400, 3), dtype=np.uint8),
        rng.integers(0, 255, (512, 256, 3), dtype=np.uint8),
    ]
    pts = [np.array([[10.0, 20.0], [390.0, 290.0]]), np.array([[128.0, 500.0]])]
    with torch.no_grad():
        feats = encode_images(tiny_model, imgs)
        low, scores = predict_logits(
            tiny_model,
            feats,
            torch.tensor([0, 0, 1]),
            torch.tensor(np.concatenate(pts), dtype=torch.float32),
            torch.tensor([im.shape[:2] for im in imgs]),
        )
        pred = SAM2ImagePredictor(tiny_model)
        start = 0
        for im, p in zip(imgs, pts):
            pred.set_image(im)
            m, s, _ = pred.predict(
                point_coords=p[:, None],
                point_labels=np.ones((len(p), 1)),
                multimask_output=True,
                return_logits=True,
            )
            m = m.reshape(len(p), 3, *im.shape[:2])
            ours = upscale_logits(low[start : start + len(p)], im.shape[:2]).numpy()
            np.testing.assert_allclose(ours, m, atol=1e-4)
            np.testing.assert_allclose(
                scores[start : start + len(p)].numpy(), s.reshape(len(p), 3), atol=1e-5
            )
            start += len(p)


def test_freeze_trains_only_prompt_encoder_and_decoder(tiny_model):
    import copy

    sam = copy.deepcopy(tiny_model)
    params = freeze_for_finetune(sam)
    names = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert {id(p) for p in params} == {id(p) for p in sam.parameters() if p.requires_grad}
    assert names and all(n.startswith(("sam_prompt_encoder.", "sam_mask_decoder.")) for n in names)
    assert not any(".conv_s0." in n or ".conv_s1." in n for n in names)  # feed the cached maps
    assert all(not p.requires_grad for p in sam.image_encoder.parameters())
    freeze_for_finetune(sam, train_encoder=True)
    assert all(p.requires_grad for p in sam.image_encoder.parameters())


def test_checkpoint_that_does_not_fit(tmp_path, tiny_model):
    path = tmp_path / "small.pt"
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    key = next(k for k in sd if k.startswith("sam_mask_decoder."))
    sd[key] = torch.zeros(3, 3)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"small\.pt.*'tiny'.*wrong-shape"):
        load_model("tiny", str(path))
    sd.pop(key)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_model("tiny", str(path))


def test_checkpoint_of_another_size_names_it(tmp_path, tiny_model):
    """A bare state_dict (or {'model': sd}) of tiny loaded as small: 'does not fit', and which
    --model it is for; model_name_in reads the same from the shapes."""
    sd = tiny_model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    assert model.model_name_in(tmp_path / "w.pt") == "tiny"
    with pytest.raises(CheckpointError, match=r"w\.pt.*'small' does not fit.*--model tiny$"):
        load_model("small", str(tmp_path / "w.pt"))
    torch.save({"model": sd}, tmp_path / "w.pt")  # read_state_dict reads both forms alike
    assert model.model_name_in(tmp_path / "w.pt") == "tiny"
    sd_20 = {k: v for k, v in sd.items() if "obj_ptr_tpos_proj" not in k}
    assert model.guess_model(sd_20) == "tiny"  # no_obj_embed_spatial alone tells 2.1 from 2.0
    sd_20.pop("no_obj_embed_spatial")
    assert model.guess_model(sd_20) == "tiny-2.0"
    assert model.guess_model({"x": torch.zeros(1)}) is None


def test_guess_model_agrees_with_sam2_configs():
    """Every model in MODELS is told from the others by the config values guess_model reads
    (configs are read, not built: building 'large' on a CPU is slow)."""
    import inspect

    import sam2
    from omegaconf import OmegaConf
    from sam2.modeling.backbones.hieradet import Hiera

    default_stages = inspect.signature(Hiera).parameters["stages"].default
    for name, (config, _) in model.MODELS.items():
        cfg = OmegaConf.load(Path(sam2.__file__).parent / config).model
        trunk = cfg.image_encoder.trunk
        sd = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(trunk.embed_dim, 3, 7, 7)}
        for i in range(sum(trunk.get("stages", default_stages))):
            sd[f"image_encoder.trunk.blocks.{i}.norm1.weight"] = torch.zeros(1)
        if cfg.get("no_obj_embed_spatial"):
            sd["no_obj_embed_spatial"] = torch.zeros(1)
        assert model.guess_model(sd) == name


def test_non_finite_checkpoint_refused(tmp_path, tiny_model):
    sd = dict(tiny_model.state_dict())
    key = next(k for k in sd if k.startswith("sam_mask_decoder."))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("inf")
    torch.save({"model": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"bad\.pt has non-finite weights.*{key}"):
        load_model("tiny", str(tmp_path / "bad.pt"))


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt is not a PyTorch checkpoint$"):
        load_model("tiny", str(bad))
    bad.write_bytes(b"}")  # torch's own error for this one says nothing
    with pytest.raises(CheckpointError, match=r"bad\.pt is not a PyTorch checkpoint$"):
        load_model("tiny", str(bad))
    bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"bad\.pt: empty file$"):
        load_model("tiny", str(bad))
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_model("tiny", str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="'huge' is not one of"):
        resolve_checkpoint("huge", None)


class Trap:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_file_that_would_run_code_is_not_loaded(tmp_path):
    """A checkpoint holding more than tensors is refused unloaded, with a plain reason and no
    advice to load it anyway (torch's own message suggests weights_only=False)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": Trap(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_model("tiny", str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a plain weights file") and "(posix.system)" in msg
    assert "not loaded" in msg and "weights_only" not in msg and "succeed" not in msg
    with open(path, "wb") as f:  # a bare pickle, not torch's zip format
        pickle.dump({"model": Trap(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a plain weights file"):
        load_model("tiny", str(path))
    assert model.model_name_in(path) is None
    assert not marker.exists()


def test_own_checkpoint_roundtrip(tmp_path, tiny_model):
    """A {'model': sd} file (train.py's model.pt) loads into an equal model, and also with
    SAM 2's own build_sam2."""
    from sam2.build_sam import build_sam2

    path = tmp_path / "model.pt"
    torch.save({"model": tiny_model.state_dict(), "model_name": "tiny"}, path)
    assert model.model_name_in(path) == "tiny"
    for m in (
        load_model("tiny", str(path)),
        build_sam2(model.MODELS["tiny"][0], str(path), device="cpu"),
    ):
        for (k, a), b in zip(tiny_model.state_dict().items(), m.state_dict().values()):
            assert torch.equal(a, b), k


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server:
    """A local HTTP server on 127.0.0.1 serving `root`, stopped on exit."""

    def __init__(self, root):
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_official_checkpoint(tmp_path, monkeypatch, tiny_model):
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"model": tiny_model.state_dict()}, served / "sam2.1_hiera_tiny.pt")
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAM2_CHECKPOINT_DIR", str(cache))
    with _Server(served) as srv:
        monkeypatch.setitem(
            model.MODELS, "tiny", (model.MODELS["tiny"][0], srv.url + "sam2.1_hiera_tiny.pt")
        )
        path = resolve_checkpoint("tiny", None)
        assert path == cache / "sam2.1_hiera_tiny.pt"
        assert path.read_bytes() == (served / "sam2.1_hiera_tiny.pt").read_bytes()
        m = load_model("tiny", None)  # now from the cache, no second download
        assert torch.equal(
            next(iter(m.state_dict().values())), next(iter(tiny_model.state_dict().values()))
        )

        monkeypatch.setitem(
            model.MODELS, "small", (model.MODELS["small"][0], srv.url + "missing.pt")
        )
        with pytest.raises(CheckpointError, match=r"(?s)missing\.pt.*put it at .*missing\.pt"):
            resolve_checkpoint("small", None)
    assert sorted(p.name for p in cache.iterdir()) == ["sam2.1_hiera_tiny.pt"]  # no partials


def test_download_cut_off(tmp_path):
    """A transfer that ends early without an error (served here as half a file) is refused and
    leaves nothing behind."""
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pt")
    (served / "x.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:2000])
    with _Server(served) as srv, pytest.raises(CheckpointError, match="(?s)incomplete.*put it at"):
        model.download(srv.url + "x.pt", tmp_path / "cache" / "x.pt")
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_unreachable(tmp_path):
    with pytest.raises(CheckpointError, match="--checkpoint none"):
        model.download("http://127.0.0.1:9/x.pt", tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_random_init_warns():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        load_model("tiny", "none")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16)],
)
def test_amp_dtype_by_compute_capability(monkeypatch, capability, dtype):
    """bf16 only on cards with bf16 units; V100 (7.0) and T4 (7.5) emulate it (torch's
    is_bf16_supported() says yes there), so they get fp16. Faked, so it runs on CPU."""
    props = types.SimpleNamespace(major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)
    cuda = torch.device("cuda")
    assert model.amp_dtype(cuda) == dtype
    assert model.amp_dtype(torch.device("cpu")) is None


@pytest.mark.cuda
def test_bf16_autocast_decoder_close_to_fp32(tiny_model):
    import copy

    sam = copy.deepcopy(tiny_model).cuda()
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    pts, idx, sizes = (
        torch.tensor([[100.0, 100.0]], device="cuda"),
        torch.tensor([0], device="cuda"),
        torch.tensor([[256, 256]], device="cuda"),
    )
    with torch.no_grad(), warnings.catch_warnings():
        f = encode_images(sam, [img])
        ref, _ = predict_logits(sam, f, idx, pts, sizes)
        with model.autocast(torch.device("cuda")):
            f16 = encode_images(sam, [img])
            low, _ = predict_logits(sam, f16, idx, pts, sizes)
    assert (low.float() > 0).eq(ref > 0).float().mean() > 0.95
