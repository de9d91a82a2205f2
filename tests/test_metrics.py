import math

import numpy as np
import pytest

from stages.metrics import DEFAULT_THRESHOLDS, CamThresholdSweep, ConfusionMatrix


def test_default_thresholds_sweep_the_whole_range_by_hundredths():
    assert len(DEFAULT_THRESHOLDS) == 101
    assert DEFAULT_THRESHOLDS[0] == 0.0 and DEFAULT_THRESHOLDS[-1] == 1.0
    assert DEFAULT_THRESHOLDS[25] == 0.25


def test_a_cam_value_equal_to_the_threshold_is_background_as_in_irn():
    """IRN pads the float32 CAMs with the threshold and takes the argmax, the first (background) winning ties;
    float32(0.3) is above the float64 0.3, so comparing in float64 made it foreground."""
    cams = np.full((1, 1, 2), 0.3, dtype=np.float32)
    gt = np.ones((1, 2), dtype=np.uint8)
    sweep = CamThresholdSweep(2, (0.25, 0.3, 0.35))
    sweep.update(cams, np.array([1]), gt)
    foreground = [int(matrix.matrix[1, 1]) for matrix in sweep.matrices()]
    irn = [int(np.argmax(np.concatenate([np.full((1, 1, 2), t, np.float32), cams]), axis=0).sum()) for t in
           (0.25, 0.3, 0.35)]
    assert foreground == irn == [2, 0, 0]


def test_confusion_matrix_by_hand():
    gt = np.array([[0, 1, 1],
                   [2, 2, 0]])
    pred = np.array([[0, 1, 2],
                     [2, 0, 0]])
    matrix = ConfusionMatrix(3)
    matrix.update(pred, gt)
    # rows = gt, columns = pred
    np.testing.assert_array_equal(matrix.matrix, [[2, 0, 0],
                                                  [0, 1, 1],
                                                  [1, 0, 1]])
    # IoU = tp / (gt + pred - tp): class 0: 2/(2+3-2), class 1: 1/(2+1-1), class 2: 1/(2+2-1)
    np.testing.assert_allclose(matrix.iou(), [2 / 3, 1 / 2, 1 / 3])
    assert matrix.miou() == pytest.approx((2 / 3 + 1 / 2 + 1 / 3) / 3)
    np.testing.assert_allclose(matrix.precision(), [2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(matrix.recall(), [1, 1 / 2, 1 / 2])
    assert matrix.pixel_accuracy() == pytest.approx(4 / 6)


def test_ignored_ground_truth_and_uncertain_prediction():
    gt = np.array([[255, 1, 1],
                   [0, 255, 0]], dtype=np.uint8)
    pred = np.array([[1, 1, 255],
                     [0, 1, 255]], dtype=np.uint8)
    matrix = ConfusionMatrix(2)
    matrix.update(pred, gt)
    # gt 255 pixels vanish; pred 255 counts as background (one gt 1 pixel, one gt 0 pixel)
    np.testing.assert_array_equal(matrix.matrix, [[2, 0],
                                                  [1, 1]])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    gt = np.array([[0, 0], [1, 1]])
    matrix = ConfusionMatrix(3)
    matrix.update(gt, gt)
    iou = matrix.iou()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2])
    assert matrix.miou() == 1.0
    summary = matrix.summary(["background", "a", "b"])
    assert summary["miou"] == 1.0 and summary["pixel_accuracy"] == 1.0
    assert summary["per_class"]["b"] == {"iou": None, "precision": None, "recall": None}
    assert summary["per_class"]["a"] == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert summary["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]  # rows: ground truth, columns: prediction


def test_error_shares_split_object_pixels_into_missed_and_confused_and_predictions_into_spill():
    matrix = ConfusionMatrix(3)
    matrix.matrix[:] = [[50, 6, 4],   # background: 10 pixels predicted as objects (spill)
                        [3, 10, 2],   # class a: 3 missed as background, 2 given class b
                        [1, 5, 20]]   # class b: 1 missed, 5 given class a
    shares = matrix.error_shares()
    assert shares["missed"] == 4 / 41 and shares["confused"] == 7 / 41
    assert shares["spill"] == 10 / (21 + 26)
    assert matrix.summary(["background", "a", "b"])["errors"] == shares


def test_empty_matrix_scores_nan():
    matrix = ConfusionMatrix(2)
    assert math.isnan(matrix.miou()) and math.isnan(matrix.pixel_accuracy())
    assert matrix.summary(["background", "a"])["miou"] is None


def test_ground_truth_label_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="label 5"):
        ConfusionMatrix(3).update(np.zeros((2, 2), int), np.full((2, 2), 5))


