"""evaluate.py: SAM's click protocol and its metrics on cases with a known answer, and the CLI."""

import json
import warnings

import numpy as np
import pytest

import data
import evaluate
from evaluate import click_ious, format_table, next_clicks, score_masks, summarize


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
    with pytest.raises(SystemExit):
        evaluate.main([*argv, "--max-clicks", "0"])
    assert "--max-clicks must be >= 1" in capsys.readouterr().err
