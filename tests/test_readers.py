"""The VOC and folder readers, on tiny trees built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.core.errors import UserError
from stages.core.io import IGNORE_INDEX, save_mask
from stages.data.folder import read_folder
from stages.data.voc import VOC_CLASSES, read_voc

HEIGHT, WIDTH = 16, 20


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(path)


def mask_with(*values: int) -> np.ndarray:
    """A mask holding each value in its own column band, with an ignore (255) border."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for column, value in enumerate(values):
        mask[2:-2, 2 + column * 3 : 5 + column * 3] = value
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = IGNORE_INDEX
    return mask


def write_aug_mask(voc: Path, sample_id: str, *values: int) -> None:
    """SBD masks are plain 8-bit grayscale PNGs."""
    path = voc / "SegmentationClassAug" / f"{sample_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask_with(*values), mode="L").save(path)


def write_annotation(voc: Path, sample_id: str, *class_names: str) -> None:
    objects = "".join(f"<object><name>{name}</name><difficult>1</difficult></object>" for name in class_names)
    path = voc / "Annotations" / f"{sample_id}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{sample_id}.jpg</filename>{objects}</annotation>")


def write_list(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def deeplab_line(sample_id: str) -> str:
    return f"/JPEGImages/{sample_id}.jpg /SegmentationClassAug/{sample_id}.png"


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """tmp_path/VOCdevkit/VOC2012 with six images: masks in both mask folders, one with only an annotation."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sample_id in ["a", "b", "c", "d", "e", "f"]:
        write_image(voc / "JPEGImages" / f"{sample_id}.jpg")
    write_aug_mask(voc, "a", 15)
    write_aug_mask(voc, "b", 3, 8)
    save_mask(voc / "SegmentationClass" / "b.png", mask_with(1))  # the Aug mask must win
    save_mask(voc / "SegmentationClass" / "c.png", mask_with(12))
    write_annotation(voc, "d", "dog", "person", "dog")
    write_aug_mask(voc, "e", 20)
    save_mask(voc / "SegmentationClass" / "f.png", mask_with(7, 9))
    write_list(voc / "ImageSets" / "Segmentation" / "train.txt", ["a", "b", "c"])
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["e", "", "f"])
    write_list(voc / "ImageSets" / "SegmentationAug" / "train_aug.txt", [deeplab_line(i) for i in "abcd"] + [""])
    return voc


def by_id(samples):
    return {sample.id: sample for sample in samples}


# --- VOC ---------------------------------------------------------------------------------------------------------


def test_voc_reads_splits_labels_and_masks(voc: Path):
    progress_calls = []
    index = read_voc(voc, progress=progress_calls.append)

    assert (index.name, index.format, index.root) == ("voc2012", "voc", str(voc.resolve()))
    assert index.class_names == VOC_CLASSES
    assert list(index.splits) == ["train_aug", "train", "val"]
    assert [s.id for s in index.split("train_aug")] == ["a", "b", "c", "d"]
    assert [s.id for s in index.split("train")] == ["a", "b", "c"]
    assert [s.id for s in index.split("val")] == ["e", "f"]
    # Each distinct image is read once, however many splits hold it.
    assert progress_calls == [1] * 6

    samples = by_id(index.split("train_aug")) | by_id(index.split("val"))
    assert {i: s.labels for i, s in samples.items()} == {
        "a": (15,), "b": (3, 8), "c": (12,), "d": (12, 15), "e": (20,), "f": (7, 9),
    }
    assert samples["a"].mask == str(voc.resolve() / "SegmentationClassAug" / "a.png")
    assert samples["b"].mask == str(voc.resolve() / "SegmentationClassAug" / "b.png")
    assert samples["c"].mask == str(voc.resolve() / "SegmentationClass" / "c.png")
    assert samples["d"].mask is None
    assert samples["d"].image == str(voc.resolve() / "JPEGImages" / "d.jpg")
    assert all(Path(s.image).is_absolute() for s in samples.values())


def test_voc_trains_on_train_aug_where_sbd_gives_it_and_on_train_otherwise(voc: Path):
    from stages.config import SegmentConfig, TrainCamConfig

    with_sbd = read_voc(voc)
    assert with_sbd.training_split == "train_aug"
    assert TrainCamConfig().on(with_sbd).train_split == "train_aug"
    assert SegmentConfig(train_split="train").on(with_sbd).train_split == "train"  # a chosen split stays
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").unlink()
    assert read_voc(voc).training_split == "train"


def test_voc_chain_follows_the_field_split_convention(voc: Path, tmp_path: Path):
    """The classifier learns from train_aug, CAMs and pseudo masks are made for train (where they are scored), and
    the segmenter, which learns from train_aug too, names the split whose pseudo masks it lacks."""
    from typer.testing import CliRunner

    from stages.core.io import read_json
    from wsss_cli.main import app

    def wsss(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    run = tmp_path / "run"
    tiny = ("--epochs", 1, "--batch-size", 2, "--crop-size", 16, "--base-size", 20, "--workers", 0)
    assert wsss("data", "voc", voc, "--run", run).exit_code == 0
    trained = wsss("train-cam", "--run", run, "--val-split", "", *tiny)
    assert trained.exit_code == 0, trained.output
    assert "on 4 train_aug images" in trained.output
    assert read_json(run / "manifest.json", "manifest")["stages"]["train-cam"]["config"]["train_split"] == "train_aug"
    for command in (("infer-cam", "--scales", "1.0"), ("pseudo-label", "--refine", "none")):
        result = wsss(*command, "--run", run)
        assert result.exit_code == 0, result.output
    segment = wsss("segment", "--run", run, "--pseudo", "none", *tiny)
    assert segment.exit_code == 2
    assert segment.output.strip().splitlines()[-1] == (
        f"error: no pseudo mask {run}/pseudo/none/d.png (1 of train_aug missing): run `wsss infer-cam --split "
        "train_aug` and `wsss pseudo-label --refine none --split train_aug` first")


@pytest.mark.parametrize("root_of", [lambda voc: voc, lambda voc: voc.parent, lambda voc: voc.parent.parent])
def test_voc_root_may_be_voc2012_vocdevkit_or_its_parent(voc: Path, root_of):
    assert read_voc(root_of(voc), workers=2).root == str(voc.resolve())


def test_voc_default_splits_skip_missing_lists(voc: Path):
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").unlink()
    (voc / "ImageSets" / "Segmentation" / "train.txt").unlink()
    assert list(read_voc(voc).splits) == ["val"]


def test_voc_split_list_directly_in_voc_folder(voc: Path):
    write_list(voc / "trainval_sbd.txt", ["a", "e"])
    assert [s.id for s in read_voc(voc, splits=["trainval_sbd"]).split("trainval_sbd")] == ["a", "e"]


def test_voc_without_any_default_list(voc: Path):
    for list_file in (voc / "ImageSets").rglob("*.txt"):
        list_file.unlink()
    with pytest.raises(UserError, match="no split lists found .*train_aug.txt, train.txt, val.txt"):
        read_voc(voc)


def test_voc_missing_root(tmp_path: Path):
    with pytest.raises(UserError, match="VOC root not found: .*nowhere"):
        read_voc(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no JPEGImages/ folder"):
        read_voc(tmp_path)


def test_voc_explicit_missing_split(voc: Path):
    with pytest.raises(UserError, match=r"split list for 'test' not found: .*ImageSets/Segmentation/test\.txt"):
        read_voc(voc, splits=["val", "test"])


def test_voc_mask_value_out_of_range(voc: Path):
    write_aug_mask(voc, "e", 21)
    with pytest.raises(UserError, match=r"mask .*SegmentationClassAug/e\.png has class value 21"):
        read_voc(voc)


def test_voc_missing_image(voc: Path):
    (voc / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(UserError, match=r"image not found: .*JPEGImages/c\.jpg"):
        read_voc(voc)


def test_voc_duplicate_id(voc: Path):
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["e", "f", "e"])
    with pytest.raises(UserError, match=r"duplicate image id 'e' in .*val\.txt \(line 3\)"):
        read_voc(voc)


@pytest.mark.parametrize("line", ["..", "x/y", "x\\y"])
def test_voc_unsafe_id(voc: Path, line: str):
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["e", line])
    with pytest.raises(UserError, match="invalid image id"):
        read_voc(voc)


def test_voc_image_without_mask_or_annotation(voc: Path):
    (voc / "Annotations" / "d.xml").unlink()
    with pytest.raises(UserError, match=r"no labels for image 'd'.*Annotations/d\.xml"):
        read_voc(voc)


def test_voc_annotation_with_unknown_class(voc: Path):
    write_annotation(voc, "d", "dog", "unicorn")
    with pytest.raises(UserError, match=r"annotation .*d\.xml has unknown class 'unicorn'"):
        read_voc(voc)


# --- folder ------------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp_path/pets with images/ (two formats), a mask for one image, and an unlabelled extra image."""
    root = tmp_path / "pets"
    for name in ["cat1.jpg", "dog1.png", "both.jpeg", "cat2.webp", "unlabelled.bmp"]:
        write_image(root / "images" / name)
    save_mask(root / "masks" / "cat1.png", mask_with(1))
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_folder_csv(folder: Path):
    (folder / "labels.csv").write_text(
        "id,labels,split\n"
        "cat1,cat,train\n"
        "dog1,dog,val\n"
        "both,cat;dog,\n"
        "cat2,cat | cat,val\n"
    )
    progress_calls = []
    index = read_folder(folder, progress=progress_calls.append)

    assert (index.name, index.format, index.root) == ("pets", "folder", str(folder.resolve()))
    assert index.class_names == ["background", "cat", "dog"]
    assert {split: [s.id for s in samples] for split, samples in index.splits.items()} == {
        "train": ["cat1", "both"], "val": ["dog1", "cat2"],
    }
    samples = by_id(index.split("train")) | by_id(index.split("val"))
    assert {i: s.labels for i, s in samples.items()} == {"cat1": (1,), "dog1": (2,), "both": (1, 2), "cat2": (1,)}
    assert samples["dog1"].image == str(folder.resolve() / "images" / "dog1.png")
    assert samples["cat1"].mask == str(folder.resolve() / "masks" / "cat1.png")
    assert samples["dog1"].mask is None
    assert progress_calls == [1] * 4  # the unlabelled image is left out


def test_folder_csv_labels_separated_by_spaces_without_split_column(folder: Path):
    (folder / "labels.csv").write_text("ID , Labels\nboth,dog cat\n")
    index = read_folder(folder)
    assert list(index.splits) == ["train"]
    assert index.split("train")[0].labels == (1, 2)


def test_folder_json_with_declared_classes(folder: Path):
    (folder / "classes.txt").unlink()  # the JSON's list is the one
    (folder / "labels.json").write_text(json.dumps({
        "classes": ["dog", "cat", "bird"],
        "images": {"cat1": ["cat"], "both": {"labels": ["cat", "dog"], "split": "val"}},
    }))
    index = read_folder(folder)
    assert index.class_names == ["background", "dog", "cat", "bird"]
    assert [(s.id, s.labels) for s in index.split("train")] == [("cat1", (2,))]
    assert [(s.id, s.labels) for s in index.split("val")] == [("both", (1, 2))]


def test_folder_plain_json_mapping_and_images_in_root(tmp_path: Path):
    root = tmp_path / "flat"
    write_image(root / "a.jpg")
    write_image(root / "b.png")
    (root / "labels.json").write_text(json.dumps({"a": ["zebra"], "b": ["ant", "zebra"]}))
    with pytest.raises(UserError, match="no class list for .*flat: give the class names in order"):
        read_folder(root)
    index = read_folder(root, classes=("zebra", "ant"))  # ids follow the given order, not the alphabet
    assert index.class_names == ["background", "zebra", "ant"]
    assert [(s.id, s.labels) for s in index.split("train")] == [("a", (1,)), ("b", (1, 2))]


def test_folder_class_list_comes_from_one_place(folder: Path):
    (folder / "labels.csv").write_text("id,labels\ncat1,cat\n")
    with pytest.raises(UserError, match="the class list is given twice"):
        read_folder(folder, classes=("cat", "dog"))
    (folder / "classes.txt").write_text("cat\ncat\n")
    with pytest.raises(UserError, match="lists 'cat' more than once"):
        read_folder(folder)


def test_folder_csv_class_names_with_spaces_and_a_typo(folder: Path):
    (folder / "classes.txt").write_text("cat\npotted plant\nboat\n")
    (folder / "labels.csv").write_text("id,labels\ncat1,potted plant cat\ndog1,potted plant\nboth,boat;cat\n")
    index = read_folder(folder)
    assert [(s.id, s.labels) for s in index.split("train")] == [("cat1", (1, 2)), ("dog1", (2,)), ("both", (1, 3))]
    (folder / "labels.csv").write_text("id,labels\ncat1,baot\n")
    with pytest.raises(UserError, match="unknown class 'baot' for image 'cat1' \\(did you mean 'boat'\\?"):
        read_folder(folder)


def test_folder_explicit_labels_file(folder: Path, tmp_path: Path):
    labels_file = tmp_path / "elsewhere.csv"
    labels_file.write_text("id,labels\ndog1,dog\n")
    assert [s.id for s in read_folder(folder, labels_file=labels_file).split("train")] == ["dog1"]


def test_folder_unknown_class(folder: Path):
    (folder / "classes.txt").unlink()
    (folder / "labels.json").write_text(json.dumps({"classes": ["cat"], "images": {"dog1": ["dog"]}}))
    with pytest.raises(UserError, match="unknown class 'dog' for image 'dog1'"):
        read_folder(folder)


@pytest.mark.parametrize("labels_text", ["id,labels\ncat1,cat\ndog1,\n", "id,labels\ncat1,cat\ndog1, ; \n"])
def test_folder_empty_labels(folder: Path, labels_text: str):
    (folder / "labels.csv").write_text(labels_text)
    with pytest.raises(UserError, match="image 'dog1' has no labels"):
        read_folder(folder)


def test_folder_background_label(folder: Path):
    (folder / "labels.json").write_text(json.dumps({"dog1": ["dog", "background"]}))
    with pytest.raises(UserError, match="image 'dog1' is labelled 'background'"):
        read_folder(folder)


def test_folder_missing_image(folder: Path):
    (folder / "labels.csv").write_text("id,labels\ncat1,cat\nghost,cat\n")
    with pytest.raises(UserError, match="lists image 'ghost' but .*images has no ghost"):
        read_folder(folder)


def test_folder_duplicate_stems(folder: Path):
    write_image(folder / "images" / "cat1.png")
    (folder / "labels.csv").write_text("id,labels\ncat1,cat\n")
    with pytest.raises(UserError, match="two images share the id 'cat1': cat1.jpg and cat1.png"):
        read_folder(folder)


def test_folder_duplicate_csv_row(folder: Path):
    (folder / "labels.csv").write_text("id,labels\ncat1,cat\ncat1,dog\n")
    with pytest.raises(UserError, match=r"duplicate image id 'cat1' in .*labels\.csv \(line 3\)"):
        read_folder(folder)


def test_folder_bad_inputs(folder: Path, tmp_path: Path):
    with pytest.raises(UserError, match="dataset folder not found: .*missing"):
        read_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="no labels file in .*pets: expected labels.csv or labels.json"):
        read_folder(folder)
    (folder / "labels.csv").write_text("name,classes\ncat1,cat\n")
    with pytest.raises(UserError, match="needs a header with 'id' and 'labels' columns"):
        read_folder(folder)
    (folder / "labels.csv").write_text("id,labels,split\ncat1,cat,../x\n")
    with pytest.raises(UserError, match=r"invalid split '\.\./x' for image 'cat1'"):
        read_folder(folder)
    (folder / "labels.csv").write_text("id,labels\n../cat1,cat\n")
    with pytest.raises(UserError, match="invalid image id '../cat1'"):
        read_folder(folder)
    (folder / "labels.csv").unlink()
    (folder / "labels.json").write_text(json.dumps({"classes": ["cat"], "cat1": ["cat"]}))
    with pytest.raises(UserError, match="has 'classes' but no 'images' object"):
        read_folder(folder)
    (folder / "labels.json").write_text(json.dumps({"cat1": "cat"}))
    with pytest.raises(UserError, match="image 'cat1' in .*expected a list of class names"):
        read_folder(folder)


