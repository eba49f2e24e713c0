"""evaluate.py: SAM's click protocol and its metrics on cases with a known answer, and the CLI."""

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import data
import evaluate
from evaluate import click_ious, format_table, next_clicks, score_masks, summarize
from model import Features, decode, upscale_logits


def rects(h: int = 30, w: int = 40) -> np.ndarray:
    """Three rectangles, one touching the image border."""
    gts = np.zeros((3, h, w), bool)
    gts[0, 2:10, 3:20] = True
    gts[1, 12:28, 25:39] = True
    gts[2, 0:30, 0:5] = True
    return gts


def true_after(gts: np.ndarray, ks: list[int], calls: list | None = None):
    """A fake predictor: mask i is exact from its ks[i]-th click on, empty before; a box gives
    the filled box. Records (clicks so far, state received) per call in `calls`."""

    def predict(points, labels, boxes, state):
        if boxes is not None:
            out = np.zeros_like(gts)
            for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
                out[i, y0 : y1 + 1, x0 : x1 + 1] = True
            return out, None
        k = points.shape[1]
        if calls is not None:
            calls.append((k, state))
        done = np.array(ks) <= k
        return gts & done[:, None, None], k

    return predict


@pytest.mark.parametrize("ks", [[1, 1, 1], [3, 3, 3], [2, 7, 4]])
def test_noc_is_the_click_that_gives_the_true_mask(ks):
    gts = rects()
    curves, box = score_masks(true_after(gts, ks), gts, max_clicks=10)
    m = summarize(curves, box)
    assert m["noc@85"] == m["noc@90"] == pytest.approx(np.mean(ks))
    assert m["miou@1"] == pytest.approx(np.mean([k <= 1 for k in ks]))
    assert m["miou@3"] == pytest.approx(np.mean([k <= 3 for k in ks]))
    assert m["miou@5"] == pytest.approx(np.mean([k <= 5 for k in ks]))
    assert m["box_miou"] == 1.0  # the true box of a rectangle is the rectangle


def test_never_reached_counts_max_clicks():
    gts = rects()
    curves, box = score_masks(true_after(gts, [2, 50, 50]), gts, max_clicks=6)
    m = summarize(curves, box)
    assert m["noc@90"] == pytest.approx((2 + 6 + 6) / 3)
    assert "miou@5" in m and summarize(curves[:, :4], box).keys() >= {"miou@3", "noc@85"}
    assert "miou@5" not in summarize(curves[:, :4], box)


def test_partial_masks_give_their_iou():
    """A predictor that gets half of each rectangle: IoU 0.5 at every click, NoC the maximum."""
    gts = rects()
    half = gts.copy()
    half[:, :, :] &= np.arange(gts.shape[2])[None, None] % 2 == 0

    def predict(points, labels, boxes, state):
        return half, None

    m = summarize(*score_masks(predict, gts, max_clicks=4))
    expected = (half.sum((1, 2)) / gts.sum((1, 2))).mean()
    assert m["miou@1"] == pytest.approx(expected) and m["noc@85"] == 4 and m["box_miou"] < 0.6


def test_state_is_fed_back_and_clicking_stops_once_done():
    gts = rects()
    calls = []
    click_ious(true_after(gts, [1, 1, 1], calls), gts, max_clicks=20)
    # 5 clicks (mIoU@5 needs them), then every mask is above 0.9: no more decoder passes
    assert [k for k, _ in calls] == [1, 2, 3, 4, 5]
    assert [s for _, s in calls] == [None, 1, 2, 3, 4]  # each pass gets the previous state


def test_next_click_is_at_the_centre_of_the_largest_error():
    gt = np.zeros((1, 40, 60), bool)
    gt[0, 10:31, 10:31] = True  # 21 x 21 square, centre (20, 20)
    pts, labels, err = next_clicks(gt, np.zeros_like(gt))
    assert pts[0].tolist() == [20, 20] and labels[0] == 1 and err[0]

    pred = gt.copy()
    pred[0, 5:36, 38:59] = True  # extra background, wider than anything missed
    pred[0, 10:13, 10:13] = False  # a small missed corner
    pts, labels, err = next_clicks(gt, pred)
    x, y = pts[0].astype(int)
    assert labels[0] == 0 and not gt[0, y, x] and pred[0, y, x] and 44 <= x <= 53

    pts, labels, err = next_clicks(gt, gt.copy())
    assert not err[0]


def test_next_click_counts_the_image_border_as_boundary():
    """A 9 px strip along the left border: its centre column is x = 4, not the border."""
    gt = np.zeros((1, 60, 40), bool)
    gt[0, 5:55, 0:9] = True
    pts, labels, _ = next_clicks(gt, np.zeros_like(gt))
    assert pts[0, 0] == 4 and labels[0] == 1


