"""Atomic file writes and the image / mask formats every stage shares.

Every artifact is written to a temporary file beside its destination and renamed into place, so a crash
or a kill never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IGNORE_INDEX = 255
# Pillow's modes for 16-bit grayscale ('I;16*'), and 'I' (32-bit), which older Pillows give 16-bit PNGs.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_plain_name(name: str, what: str, example: str) -> str:
    """A name that becomes one file or folder name (and a manifest key): refuse anything that could escape it."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"invalid {what} {name!r}: use a plain name such as `{example}`")
    return name


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def json_ready(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(data, default=_json_default))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{what} {path} is not valid JSON: {error}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB triples flattened; 255 (ignore) is white-ish."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.extend((red, green, blue))
    palette[255 * 3 : 256 * 3] = [224, 224, 192]
    return palette


_PALETTE = voc_palette()


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a label mask (H, W) uint8 as a VOC palette PNG, atomically."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_rgb(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 picture (an overlay), atomically; JPEG or PNG after `path`'s suffix."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
            tmp, format="JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=90)


def load_mask(path: str | os.PathLike, num_labels: int | None = None) -> np.ndarray:
    """Read a label mask as (H, W) uint8. Palette PNGs give their indices; 'L' PNGs their values. With
    `num_labels` (classes, background included), a value that is neither a class nor 255 is a one-line error."""
    image = open_image(path, "mask")
    if image.mode in SIXTEEN_BIT_MODES:
        raise UserError(f"mask {path} is a 16-bit image (mode {image.mode}): expected a palette or 8-bit "
                        "grayscale PNG")
    if image.mode not in ("P", "L"):
        raise UserError(f"mask {path} has mode {image.mode}: expected a palette or 8-bit grayscale PNG")
    mask = np.asarray(image, dtype=np.uint8)
    if num_labels is not None:
        stray = mask[(mask >= num_labels) & (mask != IGNORE_INDEX)]
        if stray.size:
            raise UserError(f"mask {path} holds value {int(stray[0])}, which is no class: the dataset has classes "
                            f"0..{num_labels - 1} (and {IGNORE_INDEX} for unknown pixels)")
    return mask


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, whatever its mode on disk (grayscale, RGBA, CMYK, palette, 16-bit)."""
    image = open_image(path, "image")
    if image.mode in SIXTEEN_BIT_MODES:
        image = _scale_to_8_bit(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale → 8-bit 'L' keeping the high byte: Pillow's own conversion clips everything above 255
    to white. Mode 'I' (32-bit, how older Pillows open 16-bit PNGs) is taken to hold 16-bit values too."""
    values = np.asarray(image).astype(np.int64) >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))  # uint8 (H, W): mode "L"


def open_image(path: str | os.PathLike, what: str) -> Image.Image:
    """The image file at `path`, loaded, in its mode on disk; a missing or unreadable file is a one-line error
    that calls it `what` ("mask", "saliency map")."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    # A corrupt header can claim billions of pixels: Pillow's DecompressionBombError is not an OSError.
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read {what} {path}: {error}") from None
