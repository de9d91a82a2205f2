"""Inter-pixel affinity: pair geometry, affinity labels, IRN's line maximum, the sparse random walk against the
official dense one, both methods' losses, and train-affinity + pseudo-label --refine rw end to end."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

import stages.pseudo_label as pseudo_label_module
from stages.affinity import build_affinity_model
from stages.affinity.pairs import (boundary_affinities, feature_affinities, inside, line_paths, pair_labels,
                                   search_directions)
from stages.affinity.walk import random_walk, transition_matrix
from stages.config import AffinityModelConfig, TrainAffinityConfig
from stages.core.checkpoint import save_checkpoint
from stages.core.errors import UserError
from stages.core.io import IGNORE_INDEX, load_mask
from stages.refine import ImageItem
from stages.refine.random_walk import RandomWalk
from stages.registry import AFFINITY_METHODS
from test_cli import assert_one_line_error, invoke
from test_end_to_end import TINY_TRAINING, wsss

I = IGNORE_INDEX


def test_search_directions_are_the_official_half_disc():
    assert search_directions(2) == ((0, 1), (1, -1), (1, 0), (1, 1))
    assert len(search_directions(5)) == 34 and len(search_directions(10)) == 152
    assert all(dy * dy + dx * dx < 25 and (dy > 0 or dx > 0) for dy, dx in search_directions(5))


def test_pairs_inside_a_small_grid_are_counted_as_by_hand():
    # Radius 2 on 3x3 is the 8-neighbourhood: 6 horizontal, 6 vertical and 8 diagonal pairs.
    valid = inside(3, 3, search_directions(2))
    assert valid.sum(dim=(1, 2)).tolist() == [6, 4, 6, 4]  # (0,1), (1,-1), (1,0), (1,1)
    assert not valid[0, :, 2].any() and not valid[1, :, 0].any() and not valid[2, 2].any()


def test_affinity_labels_on_a_hand_made_map():
    labels = torch.tensor([[[0, 0, 1, I]]])  # one row: background, background, class 1, unknown
    background, foreground, different = pair_labels(labels, search_directions(2))
    right = 0  # direction (0, 1)
    assert background[0, right, 0].tolist() == [1, 0, 0, 0]  # (0,0)-(0,1) both background
    assert different[0, right, 0].tolist() == [0, 1, 0, 0]  # (0,1)-(0,2): background against class 1
    assert foreground.sum() == 0  # no two pixels of the same class
    assert different[0, right, 0, 2] == 0 and background[0, right, 0, 2] == 0  # unknown takes no part
    labels = torch.tensor([[[2, 2], [2, I]]])
    background, foreground, different = pair_labels(labels, search_directions(2))
    # (0,0)-(0,1), (0,0)-(1,0) and (0,1)-(1,0) are class 2 pairs; the pairs with (1,1) are unknown
    assert foreground.sum() == 3 and background.sum() == 0 and different.sum() == 0


def test_line_paths_hold_both_ends_and_the_cells_near_the_line():
    # IRN's rule: a cell of the bounding box is on the line if its distance to it is below 1 cell.
    paths = dict(zip(search_directions(5), line_paths(5)))
    assert set(paths[(0, 2)]) == {(0, 0), (0, 1), (0, 2)}
    assert set(paths[(1, 1)]) == {(0, 0), (1, 1), (0, 1), (1, 0)}  # the two side cells are 0.71 from the line
    assert set(paths[(2, 1)]) == {(y, x) for y in range(3) for x in range(2)}  # all within 2/sqrt(5) = 0.89
    diagonal = {(y, x) for y in range(4) for x in range(4) if abs(x - y) <= 1}  # |x - y| = 2 is 1.41 away
    assert set(paths[(3, 3)]) == diagonal and len(diagonal) == 10
    assert set(paths[(1, -2)]) == {(0, 0), (0, -1), (1, -1), (1, -2), (0, -2), (1, 0)}


def test_boundary_affinity_is_one_minus_the_largest_boundary_on_the_line():
    boundary = torch.zeros(1, 5, 5)
    boundary[0, :, 2] = 1.0  # a wall down the middle column
    boundary[0, 0, 1] = 0.3
    affinity = boundary_affinities(boundary, radius=3)
    directions = search_directions(3)
    right, two_right, down = directions.index((0, 1)), directions.index((0, 2)), directions.index((1, 0))
    assert affinity[0, right, 0, 0] == pytest.approx(0.7)  # (0,0)-(0,1): the line's largest score is 0.3
    assert affinity[0, two_right, 1, 0] == 0  # (1,0)-(1,2) ends on the wall
    assert affinity[0, two_right, 1, 3] == 0  # (1,3)-(1,5) leaves the map
    assert affinity[0, down, 1, 0] == 1 and affinity[0, down, 1, 4] == 1  # along either side of the wall
    assert affinity[0, two_right, 1, 2] == 0  # starting on the wall


def test_feature_affinity_is_exp_of_minus_the_mean_absolute_difference():
    features = torch.zeros(1, 2, 1, 3)
    features[0, :, 0, 1] = torch.tensor([1.0, 3.0])
    affinity = feature_affinities(features, radius=2)
    assert affinity[0, 0, 0, 0] == pytest.approx(np.exp(-2.0))  # mean(|0-1|, |0-3|) = 2
    assert affinity[0, 0, 0, 2] == 0  # leaves the map


def test_transition_rows_sum_to_one_and_zero_affinity_walks_nowhere():
    directions = search_directions(3)
    affinities = torch.rand(len(directions), 4, 5)
    transition = transition_matrix([affinities], directions, beta=2.0)
    assert torch.allclose(transition.to_dense().sum(dim=1), torch.ones(20))
    maps = torch.rand(2, 4, 5)
    still = transition_matrix([torch.zeros(len(directions), 4, 5)], directions, beta=2.0)
    assert torch.equal(random_walk([maps], still, steps=16)[0], maps)  # identity affinity: the input comes back


def test_walk_spreads_only_within_a_region():
    directions = search_directions(2)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1  # two regions, left and right halves
    background, foreground, _ = pair_labels(labels + 1, directions)  # labels 1 and 2: same-class pairs are 1
    transition = transition_matrix([foreground[0]], directions, beta=1.0)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 16.0
    walked = random_walk([maps], transition, steps=200)[0]
    assert walked[0, :, 2:].abs().max() < 1e-6  # nothing crossed into the right half
    left = walked[0, :, :2]
    assert left.min() > 0.5 and left.max() - left.min() < 1e-3  # spread to one value over the left half


def test_sparse_walk_equals_the_official_dense_one():
    # The official code: dense symmetric affinity with a unit diagonal, ^beta, each column divided by its sum,
    # squared `t` times; maps (C, n) @ T. Written out here on a 6x7 map.
    torch.manual_seed(0)
    height, width, radius, beta, log2_steps = 6, 7, 3, 4.0, 5
    directions = search_directions(radius)
    affinities = torch.rand(len(directions), height, width, dtype=torch.float64)
    valid = inside(height, width, directions)
    dense = torch.eye(height * width, dtype=torch.float64)
    for k, (dy, dx) in enumerate(directions):
        for y, x in valid[k].nonzero().tolist():
            i, j = y * width + x, (y + dy) * width + x + dx
            dense[i, j] = dense[j, i] = affinities[k, y, x]
    dense = dense ** beta
    trans = dense / dense.sum(dim=0, keepdim=True)
    for _ in range(log2_steps):
        trans = trans @ trans
    maps = torch.rand(3, height, width, dtype=torch.float64)
    official = (maps.view(3, -1) @ trans).view(3, height, width)
    ours = random_walk([maps], transition_matrix([affinities], directions, beta), steps=2 ** log2_steps)[0]
    torch.testing.assert_close(ours.double(), official, atol=1e-5, rtol=1e-4)


def test_a_batch_walks_as_each_image_alone():
    # Block-diagonal: two maps of different sizes and channel counts walk together, neither reaching the other.
    torch.manual_seed(0)
    directions = search_directions(3)
    shapes = [(2, 5, 7), (3, 6, 4)]
    affinities = [torch.rand(len(directions), h, w) for _, h, w in shapes]
    maps = [torch.rand(shape) for shape in shapes]
    together = random_walk(maps, transition_matrix(affinities, directions, beta=3.0), steps=20)
    transition = transition_matrix(affinities, directions, beta=3.0)
    assert transition.shape == (35 + 24, 35 + 24)
    assert transition.to_dense()[:35, 35:].abs().sum() == 0 and transition.to_dense()[35:, :35].abs().sum() == 0
    for image_affinities, image_maps, walked in zip(affinities, maps, together):
        alone = random_walk([image_maps], transition_matrix([image_affinities], directions, beta=3.0), steps=20)[0]
        assert walked.shape == image_maps.shape
        torch.testing.assert_close(walked, alone)


def test_irn_trains_its_branch_only_and_psa_its_backbone_too():
    config = AffinityModelConfig(backbone="resnet10", pretrained="none")
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    masks[:, :, :8] = I
    for method, backbone_trains in (("irn", False), ("psa", True)):
        torch.manual_seed(0)
        model = build_affinity_model(method, config).train()
        terms = model.training_losses(images, masks)
        assert set(terms) == {"bg", "fg", "neg"} and all(torch.isfinite(t) and t > 0 for t in terms.values())
        sum(terms.values()).backward()
        backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        assert bool(backbone_grads) is backbone_trains, method
        base, head = model.param_groups()
        assert all(p.grad is not None for p in base + head)
        batchnorm = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert not batchnorm.training  # frozen statistics in both


def test_walk_scores_keep_shapes_and_irn_keeps_the_threshold_row():
    torch.manual_seed(0)
    scores = torch.cat([torch.full((1, 45, 61), 0.25), torch.rand(2, 45, 61)])
    for method in ("irn", "psa"):
        model = build_affinity_model(method, AffinityModelConfig(backbone="resnet10", pretrained="none")).eval()
        affinities, contexts = model.walk_affinities(torch.randn(2, 3, 45, 61))
        stride = model.stride
        assert affinities.shape[::2] == (2, (45 - 1) // stride + 1) and len(contexts) == 2
        assert affinities.shape[-1] == (61 - 1) // stride + 1
        assert 0 <= affinities.min() and affinities.max() <= 1
        walked = model.walked_scores(scores, model.walk_maps(scores, contexts[1]))  # no walk: the method's own steps
        assert walked.shape == scores.shape and torch.isfinite(walked).all()
        if method == "irn":
            assert torch.equal(walked[0], scores[0]) and walked[1:].max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", AFFINITY_METHODS.names())
def test_random_walk_of_a_batch_of_sizes_is_that_of_each_image(method, tmp_path):
    # On a GPU pseudo-label walks batches of images of mixed sizes (one forward per size, one block-diagonal walk);
    # each image must come out as it does alone. The third image has no class: its one-row stacks stay as they are.
    torch.manual_seed(0)
    config = TrainAffinityConfig(method=method, model=AffinityModelConfig(backbone="resnet10", pretrained="none"))
    model = build_affinity_model(method, config.model)
    save_checkpoint(tmp_path / "affinity.pt", kind="affinity", config=asdict(config), class_names=["a", "b"],
                    model=model, normalization=model.normalization, metrics={})
    walk = RandomWalk(tmp_path / "affinity.pt")
    rng = np.random.default_rng(0)
    sizes, class_counts = [(40, 48), (33, 52), (40, 48), (40, 48)], [2, 1, 0, 2]
    items = [ImageItem(f"i{n}", rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for n, size in enumerate(sizes)]
    stacks = [[np.concatenate([np.full((1, *size), threshold, np.float32),
                               rng.random((count, *size), dtype=np.float32)]) for threshold in (0.3, 0.05)]
              for size, count in zip(sizes, class_counts)]
    batched = walk.refine_score_batch(items, stacks)
    assert all(np.array_equal(refined, scores) for refined, scores in zip(batched[2], stacks[2]))
    for item, image_stacks, refined in zip(items, stacks, batched):
        alone = walk.refine_score_batch([item], [image_stacks])[0]
        for batch_scores, alone_scores, scores in zip(refined, alone, image_stacks):
            assert batch_scores.shape == scores.shape
            np.testing.assert_allclose(batch_scores, alone_scores, atol=1e-5)
        assert not np.array_equal(refined[0][1:], image_stacks[0][1:]) or len(image_stacks[0]) == 1  # it walked


def test_options_out_of_range_are_user_errors():
    config = AffinityModelConfig(backbone="resnet10", pretrained="none")
    with pytest.raises(UserError, match="radius"):
        build_affinity_model("irn", config, {"walk_radius": "1"})
    with pytest.raises(UserError, match="has no option"):
        build_affinity_model("psa", config, {"walk_radius": "5"})


# ----------------------------------------------------------------------------------------------- end to end
def test_train_affinity_then_random_walk_pseudo_masks(tmp_path, monkeypatch):
    run = tmp_path / "rw"
    wsss("data", "synth", "--run", run, "--num-train", 16, "--num-val", 8, "--image-size", 64, "--workers", 1)
    wsss("train-cam", "--run", run, *TINY_TRAINING)
    wsss("infer-cam", "--run", run, "--split", "train", "--scales", "1.0", "--workers", 0)
    wsss("pseudo-label", "--run", run, "--refine", "crf")
    assert_one_line_error(invoke("pseudo-label", "--run", run, "--refine", "rw"), "run `wsss train-affinity` first")
    wsss("train-affinity", "--run", run, *TINY_TRAINING)
    checkpoint = torch.load(run / "affinity" / "checkpoint.pt", weights_only=True)
    assert checkpoint["kind"] == "affinity" and checkpoint["config"]["model"]["backbone"] == "resnet10"
    wsss("pseudo-label", "--run", run, "--refine", "rw", "--fg-threshold", 0.25, "--bg-threshold", 0.25)
    wsss("pseudo-label", "--run", run, "--refine", "rw,crf")
    with monkeypatch.context() as patch:  # the GPU's way, on the CPU: batches walked here, the CRF in the workers
        patch.setattr("stages.pseudo_label.walks_in_batches", lambda device: True)
        batched_calls = []
        patch.setattr("stages.pseudo_label._label_with_batched_scores",
                      lambda *args, original=pseudo_label_module._label_with_batched_scores:
                      batched_calls.append(args) or original(*args))
        wsss("pseudo-label", "--run", run, "--refine", "rw,crf", "--name", "batched")
        assert len(batched_calls) == 1
    for mask_file in (run / "pseudo" / "rw+crf").glob("*.png"):
        assert np.array_equal(load_mask(run / "pseudo" / "batched" / mask_file.name), load_mask(mask_file))
    assert len(list((run / "pseudo" / "batched").glob("*.png"))) == 16
    for mask_set in ("rw", "rw+crf"):
        wsss("evaluate", f"pseudo/{mask_set}", "--run", run, "--split", "train")
    rw_mask = load_mask(next((run / "pseudo" / "rw").glob("*.png")))
    assert IGNORE_INDEX not in rw_mask  # one threshold: every pixel labelled, as IRN's sem_seg labels
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert "train-affinity" in stages and "pseudo-label/rw" in stages
    assert stages["train-affinity"]["outputs"] == ["affinity/checkpoint.pt"]
    wsss("train-affinity", "--run", run, "--method", "psa", "--force", *TINY_TRAINING)
    wsss("pseudo-label", "--run", run, "--refine", "rw", "--force")
    assert "psa" == torch.load(run / "affinity" / "checkpoint.pt", weights_only=True)["config"]["method"]
    assert_one_line_error(invoke("pseudo-label", "--run", run, "--refine", "rw", "--device", "tpu"), "unknown device")
    sorted((run / "synth" / "JPEGImages").glob("train_*"))[0].write_bytes(b"not an image")  # last: spoils the run
    with monkeypatch.context() as patch:
        patch.setattr("stages.pseudo_label.walks_in_batches", lambda device: True)
        assert_one_line_error(invoke("pseudo-label", "--run", run, "--refine", "rw", "--force"), "cannot read")
