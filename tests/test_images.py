"""The one image reader (modular/tools/images.py) on pictures written at test time from a committed official
test image: EXIF orientation, 16-bit, transparency, non-square, the resampling filter, big JPEGs,
unreadable files; predictions with the shipped weights."""

from __future__ import annotations

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
from PIL import Image

from modular.tools.app_samples import load_sample
from modular.tools.images import BACKGROUND, SIZE, ImageError, read_image, to_network_input
from modular.tools.weights import load_weights
from modular.transforms import test_transforms as make_test_transforms


@pytest.fixture(scope="module")
def shipped():
    return load_weights()


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A cat from the committed sample of official test images, 32x32x3 uint8, enlarged to 240x240."""
    sample = load_sample()
    item = next(i for i in sample.examples if sample.classes[i.label] == "cat")
    return np.asarray(Image.open(sample.path(item)).convert("RGB").resize((240, 240), Image.Resampling.BICUBIC))


def probabilities(trained, pixels: np.ndarray) -> np.ndarray:
    normalized = make_test_transforms(trained.mean, trained.std)(image=pixels)["image"][None]
    with torch.no_grad():
        return torch.softmax(trained.model(normalized), 1)[0].numpy()


def assert_same_prediction(trained, a: np.ndarray, b: np.ndarray, atol: float = 0.03) -> None:
    pa, pb = probabilities(trained, a), probabilities(trained, b)
    assert pa.argmax() == pb.argmax() and np.abs(pa - pb).max() < atol, (pa.round(3), pb.round(3))


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_a_jpeg_with_exif_orientation_6_reads_as_the_upright_picture(cat, shipped, tmp_path):
    landscape = np.concatenate([np.full((240, 40, 3), 30, np.uint8), cat, np.full((240, 40, 3), 220, np.uint8)], 1)
    upright = tmp_path / "upright.jpg"
    Image.fromarray(landscape).save(upright, quality=95)
    stored = tmp_path / "portrait-phone.jpg"   # the pixels as a phone stores them: turned a quarter to the left
    exif = Image.Exif()
    exif[0x0112] = 6                            # "rotate 90 degrees clockwise to display"
    Image.fromarray(landscape).transpose(Image.Transpose.ROTATE_90).save(stored, quality=95, exif=exif)
    assert Image.open(stored).size == (240, 320)
    want, got = read_image(upright), read_image(stored)
    assert got.steps[0] == "turned upright (EXIF orientation 6)" and got.steps[1:] == want.steps
    assert difference(got.pixels, want.pixels) < 2.0
    assert difference(np.rot90(got.pixels), want.pixels) > 10  # turning matters for this picture
    assert_same_prediction(shipped, got.pixels, want.pixels)
    assert probabilities(shipped, want.pixels).argmax() == 3  # a cat, read as one


def test_a_16_bit_png_reads_as_its_8_bit_version(cat, shipped, tmp_path):
    import cv2

    grey = np.asarray(Image.fromarray(cat).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")     # 0..255 -> 0..65535
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    eight, sixteen = read_image(tmp_path / "grey8.png"), read_image(tmp_path / "grey16.png")
    assert np.array_equal(sixteen.pixels, eight.pixels) and "16-bit levels scaled to 8-bit" in sixteen.steps
    assert (sixteen.pixels == 255).mean() < 0.05   # not the almost white picture of a plain convert
    assert_same_prediction(shipped, sixteen.pixels, eight.pixels, atol=1e-6)
    cv2.imwrite(str(tmp_path / "rgb16.png"), cat[..., ::-1].astype(np.uint16) * 257)  # 48-bit RGB
    Image.fromarray(cat).save(tmp_path / "rgb8.png")
    assert np.abs(read_image(tmp_path / "rgb16.png").pixels.astype(int) - read_image(tmp_path / "rgb8.png").pixels).max() <= 1


def test_transparency_is_composited_on_the_stated_background(cat, tmp_path):
    alpha = np.zeros((240, 240), np.uint8)
    alpha[:, 80:160] = 255
    alpha[:, 160:] = 128
    hidden = cat.copy()
    hidden[alpha == 0] = 0          # fully transparent pixels: black under the alpha channel
    Image.fromarray(np.dstack([hidden, alpha]), "RGBA").save(tmp_path / "rgba.png")
    a = alpha[..., None] / 255.0
    composed = np.rint(hidden * a + np.asarray(BACKGROUND) * (1 - a)).astype(np.uint8)
    Image.fromarray(composed).save(tmp_path / "composed.png")
    got = read_image(tmp_path / "rgba.png")
    assert "transparency composited on white" in got.steps
    assert difference(got.pixels, read_image(tmp_path / "composed.png").pixels) < 1.0
    assert got.pixels[:, :6].min() > 240       # the transparent left third is white, not black
    la = Image.fromarray(np.dstack([np.full((32, 32), 10, np.uint8), np.zeros((32, 32), np.uint8)]), "LA")
    assert (to_network_input(la, "la").pixels == 255).all()
    palette = Image.fromarray(np.zeros((32, 32), np.uint8), "P")
    palette.info["transparency"] = 0
    assert (to_network_input(palette, "p").pixels == 255).all()


def test_a_3_to_1_picture_is_centre_cropped_not_squashed(cat, tmp_path):
    centre = np.asarray(Image.fromarray(cat).resize((96, 96), Image.Resampling.BICUBIC))
    wide = np.concatenate([np.zeros((96, 96, 3), np.uint8) + [255, 0, 0], centre, np.zeros((96, 96, 3), np.uint8) + [0, 0, 255]],
                          1).astype(np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(centre).save(tmp_path / "centre.png")
    got = read_image(tmp_path / "wide.png")
    assert got.steps == ("centre-cropped from 288x96 to 96x96", "resized from 96x96 to 32x32")
    assert np.array_equal(got.pixels, read_image(tmp_path / "centre.png").pixels)
    assert got.pixels.shape == (SIZE, SIZE, 3)


def test_resizing_averages_fine_detail_instead_of_sampling_it(tmp_path):
    """A 1-pixel checkerboard at 320x320 is grey at 32x32 with an antialiasing filter; NEAREST keeps
    one of its two colours (every sampled pixel has the same parity)."""
    yy, xx = np.mgrid[0:320, 0:320]
    board = np.where((yy + xx) % 2 == 0, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([board] * 3)).save(tmp_path / "board.png")
    got = read_image(tmp_path / "board.png").pixels
    assert abs(got.mean() - 127.5) < 3 and got.std() < 4, (got.mean(), got.std())


def test_a_phone_sized_jpeg_is_decoded_small_with_the_same_result(cat, tmp_path):
    big = Image.fromarray(cat).resize((4032, 3024), Image.Resampling.BICUBIC)
    big.save(tmp_path / "photo.jpg", quality=90)
    got = read_image(tmp_path / "photo.jpg")
    assert got.steps[0] == "JPEG decoded at 1/8 scale, 504x378" and got.steps[1] == "centre-cropped from 504x378 to 378x378"
    with Image.open(tmp_path / "photo.jpg") as full:   # decoded at full size
        assert difference(to_network_input(full, "full").pixels, got.pixels) < 1.5


def test_unreadable_input_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    for name, needle in (("notes.png", "not a readable image"), ("cut.png", "not a readable image"),
                         ("missing.jpg", "no such file")):
        with pytest.raises(ImageError) as caught:
            read_image(tmp_path / name, name=f"your {name}")
        message = str(caught.value)
        assert message.startswith(f"your {name}: ") and needle in message and "\n" not in message


@pytest.mark.parametrize("name, damage, needle", [
    ("holiday.jpg", lambda data: data[:len(data) // 2], "the JPEG file is cut short or damaged"),
    ("holiday.png", lambda data: data[:len(data) // 2], "the PNG file is cut short or damaged"),
    ("empty.png", lambda data: b"", "the file is empty"),
    ("letter.png", lambda data: b"Dear network, ...", "not a picture, or one in a format this program cannot read"),
])
def test_an_unreadable_file_is_told_what_was_wrong_and_what_to_use_in_plain_words(cat, tmp_path, name, damage, needle):
    """No exception class, no library name; a damaged JPEG is not told to use a JPEG."""
    good = tmp_path / f"good{name[name.rindex('.'):]}"
    Image.fromarray(cat).save(good)
    (tmp_path / name).write_bytes(damage(good.read_bytes()))
    with pytest.raises(ImageError) as caught:
        read_image(tmp_path / name, name=name)
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and needle in message and "\n" not in message, message
    for jargon in ("Error", "OSError", "Pillow", "PIL", "Truncated File Read", "BytesIO"):
        assert jargon not in message, message
    assert "use " in message or "upload " in message  # says what to do


def test_grey_and_cmyk_pictures_say_that_they_were_converted_to_rgb(cat, tmp_path):
    Image.fromarray(cat).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(cat).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(cat).convert("CMYK").save(tmp_path / "cmyk.tif")
    Image.fromarray(cat).save(tmp_path / "rgb.png")
    assert "grey levels copied to red, green and blue" in read_image(tmp_path / "grey.png").steps
    for name in ("cmyk.jpg", "cmyk.tif"):
        got = read_image(tmp_path / name)
        assert "CMYK colours converted to RGB" in got.steps, got.steps
        assert difference(got.pixels, read_image(tmp_path / "rgb.png").pixels) < 3.0
    assert not any("RGB" in step for step in read_image(tmp_path / "rgb.png").steps)


def test_the_stored_size_is_kept_for_a_warning_about_tiny_pictures(cat, tmp_path):
    Image.fromarray(cat).resize((14, 25)).save(tmp_path / "tiny.png")
    Image.fromarray(cat).resize((4032, 3024)).save(tmp_path / "photo.jpg")
    assert read_image(tmp_path / "tiny.png").size == (14, 25)
    assert read_image(tmp_path / "photo.jpg").size == (4032, 3024)  # before the JPEG's reduced decoding
