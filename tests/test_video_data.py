"""Video data: colour (RGB) annotations keep ids across frames, videos whose first annotated frame
is empty are trained from their first frame with an object, and what is left out is named."""

import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import data
import train


def palette_ids(root, name: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((root / "Annotations" / name).glob("*.png"))]


def test_colour_annotations_keep_object_ids_across_frames(tmp_path):
    """The demo's box leaves mid-clip; its label PNGs saved as RGB (each palette index drawn in
    its colour, as a converted DAVIS annotation) give each object one id in every frame."""
    root = data.make_video_demo(tmp_path, n_train=1, n_test=1, frames=6, size=(48, 64))
    truth = palette_ids(root, "train00")
    shown = [set(data.object_ids(t).tolist()) for t in truth]
    assert shown[0] == {1, 2} and shown[-1] == {1, 3}  # the box (2) leaves, the triangle enters
    for p in (root / "Annotations").rglob("*.png"):
        Image.open(p).convert("RGB").save(p)
    assert np.asarray(Image.open(p)).ndim == 3
    (video,) = data.load_videos(root, "train")
    pairs = set()
    for t, ids in enumerate(truth):
        got = data.video_labels(video, t)
        assert got.dtype == np.uint16 and ((got == 0) == (ids == 0)).all()
        pairs |= set(zip(ids[ids > 0].tolist(), got[ids > 0].tolist()))
    # one id per object and one object per id, in every frame of the video
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 3
    assert "objects per video min 3 / mean 3.0 / max 3" in data.summarize(root)


def test_colour_ids_skip_void(tmp_path):
    """A video with 300 colours: none of them becomes VOID (255), each keeps one id."""
    root = data.make_video_demo(tmp_path, n_train=1, n_test=1, frames=2, size=(20, 30))
    rng = np.random.default_rng(0)
    colours = rng.permutation(np.arange(1, 301))  # 300 colours, 150 per frame
    for t, p in enumerate(sorted((root / "Annotations" / "train00").glob("*.png"))):
        lab = np.zeros((20, 30, 3), np.uint8)
        lab.reshape(-1, 3)[:150, 0] = colours[t * 150 : (t + 1) * 150] % 256
        lab.reshape(-1, 3)[:150, 1] = colours[t * 150 : (t + 1) * 150] // 256
        Image.fromarray(lab).save(p)
    (video,) = data.load_videos(root, "train")
    ids = np.concatenate([data.video_labels(video, t).ravel()[:150] for t in (0, 1)])
    assert len(set(ids.tolist())) == 300 and data.VOID not in ids and 0 not in ids


def blank(png) -> None:
    lab = Image.fromarray(np.zeros_like(np.asarray(Image.open(png))))
    lab.putpalette([0, 0, 0])
    lab.save(png)


def test_video_with_empty_first_frame_starts_at_its_first_object(tmp_path):
    """train00's first annotated frame shows nothing: it is used by training from frame 1 and
    counted usable by the summary; train01 shows no object at all: skipped and named."""
    root = data.make_video_demo(tmp_path, n_train=3, n_test=1, frames=4, size=(40, 56))
    blank(root / "Annotations" / "train00" / "00000.png")
    for png in (root / "Annotations" / "train01").glob("*.png"):
        blank(png)
    with pytest.warns(UserWarning, match="skipping video train01: no annotated frame shows"):
        videos = data.load_videos(root, "train")
    assert [v.name for v in videos] == ["train00", "train02"]
    assert [data.first_object_frame(v) for v in videos] == [1, 0]
    cfg = train.Config(data=str(root), recipe="video", frames=2, objects=3, batch_size=1)
    cache = train.clip_cache(
        videos, [0, 1], cfg, SimpleNamespace(image_size=64), torch.device("cpu")
    )
    assert cache.ids == [0, 1] and cache.first == {0: 1, 1: 0}
    cache.frames = lambda i, ts: ts  # no model: the clip's frame numbers stand in for features
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(12):
        clip = train.sample_clips(cache, [0], cfg, gen)[0]
        starts.add(clip.feats[0])
        assert clip.gts[0].flatten(1).any(1).all()  # every object picked shows on frame 0
    assert starts == {1, 2}  # drawn 0 (empty) falls back to 1
    text, usable = data.summarize_videos(root)
    assert usable == 2
    assert "1 start at their first frame with an object" in text and ": train00" in text
    assert "skipped: 1 videos" in text and "train01: no annotated frame shows an object" in text


def test_missing_listed_video_and_missing_frame_are_named(tmp_path):
    root = data.make_video_demo(tmp_path, n_train=2, n_test=1, frames=4, size=(40, 56))
    lists = root / "ImageSets" / "2017"
    with open(lists / "val.txt", "a") as f:
        f.write("ghost\n")
    (root / "JPEGImages" / "train01" / "00002.jpg").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        videos = {v.name: v for v in data.load_videos(root, "train")}
    (said,) = [str(w.message) for w in caught]
    assert "train01" in said and "frame 00002" in said and "image is missing" in said
    assert [p.name for p in videos["train01"].labels] == ["00000.png", "00001.png", "00003.png"]
    with pytest.warns(UserWarning, match=r"val\.txt: 1 listed video\(s\) .* ghost"):
        assert [v.name for v in data.load_videos(root, "val")] == ["val00"]
    text = data.summarize(root)
    assert re.search(r"warning: .*val\.txt: 1 listed .*: ghost", text)
    assert "skipped: 1 frames" in text and "train01, frame 00002" in text
