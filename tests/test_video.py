"""The video path: readers, demo clips, J&F, the memory unroll against SAM2VideoPredictor, the
loss against Meta's, gradients, and model.pt in SAM 2's video predictor.

SAM 2.1 tiny runs here with random weights at image_size 128 (a hydra override; the weights have
the same shapes at any size), which keeps the memory path's math and costs ~1/60 of 1024.
"""

import re
import shutil
import sys
import types
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import evaluate
import recipes
from model import MODELS, encode_frames, frame_prompt, freeze_for_video, track_clip

SIZE = 128
# what load_model's build_sam2 sets on the mask decoder (its apply_postprocessing default)
STABILITY = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
MEMORY = ("memory_attention.", "memory_encoder.", "obj_ptr", "mask_downsample.", "maskmem_tpos")
MEMORY += ("no_obj_ptr", "no_obj_embed_spatial", "no_mem_embed")


def small_sam(seed: int = 0, size: int = SIZE):
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        over = [f"++model.image_size={size}"]
        return build_sam2(MODELS["tiny"][0], None, device="cpu", hydra_overrides_extra=over)


@pytest.fixture(scope="module")
def sam():
    return small_sam()


# ----------------------------------------------------------------------------- J&F


def square(h=64, w=64, y=10, x=10, side=10) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y : y + side, x : x + side] = True
    return m


def test_j_and_f_known_values():
    gt = square()
    assert evaluate.jaccard(gt, gt) == 1 and evaluate.boundary_f(gt, gt) == 1
    empty = np.zeros_like(gt)
    assert evaluate.jaccard(empty, empty) == 1 and evaluate.boundary_f(empty, empty) == 1
    assert evaluate.jaccard(empty, gt) == 0 and evaluate.boundary_f(empty, gt) == 0
    # shifted 2 px right: J = 80 / 120. Boundaries are the 40-px rings of the squares grown by one
    # px up and left; at 64x64 the tolerance is ceil(0.008 * 90.5) = 1 px (a 3x3 cross): 22 of
    # each ring's 40 pixels are matched (hand-counted), so P = R = F = 0.55
    shifted = square(x=12)
    assert evaluate.boundary(gt).sum() == 40
    assert evaluate.jaccard(shifted, gt) == pytest.approx(2 / 3)
    assert evaluate.boundary_f(shifted, gt) == pytest.approx(0.55)
    assert evaluate.boundary_f(shifted, gt, bound_th=2) == 1  # 2 px tolerance matches all
    # DAVIS 480p: ceil(0.008 * hypot(480, 854)) = 8 px
    big = square(480, 854, 100, 100, 200)
    assert evaluate.boundary_f(square(480, 854, 100, 108, 200), big) == 1
    assert evaluate.boundary_f(square(480, 854, 100, 109, 200), big) < 1
    # void pixels count neither way
    void = np.zeros_like(gt)
    void[40:60, 40:60] = True
    assert (
        evaluate.jaccard(gt | void, gt, void) == 1 and evaluate.boundary_f(gt | void, gt, void) == 1
    )


# ----------------------------------------------------------------------------- data


def test_demo_clips_move_occlude_enter_and_leave(tmp_path):
    root = data.make_video_demo(tmp_path, n_train=1, n_test=1, frames=8, size=(48, 64))
    (video,) = data.load_videos(root, "train")
    areas = np.array(
        [[(data.video_labels(video, t) == k).sum() for k in (1, 2, 3)] for t in range(8)]
    )
    assert areas[0, 2] == 0 and areas[-1, 2] > 0  # the triangle enters
    assert areas[0, 1] > 0 and areas[-1, 1] == 0  # the box leaves
    assert areas[:, 0].min() < areas[:, 0].max()  # the disc is hidden behind the box a while
    assert [v.name for v in data.load_videos(root, "val")] == ["val00"]


