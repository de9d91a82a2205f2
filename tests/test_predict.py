"""`wsss predict`: masks for new images equal what `segment --predict` wrote, resumes, overlays, classes and CAMs,
and one-line errors for bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.core.camstore import CamReader
from stages.core.io import load_mask
from test_cli import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny run with a classifier and a segmenter (flip and CRF at test time) that predicted val."""
    run = tmp_path_factory.mktemp("predict") / "run"
    fast = ("--device", "cpu", "--workers", 0, "--base-size", 32, "--crop-size", 32, "--batch-size", 4)
    for args in (("data", "synth", "--num-train", 8, "--num-val", 6, "--image-size", 32, "--workers", 1),
                 ("train-cam", "--epochs", 1, *fast),
                 ("segment", "--labels", "gt", "--epochs", 1, "--predict", "val", "--test-flip", "--crf", *fast)):
        result = invoke(*args, "--run", run)
        assert result.exit_code == 0, result.output
    images = [sample["image"] for sample in json.loads((run / "dataset.json").read_text())["splits"]["val"]]
    return {"run": run, "images": images, "segmenter": run / "segment" / "gt" / "checkpoint.pt",
            "classifier": run / "cam" / "checkpoint.pt"}


def predict(trained, out, *inputs, extra=()):
    return invoke("predict", *(inputs or trained["images"]), "--out", out, "--checkpoint", trained["segmenter"],
                  "--workers", 0, "--device", "cpu", *extra)


def test_predictions_of_the_val_images_equal_those_segment_wrote(trained, tmp_path):
    result = predict(trained, tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = sorted((trained["run"] / "segment" / "gt" / "pred_val").glob("*.png"))
    assert len(written) == len(trained["images"])
    for mask in written:  # the segmenter's own test-time settings (flip, CRF) are the default
        assert np.array_equal(load_mask(tmp_path / "out" / "masks" / mask.name), load_mask(mask)), mask.name


def test_a_folder_and_a_list_give_the_images_they_hold(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in trained["images"][:2]:
        shutil.copy(image, folder)
    (folder / "notes.txt.bak").write_text("not an image")  # not an image suffix: ignored in a folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"{trained['images'][2]}\n\n{trained['images'][3]}\n")
    result = predict(trained, tmp_path / "out", folder, listing, extra=("--no-crf", "--overlay"))
    assert result.exit_code == 0, result.output
    names = sorted(Path(image).stem for image in trained["images"][:4])
    assert sorted(p.stem for p in (tmp_path / "out" / "masks").glob("*.png")) == names
    assert sorted(p.stem for p in (tmp_path / "out" / "overlays").glob("*.jpg")) == names


def test_a_rerun_predicts_only_new_images_and_drops_removed_ones(trained, tmp_path):
    out = tmp_path / "out"
    first = predict(trained, out, *trained["images"][:3], extra=("--no-crf",))
    assert first.exit_code == 0, first.output
    kept = out / "masks" / f"{Path(trained['images'][1]).stem}.png"
    before = kept.stat().st_mtime_ns
    again = predict(trained, out, *trained["images"][1:5], extra=("--no-crf",))
    assert again.exit_code == 0, again.output
    assert "2 already done" in " ".join(again.output.split())
    assert kept.stat().st_mtime_ns == before  # kept, not predicted again
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(
        Path(image).stem for image in trained["images"][1:5])
    other = predict(trained, out, *trained["images"][1:5], extra=("--no-crf", "--test-scales", "1.0,0.5"))
    assert other.exit_code == 0, other.output
    assert "already done" not in other.output  # other settings: every mask predicted again


def test_the_classifier_gives_each_image_its_classes_scores_and_cams(trained, tmp_path):
    out = tmp_path / "out"
    result = predict(trained, out, extra=("--no-crf", "--cam-checkpoint", trained["classifier"],
                                          "--class-threshold", 0.3))
    assert result.exit_code == 0, result.output
    table = json.loads((out / "classes.json").read_text())
    assert set(table["images"]) == {Path(image).stem for image in trained["images"]}
    for name, entry in table["images"].items():
        predicted = sorted(c for c, score in entry["scores"].items() if score > 0.3)
        assert sorted(entry["classes"]) == predicted
        with CamReader(out / "cams" / f"{name}.h5") as reader:
            cams, classes = reader.read(name)
            assert [reader.class_names[c] for c in classes] == entry["classes"]
            assert cams.shape[0] == len(classes) and (cams.size == 0 or cams.max() <= 1.0)


def test_bad_inputs_are_one_line(trained, tmp_path):
    assert_one_line_error(predict(trained, tmp_path / "a", tmp_path / "missing.jpg"), "input not found")
    (tmp_path / "notes.csv").write_text("x")
    assert_one_line_error(predict(trained, tmp_path / "b", tmp_path / "notes.csv"), "is not an image")
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(trained["images"][0], twin)
    duplicate = twin / Path(trained["images"][0]).name
    assert_one_line_error(predict(trained, tmp_path / "c", trained["images"][0], duplicate),
                          "would write the same mask")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    assert_one_line_error(predict(trained, foreign), "did not write")
    assert (foreign / "mine.txt").read_text() == "keep me"
    assert_one_line_error(predict(trained, tmp_path / "d", extra=("--class-threshold", 2)), "--class-threshold")
    result = invoke("predict", trained["images"][0], "--out", tmp_path / "e", "--checkpoint", trained["classifier"])
    assert_one_line_error(result, "expected a segmenter checkpoint")


def test_a_corrupt_image_is_one_line_or_a_counted_skip(trained, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(trained["images"][0]).read_bytes()[:200])  # a header, then nothing
    assert_one_line_error(predict(trained, tmp_path / "a", broken, trained["images"][1]), "broken.jpg")
    result = predict(trained, tmp_path / "b", broken, trained["images"][1], extra=("--skip-bad", "--no-crf"))
    assert result.exit_code == 0, result.output
    assert [p.stem for p in (tmp_path / "b" / "masks").glob("*.png")] == [Path(trained["images"][1]).stem]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [entry["image"] for entry in manifest["stages"]["predict"]["metrics"]["skipped"]] == [str(broken)]
