"""recipes.py: the general decoder call, the interactive recipe's prompts and its loss."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import Features, decode, upscale_logits
from recipes import (
    correction_clicks,
    interactive_loss,
    jittered_boxes,
    low_res_targets,
    pass_loss,
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


def test_box_jitter_bounds():
    """Each coordinate within min(10% of the box side, 20 px) of the true box, in the image."""
    g = torch.Generator().manual_seed(0)
    r = np.random.default_rng(0)
    masks = []
    for _ in range(300):  # small, huge (cap 20 px binds) and border-touching boxes
        y0, x0 = r.integers(0, 150), r.integers(0, 250)
        masks.append(rect(200, 300, y0, r.integers(y0 + 1, 201), x0, r.integers(x0 + 1, 301)))
    masks.append(rect(200, 300, 0, 200, 0, 300))
    masks = torch.stack(masks)
    ys, xs = masks.any(2), masks.any(1)
    true = torch.stack(
        [
            xs.float().argmax(1),
            ys.float().argmax(1),
            299 - xs.flip(1).float().argmax(1),
            199 - ys.flip(1).float().argmax(1),
        ],
        1,
    ).float()
    boxes = jittered_boxes(masks, g)
    side = (true[:, 2:] - true[:, :2]).repeat(1, 2)
    delta = (boxes - true).abs()
    assert (delta <= (0.1 * side).clamp(max=20) + 1e-4).all()
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= 299).all() and (boxes[:, 1::2] <= 199).all()
    assert delta.max() > 15  # the jitter is real, up to the 20 px cap


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
    for _ in range(20):
        pts, labels = correction_clicks(perfect, [gt], g, gt_prob=0.0)
        x, y = pts[0].long()
        assert not gt[0, y, x] and labels[0] == 0  # a negative click on the background


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
    assert torch.equal(b1["mask_input"], b0["out"][0])


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
