"""The COCO 2014 reader (`wsss data coco`): labels, rendered masks and their rules, the pre-rendered layouts,
re-runs, and bad inputs, on a tiny COCO-format tree built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from stages.core.errors import UserError
from stages.core.io import IGNORE_INDEX, load_mask, save_mask
from stages.data.coco import COCO_CLASSES, SOURCES_FILE, read_coco
from stages.data.index import DatasetIndex
from test_cli import assert_one_line_error, invoke

HEIGHT, WIDTH = 16, 20
# Listed out of id order, with COCO's gaps (no 2, no 4..89): classes follow the ids, 1 person, 2 car, 3 toothbrush.
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
PERSON, CAR, TOOTHBRUSH = 1, 2, 3


def box(rows: slice, cols: slice) -> np.ndarray:
    bitmap = np.zeros((HEIGHT, WIDTH), np.uint8)
    bitmap[rows, cols] = 1
    return bitmap


def compressed_rle(bitmap: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(bitmap))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed_rle(bitmap: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major pixels, starting with a run of zeros."""
    counts, value, run = [], 0, 0
    for pixel in bitmap.ravel(order="F"):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def polygon_region(polygons: list[list[float]]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, HEIGHT, WIDTH))).astype(bool)


def file_name(year: str, image_id: int) -> str:
    return f"COCO_{year}_{image_id:012d}.jpg"


CAR_BOX = (slice(5, 9), slice(6, 10))
BIG_PERSON = rectangle(1, 1, 19, 15)
TOOTHBRUSH_BOX, CROWD_BOX = (slice(2, 6), slice(2, 8)), (slice(4, 12), slice(4, 14))
EQUAL_FIRST, EQUAL_SECOND = (slice(2, 6), slice(2, 6)), (slice(4, 8), slice(4, 8))


def annotation(image_id: int, category: int, segmentation, crowd: int = 0) -> dict:
    return {"image_id": image_id, "category_id": category, "segmentation": segmentation, "iscrowd": crowd}


def train_json() -> dict:
    images = [9, 25, 30, 31]
    annotations = [
        # 9: a small car listed before the big person it lies on; painted in the file's order it would vanish.
        annotation(9, 3, compressed_rle(box(*CAR_BOX))),
        annotation(9, 1, BIG_PERSON),
        # 25: a toothbrush (uncompressed RLE) partly over a crowd of people.
        annotation(25, 90, uncompressed_rle(box(*TOOTHBRUSH_BOX))),
        annotation(25, 1, uncompressed_rle(box(*CROWD_BOX)), crowd=1),
        # 30 has no annotation; 31 only a crowd: neither has an image label.
        annotation(31, 3, uncompressed_rle(box(*CROWD_BOX)), crowd=1),
    ]
    return coco_json("train2014", images, annotations)


def val_json() -> dict:
    annotations = [
        annotation(42, 3, rectangle(2, 2, 12, 10)),
        annotation(42, 1, [[1, 1, 5, 5]]),  # two points: no pixel, but the image is labelled person
        # 43: equal areas, overlapping: the later one is painted on top.
        annotation(43, 1, compressed_rle(box(*EQUAL_FIRST))),
        annotation(43, 90, compressed_rle(box(*EQUAL_SECOND))),
    ]
    return coco_json("val2014", [42, 43], annotations)


def coco_json(year: str, image_ids: list[int], annotations: list[dict]) -> dict:
    images = [{"id": i, "file_name": file_name(year, i), "height": HEIGHT, "width": WIDTH} for i in image_ids]
    for number, entry in enumerate(annotations, start=1):
        entry["id"] = number
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for year, data in (("train2014", train_json()), ("val2014", val_json())):
        write_json(root / "annotations" / f"instances_{year}.json", data)
        for image in data["images"]:
            write_image(root / year / image["file_name"])
    return root


def masks_in(tmp_path: Path):
    return lambda split: tmp_path / "run" / "coco_masks" / split


def by_id(samples):
    return {sample.id: sample for sample in samples}


def mask_of(index: DatasetIndex, split: str, image_id: int) -> np.ndarray:
    year = "train2014" if split == "train" else "val2014"
    sample = by_id(index.split(split))[Path(file_name(year, image_id)).stem]
    image = Image.open(sample.mask)
    assert image.mode == "P"  # palette PNGs, as every mask the pipeline writes
    return np.asarray(image)


# --- rendering from the instance annotations ---------------------------------------------------------------------


