"""A synthetic WSSS benchmark in PASCAL VOC layout that reproduces the two failure modes WSSS methods fix.

Partial activation: classes come in pairs that share one body (shape family, texture, base colour) and differ
only by a small marker (a saturated shape, unique colour per class) at a fixed place on the body, in the
object's own frame. A classifier can name the class from the marker alone; the ground truth is the whole
object (body + marker).

Over-activation: some classes (default boat, car, train) usually sit on a context region (water, road, rails)
drawn around and under them, which is background in the ground truth. The context also appears, less often,
in images without its class.

Every image is drawn from its own generator `default_rng([seed, split code, index])`, so a dataset does not
depend on the number of workers or their order, and the same config gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..core.errors import UserError
from ..core.limits import check_numbers
from ..core.io import read_json, save_mask, write_json
from .index import BACKGROUND, DatasetIndex, Sample

SYNTH_SCHEMA = "wsss.synth"
SYNTH_VERSION = 1
DATASET_FILE = "wsss_dataset.json"
SPLIT_CODES = {"train": 0, "val": 1}

# Consecutive names form a pair sharing one body: (cat, dog) body 0, (car, bus) body 1, ...
ALL_CLASSES = ("cat", "dog", "car", "bus", "boat", "plane", "bird", "train", "horse", "sheep", "bottle", "chair")
CONTEXT_OF_CLASS = {"boat": "water", "car": "road", "train": "rails"}

# An object (or occluder) placement is rejected when it would leave some object with less than this fraction
# of its area visible, or its marker mostly hidden: every object must stay identifiable.
MIN_VISIBLE_FRACTION = 0.4
MIN_MARKER_VISIBLE_FRACTION = 0.6
PLACEMENT_TRIES = 20
OCCLUDER_TRIES = 10


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    num_train: int = 2000
    num_val: int = 500
    image_size: int = 128
    num_classes: int = 8
    objects_per_image: tuple[int, int] = (1, 3)
    two_class_prob: float = 0.4
    object_scale: tuple[float, float] = (0.3, 0.55)  # object long axis as a fraction of the image size
    # Marker area as a fraction of the body area (whatever the body's shape and aspect). The marker lies inside
    # the body, so it is also its fraction of the object's area: 0.05 renders as 3.5-6% of the object's pixels
    # at 128 px (pixel rounding), 4.6-5.2% for 90% of the objects.
    marker_scale: float = 0.05
    context_classes: tuple[str, ...] = ("boat", "car", "train")
    context_prob: float = 0.8
    context_distractor_prob: float = 0.1
    occluder_prob: float = 0.3
    colour_jitter: float = 0.1  # per-image brightness / contrast / saturation scale drawn in 1 +- this
    noise_std: float = 6.0  # additive gaussian noise on 0-255
    jpeg_quality: tuple[int, int] = (60, 95)

    def validate(self) -> None:
        check_numbers(self)  # every number's range (core/limits.py); below, what a range cannot say
        _require(self.num_classes % 2 == 0 and self.num_classes <= len(ALL_CLASSES),
                 f"num_classes must be an even number from 2 to {len(ALL_CLASSES)}, got {self.num_classes}")
        for name in ("objects_per_image", "object_scale", "jpeg_quality"):
            low, high = getattr(self, name)
            _require(low <= high, f"{name} must be MIN,MAX with MIN <= MAX, got {low}, {high}")
        names = class_names(self.num_classes)[1:]
        _require(
            len(set(self.context_classes)) == len(self.context_classes),
            f"context_classes has duplicates: {', '.join(self.context_classes)}",
        )
        for name in self.context_classes:
            _require(
                name in names,
                f"context class {name!r} is not one of the {self.num_classes} classes ({', '.join(names)}); "
                "set context_classes to classes of the dataset",
            )
            _require(
                name in CONTEXT_OF_CLASS,
                f"class {name!r} has no context (classes with one: {', '.join(CONTEXT_OF_CLASS)})",
            )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(f"synth config: {message}")


def class_names(num_classes: int) -> list[str]:
    """["background", "cat", "dog", ...] with `num_classes` foreground classes."""
    return [BACKGROUND, *ALL_CLASSES[:num_classes]]


# ---------------------------------------------------------------------------------------------------------------
# Scene description returned by render_scene


@dataclass
class SceneObject:
    class_index: int
    centre: tuple[float, float]  # (x, y) in pixels
    half_length: float  # half the long axis, in pixels
    angle: float  # radians, rotation of the long axis
    full_area: float  # pixels the object would cover if nothing hid it and the image had no border
    marker_full_area: float  # same for its marker
    visible_pixels: int  # pixels of this object in the final mask
    visible_marker_pixels: int


@dataclass
class SynthScene:
    image: np.ndarray  # (H, W, 3) uint8 RGB, before JPEG
    mask: np.ndarray  # (H, W) uint8 class indices, 0 background
    marker: np.ndarray  # (H, W) bool, visible marker pixels of every object
    contexts: dict[str, np.ndarray]  # context name -> (H, W) bool region it was drawn on (clutter, objects on top)
    objects: list[SceneObject]
    jpeg_quality: int

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(int(value) for value in np.unique(self.mask) if value != 0)


# ---------------------------------------------------------------------------------------------------------------
# Bodies: shape and texture in the object frame (u along the long axis in [-1, 1], v across, same unit)


@dataclass(frozen=True)
class BodyVariation:
    """Per-object randomness of a body, drawn the same way for both classes of a pair."""

    aspect: float  # half-width / half-length
    wobble_lobes: int
    wobble_amplitude: float
    wobble_phase: float
    texture_scale: float
    texture_shift: tuple[float, float]  # in [0, 1): phase of the texture pattern


def _ellipse(u, v, s: BodyVariation):
    return u * u + (v / s.aspect) ** 2 <= 1


def _rounded_rectangle(u, v, s: BodyVariation):
    radius = 0.35 * s.aspect
    excess_u = np.abs(u) - (1 - radius)
    excess_v = np.abs(v) - (s.aspect - radius)
    outside = np.hypot(np.maximum(excess_u, 0), np.maximum(excess_v, 0))
    inside = np.minimum(np.maximum(excess_u, excess_v), 0)
    return outside + inside <= radius


def _arrow(u, v, s: BodyVariation):
    across = np.abs(v) / s.aspect
    tapered = across <= np.clip((1 - u) / 0.9, 0, 1)  # full width up to u = 0.1, then a point at u = 1
    notched = u >= -1 + 0.35 * (1 - across)  # a V notch in the tail
    return tapered & notched


def _wobbly_blob(u, v, s: BodyVariation):
    radius = np.hypot(u, v / s.aspect)
    angle = np.arctan2(v / s.aspect, u)
    wobble = 1 + s.wobble_amplitude * np.sin(s.wobble_lobes * angle + s.wobble_phase)
    return radius <= wobble / (1 + s.wobble_amplitude)


def _dumbbell(u, v, s: BodyVariation):
    lobe_radius = s.aspect
    lobe_centre = 1 - lobe_radius
    lobes = (np.abs(u) - lobe_centre) ** 2 + v * v <= lobe_radius**2
    neck = (np.abs(u) <= lobe_centre) & (np.abs(v) <= 0.5 * lobe_radius)
    return lobes | neck


def _teardrop(u, v, s: BodyVariation):
    t = np.arccos(np.clip(u, -1, 1))
    half_width = s.aspect * np.sin(t) * np.sin(t / 2) / 0.77  # 0.77: the profile's maximum, near u = -0.58
    return np.abs(v) <= half_width


# Textures return a pattern in [0, 1], in object-frame units so they scale and rotate with the object.


def _fur(u, v, s: BodyVariation):
    f, (shift_u, shift_v) = s.texture_scale, s.texture_shift
    blotches = np.sin(4 * f * u + 2 * np.pi * shift_u) * np.sin(3 * f * v + 2 * np.pi * shift_v)
    streaks = np.sin(30 * f * v + 2 * np.sin(6 * u + 2 * np.pi * shift_u))
    return 0.5 + 0.3 * blotches + 0.2 * streaks


def _checker(u, v, s: BodyVariation):
    f, (shift_u, shift_v) = s.texture_scale, s.texture_shift
    return (np.floor(3.5 * f * u + shift_u) + np.floor(3.5 * f * v + shift_v)) % 2


def _stripes(u, v, s: BodyVariation):
    return np.sin(12 * s.texture_scale * u + 2 * np.pi * s.texture_shift[0]) > 0


def _dots(u, v, s: BodyVariation):
    period = 0.4 / s.texture_scale
    du = np.mod(u + s.texture_shift[0] * period, period) - period / 2
    dv = np.mod(v + s.texture_shift[1] * period, period) - period / 2
    return np.hypot(du, dv) < 0.3 * period


def _zigzag(u, v, s: BodyVariation):
    f, (shift_u, shift_v) = s.texture_scale, s.texture_shift
    teeth = np.abs(np.mod(5 * f * u + shift_u, 1.0) - 0.5)
    return np.mod(4 * f * v + teeth + shift_v, 1.0) < 0.5


def _rings(u, v, s: BodyVariation):
    return np.sin(14 * s.texture_scale * np.hypot(u, v) + 2 * np.pi * s.texture_shift[0]) > 0


@dataclass(frozen=True)
class Body:
    shape: Callable
    texture: Callable
    colour: tuple[int, int, int]  # muted, so that the saturated markers stand out
    marker_u: float  # marker centre on the long axis, in a wide part of the body


BODIES = (
    Body(_ellipse, _fur, (150, 110, 75), 0.5),
    Body(_rounded_rectangle, _checker, (105, 115, 150), 0.55),
    Body(_arrow, _stripes, (165, 160, 110), -0.45),
    Body(_wobbly_blob, _dots, (150, 100, 135), 0.4),
    Body(_dumbbell, _zigzag, (120, 150, 100), 0.45),
    Body(_teardrop, _rings, (175, 145, 120), -0.5),
)


# ---------------------------------------------------------------------------------------------------------------
# Markers: centred at (marker_u, 0) in the object frame, so they rotate with the object. (p, q) are object-frame
# coordinates relative to the marker centre; r is the marker radius.


def _circle(p, q, r):
    return p * p + q * q <= r * r


def _square(p, q, r):
    return np.maximum(np.abs(p), np.abs(q)) <= r


def _diamond(p, q, r):
    return np.abs(p) + np.abs(q) <= r


def _cross(p, q, r):
    arm = r / 3
    return ((np.abs(p) <= r) & (np.abs(q) <= arm)) | ((np.abs(q) <= r) & (np.abs(p) <= arm))


def _triangle(p, q, r):
    """Equilateral, circumradius r, one vertex pointing along the long axis."""
    half_sqrt3 = math.sqrt(3) / 2
    return (-p <= r / 2) & (0.5 * p + half_sqrt3 * q <= r / 2) & (0.5 * p - half_sqrt3 * q <= r / 2)


# (shape, area / r^2): the two classes of a pair always get different shapes.
MARKER_SHAPES = (
    (_circle, math.pi),
    (_square, 4.0),
    (_diamond, 2.0),
    (_cross, 20 / 9),
    (_triangle, 3 * math.sqrt(3) / 4),
)
MARKER_COLOURS = (
    (230, 40, 40),  # cat: red
    (40, 200, 60),  # dog: green
    (250, 220, 30),  # car: yellow
    (30, 200, 230),  # bus: cyan
    (240, 60, 220),  # boat: magenta
    (250, 130, 20),  # plane: orange
    (40, 70, 240),  # bird: blue
    (245, 245, 245),  # train: white
    (130, 40, 230),  # horse: violet
    (255, 150, 190),  # sheep: pink
    (150, 240, 40),  # bottle: lime
    (20, 20, 20),  # chair: black
)

# A fixed grid over the object frame's bounding square, to measure a body's area whatever its variation.
_UNIT_U, _UNIT_V = np.meshgrid(np.linspace(-1, 1, 80), np.linspace(-1, 1, 80))


def _body_of(class_index: int) -> Body:
    return BODIES[(class_index - 1) // 2]


# ---------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Object:
    """An object placed on the pixel grid: geometry for the occlusion checks, and what is needed to paint it."""

    class_index: int
    variation: BodyVariation
    centre: tuple[float, float]
    half_length: float
    angle: float
    u: np.ndarray  # object-frame coordinates of every pixel
    v: np.ndarray
    pixels: np.ndarray  # (H, W) bool: body and marker
    marker_pixels: np.ndarray
    full_area: float
    marker_full_area: float


def render_scene(config: SynthConfig, split: str, index: int) -> SynthScene:
    """Render one image with everything known about it (markers, contexts, objects), for tests and inspection."""
    if split not in SPLIT_CODES:
        raise UserError(f"unknown synthetic split {split!r} (known: {', '.join(SPLIT_CODES)})")
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    size = config.image_size
    y, x = np.mgrid[0:size, 0:size] + 0.5
    grid = (x, y)

    # Plan the geometry first: the contexts are drawn around objects, under them.
    objects, owner = _place_objects(config, rng, grid, _choose_classes(config, rng))
    occluder = _place_occluder(rng, grid, objects, owner) if rng.random() < config.occluder_prob else None

    image = _background(rng, grid)
    contexts = _paint_contexts(config, rng, grid, image, objects)
    _paint_clutter(rng, grid, image)
    mask = np.zeros((size, size), np.uint8)
    marker = np.zeros((size, size), bool)
    for obj in objects:
        _paint_object(rng, image, obj)
        mask[obj.pixels] = obj.class_index
        marker[obj.pixels] = obj.marker_pixels[obj.pixels]
    if occluder is not None:
        image[occluder] = _occluder_texture(rng, image.shape)[occluder]
        mask[occluder] = 0
        marker[occluder] = False

    image = _photometric(config, rng, image)
    jpeg_quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    if occluder is not None:
        owner = np.where(occluder, -1, owner)
    infos = [_describe(obj, owner == index) for index, obj in enumerate(objects)]
    return SynthScene(image, mask, marker, contexts, infos, jpeg_quality)


def _describe(obj: _Object, visible: np.ndarray) -> SceneObject:
    return SceneObject(
        class_index=obj.class_index,
        centre=obj.centre,
        half_length=obj.half_length,
        angle=obj.angle,
        full_area=obj.full_area,
        marker_full_area=obj.marker_full_area,
        visible_pixels=int(np.count_nonzero(visible)),
        visible_marker_pixels=int(np.count_nonzero(visible & obj.marker_pixels)),
    )


def _choose_classes(config: SynthConfig, rng: np.random.Generator) -> list[int]:
    """One class per object to place, in drawing order. A second class comes from another pair, so that every
    object keeps a body the segmenter can tell apart from its neighbours'."""
    low, high = config.objects_per_image
    first = int(rng.integers(1, config.num_classes + 1))
    other_pairs = [c for c in range(1, config.num_classes + 1) if (c - 1) // 2 != (first - 1) // 2]
    if high >= 2 and other_pairs and rng.random() < config.two_class_prob:
        second = int(rng.choice(other_pairs))
        count = int(rng.integers(max(low, 2), high + 1))
        classes = [first, second] + [int(c) for c in rng.choice([first, second], size=count - 2)]
        rng.shuffle(classes)
        return classes
    return [first] * int(rng.integers(low, high + 1))


def _place_objects(config, rng, grid, classes) -> tuple[list[_Object], np.ndarray]:
    """Place objects one by one, later ones on top; re-draw a placement that would leave any object (earlier
    ones or itself, cut by the border) unidentifiable, and drop the object after PLACEMENT_TRIES."""
    size = config.image_size
    owner = np.full((size, size), -1, np.int16)  # index of the object on top at each pixel
    placed: list[_Object] = []
    for class_index in classes:
        for attempt in range(PLACEMENT_TRIES):
            # The first object falls back to the image centre, where it always fits: no image is left empty.
            centred = not placed and attempt == PLACEMENT_TRIES - 1
            candidate = _random_object(config, rng, grid, class_index, centred)
            trial = owner.copy()
            trial[candidate.pixels] = len(placed)
            if _all_identifiable([*placed, candidate], trial):
                placed.append(candidate)
                owner = trial
                break
    return placed, owner


def _random_object(config, rng, grid, class_index, centred: bool) -> _Object:
    size = config.image_size
    body = _body_of(class_index)
    variation = BodyVariation(
        aspect=rng.uniform(0.5, 0.7),
        wobble_lobes=int(rng.integers(3, 6)),
        wobble_amplitude=rng.uniform(0.1, 0.2),
        wobble_phase=rng.uniform(0, 2 * np.pi),
        texture_scale=rng.uniform(0.85, 1.15),
        texture_shift=(rng.uniform(), rng.uniform()),
    )
    half_length = rng.uniform(*config.object_scale) * size / 2
    angle = rng.uniform(0, 2 * np.pi)
    centre = (size / 2, size / 2) if centred else tuple(rng.uniform(0.1 * size, 0.9 * size, 2))

    x, y = grid
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / half_length
    v = (-dx * sin + dy * cos) / half_length

    body_area = 4 * float(np.mean(body.shape(_UNIT_U, _UNIT_V, variation)))  # in object-frame units
    marker_shape, marker_factor = MARKER_SHAPES[(class_index - 1) % len(MARKER_SHAPES)]
    marker_radius = math.sqrt(config.marker_scale * body_area / marker_factor)
    marker_pixels = marker_shape(u - body.marker_u, v, marker_radius)
    pixels_per_unit_area = half_length**2
    return _Object(
        class_index=class_index,
        variation=variation,
        centre=(float(centre[0]), float(centre[1])),
        half_length=half_length,
        angle=angle,
        u=u,
        v=v,
        pixels=body.shape(u, v, variation) | marker_pixels,
        marker_pixels=marker_pixels,
        full_area=body_area * pixels_per_unit_area,  # the marker lies inside the body
        marker_full_area=config.marker_scale * body_area * pixels_per_unit_area,
    )


def _all_identifiable(objects: list[_Object], owner: np.ndarray) -> bool:
    for index, obj in enumerate(objects):
        on_top = owner == index
        if np.count_nonzero(on_top) < MIN_VISIBLE_FRACTION * obj.full_area:
            return False
        if np.count_nonzero(on_top & obj.marker_pixels) < MIN_MARKER_VISIBLE_FRACTION * obj.marker_full_area:
            return False
    return True


def _place_occluder(rng, grid, objects: list[_Object], owner: np.ndarray) -> np.ndarray | None:
    """A thin bar or a blob across one object, drawn on top; None when every try would hide too much."""
    x, y = grid
    size = x.shape[0]
    for _ in range(OCCLUDER_TRIES):
        anchor = objects[int(rng.integers(len(objects)))]
        cx, cy = np.array(anchor.centre) + rng.normal(0, 0.08 * size, 2)
        angle = rng.uniform(0, np.pi)
        along = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        across = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
        if rng.random() < 0.5:
            half_width, half_length = rng.uniform(0.012, 0.025) * size, rng.uniform(0.25, 0.5) * size
            occluder = (np.abs(across) <= half_width) & (np.abs(along) <= half_length)
        else:
            radius = rng.uniform(0.06, 0.11) * size
            lobes, phase = int(rng.integers(3, 6)), rng.uniform(0, 2 * np.pi)
            wobble = 1 + 0.2 * np.sin(lobes * np.arctan2(across, along) + phase)
            occluder = np.hypot(along, across) <= radius * wobble
        if _all_identifiable(objects, np.where(occluder, -1, owner)):
            return occluder
    return None


def _muted_colour(rng, low: float, high: float) -> np.ndarray:
    """A greyish colour: background, clutter and occluders must not look like a marker."""
    return np.clip(rng.uniform(low, high) + rng.normal(0, 15, 3), 0, 255)


def _background(rng, grid) -> np.ndarray:
    """A smooth gradient between two muted colours plus low-frequency waves, as float (H, W, 3)."""
    x, y = grid
    size = x.shape[0]
    start, end = _muted_colour(rng, 60, 200), _muted_colour(rng, 60, 200)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(((x - size / 2) * math.cos(angle) + (y - size / 2) * math.sin(angle)) / size + 0.5, 0, 1)
    fields = [ramp]
    for _ in range(3):
        frequency = rng.uniform(-2.5, 2.5, 2) * 2 * np.pi / size
        fields.append(np.sin(frequency[0] * x + frequency[1] * y + rng.uniform(0, 2 * np.pi)))
    # Each field adds its own colour: one matrix product instead of a pass over (H, W, 3) per field.
    field_colours = np.stack([end - start, *rng.normal(0, 8, (3, 3))])
    return start + np.stack(fields, axis=-1) @ field_colours


def _band(rng, grid, point, angle: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across a straight band of `width` whose centre line runs near `point`, close
    enough that the band contains it. Returns (along, offset from the centre line)."""
    x, y = grid
    cos, sin = math.cos(angle), math.sin(angle)
    point_across = -point[0] * sin + point[1] * cos
    centre_line = point_across + rng.uniform(-0.3, 0.3) * width
    return x * cos + y * sin, -x * sin + y * cos - centre_line


def _paint_water(rng, grid, image, point) -> np.ndarray:
    """A horizontal band of blue with horizontal sine waves, its top edge rippled."""
    x, y = grid
    size = x.shape[0]
    width = rng.uniform(0.35, 0.55) * size
    _, offset = _band(rng, grid, point, 0.0, width)
    ripple = 1.5 * np.sin(2 * np.pi * x / rng.uniform(15, 30) + rng.uniform(0, 2 * np.pi))
    region = (offset <= width / 2) & (offset >= -width / 2 + ripple)
    waves = np.sin(2 * np.pi * y / rng.uniform(5, 8) + 1.2 * np.sin(2 * np.pi * x / rng.uniform(20, 35)))
    water = np.array([40, 80, 150]) + rng.normal(0, 8, 3) + waves[..., None] * np.array([20, 30, 40])
    image[region] = water[region]
    return region


def _paint_road(rng, grid, image, point) -> np.ndarray:
    """A band of dark grey asphalt at any angle, with white edge lines and a dashed yellow centre line."""
    size = grid[0].shape[0]
    width = rng.uniform(0.35, 0.5) * size
    along, offset = _band(rng, grid, point, rng.uniform(0, np.pi), width)
    region = np.abs(offset) <= width / 2
    asphalt = np.array([75.0, 75, 80]) + rng.normal(0, 6, 3)
    road = asphalt + rng.normal(0, 7, offset.shape)[..., None]
    edge_lines = (np.abs(offset) >= width / 2 - 3) & (np.abs(offset) <= width / 2 - 1.5)
    road[edge_lines] = (220, 220, 220)
    dashes = (np.abs(offset) <= 1.0) & (np.mod(along + rng.uniform(0, 16), 16) < 9)
    road[dashes] = (230, 200, 60)
    image[region] = road[region]
    return region


def _paint_rails(rng, grid, image, point) -> np.ndarray:
    """A gravel band at any angle with brown sleepers across it and two steel rails along it."""
    size = grid[0].shape[0]
    width = rng.uniform(0.3, 0.45) * size
    along, offset = _band(rng, grid, point, rng.uniform(0, np.pi), width)
    region = np.abs(offset) <= width / 2
    gravel = np.array([125.0, 115, 100]) + rng.normal(0, 6, 3)
    rails = gravel + rng.normal(0, 12, offset.shape)[..., None]
    sleepers = (np.mod(along + rng.uniform(0, 7), 7) < 3) & (np.abs(offset) <= 0.42 * width)
    rails[sleepers] = (95, 65, 40)
    rails[np.abs(np.abs(offset) - 0.25 * width) <= 1.0] = (185, 185, 195)
    image[region] = rails[region]
    return region


CONTEXT_PAINTERS = {"water": _paint_water, "road": _paint_road, "rails": _paint_rails}


def _paint_contexts(config, rng, grid, image, objects: list[_Object]) -> dict[str, np.ndarray]:
    """Each context class's context: with context_prob around one of its objects when the class is present,
    otherwise with context_distractor_prob around any object (so its position alone gives nothing away)."""
    names = class_names(config.num_classes)
    present = {obj.class_index for obj in objects}
    regions = {}
    for class_name in config.context_classes:
        class_index = names.index(class_name)
        probability = config.context_prob if class_index in present else config.context_distractor_prob
        if rng.random() >= probability:
            continue
        anchors = [obj for obj in objects if obj.class_index == class_index] or objects
        anchor = anchors[int(rng.integers(len(anchors)))]
        context = CONTEXT_OF_CLASS[class_name]
        regions[context] = CONTEXT_PAINTERS[context](rng, grid, image, anchor.centre)
    return regions


def _paint_clutter(rng, grid, image) -> None:
    """A few flat, muted ellipses and rectangles that belong to no class."""
    x, y = grid
    size = x.shape[0]
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, size, 2)
        half_u, half_v = rng.uniform(0.03, 0.1, 2) * size
        angle = rng.uniform(0, np.pi)
        u = ((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / half_u
        v = (-(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)) / half_v
        shape = u * u + v * v <= 1 if rng.random() < 0.5 else (np.abs(u) <= 1) & (np.abs(v) <= 1)
        image[shape] = _muted_colour(rng, 50, 200)


def _paint_object(rng, image, obj: _Object) -> None:
    body = _body_of(obj.class_index)
    base = np.array(body.colour) + rng.normal(0, 10, 3)
    # Textures are elementwise: evaluate them on the object's pixels only.
    inside = obj.pixels
    pattern = body.texture(obj.u[inside], obj.v[inside], obj.variation).astype(float)
    colour = base * (1.15 - 0.45 * pattern)[:, None]
    colour[obj.marker_pixels[inside]] = MARKER_COLOURS[obj.class_index - 1]
    image[inside] = colour


def _occluder_texture(rng, shape) -> np.ndarray:
    """Muted colour with grain, like the background: an occluder must not be mistaken for an object."""
    return _muted_colour(rng, 60, 180) + rng.normal(0, 8, shape[:2])[..., None]


def _photometric(config: SynthConfig, rng, image: np.ndarray) -> np.ndarray:
    """Per-image saturation, contrast and brightness jitter, then gaussian noise; returns uint8."""
    saturation, contrast, brightness = 1 + rng.uniform(-config.colour_jitter, config.colour_jitter, 3)
    # Saturation scales each pixel's distance to its grey, contrast the distance to the image mean (which the
    # saturation keeps), brightness everything: together one 3x3 colour matrix and an offset.
    to_grey = np.full((3, 3), 1 / 3)
    colour_matrix = brightness * contrast * (saturation * np.eye(3) + (1 - saturation) * to_grey)
    offset = brightness * (1 - contrast) * image.mean()
    noise = config.noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image @ colour_matrix + offset + noise), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Dataset generation


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def generate(
    config: SynthConfig,
    out_dir: Path,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> DatasetIndex:
    """Write the dataset under `out_dir` (VOC layout plus wsss_dataset.json) and return its index.

    A folder already holding this exact dataset is returned as is; any other non-empty folder is refused.
    """
    config.validate()
    out_dir = Path(out_dir)
    if _existing_dataset_matches(config, out_dir):
        return load_index(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling folder and rename it at the end: the final name never holds a half-written dataset.
    build_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (build_dir / folder).mkdir(parents=True)
        tasks = [("train", i) for i in range(config.num_train)] + [("val", i) for i in range(config.num_val)]
        render = partial(_render_and_save, config, build_dir)
        if workers <= 1:
            splits = _collect(tasks, map(render, tasks), progress)
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                splits = _collect(tasks, pool.imap(render, tasks, chunksize=16), progress)

        for split, entries in splits.items():
            ids = "".join(entry["id"] + "\n" for entry in entries)
            (build_dir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(ids)
        write_json(
            build_dir / DATASET_FILE,
            {
                "schema": SYNTH_SCHEMA,
                "version": SYNTH_VERSION,
                "class_names": class_names(config.num_classes),
                "config": asdict(config),
                "splits": splits,
                "contexts": {name: CONTEXT_OF_CLASS[name] for name in config.context_classes},
            },
        )
        os.replace(build_dir, out_dir)  # also replaces an empty folder the user made beforehand
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return load_index(out_dir)


def _existing_dataset_matches(config: SynthConfig, out_dir: Path) -> bool:
    """True when `out_dir` already holds this dataset; False when it is missing or empty; UserError otherwise."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return False
    advice = "pick another folder or delete it"
    if not (out_dir / DATASET_FILE).is_file():
        raise UserError(f"{out_dir} exists and is not a synthetic dataset: {advice}")
    data = read_json(out_dir / DATASET_FILE, "synthetic dataset")
    if data.get("schema") != SYNTH_SCHEMA or data.get("version") != SYNTH_VERSION:
        raise UserError(f"{out_dir} holds no synthetic dataset of version {SYNTH_VERSION}: {advice}")
    if data.get("config") != json.loads(json.dumps(asdict(config))):  # as read back: tuples become lists
        raise UserError(f"{out_dir} holds a synthetic dataset made with another config: {advice}")
    return True


def _collect(tasks, results, progress) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for (split, index), (labels, contexts) in zip(tasks, results):
        splits[split].append({"id": sample_id(split, index), "labels": labels, "contexts": contexts})
        if progress is not None:
            progress(1)
    return splits


def _render_and_save(config: SynthConfig, build_dir: Path, task: tuple[str, int]) -> tuple[list[int], list[str]]:
    split, index = task
    scene = render_scene(config, split, index)
    name = sample_id(split, index)
    image_path = build_dir / "JPEGImages" / f"{name}.jpg"
    Image.fromarray(scene.image).save(image_path, format="JPEG", quality=scene.jpeg_quality)
    save_mask(build_dir / "SegmentationClass" / f"{name}.png", scene.mask)
    return list(scene.labels), sorted(scene.contexts)


def load_index(out_dir: Path) -> DatasetIndex:
    """The index of a generated dataset, with absolute image and mask paths."""
    root = Path(out_dir).resolve()
    data = read_json(root / DATASET_FILE, "synthetic dataset")
    if data.get("schema") != SYNTH_SCHEMA or data.get("version") != SYNTH_VERSION:
        raise UserError(f"{root / DATASET_FILE} is not a synthetic dataset of version {SYNTH_VERSION}")
    splits = {
        split: [
            Sample(
                entry["id"],
                str(root / "JPEGImages" / f"{entry['id']}.jpg"),
                str(root / "SegmentationClass" / f"{entry['id']}.png"),
                tuple(entry["labels"]),
            )
            for entry in entries
        ]
        for split, entries in data["splits"].items()
    }
    return DatasetIndex("synth", "synth", str(root), list(data["class_names"]), splits)
