"""`--refine pcm`: SEAM's PCM applied to a pseudo-label score stack."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from stages.config import CamModelConfig
from stages.core.checkpoint import save_checkpoint
from stages.core.errors import UserError
from stages.methods import build_cam_model
from stages.config import PseudoLabelConfig
from stages.pseudo_label import make_pseudo_mask
from stages.refine import ImageItem, RefineInputs, parse_refinements
from stages.refine.crf import DenseCrf
from stages.refine.pcm import PcmRefinement

CLASSES = ["background", "a", "b"]


def checkpoint_of(method, path):
    torch.manual_seed(0)
    model = build_cam_model(method, CamModelConfig(), len(CLASSES) - 1)
    config = {"method": method, "method_options": {}, "model": asdict(CamModelConfig())}
    save_checkpoint(path, kind="cam", config=config, class_names=CLASSES, model=model,
                    normalization=model.normalization, metrics={})
    return path


def test_pcm_keeps_a_constant_score_map_and_the_shape(tmp_path):
    refinement = PcmRefinement(checkpoint_of("seam", tmp_path / "seam.pt"))
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    constant = np.full((3, 48, 40), 0.3, dtype=np.float32)
    refined = refinement.refine_scores(ImageItem("a", image), constant)
    assert refined.shape == constant.shape
    np.testing.assert_allclose(refined, constant, atol=1e-3)  # rows sum to 1 (up to the 1e-5 guard)


def test_pcm_redistributes_cams_without_creating_mass(tmp_path):
    refinement = PcmRefinement(checkpoint_of("seam", tmp_path / "seam.pt"))
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    scores = np.zeros((2, 64, 64), dtype=np.float32)
    scores[0] = 0.3
    scores[1, 16:32, 16:32] = 1.0
    refined = refinement.refine_scores(ImageItem("b", image), scores)
    assert refined[1].max() <= 1.0 + 1e-4 and refined[1].min() >= -1e-6  # a convex combination of the inputs
    assert not np.allclose(refined[1], scores[1])


def test_pcm_needs_a_checkpoint_with_a_pcm(tmp_path):
    with pytest.raises(UserError, match="needs the checkpoint of a method with a PCM.*'baseline'"):
        PcmRefinement(checkpoint_of("baseline", tmp_path / "baseline.pt"))


def test_pcm_then_crf_in_a_pseudo_mask(tmp_path):
    refinements = parse_refinements("pcm,crf", RefineInputs(checkpoint=checkpoint_of("seam", tmp_path / "seam.pt")))
    assert [type(r) for r in refinements] == [PcmRefinement, DenseCrf]
    image = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cams = np.zeros((1, 32, 32), dtype=np.float32)
    cams[0, 8:24, 8:24] = 0.9
    mask = make_pseudo_mask(ImageItem("c", image), cams, np.array([2]), PseudoLabelConfig(), refinements)
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 2, 255}


def test_pcm_computes_the_affinity_once_per_image(tmp_path):
    refinement = PcmRefinement(checkpoint_of("seam", tmp_path / "seam.pt"))
    calls = []
    original = refinement.model.pcm_affinity
    refinement.model.pcm_affinity = lambda *args: calls.append(1) or original(*args)
    image = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cams = np.zeros((1, 32, 32), dtype=np.float32)
    cams[0, 8:24, 8:24] = 0.9
    # make_pseudo_mask refines the fg- and bg-threshold stacks of one image: one affinity per image.
    make_pseudo_mask(ImageItem("a", image), cams, np.array([1]), PseudoLabelConfig(), [refinement])
    make_pseudo_mask(ImageItem("b", image), cams, np.array([1]), PseudoLabelConfig(), [refinement])
    assert len(calls) == 2
