"""Registry-driven contract tests: every registered CAM method, add-on loss, segment method, contrast loss,
refinement, backbone and saliency source is built by name and put through what the stages do with it (in the
manner of torchvision's test/test_models.py). Registering a module in `stages.registry` is what tests it.

Everything is tiny (resnet10, 48 px images, 3 foreground classes, output stride 16) so the file runs in well
under a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from stages.affinity import affinity_model_from_checkpoint, build_affinity_model
from stages.affinity.pairs import search_directions
from stages.affinity.walk import random_walk, transition_matrix
from stages.config import (AffinityModelConfig, CamModelConfig, PseudoLabelConfig, SegModelConfig, SegmentConfig,
                           TrainAffinityConfig, TrainCamConfig)
from stages.core.checkpoint import (checkpoint_normalization, load_checkpoint, load_state, model_config,
                                    save_checkpoint)
from stages.core.errors import UserError
from stages.core.io import IGNORE_INDEX
from stages.data.saliency_maps import SaliencySource, save_saliency
from stages.methods import (build_aux_loss, build_cam_model, build_segment_method, cam_model_from_checkpoint,
                            training_terms)
from stages.models.backbone import create_backbone
from stages.models.deeplab import DeepLab
from stages.pseudo_label import make_pseudo_mask
from stages.refine import ImageItem, RefineInputs, Refinement, parse_refinements
from stages.registry import (AFFINITY_METHODS, BACKBONES, CAM_ADDONS, CAM_METHODS, REFINEMENTS, REGISTRIES,
                             SALIENCY_SOURCES, SEGMENT_CONTRASTS, SEGMENT_METHODS, Registry)

NUM_CLASSES = 3  # foreground
CLASS_NAMES = ["background", "a", "b", "c"]
SIZE = 48

TWO_VIEW_METHODS = [name for name in CAM_METHODS.names() if hasattr(CAM_METHODS.get(name), "training_views")]
ONE_VIEW_METHODS = [name for name in CAM_METHODS.names() if name not in TWO_VIEW_METHODS]
MASKLESS_SEGMENT_METHODS = [name for name in SEGMENT_METHODS.names() if not SEGMENT_METHODS.get(name).uses_masks]


def segment_cases() -> list[tuple[str, str]]:
    """Every segment method alone, and with every contrast when it trains on masks (the others refuse one)."""
    return [(name, contrast) for name in SEGMENT_METHODS.names()
            for contrast in [""] + (SEGMENT_CONTRASTS.names() if SEGMENT_METHODS.get(name).uses_masks else [])]


def images_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with different label sets (one with two classes)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return images, labels


def saliency_maps() -> torch.Tensor:
    """(2, H, W) in [0, 1]: a salient centre square on each image."""
    saliency = torch.zeros(2, SIZE, SIZE)
    saliency[:, 12:36, 12:36] = 0.9
    return saliency


def cam_extra(model) -> dict[str, torch.Tensor]:
    """What train-cam adds to `training_terms` for a method that uses saliency: maps, and which images have one
    (the second image has none, so both of a method's paths run)."""
    if not getattr(model, "uses_saliency", False):
        return {}
    return {"saliency": saliency_maps(), "has_saliency": torch.tensor([True, False])}


def parameter_ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def has_gradient(parameters) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)


def assert_finite_gradients(module: torch.nn.Module) -> None:
    bad = [name for name, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:3]}"


def summed(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    assert terms, "no loss terms"
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in terms.values()), terms
    loss = sum(terms.values())
    assert torch.isfinite(loss), terms
    return loss


# ----------------------------------------------------------------------------------------------- CAM methods
# The default backbone and a timm one (what `--backbone efficientnet_lite0` builds), for every method.
TRAINED_BACKBONES = ("resnet10", "efficientnet_lite0")


