"""The video recipe's rules and J&F's, each checked where a slip would change what trains or what
is reported: the prompts' frequencies against Meta's own SAM2Train.prepare_prompt_inputs, the
loss's average over objects, what the correction passes feed back, condition on and encode,
and J&F against davis2017-evaluation's semi-supervised scoring (re-implemented here)."""

import inspect
import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import plumbing.video
import recipes
from model import encode_frames, frame_prompt, track_clip

# ----------------------------------------------------------------------------- prompts


def meta_prepare_prompt_inputs():
    """training.model.sam2.SAM2Train.prepare_prompt_inputs, imported without
    training.utils.data_utils (it needs tensordict; the method uses only the input's .masks and
    .num_frames)."""
    stub = types.ModuleType("training.utils.data_utils")
    stub.BatchedVideoDatapoint = object
    saved = sys.modules.get("training.utils.data_utils")
    sys.modules["training.utils.data_utils"] = stub
    try:
        from training.model.sam2 import SAM2Train
    finally:
        if saved is None:
            del sys.modules["training.utils.data_utils"]
        else:
            sys.modules["training.utils.data_utils"] = saved
    return SAM2Train.prepare_prompt_inputs


def clip_with_an_absent_object(t=8, h=24, w=32) -> list[torch.Tensor]:
    """t frames of 2 objects (bool (2, h, w) each); object 1 is absent on frames 3-5."""
    gts = []
    for i in range(t):
        g = torch.zeros(2, h, w, dtype=torch.bool)
        g[0, 4:14, 2 + i : 12 + i] = True
        g[1, 12:22, 16:28] = not 3 <= i <= 5
        gts.append(g)
    return gts


def tally(draws: list[tuple[dict, list, list]], frames: int) -> dict[str, float]:
    """Frequencies over draws of (kind per prompted frame, prompted frames, corrected frames):
    frame 0's kind, a second prompted frame, each frame prompted, each frame corrected, a
    second corrected frame, and the kind of each second prompted frame."""
    c, n = Counter(), len(draws)
    for kinds, cond, fix in draws:
        c[f"frame 0 {kinds[0]}"] += 1
        c["two prompted"] += len(cond) == 2
        c["two corrected"] += len(fix) == 2
        c["corrected but not prompted"] += len(set(fix) - set(cond))
        for t in cond[1:]:
            c[f"second prompted {kinds[t]}"] += 1
        for t in range(frames):
            c[f"prompted {t}"] += t in cond
            c[f"corrected {t}"] += t in fix
    return {k: v / n for k, v in c.items()}


def test_video_prompts_draw_as_metas_trainer():
    """Over 3000 draws each (fixed seeds), video_prompts chooses as Meta's SAM2Train with the
    MOSE fine-tune config (prob_to_use_pt_input 0.5, prob_to_use_box_input 0.5, 1~2 initial
    conditioning frames, 1~2 frames to correct): mask / box / click, a second prompted frame
    (uniform over frames 1-7, those where an object is absent included), a second corrected
    frame (uniform over the rest), each to within 0.04. An absent object's click is negative
    on the background, in both."""
    prepare, frames, n = meta_prepare_prompt_inputs(), 8, 3000
    gts = clip_with_an_absent_object(frames)
    meta = types.SimpleNamespace(
        training=True,
        prob_to_use_pt_input_for_train=0.5,
        prob_to_use_box_input_for_train=0.5,
        num_frames_to_correct_for_train=2,
        rand_frames_to_correct_for_train=True,
        num_init_cond_frames_for_train=2,
        rand_init_cond_frames_for_train=True,
        rng=np.random.default_rng(0),
    )
    torch.manual_seed(0)
    theirs, ours = [], []
    for _ in range(n):
        out = prepare(meta, {}, types.SimpleNamespace(masks=gts, num_frames=frames))
        kinds = {t: "mask" for t in out["mask_inputs_per_frame"]}
        for t, p in out["point_inputs_per_frame"].items():
            kinds[t] = "box" if p["point_labels"].shape[1] == 2 else "click"
            if kinds[t] == "click" and 3 <= t <= 5:
                assert p["point_labels"][:, 0].tolist() == [1, 0]
        theirs.append((kinds, out["init_cond_frames"], out["frames_to_add_correction_pt"]))
    sam, gen = types.SimpleNamespace(image_size=64), torch.Generator().manual_seed(0)
    clip = recipes.Clip(None, gts, [None] * frames)
    for _ in range(n):
        prompts, fix = recipes.video_prompts(sam, clip, gen)
        kinds = {}
        for t, p in prompts.items():
            kinds[t] = (
                "mask" if "mask" in p else "box" if p["point_labels"].shape[1] == 2 else "click"
            )
            if kinds[t] == "click":
                x, y = (
                    (p["point_coords"][:, 0] / 64 * torch.tensor([32, 24])).round().long().unbind(1)
                )
                labels = p["point_labels"][:, 0]
                assert labels.tolist() == [1, 0 if 3 <= t <= 5 else 1]
                assert gts[t][torch.arange(2), y, x].int().tolist() == labels.tolist()
        ours.append((kinds, list(prompts), fix))
    want, got = tally(theirs, frames), tally(ours, frames)
    assert want.keys() == got.keys()
    far = {k: (round(got[k], 3), round(want[k], 3)) for k in want if abs(got[k] - want[k]) > 0.04}
    assert not far, f"ours vs Meta's: {far}"
    assert 0.4 < want["two prompted"] < 0.6 and 0.05 < want["prompted 4"] < 0.1  # what is compared


