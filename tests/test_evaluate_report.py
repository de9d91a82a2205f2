import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.core.camstore import CamWriter
from stages.core.errors import UserError
from stages.core.io import save_mask
from stages.config import EvaluateConfig, ReportConfig
from stages.core.io import read_json, write_json
from stages.core.runs import Run
from stages.data.index import DatasetIndex, Sample
from stages.evaluate import evaluate, labelled_samples, score_cams
from stages.core.overlays import jet
from stages.plots import nice_ticks
from stages.report import report, report_runs
from stages.results import per_class_table, results_table
from stages.metrics import DEFAULT_THRESHOLDS

# The last class name checks that the report escapes what it writes into HTML.
CLASS_NAMES = ["background", "a", "b<i>"]
SIZE = 8


def ground_truth_masks() -> dict[str, np.ndarray]:
    """Three 8x8 masks. Totals: class 1: 48 pixels, class 2: 64, background 72, ignored 8."""
    first = np.zeros((SIZE, SIZE), np.uint8)
    first[:4, :4] = 1
    second = np.zeros((SIZE, SIZE), np.uint8)
    second[4:, :] = 2
    second[0, :] = 255
    third = np.zeros((SIZE, SIZE), np.uint8)
    third[:, :4] = 1
    third[:, 4:] = 2
    return {"img0": first, "img1": second, "img2": third}


def labels_of(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(label) for label in np.unique(mask) if label not in (0, 255))


@pytest.fixture
def run(tmp_path: Path) -> Run:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for sample_id, mask in ground_truth_masks().items():
        image_path, mask_path = data / "images" / f"{sample_id}.png", data / "masks" / f"{sample_id}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(image_path)
        save_mask(mask_path, mask)
        train.append(Sample(sample_id, str(image_path), str(mask_path), labels_of(mask)))
    unlabelled = [Sample("img9", str(data / "images" / "img0.png"), None, (1,))]
    index = DatasetIndex("tiny", "synth", str(data), CLASS_NAMES, {"train": train, "test": unlabelled})
    run = Run(tmp_path / "run")
    index.save(run.path("dataset.json"))
    return run


def write_perfect_cams(path: Path, skip: str | None = None) -> None:
    """One-hot CAMs of each image's ground-truth classes."""
    with CamWriter(path, class_names=CLASS_NAMES, split="train", scales=[1.0], config={}) as writer:
        for sample_id, mask in ground_truth_masks().items():
            if sample_id == skip:
                continue
            classes = np.array(labels_of(mask))
            writer.write(sample_id, np.stack([(mask == c).astype(np.float32) for c in classes]), classes)


def write_masks(folder: Path, masks: dict[str, np.ndarray]) -> None:
    for sample_id, mask in masks.items():
        save_mask(folder / f"{sample_id}.png", mask)


def evaluated(run: Run, target: str, split: str = "train") -> dict:
    """`wsss evaluate TARGET`'s result, as written to the run's eval/ folder."""
    evaluate(run, EvaluateConfig(target=target, split=split))
    return read_json(run.eval(run.evaluation_target(target, split)[1]))


def perturbed_masks() -> dict[str, np.ndarray]:
    """gt with 8 class-1 pixels of img2 predicted as class 2 and 4 class-1 pixels of img0 uncertain (255)."""
    masks = ground_truth_masks()
    masks["img2"][:2, :4] = 2
    masks["img0"][0, :4] = 255
    return masks


def test_perfect_cams_score_one_at_every_threshold_below_one(run):
    cam_file = run.path("cams", "train.h5")
    write_perfect_cams(cam_file)
    calls = []
    index = run.dataset()
    score_cams(index, labelled_samples(index, "train"), cam_file, EvaluateConfig(), progress=calls.append)
    assert calls == [1, 1, 1]
    result = evaluated(run, "cams")
    assert result["kind"] == "cam" and result["num_images"] == 3 and result["split"] == "train"
    assert result["miou"] == 1.0 and result["best_threshold"] == 0.0
    assert len(result["curve"]) == len(DEFAULT_THRESHOLDS)
    # The CAMs are 1 on their objects: at the threshold 1.0 the background wins the tie (as in IRN's argmax).
    assert all(miou == 1.0 for threshold, miou in result["curve"] if threshold < 1.0)
    assert result["curve"][-1][0] == 1.0 and result["curve"][-1][1] < 1.0
    assert result["per_class"]["b<i>"] == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert json.loads(run.path("eval", "cams_train.json").read_text()) == result
    stage = run.manifest()["stages"]["evaluate/cams_train"]
    assert stage["metrics"]["miou"] == 1.0
    assert stage["outputs"] == ["eval/cams_train.json"] and "cams/train.h5" in stage["inputs"]