@pytest.mark.parametrize("backbone", TRAINED_BACKBONES)
@pytest.mark.parametrize("name", CAM_METHODS.names())
def test_cam_method_follows_the_method_contract(name, backbone, tmp_path):
    torch.manual_seed(0)
    architecture = CamModelConfig(backbone=backbone)
    model = build_cam_model(name, architecture, NUM_CLASSES)
    assert isinstance(model, CAM_METHODS.get(name))
    images, labels = images_and_labels()

    # param_groups: backbone and new layers, disjoint, together every parameter (what the optimizer gets).
    backbone, new_layers = model.param_groups()
    assert backbone and new_layers
    assert parameter_ids(backbone).isdisjoint(parameter_ids(new_layers))
    assert parameter_ids(backbone) | parameter_ids(new_layers) == parameter_ids(model.parameters())

    # One SGD step through training_terms, as train-cam takes it.
    model.train()
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = summed(training_terms(model, None, images, labels, **cam_extra(model)))
    loss.backward()
    assert_finite_gradients(model)
    assert has_gradient(backbone), "no gradient reaches the backbone"
    assert has_gradient(new_layers), "no gradient reaches the new layers"
    optimizer.step()
    changed = [key for key, p in model.named_parameters() if not torch.equal(p.detach(), before[key])]
    assert changed, "the step changed no parameter"

    # forward: classification logits; cams: non-negative (N, C, h, w).
    model.eval()
    with torch.no_grad():
        logits = model(images)
        cams = model.cams(images)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert cams.ndim == 4 and cams.shape[:2] == (2, NUM_CLASSES) and min(cams.shape[2:]) >= 1
    assert torch.isfinite(cams).all() and cams.min() >= 0

    # The checkpoint as train-cam writes it gives back the same model.
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, kind="cam", config=asdict(TrainCamConfig(method=name, model=architecture)),
                    class_names=CLASS_NAMES, model=model,
                    normalization=model.normalization, metrics={})
    payload = load_checkpoint(path, "cam")
    assert checkpoint_normalization(payload, path) == model.normalization
    loaded = cam_model_from_checkpoint(payload, path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(loaded.cams(images), cams)
        assert torch.equal(loaded(images), logits)


@pytest.mark.parametrize("name", CAM_METHODS.names())
def test_cam_method_options_have_defaults_and_reject_unknown_keys(name):
    options_class = CAM_METHODS.get(name).Options
    options_class()  # every option has a default: `train-cam --method NAME` needs none
    with pytest.raises(UserError, match=f"method '{name}' has no option 'no_such_option'"):
        build_cam_model(name, CamModelConfig(), NUM_CLASSES, {"no_such_option": "1"})


# ----------------------------------------------------------------------------------------------- CAM add-ons
@pytest.mark.parametrize("method", TWO_VIEW_METHODS)
@pytest.mark.parametrize("addon", CAM_ADDONS.names())
def test_addon_trains_with_every_two_view_method(addon, method):
    torch.manual_seed(0)
    model = build_cam_model(method, CamModelConfig(), NUM_CLASSES)
    aux = build_aux_loss(addon, {}, model, method)
    assert isinstance(aux, CAM_ADDONS.get(addon))
    aux_parameters = list(aux.parameters())
    assert aux_parameters and parameter_ids(aux_parameters).isdisjoint(parameter_ids(model.parameters()))
    images, labels = images_and_labels()
    extra = cam_extra(model)

    model.train()
    aux.train()
    method_terms = set(model.training_views(images, labels, **extra).losses)
    terms = training_terms(model, aux, images, labels, **extra)
    assert method_terms < set(terms), "the add-on added no term (or dropped the method's)"
    before = [p.detach().clone() for p in aux_parameters]
    optimizer = torch.optim.SGD(list(model.parameters()) + aux_parameters, lr=0.1)
    summed(terms).backward()
    assert_finite_gradients(model)
    assert_finite_gradients(aux)
    assert has_gradient(aux_parameters), "no gradient reaches the add-on"
    assert has_gradient(model.backbone.parameters()), "no gradient reaches the backbone"
    optimizer.step()
    assert any(not torch.equal(p.detach(), old) for p, old in zip(aux_parameters, before))


@pytest.mark.parametrize("method", ONE_VIEW_METHODS)
@pytest.mark.parametrize("addon", CAM_ADDONS.names())
def test_addon_refuses_a_method_without_two_views(addon, method):
    model = build_cam_model(method, CamModelConfig(), NUM_CLASSES)
    with pytest.raises(UserError, match=f"needs a method with two views .*'{method}' has none"):
        build_aux_loss(addon, {}, model, method)


# ----------------------------------------------------------------------------------------------- segment methods
def segment_batch(method) -> dict[str, torch.Tensor]:
    """A batch as segment's loader makes it for `method`: image and labels, plus mask and saliency only when the
    method declares it uses them."""
    images, labels = images_and_labels()
    batch = {"image": images, "labels": labels}
    if method.uses_masks:
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
        masks[0, 8:30, 8:30] = 1  # image 0: classes a and c
        masks[0, 24:44, 26:46] = 3
        masks[1, 10:40, 10:40] = 2  # image 1: class b
        masks[:, :, 20:22] = IGNORE_INDEX  # an uncertain band, as pseudo masks have
        batch["mask"] = masks
    if method.uses_saliency:
        batch["saliency"] = saliency_maps()
        batch["has_saliency"] = torch.tensor([True, True])
    return batch


@pytest.mark.parametrize("backbone", TRAINED_BACKBONES)
@pytest.mark.parametrize("name, contrast", segment_cases())
def test_segment_method_trains_and_saves_the_segmenter(name, contrast, backbone, tmp_path):
    torch.manual_seed(0)
    architecture = SegModelConfig(backbone=backbone)
    segmenter = DeepLab(architecture, len(CLASS_NAMES))
    method = build_segment_method(name, {}, contrast, {}, segmenter, len(CLASS_NAMES), steps_per_epoch=2)
    assert isinstance(method, SEGMENT_METHODS.get(name))
    new_parameters = method.new_parameters()
    assert parameter_ids(new_parameters).isdisjoint(parameter_ids(segmenter.parameters()))
    if contrast:
        assert new_parameters, "the contrast's layers are not among the new parameters"
    batch = segment_batch(method)
    optimizer = torch.optim.SGD(list(segmenter.parameters()) + new_parameters, lr=0.01)

    method.train()
    before = {key: p.detach().clone() for key, p in segmenter.named_parameters()}
    # Step 0, then step 2 = one epoch in: a memory warm-up is over and a loss ramp-up under way, with the
    # memories filled by the first step.
    for step in (0, 2):
        optimizer.zero_grad()
        terms = method(batch, step)
        summed(terms).backward()
        assert_finite_gradients(method)
        assert has_gradient(segmenter.backbone.parameters()), f"step {step}: no gradient reaches the backbone"
        optimizer.step()
    # A warm-up may hold a term (and so these gradients) at zero on step 0, not after it.
    assert has_gradient([segmenter.classifier.weight]), "no gradient reaches the segmenter's classifier"
    if new_parameters:
        assert has_gradient(new_parameters), "no gradient reaches the method's own layers"
    if contrast:
        assert terms["contrast"] > 0, "the contrast term stayed zero after its warm-up"
    assert any(not torch.equal(p.detach(), before[key]) for key, p in segmenter.named_parameters())

    # Only the segmenter is saved; loaded as segment's prediction and evaluation load it, it is the same model.
    segmenter.eval()
    images = batch["image"]
    with torch.no_grad():
        logits = segmenter(images)
    assert logits.shape == (2, len(CLASS_NAMES), SIZE, SIZE) and torch.isfinite(logits).all()
    path = tmp_path / "segmenter.pt"
    config = asdict(SegmentConfig(method=name, contrast=contrast, model=architecture))
    save_checkpoint(path, kind="segmenter", config=config, class_names=CLASS_NAMES, model=segmenter,
                    normalization=segmenter.normalization, metrics={})
    payload = load_checkpoint(path, "segmenter")
    assert payload["state_dict"].keys() == segmenter.state_dict().keys()
    assert checkpoint_normalization(payload, path) == segmenter.normalization
    loaded = DeepLab(model_config(SegModelConfig, payload, path), len(CLASS_NAMES))
    load_state(loaded, payload, path)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)