def test_video_layouts_splits_sparse_void_and_bad_frames(tmp_path):
    demo = data.make_video_demo(tmp_path / "demo", n_train=3, n_test=1, frames=4, size=(24, 32))
    # DAVIS: a 480p level and ImageSets lists
    davis = tmp_path / "davis"
    for d in data.VIDEO_DIRS:
        shutil.copytree(demo / d, davis / d / "480p")
    shutil.copytree(demo / "ImageSets", davis / "ImageSets")
    assert data.detect_format(davis) == "video"
    videos, how = data.find_videos(davis, "val")
    assert [v.name for v in videos] == ["val00"] and "ImageSets" in how
    assert len(videos[0].frames) == 4 and "480p" in str(videos[0].frames[0])
    with pytest.raises(data.DataError, match="--recipe video"):
        data.load_split(davis, "train")
    # YouTube-VOS / MOSE: train/ and valid/; a valid/ with first frames only is not a split
    yt = tmp_path / "ytvos"
    for split, names in (("train", ["train00", "train01", "train02"]), ("valid", ["val00"])):
        for d in data.VIDEO_DIRS:
            for n in names:
                shutil.copytree(demo / d / n, yt / split / d / n)
    assert len(data.find_videos(yt, "train")[0]) == 3 and data.find_videos(yt, "val")[0]
    for png in sorted((yt / "valid" / "Annotations" / "val00").glob("*.png"))[1:]:
        png.unlink()
    (train, how), (val, _) = data.find_videos(yt, "train"), data.find_videos(yt, "val")
    assert "hash" in how and len(train) + len(val) == 3 and len(val) == 1
    # sparse annotations (every other frame), void pixels, a truncated frame
    v = yt / "train" / "Annotations" / "train01"
    (v / "00001.png").unlink()
    lab = np.array(data.read_label_map(v / "00002.png"), np.uint8)
    lab[:4] = data.VOID
    cv2.imwrite(str(v / "00002.png"), lab)
    bad = yt / "train" / "JPEGImages" / "train02" / "00003.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.warns(UserWarning, match="00003.jpg"):
        videos = {v.name: v for v in data.load_videos(yt, "all")}
    assert len(videos["train02"].frames) == 3
    assert videos["train01"].labels[1] is None and videos["train01"].labels[2] is not None
    assert set(data.object_ids(data.video_labels(videos["train01"], 2))) <= {1, 2, 3}
    summary = data.summarize(yt)
    assert "video layout" in summary and "skipped: 1 frames" in summary and "00003.jpg" in summary
    counts = np.array(re.findall(r"(\d+) frames \((\d+) annotated\)", summary), int).sum(0)
    assert counts.tolist() == [11, 10]  # 12 frames, 1 bad; train01's 00001 has no annotation


# ----------------------------------------------------------------------------- the unroll


