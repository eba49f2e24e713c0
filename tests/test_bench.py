"""bench.py end to end on the CPU with the smallest settings: tiny random-init SAM 2, 2 demo
images, 1 timed step each way (and 1 more per recipe for its memory), 1 image (4 points)
through each inference method."""

import json
import math

import bench

MINIMAL = [
    "--quick",
    "--device",
    "cpu",
    "--images",
    "2",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--max-masks",
    "2",
    "--infer-images",
    "1",
    "--points",
    "4",
]


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_minimal(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main([*MINIMAL, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in (
        "steady state masks/s",
        "first epoch masks/s",
        "s/image",
        "fp32",
        "peak GPU memory",
        "ours/article",
        "--recipe interactive",
        "per mask per pass",
    ):
        assert label in printed, label

    r = json.loads(out.read_text())
    assert r["model"] == "tiny" and r["images"] == 2 and r["device"].startswith("cpu")
    tr, inf = r["train"], r["infer"]
    for v in (
        tr["article"]["masks_per_s"],
        tr["article"]["s_per_step"],
        tr["ours"]["masks_per_s"],
        tr["ours"]["s_per_step"],
        tr["ours"]["first_epoch_masks_per_s"],
        tr["interactive"]["masks_per_s"],
        tr["ratio"],
        tr["ratio_first_epoch"],
        inf["article"]["s_per_image"],
        inf["ours"]["s_per_image"],
        inf["ratio"],
        r["max_rss_gib"],
    ):
        assert positive(v), v
    assert tr["ours"]["peak_gib"] is None  # no GPU figure on the CPU
    # one more step per recipe for its memory: process RSS on the CPU (Linux)
    assert tr["ours"]["passes"] == 1 and tr["interactive"]["passes"] == 8
    for recipe in ("ours", "interactive"):
        m = tr[recipe]
        assert m["memory_step_masks"] >= 1 and positive(m["step_peak_gib"])
        assert positive(m["mib_per_mask_pass"]) and m["mib_per_mask_pass"] * 2**20 < 2**32
        assert m["kept_mib_per_mask_pass"] <= m["mib_per_mask_pass"]

    # same loss math: the article's sigmoid + log(p + 1e-5) BCE vs ours from logits
    loss = r["loss"]["fp32"]
    assert positive(loss["article"]) and positive(loss["ours"])
    assert loss["rel_diff"] < 1e-3, loss