@pytest.mark.parametrize("name", MASKLESS_SEGMENT_METHODS)
@pytest.mark.parametrize("contrast", SEGMENT_CONTRASTS.names())
def test_segment_method_without_masks_refuses_a_contrast(name, contrast):
    segmenter = DeepLab(SegModelConfig(), len(CLASS_NAMES))
    with pytest.raises(UserError, match=f"--contrast {contrast} needs mask labels; segment method '{name}'"):
        build_segment_method(name, {}, contrast, {}, segmenter, len(CLASS_NAMES), steps_per_epoch=2)


# ----------------------------------------------------------------------------------------------- refinements
IMAGE_ID, HEIGHT, WIDTH = "img", 40, 48  # not square, so a swapped axis shows


def object_image() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    image[10:30, 12:36] = (220, 180, 40)
    return image


@pytest.fixture(scope="module")
def refine_inputs(tmp_path_factory) -> RefineInputs:
    """Everything any refinement may need: a SEAM checkpoint (pcm) and a saliency directory with the image's map."""
    folder = tmp_path_factory.mktemp("refine")
    torch.manual_seed(0)
    seam = build_cam_model("seam", CamModelConfig(), NUM_CLASSES)
    checkpoint = folder / "seam.pt"
    save_checkpoint(checkpoint, kind="cam", config=asdict(TrainCamConfig(method="seam")), class_names=CLASS_NAMES,
                    model=seam, normalization=seam.normalization, metrics={})
    saliency = np.zeros((HEIGHT, WIDTH), np.float32)
    saliency[8:32, 10:38] = 1.0
    (folder / "saliency").mkdir()
    save_saliency(folder / "saliency" / f"{IMAGE_ID}.png", saliency)
    affinity_config = TrainAffinityConfig(model=AffinityModelConfig(backbone="resnet10", pretrained="none"))
    affinity = build_affinity_model(affinity_config.method, affinity_config.model)
    save_checkpoint(folder / "affinity.pt", kind="affinity", config=asdict(affinity_config), class_names=CLASS_NAMES,
                    model=affinity, normalization=affinity.normalization, metrics={})
    return RefineInputs(checkpoint=checkpoint, saliency_dir=str(folder / "saliency"),
                        affinity_checkpoint=folder / "affinity.pt")


