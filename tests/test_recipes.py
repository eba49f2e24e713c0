"""recipes.py: the general decoder call, the interactive recipe's prompts, its loss, its
activation checkpointing and its host syncs (none but the one it names)."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import data
import train
from model import Features, decode, upscale_logits
from recipes import (
    MAX_CLICKS,
    correction_clicks,
    interactive_loss,
    jittered_boxes,
    low_res_targets,
    pad_masks,
    pass_loss,
    uniform_points,
    upscale_rows,
)


def random_feats(n: int = 2, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(
        torch.randn(n, 256, 64, 64, generator=g),
        [torch.randn(n, 32, 256, 256, generator=g), torch.randn(n, 64, 128, 128, generator=g)],
    )


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def batch_gts(two_in_first: bool = True) -> list[torch.Tensor]:
    """Two images of different sizes: 2 masks (or 1) in a 40 x 60 one, 1 in a 50 x 50 one."""
    first = [rect(40, 60, 5, 20, 10, 40), rect(40, 60, 22, 38, 0, 60)]
    return [torch.stack(first[: 1 + two_in_first]), rect(50, 50, 10, 45, 20, 30)[None]]


class Recorder:
    """decode with the batch bound, keeping every call's inputs and outputs."""

    def __init__(self, sam, feats, sizes):
        self.fn, self.calls = partial(decode, sam, feats, sizes=sizes), []

    def __call__(self, img_idx, **kw):
        out = self.fn(img_idx, **kw)
        self.calls.append({**kw, "img_idx": img_idx, "out": out})
        return out


def recorder(sam, gts) -> Recorder:
    return Recorder(sam, random_feats(len(gts)), torch.tensor([g.shape[-2:] for g in gts]))


# ----------------------------------------------------------------------------- decode


def test_decode_box_clicks_and_mask_match_sam2_predictor(tiny_model):
    """A box, a positive and a negative click and a mask prompt: SAM2ImagePredictor's result."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    feats = random_feats(1)
    box = np.array([10.0, 5.0, 70.0, 50.0])
    pts, labels = np.array([[30.0, 20.0], [60.0, 40.0]]), np.array([1, 0])
    mask = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        low, scores = decode(
            tiny_model,
            feats,
            torch.tensor([0]),
            torch.tensor([[60, 90]]),
            torch.tensor(pts, dtype=torch.float32)[None],
            torch.tensor(labels)[None],
            torch.tensor(box, dtype=torch.float32)[None],
            mask,
            multimask=False,
        )
        pred = SAM2ImagePredictor(tiny_model)
        # what set_image would store for a 60 x 90 image (sam2 1.1.0), without running the
        # encoder: CPU time, and the encoder path is test_model's business
        pred._features = {"image_embed": feats.image_embed, "high_res_feats": feats.high_res}
        pred._orig_hw, pred._is_image_set = [(60, 90)], True
        _, s, lr = pred.predict(pts, labels, box, mask[0].numpy(), False, return_logits=True)
    np.testing.assert_allclose(low[0].numpy(), lr, atol=1e-4)
    np.testing.assert_allclose(scores[0].numpy(), s, atol=1e-5)


# ----------------------------------------------------------------------------- prompts


def true_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) inclusive xyxy, computed by hand."""
    h, w = masks.shape[-2:]
    ys, xs = masks.any(2).float(), masks.any(1).float()
    x0, y0 = xs.argmax(1), ys.argmax(1)
    x1, y1 = w - 1 - xs.flip(1).argmax(1), h - 1 - ys.flip(1).argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def test_box_jitter_bounds():
    """Each coordinate within min(10% of the box side, 20 px) of the true box, both measured in
    the 1024 x 1024 frame (a 300 x 200 image: x in units of 1024/300, y of 1024/200)."""
    g = torch.Generator().manual_seed(0)
    r = np.random.default_rng(0)
    masks = []
    for _ in range(300):  # small, huge (cap 20 px binds) and border-touching boxes
        y0, x0 = r.integers(0, 150), r.integers(0, 250)
        masks.append(rect(200, 300, y0, r.integers(y0 + 1, 201), x0, r.integers(x0 + 1, 301)))
    masks.append(rect(200, 300, 0, 200, 0, 300))
    masks = torch.stack(masks)
    true = true_boxes(masks)
    boxes = jittered_boxes(masks, g)
    scale = torch.tensor([1024 / 300, 1024 / 200]).repeat(2)  # own pixels -> frame
    side = (true[:, 2:] - true[:, :2]).repeat(1, 2) * scale
    delta = (boxes - true).abs() * scale  # in the frame
    assert (delta <= (0.1 * side).clamp(max=20) + 1e-3).all()
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= 299).all() and (boxes[:, 1::2] <= 199).all()
    assert delta.max() > 15  # the jitter is real, up to the 20 px cap


