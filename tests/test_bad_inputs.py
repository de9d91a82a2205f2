"""The catalogue of bad inputs: each one is a one-line error with exit status 2 (or, for bad images with
`--skip-bad`, a counted and recorded skip), never a traceback and never a half-written artifact."""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from stages.core.errors import UserError
from stages.core.io import load_image, save_mask
from stages.data.folder import read_folder
from stages.data.index import DatasetIndex, Sample, SkippedSample
from stages.data.verify import find_problems
from test_cli import assert_one_line_error, invoke
from test_readers import HEIGHT, WIDTH, mask_with, voc, write_aug_mask, write_image  # noqa: F401 (voc: fixture)

CLASSES = ["background", "cat", "dog"]


# --- helpers -----------------------------------------------------------------------------------------------------


def write_truncated_jpeg(path: Path) -> None:
    """A JPEG of the usual size whose last bytes are missing, as an interrupted copy leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-50])


def write_16_bit_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"


def make_folder(root: Path, ids: list[str], split_of: dict[str, str] | None = None) -> Path:
    """root/images/<id>.jpg (16x20, RGB) for each id, labelled 'cat', a labels.csv with their splits and the class
    list (classes.txt: cat)."""
    split_of = split_of or {}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\n")
    for sample_id in ids:
        write_image(root / "images" / f"{sample_id}.jpg")
    rows = [f"{sample_id},cat,{split_of.get(sample_id, 'train')}" for sample_id in ids]
    (root / "labels.csv").write_text("id,labels,split\n" + "\n".join(rows) + "\n")
    return root


def index_folder(root: Path, run: Path, *options: str):
    return invoke("data", "folder", root, "--run", run, "--workers", 2, *options)


def assert_nothing_indexed(run: Path) -> None:
    assert not (run / "dataset.json").exists()
    assert not (run / "manifest.json").exists() or "data" not in json.loads((run / "manifest.json").read_text())


# The bad images `wsss data voc|folder` find when they verify, each written as sample "bad" of a make_folder tree,
# with a fragment of its reason.
def truncated_jpeg(root: Path) -> None:
    write_truncated_jpeg(root / "images" / "bad.jpg")


def not_an_image(root: Path) -> None:
    (root / "images" / "bad.jpg").write_bytes(b"<html>404 not found</html>")


def mask_16_bit(root: Path) -> None:
    write_16_bit_png(root / "masks" / "bad.png", mask_with(1))


def mask_of_another_size(root: Path) -> None:
    save_mask(root / "masks" / "bad.png", np.zeros((10, 12), np.uint8))


def mask_value_outside_classes(root: Path) -> None:
    save_mask(root / "masks" / "bad.png", mask_with(1, 7))


def colour_mask(root: Path) -> None:
    Image.new("RGB", (WIDTH, HEIGHT), (128, 0, 0)).save(root / "masks" / "bad.png")


BAD_IMAGES = {
    "truncated JPEG": (truncated_jpeg, "image file is truncated"),
    "not an image": (not_an_image, "cannot identify image file"),
    "16-bit mask": (mask_16_bit, "is a 16-bit image (mode I;16)"),
    "mask size": (mask_of_another_size, f"is 12x10 but image {{root}}/images/bad.jpg is {WIDTH}x{HEIGHT}"),
    "mask values": (mask_value_outside_classes, "holds value 7: the dataset's classes are 0..1, and 255 means ignore"),
    "colour mask": (colour_mask, "has mode RGB: expected a palette or 8-bit grayscale PNG"),
}


@pytest.fixture
def bad_folder(tmp_path: Path, request) -> tuple[Path, str]:
    """A folder of three images, "bad" in the middle broken as BAD_IMAGES[request.param] says, and the fragment."""
    root = make_folder(tmp_path / "data", ["good1", "bad", "good2"]).resolve()
    (root / "masks").mkdir()
    save_mask(root / "masks" / "good1.png", mask_with(1))
    write_bad, fragment = BAD_IMAGES[request.param]
    write_bad(root)
    return root, fragment.format(root=root)


# --- verification at indexing time --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_folder", list(BAD_IMAGES), indirect=True)
def test_a_bad_image_stops_indexing_with_one_line(bad_folder, tmp_path: Path):
    root, fragment = bad_folder
    result = index_folder(root, tmp_path / "run")
    assert_one_line_error(result, fragment)
    assert_one_line_error(result, "bad.")  # the message names the file
    assert_one_line_error(result, "(use --skip-bad to leave such images out)")
    assert_nothing_indexed(tmp_path / "run")


@pytest.mark.parametrize("bad_folder", list(BAD_IMAGES), indirect=True)
def test_skip_bad_leaves_the_image_out_and_records_why(bad_folder, tmp_path: Path):
    root, fragment = bad_folder
    run = tmp_path / "run"
    result = index_folder(root, run, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad image: " in result.output and fragment in " ".join(result.output.split())

    index = DatasetIndex.load(run / "dataset.json")
    assert [s.id for s in index.split("train")] == ["good1", "good2"]
    [skipped] = index.skipped
    assert (skipped.id, skipped.split) == ("bad", "train") and fragment in skipped.reason
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["data"]["metrics"]
    assert metrics["train_images"] == 2
    assert metrics["skipped_images"] == [{"id": "bad", "split": "train", "reason": skipped.reason}]


def test_skip_bad_counts_every_bad_image_of_every_split(tmp_path: Path):
    ids = ["t1", "bad1", "t2", "bad2", "v1", "bad3", "bad4"]
    root = make_folder(tmp_path / "data", ids, {"v1": "val", "bad3": "val", "bad4": "val"})
    for sample_id in ("bad1", "bad2", "bad3"):
        write_truncated_jpeg(root / "images" / f"{sample_id}.jpg")
    (root / "images" / "bad4.jpg").write_bytes(b"")
    run = tmp_path / "run"
    result = index_folder(root, run, "--skip-bad")
    assert result.exit_code == 0, result.output

    # The first three reasons are quoted, in index order, then "...".
    line = next(line for line in result.output.splitlines() if line.startswith("skipped"))
    assert line.startswith("skipped 4 bad images: cannot read image ") and line.endswith("; ...")
    assert [part.split("/")[-1].split(":")[0] for part in line.split("; ")[:3]] == ["bad1.jpg", "bad2.jpg", "bad3.jpg"]
    index = DatasetIndex.load(run / "dataset.json")
    assert {split: [s.id for s in samples] for split, samples in index.splits.items()} == {
        "train": ["t1", "t2"], "val": ["v1"],
    }
    assert [(s.id, s.split) for s in index.skipped] == [
        ("bad1", "train"), ("bad2", "train"), ("bad3", "val"), ("bad4", "val"),
    ]


def test_a_split_of_only_bad_images_is_an_error_even_with_skip_bad(tmp_path: Path):
    root = make_folder(tmp_path / "data", ["t1", "v1"], {"v1": "val"})
    write_truncated_jpeg(root / "images" / "v1.jpg")
    run = tmp_path / "run"
    assert_one_line_error(index_folder(root, run, "--skip-bad"), "every image of split 'val' is bad, e.g. cannot "
                                                                 "read image")
    assert_nothing_indexed(run)


def test_no_verify_indexes_without_decoding(tmp_path: Path):
    root = make_folder(tmp_path / "data", ["good", "bad"])
    write_truncated_jpeg(root / "images" / "bad.jpg")
    run = tmp_path / "run"
    result = index_folder(root, run, "--no-verify")
    assert result.exit_code == 0, result.output
    assert [s.id for s in DatasetIndex.load(run / "dataset.json").split("train")] == ["good", "bad"]
    stage = json.loads((run / "manifest.json").read_text())["stages"]["data"]
    assert stage["config"]["verify"] is False and "skipped_images" not in stage["metrics"]


def test_the_first_bad_image_in_index_order_is_reported_and_the_rest_not_decoded(tmp_path: Path):
    write_image(tmp_path / "good.jpg")
    write_truncated_jpeg(tmp_path / "bad.jpg")
    good, bad = (Sample(name, str(tmp_path / f"{name}.jpg"), None, (1,)) for name in ("good", "bad"))
    samples = [good] * 5 + [bad] + [good] * 40 + [bad]
    for _ in range(3):  # threads finish in any order; the answer may not depend on it
        checked: list[int] = []
        problems = find_problems(samples, 3, workers=4, progress=checked.append, first_only=True)
        assert [p.sample_id for p in problems] == ["bad"] and len(checked) == 6
    assert len(find_problems(samples, 3, workers=4)) == 2


def test_accepted_image_modes_pass_verification(tmp_path: Path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("L", (WIDTH, HEIGHT), 90).save(root / "images" / "gray.png")
    Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 255, 0)).save(root / "images" / "cmyk.jpg")
    Image.new("RGBA", (WIDTH, HEIGHT), (1, 2, 3, 0)).save(root / "images" / "rgba.png")
    write_16_bit_png(root / "images" / "deep.png", np.full((HEIGHT, WIDTH), 40000))
    (root / "labels.csv").write_text("id,labels\ngray,cat\ncmyk,cat\nrgba,dog\ndeep,dog\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    run = tmp_path / "run"
    result = index_folder(root, run)
    assert result.exit_code == 0, result.output
    index = DatasetIndex.load(run / "dataset.json")
    assert len(index.split("train")) == 4 and index.skipped == []


def test_voc_skip_bad_covers_masks_read_for_labels_and_images_decoded_after(voc: Path, tmp_path: Path):
    write_truncated_jpeg(voc / "JPEGImages" / "a.jpg")  # in train_aug and train
    write_aug_mask(voc, "e", 21)  # the labels come from this mask: it fails while reading, before the decode pass
    run = tmp_path / "run"
    assert_one_line_error(invoke("data", "voc", voc, "--run", run, "--workers", 2),
                          "e.png has class value 21: VOC masks hold 0..20 and 255 (ignore) (use --skip-bad")
    assert_nothing_indexed(run)

    result = invoke("data", "voc", voc, "--run", run, "--workers", 2, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad images" in result.output
    index = DatasetIndex.load(run / "dataset.json")
    assert [(s.id, s.split) for s in index.skipped] == [("e", "val"), ("a", "train_aug"), ("a", "train")]
    assert "image file is truncated" in index.skipped[1].reason
    assert {split: [s.id for s in samples] for split, samples in index.splits.items()} == {
        "train_aug": ["b", "c", "d"], "train": ["b", "c"], "val": ["f"],
    }


def test_dataset_index_keeps_its_skipped_list_and_loads_without_one(tmp_path: Path):
    sample = Sample("x", "/i/x.jpg", None, (1,))
    index = DatasetIndex("d", "folder", "/i", CLASSES, {"train": [sample]}, [SkippedSample("y", "train", "why")])
    index.save(tmp_path / "dataset.json")
    assert DatasetIndex.load(tmp_path / "dataset.json") == index
    # An index written before `skipped` existed (same version 1).
    data = json.loads((tmp_path / "dataset.json").read_text())
    del data["skipped"]
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    assert DatasetIndex.load(tmp_path / "dataset.json").skipped == []


def test_no_module_turns_on_loading_truncated_images():
    """With ImageFile.LOAD_TRUNCATED_IMAGES on, Pillow pads a truncated JPEG with grey and verification passes it."""
    for package in ("stages", "wsss_cli"):
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(module.name)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- image modes ---------------------------------------------------------------------------------------------------


def gray_16_bit(path: Path) -> None:
    write_16_bit_png(path, np.array([[0, 255, 256, 5000, 40000, 65535]]))


def int_32_bit(path: Path) -> None:
    """Mode 'I', as older Pillows open 16-bit PNGs; values beyond 16 bits are clipped."""
    Image.fromarray(np.array([[0, 255, 256, 5000, 40000, 65535, 70000, -5]], np.int32)).save(path)


def palette(path: Path) -> None:
    image = Image.new("P", (2, 1), 1)
    image.putpalette([0, 0, 0, 10, 20, 30])
    image.save(path)


@pytest.mark.parametrize("name, write, expected", [
    ("gray.png", lambda p: Image.new("L", (2, 1), 77).save(p), [[77, 77, 77]] * 2),
    ("gray-alpha.png", lambda p: Image.new("LA", (2, 1), (77, 9)).save(p), [[77, 77, 77]] * 2),
    ("palette.png", palette, [[10, 20, 30]] * 2),
    ("rgba.png", lambda p: Image.new("RGBA", (2, 1), (1, 2, 3, 4)).save(p), [[1, 2, 3]] * 2),
    ("cmyk.jpg", lambda p: Image.new("CMYK", (8, 1), (0, 255, 255, 0)).save(p, quality=100), [[255, 0, 0]] * 8),
    # 16 bits scale to 8 (value >> 8) rather than clip to white at 255.
    ("gray16.png", gray_16_bit, [[v] * 3 for v in (0, 0, 1, 19, 156, 255)]),
    ("int32.tif", int_32_bit, [[v] * 3 for v in (0, 0, 1, 19, 156, 255, 255, 0)]),
])
def test_image_modes_become_8_bit_rgb(tmp_path: Path, name, write, expected):
    write(tmp_path / name)
    image = load_image(tmp_path / name)
    assert image.dtype == np.uint8 and image.shape == (1, len(expected), 3)
    assert np.abs(image[0].astype(int) - np.array(expected)).max() <= 2  # the CMYK JPEG is lossy


# --- ids, labels files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_id", ["..", ".", "a/b", "a\\b", "../../etc/passwd"])
@pytest.mark.parametrize("labels_format", ["csv", "json"])
def test_folder_ids_cannot_escape_folders(tmp_path: Path, sample_id: str, labels_format: str):
    root = make_folder(tmp_path / "data", ["cat1"])
    (root / "labels.csv").unlink()
    if labels_format == "csv":
        (root / "labels.csv").write_text(f"id,labels\ncat1,cat\n{sample_id},cat\n")
    else:
        (root / "labels.json").write_text(json.dumps({"cat1": ["cat"], sample_id: ["cat"]}))
    run = tmp_path / "run"
    assert_one_line_error(index_folder(root, run), f"invalid image id {sample_id!r}")
    assert_nothing_indexed(run)


def test_folder_json_with_an_id_twice(tmp_path: Path):
    root = make_folder(tmp_path / "data", ["cat1", "dog1"])
    (root / "labels.csv").unlink()
    # JSON itself allows a key twice and keeps the last: the first labels would be lost without a word.
    (root / "labels.json").write_text('{"cat1": ["cat"], "dog1": ["dog"], "cat1": ["dog"]}')
    with pytest.raises(UserError, match=r"duplicate key 'cat1' in labels file .*labels\.json"):
        read_folder(root)
    (root / "labels.json").write_text('{"classes": ["cat"], "images": {"cat1": ["cat"], "cat1": ["cat"]}}')
    with pytest.raises(UserError, match="duplicate key 'cat1'"):
        read_folder(root)


def test_folder_labels_file_that_is_not_text(tmp_path: Path):
    root = make_folder(tmp_path / "data", ["cat1"])
    (root / "labels.csv").unlink()
    (root / "labels.json").write_bytes(b"\xff\xd8\xff\xe0 a JPEG renamed")
    assert_one_line_error(index_folder(root, tmp_path / "run"), "is not valid JSON")


# --- checkpoints and CAM files of another kind ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A synthetic dataset and a one-epoch classifier: enough for infer-cam and pseudo-label to open their inputs."""
    run = tmp_path_factory.mktemp("tiny")
    for args in (("data", "synth", "--num-train", 16, "--num-val", 8, "--image-size", 32, "--workers", 1),
                 ("train-cam", "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--workers", 0,
                  "--base-size", 32, "--crop-size", 32)):
        result = invoke(*args, "--run", run)
        assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A fresh run folder with the tiny run's dataset index and checkpoint (the images stay where they are)."""
    run = tmp_path / "run"
    (run / "cam").mkdir(parents=True)
    for name in ("dataset.json", "manifest.json", "cam/checkpoint.pt"):
        shutil.copy(tiny_run / name, run / name)
    return run