def write_frames(folder, n=3, h=64, w=96):
    """A bright square moving right and a green bar moving left, SAM 2's 00000.jpg naming."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        f = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        f[20:44, 10 + 8 * i : 34 + 8 * i] = 255
        f[5:20, 60 - 5 * i : 80 - 5 * i] = (0, 200, 0)
        assert cv2.imwrite(str(folder / f"{i:05d}.jpg"), f)


@pytest.fixture(scope="module")
def tuned_predictor(tmp_path_factory):
    """(a small_sam whose memory weights changed, as fine-tuning would change them; SAM 2's video
    predictor built from it saved as train.py saves model.pt; the predictor's state on 3 frames;
    encode_frames features of those frames)."""
    from sam2.build_sam import build_sam2_video_predictor

    tmp = tmp_path_factory.mktemp("predictor")
    tuned = small_sam()
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.startswith(("memory_attention.", "memory_encoder.")):
                p.add_(0.05 * torch.randn_like(p))
    meta = {"model_name": "tiny", "config": {"model": "tiny", "recipe": "video"}, "step": 1}
    torch.save({"model": tuned.state_dict(), **meta}, tmp / "model.pt")
    predictor = build_sam2_video_predictor(
        MODELS["tiny"][0],
        str(tmp / "model.pt"),
        "cpu",
        apply_postprocessing=False,
        hydra_overrides_extra=[*STABILITY, f"++model.image_size={SIZE}"],
    )
    write_frames(tmp / "frames")
    with torch.inference_mode():
        state = predictor.init_state(str(tmp / "frames"))
    with torch.no_grad():
        feats = [encode_frames(tuned, state["images"][t : t + 1].clone()) for t in range(3)]
    return tuned, predictor, state, feats


@pytest.mark.filterwarnings("ignore:cannot import name '_C'")
@pytest.mark.parametrize("prompt", ["click", "mask"])
def test_unroll_equals_video_predictor_on_model_pt(tuned_predictor, sam, prompt):
    """Eval-mode track_clip == SAM2VideoPredictor built from a train.py-style model.pt with
    changed memory weights: the same masks on every frame, and the changed memory weights are
    the ones used (the masks after frame 0 move with them).

    The predictor runs each object alone, the unroll both at once: batched float32 sums differ
    in the last bits (3e-7 measured), so logits are compared to 1e-4. The predictor is built
    with the mask decoder's stability fallback, like load_model's model, and without its other
    inference extras (binarized memory of clicked frames; hole filling, which needs the CUDA
    extension), which are no part of training."""
    tuned, predictor, state, feats = tuned_predictor
    gt = np.zeros((2, 64, 96), bool)
    gt[0, 20:44, 10:34], gt[1, 5:20, 60:80] = True, True
    clicks = [[22.0, 32.0], [70.0, 12.0]]
    with torch.inference_mode():
        predictor.reset_state(state)
        for k in range(2):
            if prompt == "click":
                predictor.add_new_points_or_box(state, 0, k + 1, points=[clicks[k]], labels=[1])
            else:
                predictor.add_new_mask(state, 0, k + 1, gt[k])
        theirs = {t: logits for t, _, logits in predictor.propagate_in_video(state)}
    if prompt == "click":
        p = frame_prompt(tuned, (64, 96), torch.tensor(clicks)[:, None], torch.ones(2, 1))
    else:
        p = frame_prompt(tuned, (64, 96), masks=torch.from_numpy(gt))

    @torch.no_grad()
    def unroll(model):
        out = track_clip(model.eval(), lambda t: feats[t], 3, 2, {0: p})
        return {t: F.interpolate(low, (64, 96), mode="bilinear") for t, _, low in out}

    ours, base = unroll(tuned), unroll(sam)  # sam: the same weights before the change
    for t in range(3):
        torch.testing.assert_close(ours[t], theirs[t], atol=1e-4, rtol=0)
        clear = theirs[t].abs() > 1e-4
        assert torch.equal((ours[t] > 0)[clear], (theirs[t] > 0)[clear])
    torch.testing.assert_close(base[0], ours[0], atol=1e-4, rtol=0)  # frame 0 has no memory
    assert (base[2] - ours[2]).abs().max() > 1e-2  # later frames read the tuned memory


def meta_loss_class():
    """training.loss_fns.MultiStepMultiMasksAndIous, imported without training.trainer (which
    needs tensordict and tensorboard; the loss uses only its CORE_LOSS_KEY)."""
    stub = types.ModuleType("training.trainer")
    stub.CORE_LOSS_KEY = "core_loss"
    saved = sys.modules.get("training.trainer")
    sys.modules["training.trainer"] = stub
    try:
        from training.loss_fns import MultiStepMultiMasksAndIous
    finally:
        if saved is None:
            del sys.modules["training.trainer"]
        else:
            sys.modules["training.trainer"] = saved
    return MultiStepMultiMasksAndIous


def test_video_loss_equals_metas():
    """recipes.video_loss == Meta's loss of the MOSE fine-tune config on the same outputs and
    (binary) targets, over frames with 3-output and 1-output passes and an absent object."""
    g = torch.Generator().manual_seed(0)
    b, h, frames, out = 3, 16, [], []
    gts = [torch.rand(b, h, h, generator=g) > 0.6 for _ in range(3)]
    gts[1][2] = False  # object 2 is not in frame 1
    for t, passes in enumerate([2, 1, 3]):
        steps = []
        for k in range(passes):
            c = 3 if k == 0 else 1
            masks = 4 * torch.randn(b, c, h, h, generator=g)
            steps.append((masks, torch.rand(b, c, generator=g), torch.randn(b, 1, generator=g)))
        frames.append((t, steps, steps[-1][0][:, :1]))
        out.append(
            {
                "multistep_pred_multimasks_high_res": [s[0] for s in steps],
                "multistep_pred_ious": [s[1] for s in steps],
                "multistep_object_score_logits": [s[2] for s in steps],
            }
        )
    meta = meta_loss_class()(
        {"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )
    theirs = meta(out, torch.stack(gts).float())["core_loss"]
    clip = recipes.Clip(None, gts, [None] * 3)
    ours, _ = recipes.video_loss(frames, clip)
    torch.testing.assert_close(ours / b, theirs, rtol=1e-5, atol=0)
    # void pixels: no loss and no gradient there
    masks = frames[0][1][0][0].clone().requires_grad_()
    void = torch.zeros(h, h, dtype=torch.bool)
    void[:4] = True
    frames[0][1][0] = (masks, *frames[0][1][0][1:])
    loss, _ = recipes.video_loss(frames[:1], recipes.Clip(None, gts[:1], [void]))
    loss.backward()
    assert masks.grad[:, :, :4].abs().max() == 0 and masks.grad[:, :, 4:].abs().max() > 0


def test_video_prompts_leave_a_frame_to_learn_from():
    """Masks as prompts teach nothing unless a later frame with ground truth is tracked (a clip
    with only mask-prompted frames has a constant loss): such clips get boxes or clicks, and a
    second prompted frame is drawn only when another annotated frame stays tracked."""
    sam = types.SimpleNamespace(image_size=SIZE)
    g = torch.zeros(2, 20, 30, dtype=torch.bool)
    g[:, 5:15, 5:20] = True
    for gts in ([g], [g, None, None], [g, g]):
        gen = torch.Generator().manual_seed(0)
        for _ in range(50):
            prompts, _ = recipes.video_prompts(sam, recipes.Clip(None, gts, [None] * 3), gen)
            annotated = sum(x is not None for x in gts)
            if annotated - len(prompts) < 1:
                assert all("mask" not in p for p in prompts.values())
            assert len(prompts) < max(annotated, 2)
    gen, kinds = torch.Generator().manual_seed(0), set()
    for _ in range(50):
        prompts, correct = recipes.video_prompts(sam, recipes.Clip(None, [g] * 4, [None] * 4), gen)
        kinds |= {"mask" if "mask" in p else p["point_labels"].shape[1] for p in prompts.values()}
        assert (correct == []) == ("mask" in prompts[0])  # clicks and boxes get corrections
        assert set(prompts) <= set(correct) or not correct
    assert kinds == {"mask", 1, 2}  # masks, clicks and boxes (two corner points) all happen


def test_gradients_reach_the_memory_not_the_encoder():
    """The video loss of one clip: every memory part gets a gradient, the encoder none (it is
    frozen, and its cached features carry no graph)."""
    model = small_sam()
    params = freeze_for_video(model)
    model.train()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("image_encoder.") for n in names)
    assert {n for n, _ in model.named_parameters()} - names == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("image_encoder.", "sam_mask_decoder.conv_s"))
    }
    assert len(params) == len(names)
    with torch.no_grad():
        feats = encode_frames(model, torch.randn(3, 3, SIZE, SIZE))
    gts = [torch.zeros(2, 40, 60, dtype=torch.bool) for _ in range(3)]
    for t, m in enumerate(gts):
        m[0, 5:20, 5 + 5 * t : 25 + 5 * t] = True
        m[1, 25:38, 30:50] = t < 2  # object 1 has left by frame 2
    # frame 0 clicked (and corrected), frame 2 given by masks (Meta's 2 conditioning frames):
    # the no-memory embedding, the mask path and the absent object's pointer are all used
    xy = torch.tensor([[[12.0, 10.0]], [[40.0, 30.0]]])
    prompts = {0: frame_prompt(model, (40, 60), xy, torch.ones(2, 1, dtype=torch.int))}
    prompts[2] = frame_prompt(model, (40, 60), masks=gts[2])
    fix = {0: recipes._video_clicks(model, gts[0], torch.Generator().manual_seed(0))}
    out = track_clip(model, lambda t: feats.index([t]), 3, 2, prompts, fix, clicks=1)
    recipes.video_loss(out, recipes.Clip(feats, gts, [None] * 3))[0].backward()
    unused = {"no_mem_pos_enc"}  # SAM 2.1 adds no_mem_embed directly (directly_add_no_mem_embed)
    for n, p in model.named_parameters():
        if n.startswith(MEMORY):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif n.startswith("image_encoder."):
            assert p.grad is None, n
    assert unused <= names and all(
        p.grad is None for n, p in model.named_parameters() if n in unused
    )