def test_classes_follow_the_category_ids_with_their_gaps_and_labels_skip_crowds(coco: Path, tmp_path: Path):
    progress = []
    index, reports = read_coco(coco, masks_in(tmp_path), workers=2, progress=progress.append)

    assert (index.name, index.format, index.root) == ("coco2014", "coco", str(coco.resolve()))
    assert index.class_names == ["background", "person", "car", "toothbrush"]
    assert list(index.splits) == ["train", "val"]
    assert {s.id: s.labels for s in index.split("train")} == {
        "COCO_train2014_000000000009": (PERSON, CAR), "COCO_train2014_000000000025": (TOOTHBRUSH,)}
    assert {s.id: s.labels for s in index.split("val")} == {
        "COCO_val2014_000000000042": (PERSON, CAR), "COCO_val2014_000000000043": (PERSON, TOOTHBRUSH)}
    sample = by_id(index.split("train"))["COCO_train2014_000000000009"]
    assert sample.image == str(coco.resolve() / "train2014" / "COCO_train2014_000000000009.jpg")
    assert sample.mask == str(tmp_path / "run" / "coco_masks" / "train" / "COCO_train2014_000000000009.png")
    # Images with no non-crowd annotation (30: none, 31: a crowd only) are left out and counted.
    assert (reports["train"].unlabelled, reports["val"].unlabelled) == (2, 0)
    assert (reports["train"].masks, reports["train"].rendered, reports["train"].reused) == ("rendered", 2, 0)
    assert progress == [1] * 4  # once per indexed image


def test_the_smaller_instance_wins_whatever_the_file_order(coco: Path, tmp_path: Path):
    index, _ = read_coco(coco, masks_in(tmp_path), workers=1)
    person = polygon_region(BIG_PERSON)
    assert person[CAR_BOX].all()  # the car lies wholly on the person
    expected = np.where(box(*CAR_BOX).astype(bool), CAR, np.where(person, PERSON, 0))
    np.testing.assert_array_equal(mask_of(index, "train", 9), expected)


def test_equal_areas_keep_the_file_order_with_the_later_on_top(coco: Path, tmp_path: Path):
    index, _ = read_coco(coco, masks_in(tmp_path), workers=1)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[EQUAL_FIRST] = PERSON
    expected[EQUAL_SECOND] = TOOTHBRUSH
    np.testing.assert_array_equal(mask_of(index, "val", 43), expected)


def test_crowd_regions_are_ignored_under_the_instances(coco: Path, tmp_path: Path):
    index, _ = read_coco(coco, masks_in(tmp_path), workers=1)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[CROWD_BOX] = IGNORE_INDEX
    expected[TOOTHBRUSH_BOX] = TOOTHBRUSH  # uncompressed RLE, painted over the crowd where they overlap
    np.testing.assert_array_equal(mask_of(index, "train", 25), expected)


def test_a_polygon_of_two_points_paints_nothing_but_labels_its_image(coco: Path, tmp_path: Path):
    index, _ = read_coco(coco, masks_in(tmp_path), workers=1)
    mask = mask_of(index, "val", 42)
    np.testing.assert_array_equal(mask, np.where(polygon_region(rectangle(2, 2, 12, 10)), CAR, 0))
    assert PERSON not in mask and by_id(index.split("val"))["COCO_val2014_000000000042"].labels == (PERSON, CAR)


def test_a_rerun_reuses_every_unchanged_mask_and_renders_only_what_changed(coco: Path, tmp_path: Path):
    folder = masks_in(tmp_path)("train")
    read_coco(coco, masks_in(tmp_path), splits=["train"], workers=2)
    first = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.png")}

    _, reports = read_coco(coco, masks_in(tmp_path), splits=["train"], workers=2)
    assert (reports["train"].rendered, reports["train"].reused) == (0, 2)
    assert {path.name: path.stat().st_mtime_ns for path in folder.glob("*.png")} == first

    data = train_json()
    data["annotations"][2]["category_id"] = 3  # image 25's toothbrush becomes a car
    data["annotations"] = [entry for entry in data["annotations"] if entry["image_id"] != 9]  # 9 loses its labels
    write_json(coco / "annotations" / "instances_train2014.json", data)
    index, reports = read_coco(coco, masks_in(tmp_path), splits=["train"], workers=2)
    assert (reports["train"].rendered, reports["train"].reused, reports["train"].unlabelled) == (1, 0, 3)
    assert CAR in mask_of(index, "train", 25)
    # The folder holds this split's masks only, and no temporary file.
    assert sorted(path.name for path in folder.iterdir()) == [SOURCES_FILE, "COCO_train2014_000000000025.png"]


