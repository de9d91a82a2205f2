"""What the throughput work (issue 8) changed must not change results: inference forwards in chunks of a pixel
budget, CRF prediction streamed through worker processes, and the dense CRF reusing one image's pairwise kernels
for both pseudo-label thresholds."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import pytest
import torch.nn.functional as F

import stages.models.multiscale as multiscale
from stages.config import SegModelConfig
from stages.core.distributed import processes
from stages.core.io import load_image, load_mask
from stages.data.index import Sample
from stages.core.normalization import Normalization
from stages.models.deeplab import DeepLab
from stages.refine import ImageItem
from stages.refine.crf import CrfParams, DenseCrf, crf_from_labels, crf_from_probabilities
from stages.config import SegmentConfig
from stages.models.inference import POSTPROCESS_CRF, PredictionSettings, multi_scale_softmax
from stages.segment import predict


def _images(tmp_path, count: int, size: int = 32) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        image = np.full((size, size, 3), 40, np.uint8)
        image[rng.integers(0, size // 2):, rng.integers(0, size // 2):] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(tmp_path / f"{index}.png")
        samples.append(Sample(f"img{index}", str(tmp_path / f"{index}.png"), None, (1,)))
    return samples


@pytest.mark.parametrize("budget", [None, 1, 3 * 8 * 8, 10**6])
@pytest.mark.parametrize("per_view", [None, lambda logits: F.softmax(logits, dim=1)])
def test_multi_scale_sum_of_a_batch_in_chunks_is_each_images_own_sum(monkeypatch, budget, per_view):
    """Whatever the chunking (one view per forward, a few, all), each image gets the sum over scales of its view's
    and its flipped view's resized maps, computed here one image and one view at a time."""
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    images = torch.randn(5, 3, 12, 16)
    scales = (1.0, 0.5, 1.5)
    monkeypatch.setattr(multiscale, "forward_pixel_budget", lambda device: budget)
    extra = {} if per_view is None else {"per_view": per_view}
    total = multiscale.multi_scale_sum(network, images, scales, True, torch.device("cpu"), False, **extra)
    per_view = per_view or (lambda maps: maps)
    for image, result in zip(images, total):
        expected = 0
        for scale in scales:
            view = F.interpolate(image[None], size=(round(12 * scale), round(16 * scale)), mode="bilinear",
                                 align_corners=False)
            for flipped in (False, True):
                maps = network(view.flip(-1) if flipped else view)
                maps = per_view(F.interpolate(maps, size=(12, 16), mode="bilinear", align_corners=False))
                expected = expected + (maps.flip(-1) if flipped else maps)
        torch.testing.assert_close(result, expected[0], rtol=1e-5, atol=1e-5)


def _predicted_and_alone(tmp_path, count: int, crf: bool):
    """`segment`'s prediction of `count` images in batches of 2, and per image (its mask, its image, its own
    probabilities computed alone)."""
    torch.manual_seed(0)
    model = DeepLab(SegModelConfig(), num_classes=3).eval()
    samples = _images(tmp_path, count)
    config = SegmentConfig(batch_size=2, workers=1, crf=crf, device="cpu", amp=False)
    out_dir = tmp_path / "masks"
    out_dir.mkdir()
    predict(model, samples, out_dir, set(), config, torch.device("cpu"), processes())
    for sample in samples:
        image = load_image(sample.image)
        probabilities = multi_scale_softmax(model, Normalization()(image)[None], PredictionSettings(amp=False),
                                            torch.device("cpu"))[0].numpy()
        yield load_mask(out_dir / f"{sample.id}.png"), image, probabilities


def test_prediction_with_crf_streams_every_image_through_the_workers(tmp_path):
    """More images than may wait for the CRF at once (4 x workers + batch): each mask is the CRF of its own image's
    probabilities, none lost or swapped."""
    for mask, image, probabilities in _predicted_and_alone(tmp_path, 13, crf=True):
        assert np.array_equal(mask, crf_from_probabilities(image, probabilities, POSTPROCESS_CRF))


def test_prediction_without_crf_writes_each_images_argmax_from_the_writer_thread(tmp_path):
    """The argmax on the device and the PNGs written by the writer thread: each mask is the argmax of its own
    image's probabilities (NumPy's, as the stage computed it before), none lost or swapped across batches."""
    for mask, _, probabilities in _predicted_and_alone(tmp_path, 11, crf=False):
        assert np.array_equal(mask, probabilities.argmax(axis=0))