def other_backbone(payload: dict) -> None:
    payload["config"]["model"]["backbone"] = "resnet18"


def other_method(payload: dict) -> None:
    payload["config"]["method"] = "seam"


def other_classes(payload: dict) -> None:
    """Trained on a dataset with one class more: the class list and the classifier rows both differ."""
    payload["class_names"] = [*payload["class_names"], "zebra"]
    weight = payload["state_dict"]["classifier.weight"]
    payload["state_dict"]["classifier.weight"] = torch.cat([weight, weight[:1]])


def other_head_only(payload: dict) -> None:
    """Same class names, but a classifier with another number of rows (a hand-edited or mixed-up checkpoint)."""
    payload["state_dict"]["classifier.weight"] = payload["state_dict"]["classifier.weight"][:-1]


def without_model_config(payload: dict) -> None:
    del payload["config"]["model"]


def unknown_model_key(payload: dict) -> None:
    payload["config"]["model"]["layers"] = 7


def state_dict_not_a_dict(payload: dict) -> None:
    payload["state_dict"] = list(payload["state_dict"].values())


def without_class_names(payload: dict) -> None:
    del payload["class_names"]


@pytest.mark.parametrize("change, fragment", [
    (other_backbone, "does not fit this model"),
    (other_method, "does not fit this model"),
    (other_classes, "was trained on other classes than this run's dataset"),
    (other_head_only, "does not fit this model"),
    # hand-edited or incomplete checkpoints: one line, not a KeyError or TypeError traceback
    (without_model_config, "has no usable model config: KeyError 'model'"),
    (unknown_model_key, "has no usable model config: TypeError"),
    (state_dict_not_a_dict, "is incomplete: its 'state_dict' is missing or of the wrong type"),
    (without_class_names, "is incomplete: its 'class_names' is missing or of the wrong type"),
])
def test_checkpoint_of_another_model_is_refused(run_copy: Path, change, fragment: str):
    checkpoint = run_copy / "cam" / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    change(payload)
    torch.save(payload, checkpoint)
    result = invoke("infer-cam", "--run", run_copy, "--device", "cpu", "--workers", 0, "--scales", "1.0")
    assert_one_line_error(result, fragment)
    assert not (run_copy / "cams").exists()
    assert "infer-cam/train" not in json.loads((run_copy / "manifest.json").read_text())["stages"]