def test_box_jitter_follows_each_rows_own_image_size():
    """Rows of two images on one canvas (pad_masks): the 20 px bound is in the 1024 frame, so
    1.25 px of a 64 px side but 40 px of a 2048 px one, and each row is clipped to its own
    image, not to the canvas."""
    small = rect(64, 64, 8, 56, 8, 64)[None].expand(100, -1, -1)  # touches its right border
    big = rect(16, 2048, 2, 14, 24, 1024)[None].expand(100, -1, -1)  # 1000 px wide
    canvas, hw = pad_masks([small, big])
    assert canvas.shape == (200, 64, 2048) and hw[0].tolist() == [64, 64]
    boxes = jittered_boxes(canvas, torch.Generator().manual_seed(0), hw=hw)
    dx, dy = (boxes - true_boxes(canvas)).abs().reshape(2, 100, 2, 2).unbind(-1)
    for i, (bound_x, bound_y) in enumerate([(20 / 16, 20 / 16), (40.0, 20 / 64)]):
        assert bound_x * 0.9 < dx[i].max() <= bound_x + 1e-4
        assert bound_y * 0.9 < dy[i].max() <= bound_y + 1e-4
    assert boxes[:100, 2].max() <= 63  # clipped to its own 64 px width


def test_upscale_rows_is_bilinear_upscaling_on_a_canvas():
    """Rows of different sizes, one batched call: each row is F.interpolate's bilinear resize
    to its own size (larger and smaller than 256), zero outside it."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3, 1, 256, 256, generator=g)
    hw = torch.tensor([[40, 60], [300, 90], [17, 257]])
    up = upscale_rows(low, hw, (300, 260))
    for r, (h, w) in enumerate(hw.tolist()):
        want = upscale_logits(low[r : r + 1], (h, w))[0, 0]
        torch.testing.assert_close(up[r, :h, :w], want, rtol=0, atol=1e-4)  # float rounding
        assert (up[r, h:] == 0).all() and (up[r, :, w:] == 0).all()
    small = torch.randn(1, 1, 16, 16, generator=g)  # a model built at image_size 64
    want = upscale_logits(small, (40, 60))[0, 0]
    torch.testing.assert_close(upscale_rows(small, hw[:1], (40, 60))[0], want, rtol=0, atol=1e-4)


def test_uniform_points_are_data_sample_points_without_the_sync():
    masks = torch.rand(50, 30, 20, generator=torch.Generator().manual_seed(0)) < 0.05
    masks[:, 3, 4] = True
    ours = uniform_points(masks, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, data.sample_points(masks, torch.Generator().manual_seed(1)))
    x, y = ours.long().unbind(1)
    assert masks[torch.arange(50), y, x].all()


def test_correction_clicks_lie_in_the_error_region_with_its_label():
    gts = batch_gts()
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3, 1, 256, 256, generator=g) + 0.5  # a noisy guess, both kinds of error
    preds = [
        upscale_logits(low[:2], (40, 60))[:, 0] > 0,
        upscale_logits(low[2:], (50, 50))[:, 0] > 0,
    ]
    labels_seen = set()
    for seed in range(40):
        pts, labels = correction_clicks(low, gts, torch.Generator().manual_seed(seed), gt_prob=0)
        rows = [(0, 0), (0, 1), (1, 0)]
        for r, (i, j) in enumerate(rows):
            x, y = pts[r].long().tolist()
            assert preds[i][j, y, x] != gts[i][j, y, x]  # inside the error region
            assert labels[r] == int(gts[i][j, y, x])  # positive iff missed object
            labels_seen.add(int(labels[r]))
    assert labels_seen == {0, 1}


def test_correction_clicks_from_gt_and_after_a_perfect_mask():
    gt = rect(256, 256, 50, 100, 60, 200)[None]  # 256 x 256: the low-res grid is the image
    g = torch.Generator().manual_seed(0)
    wrong = torch.full((1, 1, 256, 256), -5.0)
    for _ in range(20):
        pts, labels = correction_clicks(wrong, [gt], g, gt_prob=1.0)
        x, y = pts[0].long()
        assert gt[0, y, x] and labels[0] == 1
    perfect = torch.where(gt[:, None], 5.0, -5.0)
    half = rect(128, 256, 0, 100, 0, 256)[None]  # a 128 x 256 image: 2 grid rows per pixel row
    both = torch.cat([perfect, torch.where(half, 5.0, -5.0).repeat_interleave(2, 1)[:, None]])
    for _ in range(20):
        pts, labels = correction_clicks(both, [gt, half], g, gt_prob=0.0)
        x, y = pts.long().unbind(1)
        assert not gt[0, y[0], x[0]] and labels[0] == 0  # a negative click on the background
        assert 100 <= y[1] < 128 and labels[1] == 0  # of its own image, not the padding


def test_correction_clicks_come_from_the_mask_with_probability_gt_prob():
    """The error region (taken background, a 32-row band) is disjoint from the mask: a click
    inside the mask (label 1) can only come from the gt_prob draw."""
    n, gt = 200, rect(64, 64, 4, 12, 4, 20)[None]
    low = torch.full((n, 1, 256, 256), -5.0)
    low[:, :, :128] = 5.0  # predicts rows 0-31 of the 64 x 64 image: the mask and more
    gts = gt.expand(n, -1, -1)
    for prob, lo, hi in ((0.0, 0, 0), (1.0, 1, 1), (0.3, 0.22, 0.38)):
        pts, labels = correction_clicks(low, [gts], torch.Generator().manual_seed(0), prob)
        x, y = pts.long().unbind(1)
        inside = gts[0, y, x]
        assert torch.equal(labels.bool(), inside) and (y < 32).all()
        assert lo <= inside.float().mean().item() <= hi


class SyncOps(TorchDispatchMode):
    """Records the ops that make a CUDA device wait for the host: reading a value
    (.item(), bool(), int()), nonzero and boolean-mask indexing (their output size depends on
    the data). tolist() does not dispatch on the CPU: counted separately."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name.startswith("index") and any(
            torch.is_tensor(i) and i.dtype == torch.bool
            for a in args
            if isinstance(a, (list, tuple))
            for i in a
        )
        if bool_index or name in ("_local_scalar_dense", "nonzero", "masked_select", "unique"):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_the_interactive_step_names_its_only_host_sync(tiny_model, monkeypatch):
    """A batch of 2 images of different sizes, both groups, a correction pass: no op that
    waits on the device's data, and exactly one tolist() (which rows start with a box)."""
    tolists = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: tolists.append(1) or original(t))
    gts = batch_gts(two_in_first=False)  # seed 0: a box row and a click row
    with torch.no_grad(), SyncOps() as rec:
        interactive_loss(recorder(tiny_model, gts), gts, torch.Generator().manual_seed(0), 1)
        correction_clicks(torch.randn(2, 1, 256, 256), gts, torch.Generator(), 0.5)
    assert rec.ops == [] and len(tolists) == 1
    with SyncOps() as rec:  # the detector works
        torch.arange(3)[torch.arange(3) > 0].sum().item()
    assert rec.ops == ["index", "_local_scalar_dense"]