def image_cams() -> tuple[np.ndarray, np.ndarray]:
    """CAMs (K, H, W) in [0, 1] of the image's classes, and those classes' ids."""
    cams = np.zeros((2, HEIGHT, WIDTH), np.float32)
    cams[0, 10:30, 12:24] = 0.9
    cams[1, 10:30, 24:36] = 0.6
    cams[1, 0:4, 0:4] = 0.2
    return cams, np.array([1, 3])


@pytest.mark.parametrize("name", REFINEMENTS.names())
def test_refinement_keeps_shapes_and_label_range(name, refine_inputs):
    refinement = REFINEMENTS.get(name).from_inputs(refine_inputs)
    assert isinstance(refinement, Refinement)
    cams, classes = image_cams()
    item = ImageItem(IMAGE_ID, object_image())
    # As make_pseudo_mask applies it: scores (K+1, H, W) float32 with the background first, then the argmax.
    scores = np.concatenate([np.full((1, HEIGHT, WIDTH), 0.3, np.float32), cams])
    refined = refinement.refine_scores(item, scores)
    assert refined.shape == scores.shape and refined.dtype == np.float32 and np.isfinite(refined).all()
    labels = refined.argmax(axis=0)
    refined_labels = refinement.refine_labels(item, labels, len(classes) + 1)
    assert refined_labels.shape == (HEIGHT, WIDTH) and np.issubdtype(refined_labels.dtype, np.integer)
    assert 0 <= refined_labels.min() and refined_labels.max() <= len(classes)

    mask = make_pseudo_mask(ImageItem(IMAGE_ID, object_image()), cams, classes, PseudoLabelConfig(), [refinement])
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, *classes.tolist(), IGNORE_INDEX}


@pytest.mark.parametrize("name", REFINEMENTS.names())
def test_refinement_of_a_batch_is_that_of_each_image(name, refine_inputs):
    # What pseudo-label hands a refinement: per image its two score stacks (thresholds 0.30 and 0.05), several
    # images at once where it runs on a GPU (here the image and its mirror: the saliency map is per id).
    refinement = REFINEMENTS.get(name).from_inputs(refine_inputs)
    cams, _ = image_cams()
    images = [object_image(), object_image()[:, ::-1].copy()]
    stacks = [[np.concatenate([np.full((1, HEIGHT, WIDTH), threshold, np.float32), image_cams])
               for threshold in (0.3, 0.05)] for image_cams in (cams, cams[:, :, ::-1].copy())]
    batched = refinement.refine_score_batch([ImageItem(IMAGE_ID, image) for image in images], stacks)
    assert [len(refined) for refined in batched] == [2, 2]
    for image, image_stacks, refined in zip(images, stacks, batched):
        for scores, batch_refined in zip(image_stacks, refined):
            alone = refinement.refine_scores(ImageItem(IMAGE_ID, image), scores)
            assert batch_refined.shape == scores.shape
            np.testing.assert_allclose(batch_refined, alone, atol=1e-6)


@pytest.mark.parametrize("name", REFINEMENTS.names())
def test_parse_refinements_builds_the_registered_class(name, refine_inputs):
    refinements = parse_refinements(name, refine_inputs)
    assert len(refinements) == 1 and type(refinements[0]) is REFINEMENTS.get(name)