class WritesAMarker:
    """Unpickling this calls open(marker, "w"): code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def pickled_code_run(run_copy: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A run whose checkpoint would create `marker` when unpickled; (run, marker)."""
    marker = tmp_path / "code-ran"
    payload = torch.load(run_copy / "cam" / "checkpoint.pt", weights_only=True)
    payload["metrics"] = {"note": WritesAMarker(marker)}
    torch.save(payload, run_copy / "cam" / "checkpoint.pt")
    return run_copy, marker


def test_checkpoint_holding_pickled_code_is_refused_without_running_it(pickled_code_run: tuple[Path, Path]):
    run, marker = pickled_code_run
    result = invoke("infer-cam", "--run", run, "--device", "cpu", "--workers", 0)
    assert result.exit_code == 2 and "error: cannot read checkpoint" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (run / "cams").exists()
    # The file really is dangerous: loading it without weights_only runs the code.
    torch.load(run / "cam" / "checkpoint.pt", weights_only=False)["metrics"]["note"].close()
    assert marker.exists()


def test_checkpoint_holding_pickled_code_is_refused_in_one_line(pickled_code_run: tuple[Path, Path]):
    run, _ = pickled_code_run
    assert_one_line_error(invoke("infer-cam", "--run", run, "--device", "cpu", "--workers", 0),
                          "cannot read checkpoint")