def test_crf_reuses_an_images_kernels_only_for_that_image():
    """Two label maps of one image, then another image: the same labels as a fresh CRF for each call."""
    rng = np.random.default_rng(1)
    crf = DenseCrf(CrfParams())
    items = {name: ImageItem(name, rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)) for name in "ab"}
    for name, num_labels in [("a", 3), ("a", 3), ("b", 3), ("b", 2), ("b", 3)]:
        labels = (rng.random((24, 20)) * num_labels).astype(np.int64)
        labels[:12] = 0  # a structured part, so the CRF has something to smooth
        expected = crf_from_labels(items[name].image, labels, num_labels)
        assert np.array_equal(crf.refine_labels(items[name], labels, num_labels), expected)
    assert len(items["a"].computed) == 1 and len(items["b"].computed) == 2  # one CRF per image and label count


def test_scaling_benchmark_flags_a_stage_whose_cost_per_image_grows():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from scaling import fit

    linear = fit([500, 1000, 2000], [60.0, 110.0, 210.0])  # 10 s + 0.1 s per image
    assert linear["slows_down"] is False and linear["per_image_ratio_largest_to_smallest"] == 1.0
    assert abs(linear["marginal_seconds_per_image"] - 0.1) < 1e-9 and abs(linear["fixed_seconds"] - 10) < 1e-6
    growing = fit([500, 1000, 2000], [60.0, 110.0, 260.0])  # the last 1000 images cost 0.15 s each, not 0.1
    assert growing["slows_down"] is True and growing["per_image_ratio_largest_to_smallest"] == 1.25
    assert fit([500, 1000, 2000], [4.0, 4.2, 4.1])["slows_down"] is None  # start-up and noise: no verdict


def test_recipe_cost_scales_warm_epochs_by_training_images_and_the_rest_by_the_images_worked_on():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from recipe_cost import estimate

    sample, real = {"train_aug": 100, "train": 50, "val": 20}, {"train_aug": 10000, "train": 1000, "val": 1000}
    # Training: 2 epochs of 30 and 20 s on 100 images; validation and start-up the other 10 s of 60, on 2 x 20 val
    # images. The recipe's 5 epochs: 5 x 20 s x 100 = 10000 s of epochs; the rest 10 s x (5 x 1000) / (2 x 20).
    train_cam = {"config": {"train_split": "train_aug", "val_split": "val"},
                 "metrics": {"history": [{"seconds": 30.0}, {"seconds": 20.0}]}}
    result = estimate(60.0, train_cam, sample, real, epochs=5)
    assert result["rest_scale"] == 125.0 and result["sample_rest_seconds"] == 10.0
    assert result["estimated_training_hours"] == round(10000 / 3600, 3)
    assert result["estimated_hours"] == round((10000 + 1250) / 3600, 3)
    # Inference on one split: 12 s on 50 train images → 240 s on 1000; the segmenter's predictions likewise.
    inference = {"config": {"split": "train"}}
    assert estimate(12.0, inference, sample, real, epochs=1)["estimated_hours"] == round(240 / 3600, 3)
    segment = {"config": {"train_split": "train", "predict_splits": ["val"]},
               "metrics": {"history": [{"seconds": 4.0}]}}
    result = estimate(6.0, segment, sample, real, epochs=3)  # 3 x 4 s x 20 of epochs, 2 s x 50 of predictions
    assert result["estimated_hours"] == round((240 + 100) / 3600, 3)
    # A step that changed no stage (up to date) keeps its seconds as they are.
    assert estimate(3.0, {"config": {}}, sample, real, epochs=1)["estimated_hours"] == round(3 / 3600, 3)


def test_background_writer_runs_jobs_in_order_and_raises_a_jobs_error_in_the_caller():
    import threading

    from stages.core.background import BackgroundWriter

    done, threads = [], set()

    def job(index):
        threads.add(threading.current_thread().name)
        done.append(index)

    with BackgroundWriter(depth=2) as writer:
        for index in range(20):
            writer.submit(job, index)
    assert done == list(range(20)) and threads and threading.current_thread().name not in threads

    def failing(index):
        if index == 3:
            raise OSError("disk full")
        done.append(index)

    done.clear()
    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter(depth=2) as writer:
            for index in range(50):
                writer.submit(failing, index)
    assert done[:3] == [0, 1, 2] and 3 not in done and len(done) < 49  # it stopped soon after the error
