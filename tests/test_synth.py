from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stages.core.errors import UserError
from stages.core.io import load_image, load_mask
from stages.data.synth import (
    CONTEXT_OF_CLASS,
    MIN_MARKER_VISIBLE_FRACTION,
    MIN_VISIBLE_FRACTION,
    SynthConfig,
    class_names,
    generate,
    load_index,
    render_scene,
)

SMALL = SynthConfig(num_train=12, num_val=4)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def scenes():
    config = SynthConfig()
    return config, [render_scene(config, "train", index) for index in range(400)]


def test_same_config_gives_identical_files_whatever_the_workers(tmp_path):
    generate(SMALL, tmp_path / "a", workers=1)
    generate(SMALL, tmp_path / "b", workers=2)
    generate(replace(SMALL, seed=1), tmp_path / "c", workers=2)
    first, second, other_seed = (file_bytes(tmp_path / name) for name in "abc")
    assert first == second
    assert len(first) == 16 * 2 + 3
    assert other_seed.keys() == first.keys()
    assert other_seed["JPEGImages/train_000000.jpg"] != first["JPEGImages/train_000000.jpg"]


def test_index_labels_equal_mask_values(tmp_path):
    increments = []
    index = generate(SMALL, tmp_path / "data", workers=2, progress=increments.append)
    assert sum(increments) == 16
    assert index.format == "synth" and index.name == "synth"
    assert index.class_names == ["background", "cat", "dog", "car", "bus", "boat", "plane", "bird", "train"]
    assert [len(index.split("train")), len(index.split("val"))] == [12, 4]
    assert load_index(tmp_path / "data") == index
    for split in ("train", "val"):
        listed = (tmp_path / "data" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert listed == [sample.id for sample in index.split(split)]
        for number, sample in enumerate(index.split(split)):
            assert sample.id == f"{split}_{number:06d}"
            assert Path(sample.image).is_absolute() and Path(sample.mask).is_absolute()
            mask = load_mask(sample.mask)
            assert mask.shape == (128, 128) and load_image(sample.image).shape == (128, 128, 3)
            assert mask.max() <= 8
            assert sample.labels == tuple(int(value) for value in np.unique(mask) if value != 0)
            assert len(sample.labels) >= 1
            assert np.array_equal(mask, render_scene(SMALL, split, number).mask)


def test_every_object_stays_identifiable(scenes):
    _, rendered = scenes
    for scene in rendered:
        assert scene.labels and set(scene.labels) == {obj.class_index for obj in scene.objects}
        assert scene.mask.max() <= 8 and not (scene.marker & (scene.mask == 0)).any()
        for obj in scene.objects:
            assert obj.visible_pixels >= MIN_VISIBLE_FRACTION * obj.full_area
            assert obj.visible_marker_pixels >= MIN_MARKER_VISIBLE_FRACTION * obj.marker_full_area


def test_contexts_follow_their_class_and_sometimes_appear_without_it(scenes):
    config, rendered = scenes
    names = class_names(config.num_classes)
    with_class, without_class = [], []
    for scene in rendered:
        for class_name, context in CONTEXT_OF_CLASS.items():
            class_index = names.index(class_name)
            drawn = context in scene.contexts
            (with_class if class_index in scene.labels else without_class).append(drawn)
            if drawn:
                region = scene.contexts[context]
                # Around and under an object (of its own class when present), covering a large part of the image.
                anchors = [o for o in scene.objects if o.class_index == class_index] or scene.objects
                assert any(region[int(o.centre[1]), int(o.centre[0])] for o in anchors)
    assert len(with_class) > 100
    assert abs(np.mean(with_class) - config.context_prob) < 0.08
    assert abs(np.mean(without_class) - config.context_distractor_prob) < 0.04
    coverage = [region.mean() for scene in rendered for region in scene.contexts.values()]
    assert 0.3 <= np.mean(coverage) <= 0.6


def test_marker_is_a_small_fixed_fraction_of_the_object(scenes):
    config, rendered = scenes
    ratios = [
        obj.visible_marker_pixels / obj.visible_pixels
        for scene in rendered
        for obj in scene.objects
        if obj.visible_pixels >= 0.98 * obj.full_area  # fully visible
    ]
    assert len(ratios) > 200
    assert abs(np.median(ratios) - config.marker_scale) < 0.005
    assert 0.035 <= min(ratios) and max(ratios) <= 0.07


def test_pair_classes_share_the_body_and_differ_by_the_marker(scenes):
    config, rendered = scenes
    body_colours, marker_colours = defaultdict(list), defaultdict(list)
    for scene in rendered:
        for class_index in scene.labels:
            of_class = scene.mask == class_index
            body_colours[class_index].append(scene.image[of_class & ~scene.marker].astype(float))
            marker_colours[class_index].append(scene.image[of_class & scene.marker].astype(float))
    body_mean = {c: np.concatenate(pixels).mean(axis=0) for c, pixels in body_colours.items()}
    marker_mean = {c: np.concatenate(pixels).mean(axis=0) for c, pixels in marker_colours.items()}
    for first in range(1, config.num_classes + 1, 2):
        second = first + 1
        assert np.abs(body_mean[first] - body_mean[second]).max() < 6
        assert np.abs(marker_mean[first] - marker_mean[second]).max() > 60
        # ...while another pair's body looks different.
        other = first + 2 if first + 2 <= config.num_classes else 1
        assert np.abs(body_mean[first] - body_mean[other]).max() > 20


@pytest.mark.parametrize("num_classes", [2, 12])
def test_other_class_counts(num_classes):
    context_classes = () if num_classes == 2 else ("boat", "car", "train")
    config = SynthConfig(num_classes=num_classes, context_classes=context_classes)
    config.validate()
    seen = set()
    for index in range(60):
        scene = render_scene(config, "val", index)
        assert scene.labels and max(scene.labels) <= num_classes
        assert set(scene.contexts) <= {CONTEXT_OF_CLASS[name] for name in context_classes}
        seen.update(scene.labels)
    assert seen == set(range(1, num_classes + 1))


@pytest.mark.parametrize(
    "changes",
    [
        {"num_classes": 7},
        {"num_classes": 14},
        {"num_classes": 0},
        {"two_class_prob": 1.5},
        {"context_prob": -0.1},
        {"context_distractor_prob": 2.0},
        {"occluder_prob": -1.0},
        {"context_classes": ("boat", "submarine")},
        {"context_classes": ("cat",)},  # a class without a context
        {"num_classes": 4},  # default context classes boat, train are not in the dataset
        {"objects_per_image": (3, 1)},
        {"object_scale": (0.0, 0.5)},
        {"jpeg_quality": (60, 101)},
        {"seed": -1},
        {"num_train": 0},
    ],
)
def test_validate_rejects_bad_values(changes):
    with pytest.raises(UserError):
        replace(SMALL, **changes).validate()


def test_existing_folder(tmp_path):
    out = tmp_path / "data"
    generate(SMALL, out, workers=1)
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    increments = []
    index = generate(SMALL, out, workers=1, progress=increments.append)
    assert increments == [] and {path: path.stat().st_mtime_ns for path in out.rglob("*")} == stamps
    assert index == load_index(out)

    with pytest.raises(UserError, match="another config"):
        generate(replace(SMALL, seed=3), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a synthetic dataset"):
        generate(SMALL, tmp_path / "other")
    (tmp_path / "empty").mkdir()
    generate(SMALL, tmp_path / "empty", workers=1)  # an empty folder is fine to fill
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "empty", "other"]  # no leftovers
