import numpy as np
import pytest
from PIL import Image

from stages.core.errors import UserError
from stages.data.saliency_maps import (
    DirectorySaliency,
    MinimumBarrierSaliency,
    _barrier_distance,
    minimum_barrier_saliency,
    save_saliency,
)
from stages.metrics import SaliencyQuality


def disc_scene(height=96, width=128, centre=None, radius=None, seed=0):
    """A noisy grey background with a bright red disc: an image and the disc's mask."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 120.0) + rng.normal(0, 6, (height, width, 3))
    centre = centre or (height / 2, width / 2)
    radius = radius or min(height, width) / 4
    rows, columns = np.mgrid[:height, :width] + 0.5
    disc = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2
    image[disc] = (220, 30, 30)
    return np.clip(image, 0, 255).astype(np.uint8), disc


def border_ring(shape, width=4):
    ring = np.zeros(shape, bool)
    ring[:width] = ring[-width:] = ring[:, :width] = ring[:, -width:] = True
    return ring


def test_mbd_highlights_a_salient_disc():
    image, disc = disc_scene()
    saliency = minimum_barrier_saliency(image)
    assert saliency.shape == disc.shape and saliency.dtype == np.float32
    assert saliency.min() >= 0 and saliency.max() == pytest.approx(1.0)
    assert saliency[disc].mean() > 0.9
    assert saliency[border_ring(disc.shape)].mean() < 0.05
    assert np.abs(saliency - disc).mean() < 0.08


def test_mbd_finds_an_off_centre_object_without_the_centre_bias():
    image, disc = disc_scene(centre=(28, 36), radius=16)
    saliency = minimum_barrier_saliency(image, centre_bias=False)
    assert saliency[disc].mean() > 0.9
    assert saliency[~disc].mean() < 0.1


def test_mbd_downscales_large_images_and_returns_their_size():
    image, disc = disc_scene(height=330, width=500)
    saliency = minimum_barrier_saliency(image, max_side=200)
    assert saliency.shape == (330, 500)
    assert saliency[disc].mean() > 0.9 and np.abs(saliency - disc).mean() < 0.08


def test_barrier_distance_is_the_contrast_a_path_must_cross():
    # Flat 50 with a closed ring of 150: outside 0 (flat path to the border), the ring and everything it
    # encloses 150 - 50 = 100, even though the inside has the border's own value.
    rows, columns = np.mgrid[:21, :21]
    radius = np.hypot(rows - 10, columns - 10)
    values = np.where((radius >= 5) & (radius <= 7), 150.0, 50.0).astype(np.float32)[..., None]
    distance = _barrier_distance(values, iterations=1)[..., 0]
    np.testing.assert_array_equal(distance, np.where(radius <= 7, 100.0, 0.0))


def test_mbd_of_a_constant_or_tiny_image_is_all_zeros():
    for image in (np.full((40, 60, 3), 77, np.uint8), np.zeros((1, 1, 3), np.uint8),
                  np.array([[[0, 0, 0], [255, 255, 255], [9, 200, 30]]] * 2, np.uint8)):
        saliency = minimum_barrier_saliency(image)
        assert saliency.shape == image.shape[:2] and saliency.dtype == np.float32
        np.testing.assert_array_equal(saliency, 0.0)


def test_mbd_rejects_a_non_rgb_array():
    with pytest.raises(ValueError, match="RGB"):
        minimum_barrier_saliency(np.zeros((8, 8), np.uint8))


def test_minimum_barrier_source_computes_from_the_image():
    image, _ = disc_scene(height=40, width=50)
    source = MinimumBarrierSaliency()
    assert source.name == "mbd"
    np.testing.assert_array_equal(source("any id", image), minimum_barrier_saliency(image))


def test_directory_source_reads_back_saved_maps(tmp_path):
    saliency = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    save_saliency(tmp_path / "img_1.png", saliency)
    assert [path.name for path in tmp_path.iterdir()] == ["img_1.png"]  # no temporary file left
    read = DirectorySaliency(tmp_path)("img_1", np.zeros((5, 7, 3), np.uint8))
    assert read.shape == (5, 7) and read.dtype == np.float32
    assert np.abs(read - saliency).max() <= 0.5 / 255 + 1e-6


def test_directory_source_scales_16_bit_and_converts_colour_maps(tmp_path):
    Image.fromarray(np.array([[0, 65535, 32768]], np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((1, 3, 3), 255, np.uint8)).save(tmp_path / "colour.png")
    source = DirectorySaliency(tmp_path)
    assert source.has("deep") and source.name == "directory"
    image = np.zeros((1, 3, 3), np.uint8)
    np.testing.assert_allclose(source("deep", image), [[0.0, 1.0, 32768 / 65535]], atol=1e-6)
    np.testing.assert_allclose(source("colour", image), [[1.0, 1.0, 1.0]])


def test_directory_source_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="saliency directory not found: .*nowhere"):
        DirectorySaliency(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not found: .*nowhere; run it first"):
        DirectorySaliency(tmp_path / "nowhere", hint="run it first")
    source = DirectorySaliency(tmp_path, hint="run it first")
    image = np.zeros((4, 6, 3), np.uint8)
    assert not source.has("img_9")
    with pytest.raises(UserError, match=r"no saliency map for 'img_9' in .*expected .*img_9\.png\); run it first"):
        source("img_9", image)
    save_saliency(tmp_path / "small.png", np.zeros((3, 5)))
    with pytest.raises(UserError, match=r"is 5 x 3 \(W x H\) but image 'small' is 6 x 4"):
        source("small", image)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read saliency map .*broken.png"):
        source("broken", image)


def test_save_saliency_rejects_what_is_not_a_map(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_saliency(tmp_path / "x.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        save_saliency(tmp_path / "x.png", np.array([[np.nan]]))


FOREGROUND = np.array([[1, 1],
                       [0, 0]], bool)
FIRST = np.array([[1.0, 0.5],
                  [0.0, 0.0]])
SECOND = np.array([[1.0, 0.2],
                   [0.6, 0.0]])


def test_saliency_quality_perfect_at_some_threshold():
    quality = SaliencyQuality()
    quality.add(FIRST, FOREGROUND)
    summary = quality.summary()
    # MAE = (0 + 0.5 + 0 + 0) / 4. At t in (0, 0.5], exactly the foreground is predicted: P = R = 1, F = 1.
    assert summary["images"] == 1 and summary["mae"] == pytest.approx(0.125)
    assert summary["max_f"] == pytest.approx(1.0)
    assert summary["threshold_at_max_f"] == pytest.approx(1 / 255)


def test_saliency_quality_max_f_below_one_by_hand():
    quality = SaliencyQuality()
    quality.add(SECOND, FOREGROUND)
    # F = 1.3 P R / (0.3 P + R); predicted pixels by threshold t:
    #   t = 0:           all 4           P = 2/4, R = 1    F = 0.65 / 1.15   = 0.5652
    #   t in (0, 0.2]:   1.0, 0.2, 0.6   P = 2/3, R = 1    F = 0.8667 / 1.2  = 0.7222
    #   t in (0.2, 0.6]: 1.0, 0.6        P = 1/2, R = 1/2  F = 0.325 / 0.65  = 0.5
    #   t in (0.6, 1]:   1.0             P = 1,   R = 1/2  F = 0.65 / 0.8    = 0.8125  <- max, first at 154/255
    summary = quality.summary()
    assert summary["mae"] == pytest.approx((0 + 0.8 + 0.6 + 0) / 4)
    assert summary["max_f"] == pytest.approx(0.8125)
    assert summary["threshold_at_max_f"] == pytest.approx(154 / 255)


def test_saliency_quality_averages_precision_and_recall_over_images():
    quality = SaliencyQuality()
    quality.add(FIRST, FOREGROUND)
    quality.add(SECOND, FOREGROUND)
    # Mean (P, R) per threshold, FIRST then SECOND:
    #   t in (0, 0.2]:    (1, 1) and (2/3, 1)     -> P = 5/6, R = 1   F = 1.0833 / 1.25 = 13/15  <- max
    #   t in (0.2, 0.5]:  (1, 1) and (1/2, 1/2)   -> P = R = 3/4      F = 0.75
    #   t in (0.6, 1]:    (1, 1/2) and (1, 1/2)   -> P = 1, R = 1/2   F = 0.8125
    # (the F of each image's own best threshold would average to (1 + 0.8125) / 2 = 0.906)
    summary = quality.summary()
    assert summary["images"] == 2
    assert summary["mae"] == pytest.approx((0.125 + 0.35) / 2)
    assert summary["max_f"] == pytest.approx(13 / 15)
    assert summary["threshold_at_max_f"] == pytest.approx(1 / 255)


def test_saliency_quality_leaves_ignored_pixels_out():
    quality = SaliencyQuality()
    saliency = np.array([[1.0, 0.5],
                         [0.9, 0.0]])  # the 0.9 background pixel is ignored: as FIRST
    quality.add(saliency, FOREGROUND, ignore=np.array([[0, 0], [1, 0]], bool))
    quality.add(np.ones((2, 2)), FOREGROUND, ignore=np.ones((2, 2), bool))  # nothing left: not counted
    summary = quality.summary()
    assert summary["images"] == 1
    assert summary["mae"] == pytest.approx(0.5 / 3)
    assert summary["max_f"] == pytest.approx(1.0)


def test_saliency_quality_edge_cases():
    assert SaliencyQuality().summary() == {"images": 0, "mae": None, "max_f": None, "threshold_at_max_f": None}
    quality = SaliencyQuality()
    # No foreground: recall 0 at every threshold, so F = 0; an all-zero map predicts nothing above t = 0.
    quality.add(np.zeros((2, 2)), np.zeros((2, 2), bool))
    assert quality.summary()["max_f"] == 0.0 and quality.summary()["mae"] == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quality.add(np.full((2, 2), 1.5), FOREGROUND)
    with pytest.raises(ValueError, match="shape"):
        quality.add(np.zeros((2, 3)), FOREGROUND)
