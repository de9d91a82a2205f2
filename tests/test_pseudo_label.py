"""Pseudo-mask construction (IRN thresholds, uncertain pixels) and the dense CRF wrapper."""

import numpy as np
import pytest

from stages.core.errors import UserError
from stages.config import PseudoLabelConfig
from stages.pseudo_label import make_pseudo_mask
from stages.refine import ImageItem, parse_refinements
from stages.refine.crf import CrfParams, DenseCrf, crf_from_labels, crf_from_probabilities


def test_thresholds_give_foreground_background_and_uncertain():
    cams = np.array([[[0.5, 0.2, 0.01, 0.9]],     # class 3
                     [[0.4, 0.1, 0.02, 0.95]]],   # class 7
                    dtype=np.float32)
    image = np.zeros((1, 4, 3), np.uint8)
    mask = make_pseudo_mask(ImageItem("a", image), cams, np.array([3, 7]), PseudoLabelConfig(fg_threshold=0.3, bg_threshold=0.05),
                            refinements=[])
    # 0.5 > 0.3: confident class 3; 0.2 is between the thresholds: uncertain; 0.02 < 0.05: background;
    # 0.95 beats 0.9: class 7.
    assert mask.tolist() == [[3, 255, 0, 7]]


def test_no_classes_gives_all_background():
    mask = make_pseudo_mask(ImageItem("a", np.zeros((2, 2, 3), np.uint8)), np.zeros((0, 2, 2), np.float32),
                            np.array([], dtype=np.int64), PseudoLabelConfig(), [])
    assert mask.tolist() == [[0, 0], [0, 0]]


def two_region_image(height=24, width=24):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2:] = 255
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 2:] = 1
    return image, truth


def test_crf_from_labels_snaps_noisy_labels_to_the_image_edge():
    image, truth = two_region_image()
    noisy = truth.copy()
    rng = np.random.default_rng(0)
    flip = rng.random(truth.shape) < 0.15
    noisy[flip] = 1 - noisy[flip]
    refined = crf_from_labels(image, noisy, 2)
    assert (refined == truth).mean() > 0.98 > (noisy == truth).mean()


def test_crf_from_probabilities_follows_confident_evidence():
    image, truth = two_region_image()
    probabilities = np.stack([1 - truth, truth]).astype(np.float32) * 0.6 + 0.2
    refined = crf_from_probabilities(image, probabilities, CrfParams(gaussian_sxy=1, bilateral_sxy=67,
                                                                     bilateral_srgb=3, bilateral_compat=4))
    assert refined.shape == truth.shape and (refined == truth).mean() > 0.98


def test_crf_refinement_in_pseudo_masks_keeps_class_ids():
    image, truth = two_region_image()
    cams = np.where(truth == 1, 0.8, 0.0)[None].astype(np.float32)
    mask = make_pseudo_mask(ImageItem("a", image), cams, np.array([5]), PseudoLabelConfig(), [DenseCrf()])
    assert set(np.unique(mask)) <= {0, 5, 255}
    assert (mask == np.where(truth == 1, 5, 0)).mean() > 0.95


def test_parse_refinements():
    assert parse_refinements("none") == []
    assert [type(r) for r in parse_refinements("crf")] == [DenseCrf]
    with pytest.raises(UserError, match="unknown refinement magic"):
        parse_refinements("crf,magic")
    with pytest.raises(UserError, match="twice"):
        parse_refinements("crf,crf")


def test_label_only_processes_build_no_score_refinement(tmp_path):
    """pseudo-label's CRF workers beside a batched walk build only the label refinements: the random walk (which
    would load its network from the checkpoint, missing here) and the saliency background are left out."""
    from stages.refine import RefineInputs
    inputs = RefineInputs(affinity_checkpoint=tmp_path / "missing.pt", saliency_dir=str(tmp_path))
    assert [type(r) for r in parse_refinements("saliency,rw,crf", inputs, labels_only=True)] == [DenseCrf]
    with pytest.raises(UserError):
        parse_refinements("rw,crf", inputs)


def test_saliency_background_makes_non_salient_pixels_background(tmp_path):
    from stages.data.saliency_maps import save_saliency
    from stages.refine.saliency_background import SaliencyBackground

    # Four pixels: non-salient with a strong CAM; salient with CAM above fg, between the thresholds, below bg.
    save_saliency(tmp_path / "a.png", np.array([[0.1, 0.9, 0.9, 0.9]], dtype=np.float32))
    cams = np.array([[[0.9, 0.5, 0.2, 0.01]]], dtype=np.float32)
    mask = make_pseudo_mask(ImageItem("a", np.zeros((1, 4, 3), np.uint8)), cams, np.array([4]),
                            PseudoLabelConfig(fg_threshold=0.3, bg_threshold=0.05),
                            [SaliencyBackground(str(tmp_path), threshold=0.5)])
    assert mask.tolist() == [[0, 4, 255, 0]]
    without = make_pseudo_mask(ImageItem("a", np.zeros((1, 4, 3), np.uint8)), cams, np.array([4]),
                               PseudoLabelConfig(fg_threshold=0.3, bg_threshold=0.05), [])
    assert without.tolist() == [[4, 4, 255, 0]]  # the CAM alone spills onto the non-salient pixel


def test_saliency_refinement_needs_maps(tmp_path):
    from stages.refine import RefineInputs

    with pytest.raises(UserError, match="wsss saliency"):
        parse_refinements("saliency,crf", RefineInputs(saliency_dir=str(tmp_path / "nothing")))
    refinements = parse_refinements("saliency,crf", RefineInputs(saliency_dir=str(tmp_path)))
    with pytest.raises(UserError, match="no saliency map for 'x'"):
        refinements[0].refine_scores(ImageItem("x", np.zeros((2, 2, 3), np.uint8)), np.zeros((1, 2, 2), np.float32))