# ----------------------------------------------------------------------------- the rollout


def test_mask_prompt_fed_back_and_clicks_accumulate(tiny_model):
    gts = batch_gts(two_in_first=False)
    rec = recorder(tiny_model, gts)
    with torch.no_grad():
        interactive_loss(rec, gts, torch.Generator().manual_seed(0), clicks=2, box_prob=0.0)
    c0, c1, c2 = rec.calls
    assert c0["multimask"] and not c1["multimask"] and not c2["multimask"]
    assert c0["mask_input"] is None and c0["boxes"] is None
    assert [c["points"].shape[1] for c in rec.calls] == [1, 2, 3]
    assert torch.equal(c1["points"][:, :1], c0["points"]) and torch.equal(
        c2["points"][:, :2], c1["points"]
    )
    low0, scores0 = c0["out"]
    shown = low0[torch.arange(2), scores0.argmax(1)][:, None]
    assert torch.equal(c1["mask_input"], shown)  # pass 1 gets pass 0's chosen logits
    assert torch.equal(c2["mask_input"], c1["out"][0])
    assert (c0["labels"] == 1).all() and set(c2["labels"][:, 1:].unique().tolist()) <= {0, 1}

    rec = recorder(tiny_model, gts)
    with torch.no_grad():
        interactive_loss(rec, gts, torch.Generator().manual_seed(0), clicks=1, box_prob=1.0)
    b0, b1 = rec.calls
    assert b0["points"] is None and b0["boxes"].shape == (2, 4) and not b0["multimask"]
    assert torch.equal(b1["boxes"], b0["boxes"]) and b1["points"].shape == (2, 1, 2)
    assert not b1["multimask"]  # a box plus a click is not ambiguous: one output
    assert torch.equal(b1["mask_input"], b0["out"][0])