def test_augment_moves_the_saliency_map_with_the_image():
    from stages.core.normalization import Normalization
    from stages.data.loading import Augment

    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 5:25] = 255
    saliency = (image[..., 0] > 0).astype(np.float32)
    augment = Augment(base_size=60, crop_size=48, scale_range=(0.8, 1.2))
    for seed in range(6):  # scales, flips and crop offsets differ by seed
        fill = Normalization().fill
        out_image, mask, out_saliency = augment(np.random.default_rng(seed), image, None, saliency, fill)
        assert mask is None and out_saliency.shape == (48, 48)
        # Same geometry: the saliency equals the image's red channel / 255 up to the uint8 fixed-point resampling
        # (padding aside, where the image has the mean colour and the saliency 0).
        inside = out_image[..., 1] != fill[1]
        assert np.abs(out_image[..., 0][inside] / 255 - out_saliency[inside]).max() <= 1 / 255
        assert out_saliency.max() == 1.0


def test_split_dataset_marks_images_without_a_saliency_map(tmp_path):
    from stages.data.index import Sample
    from stages.core.normalization import Normalization
    from stages.data.loading import SplitDataset
    from stages.data.saliency_maps import save_saliency

    samples = []
    for name in ("with", "without"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / f"{name}.png")
        samples.append(Sample(name, str(tmp_path / f"{name}.png"), None, (1,)))
    (tmp_path / "sal").mkdir()
    save_saliency(tmp_path / "sal" / "with.png", np.full((8, 8), 0.6, np.float32))
    dataset = SplitDataset(samples, 2, Normalization(), saliency_dir=str(tmp_path / "sal"))
    first, second = dataset[0], dataset[1]
    assert first["has_saliency"] and abs(float(first["saliency"].mean()) - 0.6) < 0.01
    assert not second["has_saliency"] and float(second["saliency"].abs().sum()) == 0


def test_same_size_batches_groups_mixed_sizes_without_padding(tmp_path):
    """VOC-like mixed sizes: every batch holds one size, every image comes once and exactly as loaded alone."""
    from stages.data.index import Sample
    from stages.core.normalization import Normalization
    from stages.data.loading import same_size_batches

    rng = np.random.default_rng(0)
    sizes = [(12, 10), (10, 12), (12, 10), (12, 10), (10, 12), (8, 8), (12, 10)]  # (width, height)
    samples = []
    for index, (width, height) in enumerate(sizes):
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(index), str(path), None, (1,)))
    normalize = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    batches = list(same_size_batches(samples, normalize, batch_size=3, workers=0))
    assert sorted(s.id for batch, _ in batches for s in batch) == [s.id for s in samples]
    assert [len(batch) for batch, _ in batches] == [1, 2, 3, 1]  # 8x8; 10x12 twice; 12x10 four times, by 3
    for batch, images in batches:
        for sample, image in zip(batch, images):
            assert torch.equal(image, normalize(np.asarray(Image.open(sample.image).convert("RGB"))))
