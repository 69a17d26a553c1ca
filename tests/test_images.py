"""Every kind of file a user might hand us is either read correctly or refused in one line that names it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core.errors import ImageLoadError
from tame_core.images import find_images, load_image, original_size, to_rgb
from tame_core.preprocessing import Preprocess, as_image_tensors


def _png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    raw = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(raw)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file (0 bytes)"),
        (b"this is a text file, not a photo\n", "not an image"),
        (_bomb_png(20000, 20000), "image is 400 megapixels, over the 89-megapixel limit; downscale it first"),
        (_bomb_png(10000, 9000), "90 megapixels, over the 89-megapixel limit"),
    ],
)
def test_unreadable_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_truncated_jpeg_is_refused(tmp_path, sample_images):
    buffer = io.BytesIO()
    Image.fromarray(sample_images["coffee"]).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"cut.jpg: corrupt or truncated image"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder, not an image"):
        load_image(tmp_path)


def test_bytes_use_the_given_name():
    with pytest.raises(ImageLoadError, match=r"^upload\.png: not an image"):
        load_image(b"GIF89a-but-not-really", name="upload.png")


def test_grayscale_becomes_rgb_with_the_same_values():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    image = load_image(_png_bytes(Image.fromarray(gray, mode="L")))
    array = np.asarray(image)
    assert image.mode == "RGB" and array.shape == (8, 8, 3)
    assert (array[:, :, 0] == gray).all() and (array[:, :, 2] == gray).all()


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    image = load_image(_png_bytes(Image.fromarray(values)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 64, 128, 255]


def test_cmyk_jpeg_is_converted():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    red = np.asarray(load_image(buffer.getvalue())).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)  # opaque red on the left
    rgba[:, 2:] = (0, 0, 255, 0)  # fully transparent blue on the right: must not show
    array = np.asarray(load_image(_png_bytes(Image.fromarray(rgba, mode="RGBA"))))
    assert array[0, 0].tolist() == [255, 0, 0] and array[0, 3].tolist() == [255, 255, 255]


def test_palette_with_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    palette.paste(0, (0, 0, 2, 4))
    array = np.asarray(load_image(_png_bytes(palette, transparency=0)))
    assert array[0, 0].tolist() == [255, 255, 255] and array[0, 3].tolist() == [10, 20, 30]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    array = np.asarray(load_image(buffer.getvalue()))
    assert array.shape == (8, 8, 3) and array[4, 4, 0] > 200 and array[4, 4, 1] < 50


def test_exif_rotation_is_applied():
    picture = Image.new("RGB", (40, 20), (0, 0, 0))
    picture.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif, quality=95)
    upright = np.asarray(load_image(buffer.getvalue()))
    assert upright.shape == (40, 20, 3)  # portrait after rotation
    assert upright[2, :, 0].mean() > 200 and upright[-3, :, 0].mean() < 60  # the stripe is now on top


def test_to_rgb_keeps_rgb_untouched():
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(image) is image


def test_find_images_walks_folders_and_skips_others(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.JPG", "a/b/two.png", "three.webp", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a/b/two.png", "a/one.JPG", "three.webp"]
    with pytest.raises(ImageLoadError, match="not a folder"):
        find_images(tmp_path / "three.webp")


def test_array_and_tensor_inputs_are_normalised_to_chw():
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], axis=2)
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    tensors = as_image_tensors([Image.fromarray(rgb), rgb, gray, rgba, as_float])
    assert all(t.shape == (3, 10, 12) for t in tensors)
    assert torch.equal(tensors[0], tensors[1]) and torch.equal(tensors[1], tensors[3])
    assert torch.equal(tensors[2][1], torch.from_numpy(gray))
    with pytest.raises(ImageLoadError, match=r"must hold values in \[0, 1\]"):
        as_image_tensors(as_float * 255)
    with pytest.raises(ImageLoadError, match="numpy image must be"):
        as_image_tensors(np.zeros((4, 4, 2)))


def test_geometries():
    preprocess = Preprocess(input_size=(224, 224), crop_pct=0.875)
    landscape = torch.randint(0, 255, (3, 300, 600), dtype=torch.uint8)
    assert preprocess.to_input(landscape, "full").shape == (3, 224, 448)
    assert preprocess.to_input(landscape, "crop").shape == (3, 224, 224)
    fixed = Preprocess(input_size=(224, 224), fixed_input_size=True)
    assert fixed.to_input(landscape, "full").shape == (3, 224, 224)
    ready = torch.rand(3, 224, 224)
    assert torch.equal(preprocess.to_input(ready, "full"), ready)  # already model-sized: untouched
    # the crop box is the centre of the picture: 256-px short side, 224 crop -> 0.875 of the short side
    top, left, bottom, right = preprocess.crop_box(300, 600, "crop")
    assert (bottom - top) == pytest.approx(262.5) and (left + right) / 2 == pytest.approx(300)


def _jpeg_bytes(array: np.ndarray, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_photo(sample_images) -> np.ndarray:
    """Chelsea enlarged to 2400 x 1800: a phone-sized JPEG without the test cost of 12 megapixels."""
    return np.asarray(Image.fromarray(sample_images["chelsea"]).resize((2400, 1800), Image.Resampling.BICUBIC))


def _mean_difference(reduced: Image.Image, full: Image.Image) -> float:
    """Mean absolute pixel difference of ``reduced`` and ``full`` shrunk to its size (0..255)."""
    shrunk = full.resize(reduced.size, Image.Resampling.BOX)
    return float(np.abs(np.asarray(reduced, dtype=np.float32) - np.asarray(shrunk, dtype=np.float32)).mean())


def test_draft_decode_keeps_twice_the_model_size_and_records_the_original_size(big_photo):
    preprocess = Preprocess()  # 224 px input, crop 0.875: the crop geometry resizes the short side to 256
    assert preprocess.decode_short_side == 512 == 2 * int(224 / 0.875)
    data = _jpeg_bytes(big_photo)
    reduced = load_image(data, min_short_side=preprocess.decode_short_side)
    full = load_image(data)
    assert reduced.size == (1200, 900)  # 1/2: 1/4 would be 450 px, under 512
    assert original_size(reduced) == original_size(full) == (1800, 2400)
    assert full.size == (2400, 1800)
    assert _mean_difference(reduced, full) < 2.0  # the same picture, at half the size
    assert load_image(data, min_short_side=200).size == (300, 225)  # 1/8 is as far as DCT scaling goes
    assert load_image(data, min_short_side=200, min_long_side=1024).size == (1200, 900)


@pytest.mark.parametrize("encode", ["jpeg", "png"])
def test_reduced_decode_keeps_exif_rotation(big_photo, encode):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held upright: shown turned 90 degrees clockwise
    data = _jpeg_bytes(big_photo, exif=exif) if encode == "jpeg" else _png_bytes(Image.fromarray(big_photo), exif=exif)
    reduced = load_image(data, min_short_side=512)
    full = load_image(data)
    assert full.size == (1800, 2400) and reduced.size == ((900, 1200) if encode == "jpeg" else (600, 800))
    assert original_size(reduced) == (2400, 1800)
    assert _mean_difference(reduced, full) < 2.0
    assert _mean_difference(reduced, full.transpose(Image.Transpose.ROTATE_180)) > 20.0  # the right way round


def test_small_jpegs_decode_whole(big_photo):
    small = load_image(_jpeg_bytes(big_photo[:600, :800]), min_short_side=512)
    assert small.size == (800, 600)  # 1/2 would leave 300 px: decoded whole


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "1"])
def test_other_formats_shrink_in_their_own_mode_before_any_conversion(big_photo, mode, monkeypatch):
    """A big PNG is box-averaged by a whole factor right after decode, so the conversions that copy a picture
    (alpha on white, 16 to 8 bits, palette) see the small one: one 88-megapixel PNG stays one decoded copy."""
    import tame_core.images as images

    gray = big_photo[..., 0]
    pictures = {
        "RGB": Image.fromarray(big_photo),
        "RGBA": Image.fromarray(np.dstack([big_photo, np.tile(np.linspace(0, 255, 2400, dtype=np.uint8), (1800, 1))])),
        "L": Image.fromarray(gray),
        "P": Image.fromarray(big_photo).quantize(64),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "1": Image.fromarray(gray > 128),
    }
    data = _png_bytes(pictures[mode])
    converted: list[tuple[str, tuple[int, int]]] = []
    real_to_rgb = images.to_rgb
    monkeypatch.setattr(images, "to_rgb", lambda image: converted.append((image.mode, image.size)) or real_to_rgb(image))
    reduced = load_image(data, min_short_side=512)
    assert reduced.size == (800, 600) and reduced.mode == "RGB"  # 1800 / 3 = 600 >= 512; 1800 / 4 = 450 < 512
    assert original_size(reduced) == (1800, 2400)
    assert converted == [(reduced.mode if mode == "RGB" else converted[0][0], (800, 600))]  # only the small one
    full = load_image(data)
    assert full.size == (2400, 1800)
    # the same picture as the full decode box-shrunk: transparency averaged premultiplied, 16 bits kept to the end
    assert _mean_difference(reduced, full) < 0.6
    assert load_image(data, min_short_side=512, min_long_side=1200).size == (1200, 900)  # the long side asked