# ----------------------------------------------------------------------------------------------- affinity
@pytest.mark.parametrize("backbone", TRAINED_BACKBONES)
@pytest.mark.parametrize("name", AFFINITY_METHODS.names())
def test_affinity_method_trains_saves_and_walks(name, backbone, tmp_path):
    torch.manual_seed(0)
    config = TrainAffinityConfig(method=name, model=AffinityModelConfig(backbone=backbone, pretrained="none"))
    model = build_affinity_model(name, config.model).train()
    images, _ = images_and_labels()
    masks = torch.randint(0, NUM_CLASSES + 1, images.shape[:1] + images.shape[2:])
    masks[:, :4] = IGNORE_INDEX
    terms = model.training_losses(images, masks)
    summed(terms).backward()
    base, head = model.param_groups()
    assert has_gradient(base + head)
    assert_finite_gradients(model)

    path = tmp_path / "affinity.pt"
    save_checkpoint(path, kind="affinity", config=asdict(config), class_names=CLASS_NAMES, model=model,
                    normalization=model.normalization, metrics={})
    payload = load_checkpoint(path, "affinity")
    loaded = affinity_model_from_checkpoint(payload, path)
    assert checkpoint_normalization(payload, path) == model.normalization
    image = torch.randn(1, 3, 37, 45)
    model.eval()
    affinities, contexts = loaded.walk_affinities(image)
    torch.testing.assert_close(affinities, model.walk_affinities(image)[0])
    assert affinities.shape == (1, len(search_directions(loaded.options.walk_radius)),
                                (37 - 1) // loaded.stride + 1, (45 - 1) // loaded.stride + 1)
    scores = torch.cat([torch.full((1, 37, 45), 0.25), torch.rand(2, 37, 45)])
    transition = transition_matrix(affinities, search_directions(loaded.options.walk_radius), loaded.options.beta)
    walked = loaded.walked_scores(scores, random_walk([loaded.walk_maps(scores, contexts[0])], transition, 4)[0])
    assert walked.shape == scores.shape and torch.isfinite(walked).all()


@pytest.mark.parametrize("name", AFFINITY_METHODS.names())
def test_affinity_method_options_have_defaults_and_reject_unknown_keys(name):
    options = AFFINITY_METHODS.get(name).Options()
    assert dataclasses.asdict(options)
    with pytest.raises(UserError, match="has no option 'no_such_option'"):
        build_affinity_model(name, AffinityModelConfig(backbone="resnet10"), {"no_such_option": "1"})


# ----------------------------------------------------------------------------------------------- backbones
# Every registered backbone, resnet50 and resnet101 included: random init at 64 px takes about a second.
@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_gives_four_stages_with_its_channels(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, 16).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert len(features) == 4 and len(backbone.channels) == 4
    assert [f.shape[1] for f in features] == backbone.channels
    assert [f.shape[-2:] for f in features] == [(16, 16), (8, 8), (4, 4), (4, 4)]  # strides 4, 8, 16, 16
    assert backbone.output_stride == 16 and all(torch.isfinite(f).all() for f in features)


# ----------------------------------------------------------------------------------------------- saliency sources
@pytest.mark.parametrize("name", SALIENCY_SOURCES.names())
def test_saliency_source_gives_a_map_in_unit_range(name):
    source = SALIENCY_SOURCES.get(name)()
    assert isinstance(source, SaliencySource)
    image = object_image()
    saliency = source("some-id", image)
    assert saliency.shape == (HEIGHT, WIDTH) and saliency.dtype == np.float32
    assert np.isfinite(saliency).all() and saliency.min() >= 0 and saliency.max() <= 1
    # The image is one bright object on a flat background: any saliency source should find it.
    assert saliency[12:28, 14:34].mean() > saliency[:4].mean() + 0.3


# ----------------------------------------------------------------------------------------------- the registries
@pytest.mark.parametrize("registry", REGISTRIES, ids=[registry.kind for registry in REGISTRIES])
def test_registry_help_and_errors_name_every_entry(registry: Registry):
    names = registry.names()
    assert names and len(set(names)) == len(names) and list(registry) == names
    help_text = registry.help()
    for name in names:
        assert re.search(rf"(^|, ){re.escape(name)} \(", help_text), (name, help_text)
        assert name in registry and registry.check(name) == name
    assert "nope" not in registry
    with pytest.raises(UserError) as error:
        registry.check("nope")
    message = str(error.value)
    assert message.startswith(f"unknown {registry.kind} 'nope' (choose from {', '.join(names)}")
    assert message == f"unknown {registry.kind} 'nope' (choose from {', '.join(names)}" + (
        f", or {registry._fallback_help})" if registry._fallback else ")")
    with pytest.raises(UserError, match=f"unknown {registry.kind} 'nope'"):
        registry.get("nope")