def bare_cam_file(path: Path, version: int) -> None:
    """A CAM file's schema name and `version`, and none of the attributes a CAM file carries."""
    with h5py.File(path, "w") as file:
        file.attrs["schema"] = "wsss.cams"
        file.attrs["schema_version"] = version
        file.create_group("cams")


def cam_file_of_version_2(path: Path) -> None:
    bare_cam_file(path, version=2)


def hdf5_of_another_schema(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file.attrs["schema"] = "someone.features"
        file.create_dataset("features", data=np.zeros((2, 3)))


def cam_file_without_attributes(path: Path) -> None:
    """The right schema and version, but no class names, scales or config."""
    bare_cam_file(path, version=1)


def not_hdf5(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 a zip file")


@pytest.mark.parametrize("write, fragment", [
    (cam_file_of_version_2, "is not a wsss CAM file of schema version 1"),
    (hdf5_of_another_schema, "is not a wsss CAM file of schema version 1"),
    (not_hdf5, "cannot read CAM file"),
    (cam_file_without_attributes, "is an incomplete wsss CAM file: KeyError"),
])
@pytest.mark.parametrize("command, output", [
    (("pseudo-label", "--refine", "none", "--workers", 1), "pseudo"),
    (("evaluate", "cams", "--split", "train"), "eval"),
])
def test_cam_file_of_another_schema_is_refused(run_copy: Path, write, fragment: str, command, output: str):
    (run_copy / "cams").mkdir()
    write(run_copy / "cams" / "train.h5")
    assert_one_line_error(invoke(*command, "--run", run_copy), fragment)
    assert not (run_copy / output).exists()
    stages = json.loads((run_copy / "manifest.json").read_text())["stages"]
    assert not any(key.startswith(("pseudo-label", "evaluate")) for key in stages)


def test_folder_mask_with_pixels_of_a_class_the_image_is_not_labelled_with(tmp_path: Path):
    root = make_folder(tmp_path / "data", ["cat1", "cat2"])
    (root / "classes.txt").write_text("cat\ndog\n")
    save_mask(root / "masks" / "cat2.png", mask_with(2))  # dog pixels in an image labelled cat only
    run = tmp_path / "run"
    assert_one_line_error(index_folder(root, run), "has pixels of class 2, but image 'cat2' is labelled with classes 1")
    assert_nothing_indexed(run)
    assert index_folder(root, run, "--classes", "cat,dog").exit_code == 2  # two class lists: refused as well
    (root / "classes.txt").unlink()
    save_mask(root / "masks" / "cat2.png", mask_with(1))
    result = index_folder(root, run, "--classes", "cat,dog")
    assert result.exit_code == 0, result.output
    assert DatasetIndex.load(run / "dataset.json").class_names == ["background", "cat", "dog"]