def test_the_fed_back_mask_carries_gradient():
    """Pass 1's loss reaches pass 0's logits through the mask prompt, as in Meta's trainer:
    a decoder that returns its mask prompt makes pass 0's gradient change with clicks=1."""
    gts = [rect(256, 256, 40, 120, 40, 160)[None]]
    low0 = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([[0.9, 0.1, 0.1]])  # output 0 is shown and fed back

    def grad_of_pass0(clicks: int) -> torch.Tensor:
        leaf = low0.clone().requires_grad_(True)

        def fake(img_idx, mask_input=None, **kw):
            return (leaf, scores) if mask_input is None else (mask_input, scores[:, :1])

        loss, _ = interactive_loss(fake, gts, torch.Generator(), clicks=clicks, box_prob=0.0)
        loss.backward()
        return leaf.grad

    alone, fed = grad_of_pass0(0), grad_of_pass0(1)
    assert not torch.allclose(fed[0, 0], alone[0, 0])  # the shown output gets pass 1's term
    torch.testing.assert_close(fed[0, 1:], alone[0, 1:])


def test_checkpointed_rollout_equals_plain_and_keeps_less(tiny_model):
    """Activation checkpointing, one row per checkpointed call here: the same loss and
    gradients, and far fewer bytes kept for backward (counted with saved-tensor hooks, which
    see what is saved outside the checkpointed calls)."""
    sam = copy.deepcopy(tiny_model)
    gts = batch_gts(two_in_first=False)

    def run(act_ckpt: bool):
        sam.zero_grad(set_to_none=True)
        kept = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        fn = partial(decode, sam, random_feats(2), sizes=torch.tensor([[40, 60], [50, 50]]))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, iou = interactive_loss(
                fn, gts, torch.Generator(), clicks=1, box_prob=0.0, act_ckpt=act_ckpt, chunk=1
            )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in sam.named_parameters() if p.grad is not None}
        return loss.detach(), iou, grads, sum(kept.values())

    loss_c, iou_c, grads_c, kept_c = run(True)
    loss_p, iou_p, grads_p, kept_p = run(False)
    assert loss_c == loss_p and torch.equal(iou_c, iou_p)
    assert grads_c.keys() == grads_p.keys() and len(grads_c) > 10
    scale = max(g.abs().max() for g in grads_p.values())
    for name in grads_p:  # one row per call sums the batch in another order: float rounding
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-4, atol=1e-6 * scale)
    assert kept_c < kept_p / 10, (kept_c, kept_p)


def test_box_and_click_rows_are_decoded_separately(tiny_model):
    gts = batch_gts(two_in_first=False)
    rec = recorder(tiny_model, gts)
    with torch.no_grad():
        _, iou = interactive_loss(rec, gts, torch.Generator().manual_seed(0), clicks=0)
    assert len(rec.calls) == 2, "seed 0 should draw a box row and a click row"
    box_call, click_call = rec.calls
    assert len(box_call["img_idx"]) + len(click_call["img_idx"]) == 2 and iou.shape == (2,)
    assert click_call["multimask"] and click_call["out"][0].shape[1] == 3


# ----------------------------------------------------------------------------- loss


