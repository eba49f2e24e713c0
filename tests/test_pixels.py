"""Every pixel format a user has, read as it is and turned into uint8 RGB by one named rule
(plumbing.images, plumbing.intensity). Files are written as their writers write them:
tifffile.imwrite for TIFF (pages, photometric/planarconfig, OME axes), cv2.imwrite for PNG."""

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from plumbing.files import DataError, read_bytes
from plumbing.images import (
    decode_rgb,
    image_size,
    pixel_info,
    read_image,
    read_raw,
    read_rgb,
)
from plumbing.intensity import PixelInfo, PixelRule, describe, to_rgb

RNG = np.random.default_rng(0)
H, W = 48, 64


def low_range(lo=200, hi=3000):
    """A fluorescence-like 16-bit frame: smooth structure from lo to hi plus noise."""
    y, x = np.mgrid[:H, :W]
    base = lo + (hi - lo) * (0.5 + 0.5 * np.sin(x / 7.0) * np.cos(y / 5.0))
    return np.clip(base + RNG.normal(0, 20, (H, W)), lo, hi).astype(np.uint16)


def span(gray: np.ndarray) -> float:
    """Levels between the 1st and 99th percentile of an 8-bit image."""
    lo, hi = np.percentile(gray, (1, 99))
    return hi - lo


def test_16bit_low_range_has_full_contrast(tmp_path):
    png, tif = tmp_path / "a.png", tmp_path / "a.tif"
    img = low_range()
    assert cv2.imwrite(str(png), img)
    tifffile.imwrite(tif, img)
    # cv2's 8-bit read shifts 16 bits to 8: values 0-11, a black image
    assert span(decode_rgb(read_bytes(png), png)[..., 0]) < 15
    for p in (png, tif):
        raw = read_raw(p)
        assert raw.dtype == np.uint16 and raw.shape == (H, W, 1)
        np.testing.assert_array_equal(raw[..., 0], img)  # nothing shifted or clipped
        rgb = read_rgb(p)
        assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        assert span(rgb[..., 0]) >= 200, span(rgb[..., 0])