# ----------------------------------------------------------------------------- the loss's average


def test_video_recipe_averages_the_loss_over_objects(monkeypatch):
    """A batch of clips of 2 and 3 objects: the recipe's loss is the sum of video_loss's over
    clips divided by the 5 objects (Meta's loss is per object), and its IoU has one row each."""
    sums = iter([torch.tensor(4.0), torch.tensor(11.0)])
    monkeypatch.setattr(recipes, "track_clip", lambda *a, **k: [])
    monkeypatch.setattr(recipes, "video_loss", lambda out, clip: (next(sums), clip.gts[0][:, 0, 0]))
    feats = types.SimpleNamespace(image_embed=torch.zeros(1), index=lambda idx: None)
    clips = [
        recipes.Clip(feats, [torch.ones(b, 8, 8, dtype=torch.bool)] * 3, [None] * 3) for b in (2, 3)
    ]
    sam, cfg = types.SimpleNamespace(image_size=64), types.SimpleNamespace(clicks=1)
    loss, iou = recipes.video_recipe(sam, clips, cfg, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(15 / 5) and iou.shape == (5,)


# ----------------------------------------------------------------------------- correction passes


def spy(monkeypatch, sam, name: str, log: list, before=None) -> None:
    """Wrap sam.<name>: each call appends (its arguments by name, its output) to log; before(args)
    runs first (to snapshot what the call will change)."""
    real = getattr(sam, name)
    sig = inspect.signature(real)

    def wrapper(*a, **k):
        args = dict(sig.bind(*a, **k).arguments)
        if before:
            before(args)
        out = real(*a, **k)
        log.append((args, out))
        return out

    monkeypatch.setattr(sam, name, wrapper)


@torch.no_grad()
def test_corrections_feed_back_condition_and_encode_the_final_mask(monkeypatch):
    """track_clip as Meta's _iter_correct_pt_sampling with add_all_frames_to_correct_as_cond:
    each correction pass takes the previous pass's low-res logits as its mask prompt; a
    corrected frame (frame 0, prompted, and frame 2, tracked) conditions the later frames; the
    memory of a corrected frame is encoded from its final pass's mask, not its first."""
    from test_video import small_sam

    sam = small_sam().train()
    feats = encode_frames(sam, torch.randn(4, 3, sam.image_size, sam.image_size))
    gts = [torch.zeros(2, 40, 60, dtype=torch.bool) for _ in range(4)]
    for t, g in enumerate(gts):
        g[0, 5:20, 5 + 5 * t : 25 + 5 * t], g[1, 25:38, 30:50] = True, True
    xy = torch.tensor([[[12.0, 10.0]], [[40.0, 30.0]]])
    prompts = {0: frame_prompt(sam, (40, 60), xy, torch.ones(2, 1, dtype=torch.int))}
    gen = torch.Generator().manual_seed(0)
    fix = {t: recipes._video_clicks(sam, gts[t], gen) for t in (0, 2)}
    steps, heads, memories, frame = [], [], [], []

    def starts(args):  # which frame the next decoder calls belong to, and the conditioning bank
        frame.append(args["frame_idx"])
        steps.append((args["frame_idx"], sorted(args["output_dict"]["cond_frame_outputs"])))

    spy(monkeypatch, sam, "_track_step", [], starts)
    spy(monkeypatch, sam, "_forward_sam_heads", heads, lambda a: a.update(frame=frame[-1]))
    spy(monkeypatch, sam, "_encode_new_memory", memories)
    shown = {
        t: low for t, _, low in track_clip(sam, lambda t: feats.index([t]), 4, 2, prompts, fix, 2)
    }
    assert steps == [(0, []), (1, [0]), (2, [0]), (3, [0, 2])]
    for t, calls in ((0, 3), (1, 1), (2, 3), (3, 1)):
        passes = [(a, out) for a, out in heads if a["frame"] == t]
        assert len(passes) == calls
        for (_, previous), (args, _) in zip(passes, passes[1:]):
            assert args["mask_inputs"] is previous[3]  # the previous pass's low-res logits
        first = F.interpolate(passes[0][1][3], (sam.image_size,) * 2, mode="bilinear")
        final = F.interpolate(shown[t], (sam.image_size,) * 2, mode="bilinear")
        encoded = memories[t][0]["pred_masks_high_res"]
        torch.testing.assert_close(encoded, final)
        assert calls == 1 or (encoded - first).abs().max() > 1e-3  # the passes differ


# ----------------------------------------------------------------------------- J&F


def davis_bmap(seg: np.ndarray) -> np.ndarray:
    """davis2017-evaluation's _seg2bmap at the mask's own size: a pixel differing from its east,
    south or south-east neighbour (zeros past the image); the last row compares east only, the
    last column south only, the last pixel is never boundary."""
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def davis_j_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> tuple[float, float]:
    """davis2017-evaluation's db_eval_iou and f_measure (bound_th 0.008) of one frame."""
    keep = np.ones_like(gt) if void is None else ~void
    union = ((gt | pred) & keep).sum()
    j = 1.0 if union == 0 else ((gt & pred) & keep).sum() / union
    r = np.ceil(0.008 * np.linalg.norm(gt.shape))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = ((xx**2 + yy**2) <= r**2).astype(np.uint8)
    import cv2

    bp, bg = davis_bmap(pred & keep), davis_bmap(gt & keep)
    near_g = cv2.dilate(bg.astype(np.uint8), disk) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), disk) > 0
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 or n_g == 0:
        precision, recall = float(n_g == 0), float(n_p == 0)
    else:
        precision, recall = (bp & near_g).sum() / n_p, (bg & near_p).sum() / n_g
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return float(j), float(f)