def test_missing_cam_names_the_image_and_the_file(run):
    cam_file = run.path("cams", "train.h5")
    write_perfect_cams(cam_file, skip="img1")
    with pytest.raises(UserError, match=r"img1.*train\.h5"):
        evaluated(run, "cams")
    assert "evaluate/cams_train" not in run.manifest()["stages"]
    assert not run.path("eval", "cams_train.json").exists()


def test_missing_cam_file(run):
    with pytest.raises(UserError, match=r"missing input .*train\.h5: run `wsss infer-cam --split train` first"):
        evaluated(run, "cams")


def test_masks_identical_to_ground_truth_score_one(run):
    write_masks(run.pseudo("crf").path, ground_truth_masks())
    result = evaluated(run, "pseudo/crf")
    assert result["kind"] == "masks"
    assert result["miou"] == 1.0 and result["miou_confident"] == 1.0 and result["coverage"] == 1.0
    assert "best_threshold" not in result


def test_perturbed_masks_by_hand(run):
    write_masks(run.pseudo("crf").path, perturbed_masks())
    result = evaluated(run, "pseudo/crf")
    # Uncertain pixels count as background. Class 0: tp 72, gt 72, pred 76. Class 1: tp 36, gt 48, pred 36.
    # Class 2: tp 64, gt 64, pred 72.
    expected = (Fraction(72, 76) + Fraction(36, 48) + Fraction(64, 72)) / 3
    assert result["miou"] == pytest.approx(float(expected))
    assert result["per_class"]["a"]["recall"] == pytest.approx(36 / 48)
    assert result["per_class"]["b<i>"]["precision"] == pytest.approx(64 / 72)
    assert result["pixel_accuracy"] == pytest.approx((72 + 36 + 64) / 184)
    # Without the 4 uncertain pixels: class 0 is perfect, class 1: tp 36, gt 44, pred 36.
    confident = (1 + Fraction(36, 44) + Fraction(64, 72)) / 3
    assert result["miou_confident"] == pytest.approx(float(confident))
    assert result["coverage"] == pytest.approx(180 / 184)
    assert run.manifest()["stages"]["evaluate/pseudo-crf_train"]["metrics"]["coverage"] == pytest.approx(180 / 184)


def test_missing_mask_file_is_named(run):
    masks = ground_truth_masks()
    del masks["img2"]
    write_masks(run.pseudo("crf").path, masks)
    with pytest.raises(UserError, match=r"pseudo/crf/img2\.png"):
        evaluated(run, "pseudo/crf")


def test_mask_of_the_wrong_size(run):
    masks = ground_truth_masks()
    masks["img1"] = np.zeros((4, 4), np.uint8)
    write_masks(run.pseudo("crf").path, masks)
    with pytest.raises(UserError, match="img1"):
        evaluated(run, "pseudo/crf")


def test_split_without_ground_truth(run):
    with pytest.raises(UserError, match="split 'test' has no ground-truth masks"):
        evaluated(run, "pseudo/crf", split="test")


def test_evaluation_name_must_be_a_plain_name(run):
    (run.root / ".hidden").mkdir()
    with pytest.raises(UserError, match="invalid evaluation name"):
        evaluated(run, str(run.root / ".hidden"))


def test_tables_list_results(run):
    cam_file = run.path("cams", "train.h5")
    write_perfect_cams(cam_file)
    write_masks(run.pseudo("crf").path, perturbed_masks())
    results = [evaluated(run, "cams"),
               evaluated(run, "pseudo/crf")]
    table = results_table(results)
    assert table.row_count == 2
    assert list(table.columns[4].cells) == ["100.0", "86.2"]
    assert list(table.columns[5].cells) == ["0.00", "–"]
    assert per_class_table(results[1]).row_count == 3


def test_jet_runs_from_blue_to_red():
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert colours[0].argmax() == 2 and colours[1].argmax() == 1 and colours[2].argmax() == 0


def test_report(run):
    cam_file = run.path("cams", "train.h5")
    write_perfect_cams(cam_file)
    write_masks(run.pseudo("crf").path, perturbed_masks())
    evaluated(run, "cams")
    evaluated(run, "pseudo/crf")
    predictions = ground_truth_masks()
    del predictions["img1"]
    write_masks(run.predictions("pseudo-crf", "train").path, predictions)

    report(run, ReportConfig(num_samples=10))
    page = run.path("report.html").read_text()
    for sample_id in ground_truth_masks():
        assert f">{sample_id}<" in page
    for text in ("cam", "pseudo", "mIoU %", "evaluate/cam", "<polyline", "data:image/png;base64,"):
        assert text in page
    # five pictures for img0 and img2, four for img1 (no prediction) plus its "–" cell
    assert page.count("data:image/png;base64,") == 14
    assert page.count('<td class="missing">') == 1
    assert "b&lt;i&gt;" in page and "b<i>" not in page
    # each sample's labels under its id: img2 has both classes
    assert '>img2<span class="labels">a, b&lt;i&gt;</span>' in page
    # the CAM curve (the best threshold marked), the error shares, a confusion matrix per evaluation
    assert page.count('<svg class="plot"') == 4
    assert "best 0.00: 100.0%" in page and "Where the errors go" in page
    assert page.count('class="axis-label"') == 4 * 2
    # a point per threshold, a bar per error share of each evaluation (a share of 0 too), a cell per class pair
    assert page.count('class="point"') == len(DEFAULT_THRESHOLDS) + 2 * 3 + 2 * 9
    assert "No training stage has run yet" in page
    stage = run.manifest()["stages"]["report"]
    assert stage["outputs"] == ["report.html"] and stage["metrics"]["num_samples"] == 3


