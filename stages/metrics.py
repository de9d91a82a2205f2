"""Segmentation metrics: a confusion matrix and the background-threshold sweep used to score CAMs.

Conventions (those of the IRN / SEAM evaluation scripts):
  - ground-truth pixels labelled 255 are ignored;
  - a predicted value outside 0..num_classes-1 (e.g. 255, "uncertain", in pseudo masks) counts as a
    background prediction, so a mask cannot raise its score by abstaining;
  - a class absent from both ground truth and prediction has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import numpy as np

from .core.errors import UserError
from .core.io import IGNORE_INDEX

# The background thresholds swept in CAM evaluation: 0.00, 0.01, ..., 1.00. SEAM's sweep stops at 0.60, which
# cuts off flatter CAMs (pretrained EfficientNet-Lite's peak at 0.60-0.65); the whole range costs no extra pass.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(step * 0.01, 2) for step in range(101))


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio, NaN where the denominator is 0."""
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without numpy's warning) when there are none."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def json_number(value: float) -> float | None:
    """A score for JSON: NaN (undefined) becomes None."""
    return None if np.isnan(value) else float(value)


def _labelled_pixels(gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Flat int64 ground truth without ignored pixels; raises on a label the class list does not have."""
    gt = gt.ravel().astype(np.int64)
    gt = gt[gt != IGNORE_INDEX]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        bad = gt[(gt < 0) | (gt >= num_classes)][0]
        raise ValueError(f"ground truth holds label {bad}, outside 0..{num_classes - 1} (and 255 = ignore)")
    return gt


class ConfusionMatrix:
    """Pixel counts `matrix[gt, pred]` over all updates; `num_classes` includes background (class 0)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: `pred` and `gt` are (H, W) integer label arrays of the same shape."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        keep = gt.ravel() != IGNORE_INDEX
        labels = _labelled_pixels(gt, self.num_classes)
        predicted = pred.ravel()[keep].astype(np.int64)
        predicted[(predicted < 0) | (predicted >= self.num_classes)] = 0
        counts = np.bincount(labels * self.num_classes + predicted, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts into this one (e.g. from a parallel worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        true_positive = np.diag(self.matrix)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - true_positive
        return _divide(true_positive, union)

    def miou(self) -> float:
        return _nanmean(self.iou())

    def precision(self) -> np.ndarray:
        """Per class: correct / predicted as that class (NaN if never predicted)."""
        return _divide(np.diag(self.matrix), self.matrix.sum(axis=0))

    def recall(self) -> np.ndarray:
        """Per class: correct / labelled as that class (NaN if never labelled)."""
        return _divide(np.diag(self.matrix), self.matrix.sum(axis=1))

    def error_shares(self) -> dict[str, float]:
        """Where the errors go (background is class 0): `missed`, the share of object pixels predicted
        background (under-activation); `confused`, the share of object pixels given another object class
        (e.g. the other class of a look-alike pair); `spill`, the share of pixels predicted as an object that
        are background (over-activation, e.g. into a context such as water). NaN when undefined."""
        objects = self.matrix[1:]
        object_pixels = objects.sum()
        predicted_object = self.matrix[:, 1:].sum()
        shares = _divide(np.array([objects[:, 0].sum(), objects[:, 1:].sum() - np.trace(objects[:, 1:]),
                                   self.matrix[0, 1:].sum()], dtype=np.float64),
                         np.array([object_pixels, object_pixels, predicted_object], dtype=np.float64))
        return dict(zip(("missed", "confused", "spill"), shares.tolist()))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: list[str]) -> dict:
        """JSON-ready metrics (fractions in [0, 1]; NaN becomes None) and the pixel counts `confusion[gt][pred]`,
        so that where the errors go (onto background, onto another class) can be read from the file."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        iou, precision, recall = self.iou(), self.precision(), self.recall()
        return {
            "miou": json_number(self.miou()),
            "pixel_accuracy": json_number(self.pixel_accuracy()),
            "per_class": {
                name: {
                    "iou": json_number(iou[index]),
                    "precision": json_number(precision[index]),
                    "recall": json_number(recall[index]),
                }
                for index, name in enumerate(class_names)
            },
            "errors": {kind: json_number(share) for kind, share in self.error_shares().items()},
            "confusion": self.matrix.tolist(),
        }


class CamThresholdSweep:
    """Confusion matrices of CAM predictions for every background threshold, accumulated in one pass.

    At threshold t a pixel is predicted as the class of its highest CAM if that value is > t, else as
    background (argmax over [t, cams...] with background winning ties, as in SEAM / IRN).

    Rather than scoring each threshold, each labelled pixel is counted once under (gt, top class, k), where
    k = number of thresholds strictly below its top CAM value. At the j-th threshold the pixel is
    foreground exactly when k > j, so suffix sums over k give every threshold's matrix.
    """

    def __init__(self, num_classes: int, thresholds: tuple[float, ...] | list[float] = DEFAULT_THRESHOLDS):
        if len(thresholds) == 0:
            raise ValueError("at least one threshold is needed")
        self.num_classes = num_classes
        self.thresholds = np.unique(np.asarray(thresholds, dtype=np.float64))  # sorted, for searchsorted
        self._counts = np.zeros((num_classes, num_classes, len(self.thresholds) + 1), dtype=np.int64)

    def update(self, cams: np.ndarray, classes: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: `cams` (K, H, W), `classes` their K foreground class indices, `gt` (H, W)."""
        classes = np.asarray(classes, dtype=np.int64)
        if cams.ndim != 3 or cams.shape[0] != len(classes) or cams.shape[1:] != gt.shape:
            raise ValueError(f"cams {cams.shape} with {len(classes)} classes do not fit ground truth {gt.shape}")
        if classes.size and (classes.min() < 1 or classes.max() >= self.num_classes):
            raise ValueError(f"CAM classes {classes.tolist()} outside 1..{self.num_classes - 1}")
        keep = gt.ravel() != IGNORE_INDEX
        labels = _labelled_pixels(gt, self.num_classes)
        if len(classes) == 0:
            # No foreground class in the image: background at every threshold, i.e. k = 0.
            top_class = np.zeros_like(labels)
            below = np.zeros_like(labels)
        else:
            flat = cams.reshape(len(classes), -1)[:, keep]
            top_class = classes[flat.argmax(axis=0)]
            # Compared in the CAMs' precision (float32 at least), as IRN's argmax over the CAMs padded with the
            # threshold: a value equal to the threshold in that precision goes to background.
            dtype = np.result_type(flat.dtype, np.float32)
            below = np.searchsorted(self.thresholds.astype(dtype), flat.max(axis=0).astype(dtype), side="left")
        bins = len(self.thresholds) + 1
        index = (labels * self.num_classes + top_class) * bins + below
        self._counts += np.bincount(index, minlength=self._counts.size).reshape(self._counts.shape)

    def matrices(self) -> list[ConfusionMatrix]:
        """One confusion matrix per threshold, in the order of `self.thresholds`."""
        # foreground[g, c, j] = pixels of gt g whose top class c is predicted at threshold j (k > j).
        foreground = np.cumsum(self._counts[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
        pixels_per_gt = self._counts.sum(axis=(1, 2))
        result = []
        for j in range(len(self.thresholds)):
            matrix = ConfusionMatrix(self.num_classes)
            matrix.matrix[:, 1:] = foreground[:, 1:, j]
            matrix.matrix[:, 0] = pixels_per_gt - foreground[:, 1:, j].sum(axis=1)
            result.append(matrix)
        return result

    def curve(self) -> list[tuple[float, float]]:
        """(threshold, mIoU) for every threshold."""
        return [(float(t), matrix.miou()) for t, matrix in zip(self.thresholds, self.matrices())]

    def best(self) -> tuple[float, ConfusionMatrix]:
        """The threshold with the highest mIoU (the lowest such threshold on a tie) and its matrix."""
        matrices = self.matrices()
        scores = np.array([matrix.miou() for matrix in matrices])
        best = int(np.argmax(np.nan_to_num(scores, nan=-1.0)))
        return float(self.thresholds[best]), matrices[best]


class SaliencyQuality:
    """Scores of saliency maps against binary foreground masks, accumulated over images: the two standard
    salient-object-detection measures.

      - `mae`: per image, the mean absolute difference between the map and the 0/1 foreground; averaged over
        images.
      - `max_f`: the maps are binarised at each of the 256 thresholds t = k / 255 (a pixel is predicted salient
        when its value >= t); per image, precision = TP / predicted and recall = TP / foreground; both are
        averaged over images, combined as F = (1 + beta^2) P R / (beta^2 P + R) with beta^2 = 0.3 (precision
        weighted over recall), and `max_f` is the largest F over thresholds, reached first (lowest threshold)
        at `threshold_at_max_f`.

    Conventions (those of the usual SOD evaluation code, e.g. PySODMetrics, with its exact guards instead of an
    epsilon): the precision of an empty prediction is 0 (its TP, 0, over max(predicted, 1)), the recall of an
    image without foreground is 0, and F is 0 where P + R = 0. Pixels where `ignore` is true are left out of
    every count; an image with no pixel left is not counted. Values are binned as floor(255 x + 1e-4), so a
    float32 copy of k / 255 still reaches threshold k / 255.
    """

    BETA_SQUARED = 0.3
    LEVELS = 256

    def __init__(self) -> None:
        self.images = 0
        self._absolute_error = 0.0
        self._precision = np.zeros(self.LEVELS)  # sums over images, index k = threshold k / 255
        self._recall = np.zeros(self.LEVELS)

    def add(self, saliency: np.ndarray, foreground: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """Add one image: `saliency` (H, W) in [0, 1], `foreground` and `ignore` (H, W) booleans."""
        if saliency.shape != foreground.shape or (ignore is not None and ignore.shape != saliency.shape):
            raise ValueError(f"saliency {saliency.shape}, foreground {foreground.shape} and ignore "
                             f"{None if ignore is None else ignore.shape} must have one shape")
        values = np.asarray(saliency, dtype=np.float64).ravel()
        truth = np.asarray(foreground, dtype=bool).ravel()
        if ignore is not None:
            keep = ~np.asarray(ignore, dtype=bool).ravel()
            values, truth = values[keep], truth[keep]
        if values.size == 0:
            return
        if not (values.min() >= 0.0 and values.max() <= 1.0):  # also false for NaN
            raise ValueError(f"saliency values must lie in [0, 1], got {values.min()} .. {values.max()}")
        levels = np.minimum(np.floor(values * (self.LEVELS - 1) + 1e-4).astype(np.int64), self.LEVELS - 1)
        # Suffix sums over the value histograms: at threshold k, everything binned at k or above is predicted.
        true_positive = np.cumsum(np.bincount(levels[truth], minlength=self.LEVELS)[::-1])[::-1]
        predicted = np.cumsum(np.bincount(levels, minlength=self.LEVELS)[::-1])[::-1]
        self._precision += true_positive / np.maximum(predicted, 1)
        self._recall += true_positive / max(int(truth.sum()), 1)
        self._absolute_error += float(np.abs(values - truth).mean())
        self.images += 1

    def f_measure(self) -> np.ndarray:
        """F of the mean precision and recall at each threshold k / 255 (NaN before any image)."""
        if self.images == 0:
            return np.full(self.LEVELS, np.nan)
        precision, recall = self._precision / self.images, self._recall / self.images
        numerator = (1 + self.BETA_SQUARED) * precision * recall
        denominator = self.BETA_SQUARED * precision + recall
        return np.divide(numerator, denominator, out=np.zeros(self.LEVELS), where=denominator > 0)

    def summary(self) -> dict:
        """JSON-ready: `images`, `mae`, `max_f`, `threshold_at_max_f` (None before any image)."""
        if self.images == 0:
            return {"images": 0, "mae": None, "max_f": None, "threshold_at_max_f": None}
        f_measure = self.f_measure()
        best = int(np.argmax(f_measure))
        return {
            "images": self.images,
            "mae": self._absolute_error / self.images,
            "max_f": float(f_measure[best]),
            "threshold_at_max_f": best / (self.LEVELS - 1),
        }


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of the average precision of ranking images by score."""
    precisions = []
    for column in range(scores.shape[1]):
        positives = targets[:, column] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, column], kind="stable")
        hits = positives[order]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        precisions.append(precision_at_hit.mean())
    if not precisions:
        raise UserError("validation split has no labelled images: cannot compute mAP")
    return float(np.mean(precisions))


def macro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    true_positive = (predicted & targets).sum(0)
    denominator = predicted.sum(0) + targets.sum(0)
    present = targets.sum(0) > 0
    return float(np.mean(2 * true_positive[present] / np.maximum(denominator[present], 1)))