def davis_semi_supervised(labels: list[np.ndarray], preds: list[np.ndarray], void_rule: str):
    """(J, F) per object as DAVISEvaluation's semi-supervised task scores them: frames 1 to
    T-2, label 255 read as background (get_all_masks) and no void pixels passed (the task's
    rule, void_rule "background"); "ignore": the same frames with the void pixels passed."""
    ids, scores = [i for i in np.unique(labels[0]) if i not in (0, 255)], []
    for k, i in enumerate(ids):
        per_frame = []
        for t in range(1, len(labels) - 1):
            void = labels[t] == 255
            gt = np.where(void, 0, labels[t]) == i
            per_frame.append(davis_j_f(gt, preds[t][k], void if void_rule == "ignore" else None))
        scores.append(tuple(np.mean(per_frame, 0)))
    return scores


class FakeSam(torch.nn.Module):
    image_size = 64

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))


def test_j_and_f_is_davis2017_evaluations(monkeypatch):
    """score_video on a 6-frame video whose tracker is replaced by known masks (prompted frame 0
    and the last frame wrong, the void ring around object 1 taken by its prediction, object 2
    shifted and then lost) equals davis2017-evaluation's semi-supervised J and F; with
    void="ignore" it equals the same metrics with the void pixels passed (and scores higher)."""
    h, w, frames = 60, 80, 6
    labels, preds = [], []
    for t in range(frames):
        lab = np.zeros((h, w), np.uint8)
        lab[10 + t : 30 + t, 10:30] = 255  # the void ring around object 1
        lab[13 + t : 27 + t, 13:27] = 1
        lab[35:50, 40 + 2 * t : 60 + 2 * t] = 2
        labels.append(lab)
        pred = np.stack([lab == 1, lab == 2])
        if 0 < t < frames - 1:
            pred[0] |= lab == 255  # spills onto the void ring
            pred[1] = np.roll(pred[1], 3 * t, axis=1) if t < 4 else False
        else:
            pred = ~pred  # frames DAVIS does not score
        preds.append(pred)

    def fake_track(sam, frame, num_frames, n_obj, prompts):
        assert list(prompts) == [0] and n_obj == 2
        for t in range(num_frames):
            yield t, [], torch.from_numpy(np.where(preds[t], 10.0, -10.0))[:, None].float()

    monkeypatch.setattr(plumbing.video, "track_clip", fake_track)
    sam = FakeSam()
    official = davis_semi_supervised(labels, preds, "background")
    ours = evaluate.score_video(sam, None, labels)
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-12)
    ignored = davis_semi_supervised(labels, preds, "ignore")
    np.testing.assert_allclose(evaluate.score_video(sam, None, labels, void="ignore"), ignored)
    assert ignored[0][0] == 1 and official[0][0] < 0.7  # the ring decides it
    summary = evaluate.evaluate_videos(sam, [(None, labels)], ("mask",), progress=False)
    assert summary["j_mask"] == pytest.approx(np.mean([j for j, _ in official]))
    with pytest.raises(ValueError, match="void"):
        evaluate.score_video(sam, None, labels, void="none")
