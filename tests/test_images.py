"""read_rgb: every image mode a user may hand us becomes uint8 RGB, bad files one clear error."""

import numpy as np
import pytest
from PIL import Image

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