def test_through_the_cli_the_index_is_written_and_a_second_run_is_up_to_date(coco: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = invoke("data", "coco", coco, "--run", run, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "train: masks 2 rendered" in result.output and "2 images without labels left out" in result.output
    index = DatasetIndex.load(run / "dataset.json")
    assert len(index.split("train")) == 2 and Path(index.split("val")[0].mask).parent == run / "coco_masks" / "val"
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["data"]["metrics"]
    assert (metrics["train_images"], metrics["train_unlabelled_images"], metrics["train_masks_rendered"]) == (2, 2, 2)

    again = invoke("data", "coco", coco, "--run", run, "--workers", "2")
    assert again.exit_code == 0 and "up to date" in again.output, again.output


# --- pre-rendered masks -----------------------------------------------------------------------------------------


def prerendered_tree(root: Path) -> Path:
    """train: SegmentationClass/train2014 named after the images; val: mask/val2014 named by image id, images
    under images/; no annotation file at all."""
    train_masks, val_masks = root / "SegmentationClass" / "train2014", root / "mask" / "val2014"
    person_and_ignore = np.zeros((HEIGHT, WIDTH), np.uint8)
    person_and_ignore[2:6, 2:6], person_and_ignore[0, :] = 1, IGNORE_INDEX
    save_mask(train_masks / "COCO_train2014_000000000009.png", person_and_ignore)
    save_mask(train_masks / "COCO_train2014_000000000030.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    val_masks.mkdir(parents=True)
    # An 8-bit grayscale mask, as annToMask.py writes them; 80 is the last class (toothbrush).
    Image.fromarray(np.full((HEIGHT, WIDTH), 80, np.uint8), mode="L").save(val_masks / "42.png")
    for path in ("train2014/COCO_train2014_000000000009.jpg", "train2014/COCO_train2014_000000000030.jpg",
                 "images/val2014/COCO_val2014_000000000042.jpg"):
        write_image(root / path)
    return root


def test_prerendered_masks_of_both_layouts_give_the_labels_from_their_pixels(tmp_path: Path):
    root = prerendered_tree(tmp_path / "coco")
    index, reports = read_coco(root, masks_in(tmp_path), workers=2)
    assert index.class_names == COCO_CLASSES and len(COCO_CLASSES) == 81
    assert COCO_CLASSES[1] == "person" and COCO_CLASSES[80] == "toothbrush"
    (train,), (val,) = index.split("train"), index.split("val")
    assert (train.id, train.labels, train.mask) == (
        "COCO_train2014_000000000009", (1,), str(root.resolve() / "SegmentationClass/train2014" / f"{train.id}.png"))
    assert (val.id, val.labels, val.image) == (
        "COCO_val2014_000000000042", (80,), str(root.resolve() / "images/val2014/COCO_val2014_000000000042.jpg"))
    # A mask with background only has no labels: left out, as an image without annotations is.
    assert (reports["train"].masks, reports["train"].unlabelled) == ("pre-rendered", 1)
    assert not (tmp_path / "run").exists()  # nothing rendered


def test_render_draws_from_the_json_even_where_a_prerendered_folder_exists(coco: Path, tmp_path: Path):
    save_mask(coco / "SegmentationClass" / "train2014" / "COCO_train2014_000000000009.png", box(*CAR_BOX) * CAR)
    _, reports = read_coco(coco, masks_in(tmp_path), splits=["train"], workers=1)
    assert reports["train"].masks == "pre-rendered"
    index, reports = read_coco(coco, masks_in(tmp_path), splits=["train"], workers=1, render=True)
    assert reports["train"].masks == "rendered" and len(index.split("train")) == 2


def test_a_prerendered_mask_with_a_value_that_is_no_class_is_one_line_or_a_counted_skip(tmp_path: Path):
    root = prerendered_tree(tmp_path / "coco")
    bad = root / "SegmentationClass" / "train2014" / "COCO_train2014_000000000009.png"
    save_mask(bad, np.full((HEIGHT, WIDTH), 81, np.uint8))
    result = invoke("data", "coco", root, "--run", tmp_path / "run")
    assert_one_line_error(result, f"mask {bad} has class value 81: COCO masks hold 0..80 and 255 (ignore)")
    assert "--skip-bad" in result.output
    # With --skip-bad the image is left out; train then has no image left, which is an error of its own.
    assert_one_line_error(invoke("data", "coco", root, "--run", tmp_path / "run", "--skip-bad"),
                          "every image of split 'train' is bad")


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_bad_roots_and_files_are_one_line_errors(coco: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert_one_line_error(invoke("data", "coco", tmp_path / "nowhere", "--run", run), "COCO root not found")
    assert_one_line_error(invoke("data", "coco", coco, "--run", run, "--splits", "test"),
                          "unknown COCO split 'test': use train (train2014) and/or val (val2014)")

    (coco / "val2014").rename(coco / "elsewhere")
    assert_one_line_error(invoke("data", "coco", coco, "--run", run),
                          f"image folder for split 'val' not found: {coco.resolve() / 'val2014'}")
    (coco / "elsewhere").rename(coco / "val2014")

    val_file = coco / "annotations" / "instances_val2014.json"
    val_file.unlink()
    assert_one_line_error(invoke("data", "coco", coco, "--run", run),
                          f"annotation file for split 'val' not found: {val_file}")
    val_file.write_text('{"images": [')
    assert_one_line_error(invoke("data", "coco", coco, "--run", run), f"annotation file {val_file} is not valid JSON")
    val_file.write_text('[]')
    assert_one_line_error(invoke("data", "coco", coco, "--run", run), "is not a COCO instances file")

    image = coco / "train2014" / "COCO_train2014_000000000009.jpg"
    image.unlink()
    assert_one_line_error(invoke("data", "coco", coco, "--run", run, "--splits", "train"), f"image not found: {image}")


def test_the_splits_must_share_one_class_list(coco: Path, tmp_path: Path):
    data = val_json()
    data["categories"] = [*CATEGORIES, {"id": 5, "name": "airplane"}]
    write_json(coco / "annotations" / "instances_val2014.json", data)
    with pytest.raises(UserError, match="differ from the other split's .*both splits must share one class list"):
        read_coco(coco, masks_in(tmp_path), workers=1)


@pytest.mark.parametrize("change, message", [
    (lambda data: data["annotations"][0].update(category_id=2), "has category 2, which the file does not list"),
    (lambda data: data["annotations"][0].update(image_id=77), "is of image 77, which the file does not list"),
    (lambda data: data["images"].append(dict(data["images"][0])), "image id 9 appears twice"),
    (lambda data: data["images"][0].update(file_name="../x.jpg"), "has file name '../x.jpg': expected a plain"),
], ids=["unknown category", "unknown image", "image twice", "file name with a folder"])
def test_an_inconsistent_annotation_file_is_one_line(coco: Path, tmp_path: Path, change, message):
    data = train_json()
    change(data)
    write_json(coco / "annotations" / "instances_train2014.json", data)
    assert_one_line_error(invoke("data", "coco", coco, "--run", tmp_path / "run", "--splits", "train"), message)


def test_an_annotation_that_cannot_be_painted_is_one_line_or_a_counted_skip(coco: Path, tmp_path: Path):
    data = train_json()
    data["annotations"][2]["segmentation"]["counts"][0] += 1  # image 25's RLE no longer adds up to its pixels
    write_json(coco / "annotations" / "instances_train2014.json", data)
    run = tmp_path / "run"
    result = invoke("data", "coco", coco, "--run", run, "--splits", "train")
    assert_one_line_error(result, "cannot paint annotation 1 of image 'COCO_train2014_000000000025' (20x16 px)")
    assert "do not add up to the image's 320 pixels" in result.output and "--skip-bad" in result.output

    result = invoke("data", "coco", coco, "--run", run, "--splits", "train", "--skip-bad")
    assert result.exit_code == 0, result.output
    index = DatasetIndex.load(run / "dataset.json")
    assert [s.id for s in index.split("train")] == ["COCO_train2014_000000000009"]
    assert [(s.id, s.split) for s in index.skipped] == [("COCO_train2014_000000000025", "train")]


def test_verify_checks_the_rendered_masks_against_the_real_images(coco: Path, tmp_path: Path):
    Image.new("RGB", (WIDTH + 4, HEIGHT), (0, 0, 0)).save(coco / "val2014" / "COCO_val2014_000000000043.jpg")
    result = invoke("data", "coco", coco, "--run", tmp_path / "run", "--splits", "val")
    assert_one_line_error(result, f"is {WIDTH}x{HEIGHT} but image")
    assert load_mask(tmp_path / "run" / "coco_masks" / "val" / "COCO_val2014_000000000043.png").shape == (HEIGHT, WIDTH)
