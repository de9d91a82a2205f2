"""A tiny run of every stage through the CLI, checking the artifacts each one leaves."""

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stages.core.io import load_mask
from stages.data.index import DatasetIndex
from stages.metrics import DEFAULT_THRESHOLDS
from wsss_cli.main import app

runner = CliRunner()
TINY_TRAINING = ["--epochs", "1", "--batch-size", "8", "--base-size", "64", "--crop-size", "56", "--workers", "0"]


def wsss(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    wsss("data", "synth", "--run", run, "--num-train", 24, "--num-val", 8, "--image-size", 64, "--workers", 1)
    wsss("train-cam", "--run", run, *TINY_TRAINING)
    wsss("infer-cam", "--run", run, "--split", "train", "--scales", "1.0,0.5", "--workers", 0)
    wsss("evaluate", "cams", "--run", run, "--split", "train")
    wsss("saliency", "--run", run, "--split", "train", "--workers", 1)
    for refine in ("none", "crf", "saliency,crf"):
        wsss("pseudo-label", "--run", run, "--refine", refine)
        wsss("evaluate", f"pseudo/{refine.replace(',', '+')}", "--run", run, "--split", "train")
    wsss("segment", "--run", run, "--labels", "pseudo", "--pseudo", "crf", "--predict", "val,train", *TINY_TRAINING)
    wsss("segment", "--run", run, "--labels", "gt", "--predict", "val", "--crf", *TINY_TRAINING)
    wsss("segment", "--run", run, "--labels", "pseudo", "--pseudo", "crf", "--contrast", "memory",
         "--contrast-option", "warmup_epochs=0", *TINY_TRAINING)
    wsss("segment", "--run", run, "--method", "mcic", "-o", "rampup_epochs=0.5", *TINY_TRAINING)
    wsss("evaluate", "pseudo/mcic", "--run", run, "--split", "train")
    for tag in ("pseudo-crf", "gt", "pseudo-crf-memory", "mcic"):
        wsss("evaluate", f"segment/{tag}", "--run", run, "--split", "val")
    wsss("report", "--run", run, "--split", "train", "--samples", 4)
    return run


def test_manifest_lists_every_stage_with_outputs(run_dir):
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    for key in ("data", "train-cam", "infer-cam/train", "saliency/train", "pseudo-label/none", "pseudo-label/crf",
                "pseudo-label/saliency+crf", "segment/pseudo-crf",
                "segment/gt", "evaluate/cams_train", "evaluate/segment-gt_val", "report"):
        assert key in stages, key
        assert stages[key]["seconds"] >= 0
    assert stages["train-cam"]["outputs"] == ["cam/checkpoint.pt"]
    assert 0 <= stages["train-cam"]["metrics"]["val_map"] <= 1
    for key in ("train-cam", "segment/pseudo-crf"):  # every epoch's wait for the loader, and its share
        metrics = stages[key]["metrics"]
        assert all(0 <= epoch["data_seconds"] <= epoch["seconds"] for epoch in metrics["history"])
        assert 0 <= metrics["data_wait_share"] < 1 and stages[key]["peak_rss_mib"] > 0


def test_cam_file_has_one_map_per_labelled_class(run_dir):
    index = DatasetIndex.load(run_dir / "dataset.json")
    with h5py.File(run_dir / "cams" / "train.h5") as file:
        assert file.attrs["schema"] == "wsss.cams" and json.loads(file.attrs["scales"]) == [1.0, 0.5]
        assert json.loads(file.attrs["class_names"]) == index.class_names
        assert json.loads(file.attrs["config"])["train"]["method"] == "baseline"
        for sample in index.split("train"):
            cams = file["cams"][sample.id]
            assert list(cams.attrs["classes"]) == list(sample.labels)
            assert cams.shape == (len(sample.labels), 64, 64) and cams.dtype == np.float16
            values = cams[()].astype(np.float32)
            assert values.min() >= 0 and values.max() <= 1.0
            peaks = values.reshape(len(sample.labels), -1).max(1)
            # max-normalised per class: peak m / (m + 1e-5), near 1 unless the raw map is near 0 (tiny model)
            assert np.all(np.isclose(peaks, 1.0, atol=0.01) | (peaks == 0))


def test_pseudo_masks_only_use_the_images_classes(run_dir):
    index = DatasetIndex.load(run_dir / "dataset.json")
    for sample in index.split("train"):
        mask = load_mask(run_dir / "pseudo" / "crf" / f"{sample.id}.png")
        assert mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255, *sample.labels}