def direct_terms(logit: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """(20 focal + dice, IoU) of one (256, 256) output against a binary target, by hand."""
    p, t = torch.sigmoid(logit.double()), t.double()
    p_t = torch.where(t > 0, p, 1 - p)
    alpha_t = torch.where(t > 0, 0.25, 0.75)
    focal = (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    pred = logit > 0
    iou = (pred & (t > 0)).sum() / (pred | (t > 0)).sum()
    return float(20 * focal + dice), float(iou)


def test_loss_matches_direct_formula():
    """clicks=0, every mask on a click (3 outputs): the loss is the mean over masks of the
    lowest 20 focal + dice plus the mean over outputs of |score - IoU|; the gts are 256 x 256,
    so the targets are exact."""
    g = torch.Generator().manual_seed(0)
    gts = [torch.stack([rect(256, 256, 10, 80, 20, 200), rect(256, 256, 100, 250, 0, 30)])]
    low = torch.randn(2, 3, 256, 256, generator=g) * 3
    low[0, 2] = torch.where(gts[0][0], 4.0, -4.0) + torch.randn(256, 256, generator=g)
    scores = torch.rand(2, 3, generator=g)

    def fake(img_idx, **kw):
        return low, scores

    loss, iou = interactive_loss(fake, gts, torch.Generator().manual_seed(0), clicks=0, box_prob=0)
    want = 0.0
    for r in range(2):
        terms = [direct_terms(low[r, c], gts[0][r]) for c in range(3)]
        want += min(m for m, _ in terms)
        want += sum(abs(float(scores[r, c]) - terms[c][1]) for c in range(3)) / 3
    assert min(range(3), key=lambda c: direct_terms(low[0, c], gts[0][0])[0]) == 2
    assert loss.item() == pytest.approx(want / 2, rel=1e-5)
    shown = scores.argmax(1)
    assert iou[0].item() == pytest.approx(direct_terms(low[0, shown[0]], gts[0][0])[1])


def test_min_loss_output_alone_gets_the_mask_gradient():
    gt = rect(256, 256, 40, 120, 40, 160)
    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 3, 256, 256, generator=g)
    low[0, 1] = torch.where(gt, 6.0, -6.0)  # row 0: output 1 is right
    low[1, 0] = torch.where(gt, 6.0, -6.0)  # row 1: output 0 is right
    low.requires_grad_(True)
    scores = torch.rand(2, 3, generator=g, requires_grad=True)
    loss, iou = pass_loss(low, scores, gt[None].float().expand(2, -1, -1))
    loss.sum().backward()
    for r, best in ((0, 1), (1, 0)):
        for c in range(3):
            assert (low.grad[r, c].abs().sum() > 0) == (c == best)
        assert iou[r, best] == 1.0
    assert (scores.grad != 0).all()  # the IoU term covers every output


def test_low_res_targets_are_area_fractions():
    m = rect(512, 512, 3, 300, 101, 400)
    t = low_res_targets([m[None]])
    assert torch.allclose(t[0], F.avg_pool2d(m[None, None].float(), 2)[0, 0])


# ----------------------------------------------------------------------------- generator


def test_deterministic_from_the_generator_and_trains(tiny_model):
    gts = batch_gts(two_in_first=False)

    def run(gen, grad=False):
        rec = recorder(tiny_model, gts)
        with torch.set_grad_enabled(grad):
            loss, _ = interactive_loss(rec, gts, gen, clicks=1, box_prob=0.0)
        return loss, [c["points"] for c in rec.calls], rec

    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    loss_a, pts_a, _ = run(g, grad=True)
    g.set_state(state)  # as a resumed run restores it
    loss_b, pts_b, _ = run(g)
    assert loss_a.item() == loss_b.item()
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(pts_a, pts_b))
    loss_c, pts_c, _ = run(torch.Generator().manual_seed(8))
    assert loss_c.item() != loss_a.item()

    tiny_model.zero_grad(set_to_none=True)
    assert torch.isfinite(loss_a)
    loss_a.backward()
    grads = {n: p.grad for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert any(n.startswith("sam_mask_decoder.") for n in grads)
    assert any("mask_downscaling" in n for n in grads)  # the mask prompt is trained too
    assert not any(n.startswith("image_encoder.") for n in grads)
    tiny_model.zero_grad(set_to_none=True)


def test_clicks_have_an_upper_bound():
    with pytest.raises(ValueError, match=f"--clicks {MAX_CLICKS + 1} is over {MAX_CLICKS}"):
        train.Config(data="x", clicks=MAX_CLICKS + 1)
    train.Config(data="x", clicks=MAX_CLICKS)