def test_12bit_in_16_fixed_range_and_percentiles(tmp_path):
    p = tmp_path / "cam.tif"
    img = np.linspace(0, 4095, H * W).reshape(H, W).astype(np.uint16)
    tifffile.imwrite(p, img, photometric="minisblack")
    fixed = read_image(p, PixelRule.parse("range:0,4095"))[..., 0]
    assert fixed[0, 0] == 0 and fixed[-1, -1] == 255
    assert abs(int(fixed.ravel()[img.size // 2]) - 128) <= 1
    # percentile:10,90 saturates the darkest and brightest tenth
    pct = read_image(p, PixelRule.parse("percentile:10,90"))[..., 0].ravel()
    assert (pct == 0).mean() == pytest.approx(0.1, abs=0.01)
    assert (pct == 255).mean() == pytest.approx(0.1, abs=0.01)
    with pytest.raises(DataError, match=r"cam.tif.*none needs values 0-255.*4095"):
        read_image(p, PixelRule.parse("none"))


def test_float32_tiff_is_read_not_refused(tmp_path):
    p = tmp_path / "deconv.tif"
    img = RNG.uniform(-0.5, 2.5, (H, W)).astype(np.float32)
    img[0, :4] = np.nan
    tifffile.imwrite(p, img)
    with pytest.raises(DataError, match="not a readable image"):  # what cv2 alone said
        decode_rgb(read_bytes(p), p)
    assert read_raw(p).dtype == np.float32
    rgb = read_rgb(p)
    assert rgb[0, :4].max() == 0  # NaN is black
    assert span(rgb[..., 0]) >= 200
    info = pixel_info(p)
    assert info.dtype == "float32" and info.channels == 1
    assert -0.5 <= info.lo < -0.45 and 2.45 < info.hi <= 2.5  # NaN ignored


def test_two_channel_first_tiff(tmp_path):
    p = tmp_path / "two.tif"
    a, b = low_range(100, 900), low_range(1000, 60000)
    tifffile.imwrite(p, np.stack([a, b]))  # (C, H, W): two pages, as tifffile writes it
    assert read_raw(p).shape == (H, W, 2)
    rgb = read_rgb(p)  # two channels become R and G, each scaled on its own
    assert rgb[..., 2].max() == 0
    assert span(rgb[..., 0]) >= 200 and span(rgb[..., 1]) >= 200
    np.testing.assert_array_equal(rgb[..., 0], to_rgb(a, PixelRule())[..., 0])
    swapped = read_image(p, PixelRule.parse("auto", "1,0"))
    np.testing.assert_array_equal(swapped[..., 0], rgb[..., 1])
    gray = read_image(p, PixelRule.parse("auto", "1"))
    assert all((gray[..., c] == rgb[..., 1]).all() for c in range(3))


@pytest.mark.parametrize("how", ["separate", "ome", "last"])
def test_five_channel_tiff(tmp_path, how):
    p = tmp_path / f"multi_{how}.tif"
    stack = np.stack([low_range(100 * c, 1000 * (c + 1)) for c in range(5)])  # (5, H, W)
    if how == "separate":
        tifffile.imwrite(p, stack, photometric="minisblack", planarconfig="separate")
    elif how == "ome":
        tifffile.imwrite(p, stack, ome=True, metadata={"axes": "CYX"})
    else:
        tifffile.imwrite(
            p, np.moveaxis(stack, 0, -1), photometric="minisblack", planarconfig="contig"
        )
    assert image_size(p) == (W, H)  # PIL refuses these headers
    raw = read_raw(p)
    assert raw.shape == (H, W, 5)
    np.testing.assert_array_equal(raw[..., 3], stack[3])
    with pytest.raises(DataError, match=rf"multi_{how}.tif: has 5 channels.*--channels"):
        read_rgb(p)
    rgb = read_image(p, PixelRule.parse("auto", "4,2,0"))
    for c, src in enumerate((4, 2, 0)):
        np.testing.assert_array_equal(rgb[..., c], to_rgb(stack[src], PixelRule())[..., 0])
    with pytest.raises(DataError) as e:
        read_image(p, PixelRule.parse("auto", "0,7"))
    assert str(e.value) == (
        f"{p}: --channels 0,7 asks for channel 7 but the file has 5 channels (0-4)"
    )


def test_multipage_stack_reads_first_plane_and_says_so(tmp_path):
    p = tmp_path / "timelapse.ome.tif"
    data = RNG.integers(0, 4000, (3, 2, 4, H, W)).astype(np.uint16)  # T, C, Z, Y, X
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "TCZYX"})
    raw = read_raw(p)
    assert raw.shape == (H, W, 2)
    np.testing.assert_array_equal(np.moveaxis(raw, -1, 0), data[0, :, 0])
    assert pixel_info(p).note == "first of 3 T x 4 Z planes"


def test_eight_bit_files_are_read_exactly_as_before(tmp_path):
    """read_rgb is cv2.imread for 8-bit files (EXIF orientation, gray, alpha, palette, TIFF),
    and the raw path + default rule gives the same pixels."""
    img = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    files = {
        "gray.png": img[..., 0],
        "rgba.png": np.dstack([img, img[..., :1]]),
        "rgb.bmp": img,
    }
    for name, a in files.items():
        cv2.imwrite(str(tmp_path / name), a)
    Image.fromarray(img[..., 1]).convert("P").save(tmp_path / "palette.png")
    tifffile.imwrite(tmp_path / "rgb.tif", img, photometric="rgb")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: cv2.imread turns it, so must we
    Image.fromarray(img).save(tmp_path / "turned.jpg", exif=exif, quality=90)
    for p in sorted(tmp_path.iterdir()):
        before = decode_rgb(read_bytes(p), p)  # the reader as it was
        np.testing.assert_array_equal(read_rgb(p), before, err_msg=p.name)
        via_raw = to_rgb(read_raw(p), PixelRule(), p)
        np.testing.assert_array_equal(via_raw, before, err_msg=p.name)
    assert read_rgb(tmp_path / "turned.jpg").shape == (W, H, 3)


def test_rule_parsing_and_round_trip():
    for norm, ch in [
        ("auto", ""),
        ("none", "2,1,0"),
        ("percentile:1,99.8", "1"),
        ("percentile:0.5,99.95", "1,0"),
        ("range:0,4095", ""),
        ("range:-1.5,12345.678", "0,0,1"),
    ]:
        rule = PixelRule.parse(norm, ch)
        assert rule.to_dict() == {"normalize": norm, "channels": ch}
        assert PixelRule.from_dict(rule.to_dict()) == rule
    assert PixelRule.from_dict({}) == PixelRule() == PixelRule.parse()
    assert PixelRule.parse(" Auto ").normalize == "auto"
    assert str(PixelRule.parse("range:0,4095", "1,0")) == (
        "normalize values 0-4095 -> 0-255, channels 1,0"
    )
    bad = {
        ("perc:1,2", ""): "unknown rule 'perc:1,2'",
        ("percentile:1", ""): "got '1'",
        ("percentile:50,10", ""): "got '50,10'",
        ("percentile:-1,99", ""): "got '-1,99'",
        ("range:5,5", ""): "got '5,5'",
        ("range:0,inf", ""): "got '0,inf'",
        ("auto:3", ""): "got 'auto:3'",
        ("auto", "1,a"): "got '1,a'",
        ("auto", "0,1,2,3"): "got '0,1,2,3'",
        ("auto", "-1"): "got '-1'",
    }
    for (norm, ch), msg in bad.items():
        with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
            PixelRule.parse(norm, ch)


def test_describe_names_what_was_found():
    infos = [
        PixelInfo("uint16", 1, H, W, 200, 3000),
        PixelInfo("uint16", 1, H, W, 180, 2900),
        PixelInfo("uint8", 5, H, W, 0, 255),
    ]
    line = describe(infos, PixelRule())
    assert line.startswith(
        "uint16 x2 (180 to 3000), uint8 x1 (0 to 255); 1 channel x2, 5 channels x1; rule: "
    )
    assert "rule: normalize auto" in line
    assert line.endswith("1 image whose channels --channels cannot pick")
    assert "cannot pick" not in describe(infos, PixelRule.parse("auto", "0"))