def test_report_shows_images_without_ground_truth(run):
    report(run, ReportConfig(split="test"))
    page = run.report.read_text()
    assert '>img9<span class="labels">a</span>' in page
    # the image, then "–" for its ground truth and for the CAM, pseudo mask and prediction the run lacks
    assert page.count("data:image/png;base64,") == 1 and page.count('<td class="missing">') == 4


def add_training_stage(run: Run, key: str, metrics: dict) -> None:
    """A training stage's manifest entry, as the training stages record it."""
    manifest = run.manifest()
    manifest["stages"][key] = {"started": "2026-01-01T00:00:00+00:00", "seconds": 1.0, "metrics": metrics}
    write_json(run.manifest_path, manifest)


def test_report_plots_the_recorded_training_history(run):
    history = [{"cls": 0.7, "val_map": 0.5, "val_f1": 0.4, "seconds": 2.0, "data_seconds": 0.1},
               {"cls": 0.5, "val_map": 0.6, "val_f1": 0.5, "seconds": 2.0, "data_seconds": 0.1},
               {"cls": 0.4, "val_map": 0.8, "val_f1": 0.6, "seconds": 2.0, "data_seconds": 0.1}]
    add_training_stage(run, "train-cam", {"val_map": 0.8, "history": history})
    add_training_stage(run, "segment/gt", {"final_loss": 0.3})  # recorded before the history was
    report(run, ReportConfig(num_samples=1))
    page = run.report.read_text()
    assert "train-cam: training loss" in page and "train-cam: validation" in page
    # the loss (one series, no legend) and the two validation metrics in % (a legend), 3 epochs each
    assert page.count('<svg class="plot"') == 2 and page.count('class="point"') == 3 * 3
    assert '<text class="legend"' in page and ">val_map<" in page and "<title>seconds:" not in page
    assert "data_seconds" not in page  # a timing, not a loss term
    assert "segment/gt: no per-epoch history recorded." in page


def test_several_runs_on_one_page(run, tmp_path):
    write_perfect_cams(run.path("cams", "train.h5"))
    evaluated(run, "cams")
    other = Run(tmp_path / "other")
    other.path("dataset.json").parent.mkdir(parents=True, exist_ok=True)
    other.path("dataset.json").write_text(run.dataset_index.path.read_text())
    add_training_stage(other, "train-cam", {"val_map": 0.25})
    out = tmp_path / "pages" / "compare.html"
    report_runs([run, other], ReportConfig(num_samples=1), out)
    page = out.read_text()
    assert "wsss report: run, other" in page and "Run run" in page and "Run other" in page
    # headline numbers, a column per run
    assert "<th>run</th><th>other</th>" in page
    assert "<td>classifier val mAP %</td><td>–</td><td>25.0</td>" in page
    assert "<td>cams_train mIoU %</td><td>100.0</td><td>–</td>" in page
    # the overlaid CAM curves, then the run's own CAM curve, errors and confusion
    assert page.count('<svg class="plot"') == 1 + 3 and ">run: cams_train<" not in page  # one series: no legend
    assert not run.report.exists() and not other.report.exists()


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(9.05, 11.3) == [9.0, 9.5, 10.0, 10.5, 11.0, 11.5]
    assert nice_ticks(1, 3) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert nice_ticks(2, 2) == [2]


def test_report_without_artifacts_is_deterministic(run):
    config = ReportConfig(num_samples=2, seed=3)
    report(run, config)
    first = run.report.read_text()
    assert first.count("data:image/png;base64,") == 4  # image and ground truth of two samples
    assert first.count('<td class="missing">') == 6
    assert "No evaluation results yet" in first
    chosen = [sample_id for sample_id in ground_truth_masks() if f">{sample_id}<" in first]
    assert len(chosen) == 2
    report(run, config, force=True)
    second = run.report.read_text()
    assert [sample_id for sample_id in ground_truth_masks() if f">{sample_id}<" in second] == chosen


def test_report_refuses_a_negative_number_of_samples():
    with pytest.raises(UserError, match=r"--samples must be in \[0, 100000\], got -1"):
        ReportConfig(num_samples=-1)