def test_predictions_and_evaluations_exist(run_dir):
    index = DatasetIndex.load(run_dir / "dataset.json")
    for sample in index.split("val"):
        prediction = load_mask(run_dir / "segment" / "gt" / "pred_val" / f"{sample.id}.png")
        assert prediction.max() < len(index.class_names)
    for name in ("cams_train", "pseudo-none_train", "pseudo-crf_train", "segment-pseudo-crf_val", "segment-gt_val"):
        assert (run_dir / "eval" / f"{name}.json").is_file(), name
    cams = json.loads((run_dir / "eval" / "cams_train.json").read_text())
    assert len(cams["curve"]) == len(DEFAULT_THRESHOLDS) and cams["curve"][0][0] == 0.0
    best_threshold, best_miou = max(cams["curve"], key=lambda point: point[1])
    assert (cams["best_threshold"], cams["miou"]) == (best_threshold, pytest.approx(best_miou))


@pytest.mark.parametrize("name, folder, split", [("pseudo-crf_train", "pseudo/crf", "train"),
                                                 ("segment-pseudo-crf_val", "segment/pseudo-crf/pred_val", "val"),
                                                 ("segment-gt_val", "segment/gt/pred_val", "val")])
def test_mask_evaluations_count_the_masks_on_disk(run_dir, name, folder, split):
    """The confusion matrix and mIoU of an evaluation, recounted from its masks and the ground truth."""
    index = DatasetIndex.load(run_dir / "dataset.json")
    classes = len(index.class_names)
    counts = np.zeros((classes, classes), np.int64)
    for sample in index.split(split):
        gt, pred = load_mask(sample.mask).ravel(), load_mask(run_dir / folder / f"{sample.id}.png").ravel()
        pred = np.where(pred == 255, 0, pred)  # uncertain counts as background
        labelled = gt != 255
        counts += np.bincount(gt[labelled] * classes + pred[labelled], minlength=classes**2).reshape(classes, classes)
    result = json.loads((run_dir / "eval" / f"{name}.json").read_text())
    assert result["confusion"] == counts.tolist()
    union = counts.sum(0) + counts.sum(1) - np.diag(counts)
    assert result["miou"] == pytest.approx(np.mean(np.diag(counts)[union > 0] / union[union > 0]))


def test_report_and_summary(run_dir):
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 4 * 3
    output = wsss("summary", "--run", run_dir)
    assert "segmenter: pseudo-crf / ground truth" in output and "segment-gt_val" in output