def test_merge_equals_one_matrix_over_both_images():
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 4, (5, 7)), rng.integers(0, 4, (5, 7))) for _ in range(2)]
    together = ConfusionMatrix(4)
    parts = [ConfusionMatrix(4), ConfusionMatrix(4)]
    for part, (pred, gt) in zip(parts, images):
        together.update(pred, gt)
        part.update(pred, gt)
    merged = parts[0].merge(parts[1])
    np.testing.assert_array_equal(merged.matrix, together.matrix)
    with pytest.raises(ValueError):
        merged.merge(ConfusionMatrix(3))


def brute_force_matrix(images, num_classes, threshold):
    matrix = ConfusionMatrix(num_classes)
    for cams, classes, gt in images:
        if len(classes) == 0:
            pred = np.zeros(gt.shape, dtype=np.int64)
        else:
            top = cams.max(axis=0).astype(np.float64)
            pred = np.where(top > threshold, classes[cams.argmax(axis=0)], 0)
        matrix.update(pred, gt)
    return matrix


def random_images(rng, num_classes, count):
    images = []
    for _ in range(count):
        height, width = rng.integers(3, 12, size=2)
        k = int(rng.integers(0, num_classes))
        classes = np.sort(rng.choice(np.arange(1, num_classes), size=k, replace=False))
        cams = rng.random((k, height, width)).astype(np.float32)
        # Some values exactly on thresholds, to check that background wins ties.
        cams[rng.random(cams.shape) < 0.1] = 0.25
        gt = rng.integers(0, num_classes, (height, width)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        images.append((cams, classes, gt))
    return images


def test_sweep_equals_brute_force():
    rng = np.random.default_rng(1)
    num_classes = 5
    images = random_images(rng, num_classes, 20)
    thresholds = (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)
    sweep = CamThresholdSweep(num_classes, thresholds)
    for image in images:
        sweep.update(*image)
    for threshold, matrix in zip(thresholds, sweep.matrices()):
        np.testing.assert_array_equal(matrix.matrix, brute_force_matrix(images, num_classes, threshold).matrix)
    expected_curve = [(t, brute_force_matrix(images, num_classes, t).miou()) for t in thresholds]
    assert [t for t, _ in sweep.curve()] == list(thresholds)
    assert [score for _, score in sweep.curve()] == pytest.approx([score for _, score in expected_curve])
    best_threshold, best_matrix = sweep.best()
    best_score = max(score for _, score in expected_curve)
    assert best_matrix.miou() == pytest.approx(best_score)
    assert best_threshold == min(t for t, score in expected_curve if score == pytest.approx(best_score))


def test_sweep_tie_goes_to_background():
    gt = np.array([[1, 0]])
    cams = np.array([[[0.5, 0.25]]], dtype=np.float32)  # exact in binary, so the tie is exact
    sweep = CamThresholdSweep(2, (0.25, 0.5))
    sweep.update(cams, np.array([1]), gt)
    at_quarter, at_half = sweep.matrices()
    np.testing.assert_array_equal(at_quarter.matrix, [[1, 0], [0, 1]])  # 0.25 is not > 0.25: background
    np.testing.assert_array_equal(at_half.matrix, [[1, 0], [1, 0]])  # 0.5 is not > 0.5: background


def test_sweep_without_foreground_classes_predicts_background():
    gt = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    sweep = CamThresholdSweep(3, (0.0, 0.5))
    sweep.update(np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64), gt)
    for matrix in sweep.matrices():
        np.testing.assert_array_equal(matrix.matrix, [[1, 0, 0], [1, 0, 0], [1, 0, 0]])


def test_sweep_thresholds_are_sorted_and_best_matches_its_matrix():
    sweep = CamThresholdSweep(2, (0.5, 0.1))
    assert sweep.thresholds.tolist() == [0.1, 0.5]
    sweep.update(np.array([[[0.3, 0.7]]], np.float32), np.array([1]), np.array([[0, 1]]))
    threshold, matrix = sweep.best()
    assert threshold == 0.5 and matrix.miou() == 1.0


def test_sweep_rejects_cams_that_do_not_fit():
    sweep = CamThresholdSweep(3)
    with pytest.raises(ValueError):
        sweep.update(np.zeros((1, 2, 2), np.float32), np.array([1]), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError):
        sweep.update(np.zeros((1, 2, 2), np.float32), np.array([3]), np.zeros((2, 2), np.uint8))
