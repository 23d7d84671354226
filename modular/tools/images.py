"""One way to read a user's picture for the 32x32 network (``predict``, the app, anything that takes a
photo): EXIF orientation applied, 16-bit levels scaled, transparency composited on white, grey, palette
and CMYK colours converted to RGB, a non-square picture centre-cropped to a square, then resized to 32x32
with an antialiasing filter. What was done is listed in ``UserImage.steps``, so the output can say so."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32                                    # CIFAR-10's images
BACKGROUND = (255, 255, 255)                 # transparent pixels are shown on white, as most viewers show them
RESAMPLING = Image.Resampling.LANCZOS        # antialiasing: fine detail is averaged, not sampled
DRAFT = 8 * SIZE   # a big JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still this big: a phone photo in ~1/20 the time
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit greyscale files
TRANSPARENT = ("RGBA", "LA", "PA", "RGBa", "La")
# How a picture stored in another mode is converted to RGB, in the words the output uses (Pillow's modes)
TO_RGB = {"L": "grey levels copied to red, green and blue", "1": "black and white converted to RGB",
          "P": "palette colours converted to RGB", "CMYK": "CMYK colours converted to RGB",
          "YCbCr": "YCbCr colours converted to RGB", "LAB": "Lab colours converted to RGB",
          "HSV": "HSV colours converted to RGB"}


class ImageError(ValueError):
    """A picture that cannot be read; the message names the file and says what to do."""


@dataclass(frozen=True)
class UserImage:
    """A picture as the network sees it, and what was done to get there."""
    pixels: np.ndarray              # 32 x 32 x 3 uint8 RGB
    name: str                       # the file it came from
    steps: tuple[str, ...] = ()     # e.g. "centre-cropped from 160x96 to 96x96", in the order done
    size: tuple[int, int] = (SIZE, SIZE)  # width x height as stored in the file, before any step

    def describe(self) -> str:
        """The steps in one phrase, '' when the file was a plain 32x32 RGB picture."""
        return "; ".join(self.steps)


def read_image(path: str | os.PathLike, name: str | None = None) -> UserImage:
    """The picture at ``path`` (any size, any format Pillow reads) as a 32x32 RGB UserImage;
    ``name`` is how messages call it (default: the path). ImageError, naming it, if it cannot be read."""
    name = str(path) if name is None else name
    try:
        with open_image(path, name) as opened:
            stored = opened.size
            try:
                opened.draft(None, (DRAFT, DRAFT))  # JPEG only (its DCT scaling averages); other formats ignore it
                opened.load()  # decode now: a truncated file fails here, inside this try
            except (OSError, SyntaxError, ValueError):  # the header was read: the picture data is what failed
                raise ImageError(f"{name}: not a readable image: the {opened.format or 'picture'} file is cut short or "
                                 "damaged; use the complete file (copy or download it again) or another picture") from None
            steps = (f"JPEG decoded at 1/{stored[0] // opened.size[0]} scale, {opened.size[0]}x{opened.size[1]}",) \
                if opened.size != stored else ()
            return to_network_input(opened, name, steps, stored)
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels to be a photo; use a smaller picture") from None


def open_image(path: str | os.PathLike, name: str) -> Image.Image:
    """The file opened lazily (its header read), or ImageError saying in plain words what is wrong with it."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file; check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ImageError(f"{name}: not a readable image: the file is empty; use the picture itself, "
                             "copied or downloaded again") from None
        raise ImageError(f"{name}: not a readable image: not a picture, or one in a format this program cannot read "
                         "(or damaged); use a PNG, JPEG, GIF, BMP, TIFF or WebP picture") from None


def to_network_input(image: Image.Image, name: str, done: tuple[str, ...] = (),
                     stored: tuple[int, int] | None = None) -> UserImage:
    """An opened Pillow image -> UserImage (see the module docstring for the steps, in order);
    ``done``: steps already taken while decoding; ``stored``: the size in the file (default: the image's)."""
    stored = stored or image.size
    image, steps = upright_rgb(image, list(done))
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        steps.append(f"centre-cropped from {width}x{height} to {side}x{side}")
    if image.size != (SIZE, SIZE):
        steps.append(f"resized from {image.size[0]}x{image.size[1]} to {SIZE}x{SIZE}")
        image = image.resize((SIZE, SIZE), RESAMPLING)
    return UserImage(np.asarray(image, dtype=np.uint8).copy(), name, tuple(steps), stored)


def upright_rgb(image: Image.Image, steps: list[str]) -> tuple[Image.Image, list[str]]:
    """The picture turned upright and in 8-bit RGB at its own size, with ``steps`` extended by what was done."""
    orientation = image.getexif().get(0x0112, 1)  # 0x0112: EXIF Orientation; 1 is upright
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        steps.append(f"turned upright (EXIF orientation {orientation})")
    if image.mode in SIXTEEN_BIT:  # Pillow's convert would clip 0..65535 to 255: almost white
        levels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(levels / 257.0), 0, 255).astype(np.uint8), "L")
        steps.append("16-bit levels scaled to 8-bit")
    if image.mode in TRANSPARENT or "transparency" in image.info:
        backdrop = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA")).convert("RGB")
        steps.append("transparency composited on white")
    if image.mode != "RGB":
        steps.append(TO_RGB.get(image.mode, f"{image.mode} converted to RGB"))
        image = image.convert("RGB")
    return image, steps