def test_training_is_reproducible_for_a_seed(run_dir, tmp_path):
    """Same data, same seed: a second train-cam run gives the same weights."""
    (tmp_path / "dataset.json").write_text((run_dir / "dataset.json").read_text())
    wsss("train-cam", "--run", tmp_path, *TINY_TRAINING)
    first = torch.load(run_dir / "cam" / "checkpoint.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "cam" / "checkpoint.pt", weights_only=True)["state_dict"]
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_pseudo_labels_are_reproducible(run_dir):
    before = {p.name: p.read_bytes() for p in (run_dir / "pseudo" / "crf").glob("*.png")}
    wsss("pseudo-label", "--run", run_dir, "--refine", "crf")
    after = {p.name: p.read_bytes() for p in (run_dir / "pseudo" / "crf").glob("*.png")}
    assert before == after


def test_seam_writes_refined_and_raw_cams(run_dir, tmp_path):
    (tmp_path / "dataset.json").write_text((run_dir / "dataset.json").read_text())
    wsss("train-cam", "--run", tmp_path, "--method", "seam", "-o", "view_scale=0.5", *TINY_TRAINING)
    for extra, target in (([], "cams"), (["--raw"], "cams-raw")):
        wsss("infer-cam", "--run", tmp_path, "--scales", "1.0", "--workers", 0, *extra)
        wsss("evaluate", target, "--run", tmp_path, "--split", "train")
    with h5py.File(tmp_path / "cams" / "train.h5") as refined, h5py.File(tmp_path / "cams" / "train-raw.h5") as raw:
        assert refined.attrs["kind"] == "cam" and raw.attrs["kind"] == "cam_raw"
        assert sorted(refined["cams"]) == sorted(raw["cams"])
        # The PCM changes the maps (a tiny model leaves some all-zero, so look over every image).
        assert any(not np.array_equal(refined["cams"][i][()], raw["cams"][i][()]) for i in refined["cams"])
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert stages["train-cam"]["config"]["method_options"] == {"view_scale": "0.5"}
    assert "evaluate/cams-raw_train" in stages
    wsss("pseudo-label", "--run", tmp_path, "--refine", "pcm,crf")
    assert len(list((tmp_path / "pseudo" / "pcm+crf").glob("*.png"))) == 24
    # Pseudo masks from the raw CAMs are a set of their own, named -raw, and differ from the refined ones'.
    wsss("pseudo-label", "--run", tmp_path, "--refine", "none", "--raw")
    wsss("pseudo-label", "--run", tmp_path, "--refine", "none")
    from_raw = {p.name: p.read_bytes() for p in (tmp_path / "pseudo" / "none-raw").glob("*.png")}
    from_refined = {p.name: p.read_bytes() for p in (tmp_path / "pseudo" / "none").glob("*.png")}
    assert len(from_raw) == 24 and from_raw.keys() == from_refined.keys() and from_raw != from_refined
    wsss("evaluate", "pseudo/none-raw", "--run", tmp_path, "--split", "train")
    # Another threshold into a set of its own name, leaving the first set as it was.
    wsss("pseudo-label", "--run", tmp_path, "--refine", "none", "--raw", "--fg-threshold", "0.9",
         "--name", "none-raw-strict")
    strict = {p.name: p.read_bytes() for p in (tmp_path / "pseudo" / "none-raw-strict").glob("*.png")}
    assert strict.keys() == from_raw.keys() and strict != from_raw
    assert from_raw == {p.name: p.read_bytes() for p in (tmp_path / "pseudo" / "none-raw").glob("*.png")}
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["pseudo-label/none-raw"]["config"]["raw"]


def test_saliency_maps_and_their_quality(run_dir):
    index = DatasetIndex.load(run_dir / "dataset.json")
    info = json.loads((run_dir / "saliency" / "info-train.json").read_text())
    assert info["images"] == len(index.split("train")) and 0 <= info["mae"] <= 1 and 0 < info["max_f"] <= 1
    for sample in index.split("train"):
        saliency = np.asarray(Image.open(run_dir / "saliency" / f"{sample.id}.png"))
        assert saliency.shape == (64, 64) and saliency.dtype == np.uint8


def test_l2g_with_shape_transfer_trains_and_writes_global_cams(run_dir, tmp_path):
    import shutil

    run = tmp_path / "l2g"
    run.mkdir()
    for name in ("dataset.json", "manifest.json"):
        shutil.copy(run_dir / name, run / name)
    wsss("train-cam", "--run", run, "--method", "l2g", "--local-views", 4, "--saliency", run_dir / "saliency",
         *TINY_TRAINING)
    wsss("infer-cam", "--run", run, "--split", "train", "--scales", "1.0", "--workers", 0)
    checkpoint = torch.load(run / "cam" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["method_options"] == {"local_views": "4"}
    assert any(key.startswith("local_net.") for key in checkpoint["state_dict"])
    with h5py.File(run / "cams" / "train.h5") as file:
        assert json.loads(file.attrs["config"])["train"]["method"] == "l2g"


def test_seam_with_ppc_trains_and_saves_no_projection_head(run_dir, tmp_path):
    import shutil

    run = tmp_path / "ppc"
    run.mkdir()
    for name in ("dataset.json", "manifest.json"):
        shutil.copy(run_dir / name, run / name)
    output = wsss("train-cam", "--run", run, "--method", "seam", "--aux", "ppc", "--aux-option", "dim=32",
                  *TINY_TRAINING)
    assert "seam + ppc" in output and "ppc_intra" in output
    wsss("infer-cam", "--run", run, "--split", "train", "--scales", "1.0", "--workers", 0)
    checkpoint = torch.load(run / "cam" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["aux"] == "ppc" and checkpoint["config"]["aux_options"] == {"dim": "32"}
    assert not any("projection" in key for key in checkpoint["state_dict"])  # training-only head
    with h5py.File(run / "cams" / "train.h5") as file:
        assert json.loads(file.attrs["config"])["train"]["aux"] == "ppc"


def test_memory_methods_save_the_plain_segmenter_and_mcic_writes_its_seeds(run_dir):
    from stages.config import SegModelConfig
    from stages.core.checkpoint import load_checkpoint, load_state, model_config
    from stages.models.deeplab import DeepLab

    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    index = DatasetIndex.load(run_dir / "dataset.json")
    for tag in ("pseudo-crf-memory", "mcic"):
        checkpoint = torch.load(run_dir / "segment" / tag / "checkpoint.pt", weights_only=True)
        assert not any(k.startswith(("contrast", "projection", "attention", "classifier.weight_cam"))
                       for k in checkpoint["state_dict"])
        path = run_dir / "segment" / tag / "checkpoint.pt"
        payload = load_checkpoint(path, "segmenter")
        load_state(DeepLab(model_config(SegModelConfig, payload, path), len(index.class_names)), payload, path)
        assert 0 <= stages[f"evaluate/segment-{tag}_val"]["metrics"]["miou"] <= 1
    assert "contrast" in stages["segment/pseudo-crf-memory"]["config"]
    seeds = sorted((run_dir / "pseudo" / "mcic").glob("*.png"))
    assert len(seeds) == len(index.split("train"))
    first = index.split("train")[0]
    seed = load_mask(run_dir / "pseudo" / "mcic" / f"{first.id}.png")
    assert seed.shape == np.asarray(Image.open(first.image)).shape[:2]
    assert set(np.unique(seed).tolist()) <= set(first.labels) | {0, 255}
    # The seeds are the segment stage's output, recorded under its key, not under pseudo-label's.
    assert {"segment/mcic/checkpoint.pt", "pseudo/mcic"} <= set(stages["segment/mcic"]["outputs"])
    assert "pseudo-label/mcic" not in stages
