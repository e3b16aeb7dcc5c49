"""read_rgb: every image mode a user may hand us becomes uint8 RGB, bad files one clear error."""

import warnings

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import genpercept_cli.images as images
from genpercept_cli.images import ImageReadError, read_rgb, read_size


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:4, :4] = (255, 0, 0)  # top-left red block
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_rgb(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3) and read_size(tmp_path / "r.jpg") == (30, 20)
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 50  # the red corner moved to the top right


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_rgb(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_rgb(path)
    assert out.shape == (8, 9, 3) and out.dtype == np.uint8
    if mode == "RGBA":
        np.testing.assert_array_equal(out, rgb)  # alpha dropped, colours kept


@pytest.mark.parametrize("content,message", [
    (b"", "not an image"), (b"hello", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "")])
def test_bad_files_raise_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_rgb(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 99, np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_rgb(tmp_path / "t.jpg")


def test_png_header_read_does_not_decode_the_pixels(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "p.png")

    def no_decode(self):
        raise AssertionError("read_size decoded the pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    assert read_size(tmp_path / "p.png") == (20, 30)


def test_png_exif_rotation_matches_read_size(tmp_path):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:4, :4] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.png", exif=exif)
    out = read_rgb(tmp_path / "r.png")
    assert out.shape == (30, 20, 3) and read_size(tmp_path / "r.png") == (30, 20)
    assert tuple(out[1, -2]) == (255, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)


def test_no_raw_decompression_bomb_warning_below_our_limit(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((16, 25, 3), np.uint8)).save(tmp_path / "big.png")  # 400 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # PIL warns above 300 and refuses above 600
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_rgb(tmp_path / "big.png").shape == (16, 25, 3)
        assert read_size(tmp_path / "big.png") == (16, 25)
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []


def test_over_the_limit_is_refused_with_our_sentence(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((16, 25, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 300)
    with pytest.raises(ImageReadError, match=r"too large \(25x16 = .*; the limit is"):
        read_rgb(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own guard fires first
    with pytest.raises(ImageReadError, match="too large .over the limit of") as err:
        read_size(tmp_path / "big.png")
    assert "decompression bomb" not in str(err.value).lower()


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "P+transparency", "CMYK", "1", "I;16", "F"])
def test_rgb_conversion_in_stripes_equals_the_whole_image(mode, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode.split("+")[0])
    if mode == "P+transparency":
        img.info["transparency"] = 3
    whole = images.to_rgb_array(img)
    monkeypatch.setattr(images, "STRIPE_PIXELS", 20)  # stripes of 2 rows, the last one of 1
    np.testing.assert_array_equal(images.to_rgb_array(img), whole)
    if mode in ("RGB", "L", "RGBA", "CMYK"):
        np.testing.assert_array_equal(whole, np.asarray(img.convert("RGB")))
