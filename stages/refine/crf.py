"""Dense CRF (Krähenbühl & Koltun, NIPS 2011) through pydensecrf, with IRN's pseudo-label settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from . import ImageItem, Refinement


@dataclass(frozen=True)
class CrfParams:
    """Defaults: IRN's label CRF (REFERENCES.md): gaussian 3/3, bilateral 50/5/10, 10 iterations, gt_prob 0.7."""

    gaussian_sxy: float = 3
    gaussian_compat: float = 3
    bilateral_sxy: float = 50
    bilateral_srgb: float = 5
    bilateral_compat: float = 10
    iterations: int = 10
    gt_prob: float = 0.7


def crf_with_kernels(image: np.ndarray, num_labels: int, params: CrfParams = CrfParams()) -> dcrf.DenseCRF2D:
    """A dense CRF over the RGB image with its pairwise kernels set. Building the bilateral kernel's lattice is
    about half the cost of a CRF, so a caller refining several label maps of one image sets each map's unary on
    one such CRF (inference starts from the unary alone, so the labels are the same as with a fresh CRF)."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    _add_pairwise(crf, image, params)
    return crf


def crf_from_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, params: CrfParams = CrfParams(),
                    crf: dcrf.DenseCRF2D | None = None) -> np.ndarray:
    """Refine a (H, W) label map of values in [0, num_labels) with a dense CRF on the RGB image (or on `crf`, the
    image's `crf_with_kernels`)."""
    height, width = labels.shape
    if crf is None:
        crf = crf_with_kernels(image, num_labels, params)
    crf.setUnaryEnergy(unary_from_labels(labels, num_labels, gt_prob=params.gt_prob, zero_unsure=False))
    return _map_labels(crf, params.iterations, num_labels, height, width)


def crf_from_probabilities(image: np.ndarray, probabilities: np.ndarray, params: CrfParams) -> np.ndarray:
    """Refine (L, H, W) class probabilities (DeepLab-style post-processing); returns the label map."""
    num_labels, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).reshape(num_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    _add_pairwise(crf, image, params)
    return _map_labels(crf, params.iterations, num_labels, height, width)


def _add_pairwise(crf, image: np.ndarray, params: CrfParams) -> None:
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.array(image, dtype=np.uint8, order="C"), compat=params.bilateral_compat)


def _map_labels(crf, iterations: int, num_labels: int, height: int, width: int) -> np.ndarray:
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(num_labels, height, width)
    return q.argmax(axis=0)


class DenseCrf(Refinement):
    def __init__(self, params: CrfParams = CrfParams()):
        self.params = params

    def refine_labels(self, item: ImageItem, labels: np.ndarray, num_labels: int) -> np.ndarray:
        if num_labels < 2:
            return labels
        kernels = item.once(f"crf-{num_labels}", lambda: crf_with_kernels(item.image, num_labels, self.params))
        return crf_from_labels(item.image, labels, num_labels, self.params, kernels)