def test_model_predictor_shows_the_best_output_and_feeds_it_back(tiny_model):
    """One click: the output with the highest predicted IoU is shown and becomes the state; the
    next call feeds that state back as the mask prompt and gets one output."""
    sam = copy.deepcopy(tiny_model)
    with torch.no_grad():  # random weights score output 0 highest almost always: even it out
        sam.sam_mask_decoder.iou_prediction_head.layers[-1].bias[3] += 0.06
    g = torch.Generator().manual_seed(0)
    feats = Features(
        torch.randn(1, 256, 64, 64, generator=g),
        [torch.randn(1, 32, 256, 256, generator=g), torch.randn(1, 64, 128, 128, generator=g)],
    )
    hw, n = (48, 64), 4
    predict = evaluate.model_predictor(sam, feats, hw)
    pts = np.array([[[10, 20]], [[40, 30]], [[5, 5]], [[60, 40]]], np.float32)
    labels = np.ones((n, 1), np.int64)

    def direct(points, labels, mask_input, multimask):
        with torch.no_grad():
            return decode(
                sam,
                feats,
                torch.zeros(n, dtype=torch.long),
                torch.tensor([hw]),
                torch.from_numpy(points),
                torch.from_numpy(labels).int(),
                mask_input=mask_input,
                multimask=multimask,
            )

    masks, state = predict(pts, labels, None, None)
    low, scores = direct(pts, labels, None, True)
    best = scores.argmax(1)
    assert (best != 0).any() and (best == 0).any()  # showing output 0 would be caught
    torch.testing.assert_close(state, low[torch.arange(n), best][:, None], rtol=0, atol=0)
    np.testing.assert_array_equal(masks, (upscale_logits(state, hw)[:, 0] > 0).numpy())

    pts2 = np.concatenate([pts, pts + 3], 1)
    labels2 = np.concatenate([labels, 0 * labels], 1)
    masks2, state2 = predict(pts2, labels2, None, state)
    fed, _ = direct(pts2, labels2, state, False)
    torch.testing.assert_close(state2, fed, rtol=0, atol=0)
    assert not torch.allclose(fed, direct(pts2, labels2, None, False)[0])  # the state matters
    np.testing.assert_array_equal(masks2, (upscale_logits(fed, hw)[:, 0] > 0).numpy())


def test_max_clicks_has_bounds(capsys):
    for bad in ("0", str(evaluate.MAX_CLICKS + 1)):
        with pytest.raises(SystemExit):
            evaluate.parse_args(["--data", "x", "--max-clicks", bad])
        err = capsys.readouterr().err
        assert f"--max-clicks must be between 1 and {evaluate.MAX_CLICKS}, got {bad}" in err
    assert evaluate.parse_args(["--data", "x", "--max-clicks", "50"]).max_clicks == 50


def test_repeated_clicks_when_nothing_is_left_to_fix():
    """An exact mask before the 5th click: the next clicks repeat the last one (no noise)."""
    gts = rects()
    seen = []

    def predict(points, labels, boxes, state):
        seen.append((points.copy(), labels.copy()))
        return gts.copy(), None

    click_ious(predict, gts, max_clicks=8)
    points, labels = seen[-1]
    assert len(seen) == 5 and (points == points[:, :1]).all() and (labels == 1).all()


def test_before_after_table():
    before = {"miou@1": 0.5, "noc@90": 12.0, "box_miou": 0.6, "masks": 10, "max_clicks": 20}
    after = {"miou@1": 0.7, "noc@90": 8.25, "box_miou": 0.8, "masks": 10, "max_clicks": 20}
    table = format_table(after, before)
    assert "mIoU@1    0.500 -> 0.700" in table and "NoC@90    12.00 -> 8.25" in table


def test_cli_end_to_end(tmp_path, capsys):
    root = data.make_demo(tmp_path / "demo", n_train=2, n_test=1)
    out = tmp_path / "res" / "eval.json"
    argv = ["--data", str(root), "--model", "tiny", "--checkpoint", "none", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        result = evaluate.main([*argv, "--max-clicks", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    m = saved["metrics"]
    assert m["masks"] > 0 and m["max_clicks"] == 2 and set(m) >= {"miou@1", "noc@85", "box_miou"}
    assert all(0 <= m[k] <= 1 for k in ("miou@1", "box_miou")) and 1 <= m["noc@90"] <= 2
    assert "box mIoU" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="error: .*nowhere"):
        evaluate.main(["--data", str(tmp_path / "nowhere"), "--checkpoint", "none"])


def test_cli_reads_crowd_regions_as_train_py_does(tmp_path, capsys):
    """A CVAT export: its mask shapes are crowd regions, skipped with a note by default and
    scored with --crowd-instances, as train.py reads them."""
    from test_data import cvat_coco

    cvat_coco(tmp_path / "cvat")
    argv = ["--data", str(tmp_path / "cvat"), "--split", "all", "--model", "tiny"]
    argv += ["--checkpoint", "none", "--device", "cpu", "--max-clicks", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        plain = evaluate.main([*argv, "--out", str(tmp_path / "a.json")])
        assert "3 crowd (iscrowd=1) annotations skipped" in capsys.readouterr().err
        crowd = evaluate.main([*argv, "--crowd-instances", "--out", str(tmp_path / "b.json")])
    assert (plain["metrics"]["masks"], crowd["metrics"]["masks"]) == (1, 4)
