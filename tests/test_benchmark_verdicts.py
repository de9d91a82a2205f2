"""The methods benchmarks' verdicts: the paired t-test rule by hand, and the rows it puts in their tables (the full
ones of benchmarks/README.md and the compact one of README's Methods); and the stage hours their closing notes give."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from seed_stats import paired_difference  # noqa: E402


def test_paired_difference_by_hand():
    # differences 0.05, 0.06, 0.04: mean 0.05, sd 0.01, t = 0.05 / (0.01 / sqrt 3) = 8.66 > 4.303
    change = paired_difference({0: 0.50, 1: 0.52, 2: 0.51, 7: 0.9}, {0: 0.45, 1: 0.46, 2: 0.47})
    assert change["seeds"] == [0, 1, 2]  # seed 7 has no base run: left out
    assert change["mean"] == pytest.approx(0.05) and change["sd"] == pytest.approx(0.01)
    assert change["t"] == pytest.approx(0.05 / (0.01 / math.sqrt(3))) and change["beyond_spread"]
    # differences 1, 2, 3: mean 2, sd 1, t = 3.46 < 4.303: the same sign in every seed, yet within the spread
    within = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert within["t"] == pytest.approx(2 * math.sqrt(3)) and not within["beyond_spread"]
    # a drop is tested the same way
    assert paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.05, 1: 0.06, 2: 0.04})["beyond_spread"]
    # the same change in every seed is beyond any spread, no change is not
    assert paired_difference({0: 1.5, 1: 2.5}, {0: 1.0, 1: 2.0})["beyond_spread"]
    assert not paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})["beyond_spread"]
    assert paired_difference({0: 1.0}, {0: 0.0, 1: 0.0}) is None  # one shared seed: no spread to test against


def test_methods_verdicts_compare_each_method_with_its_base_seed_by_seed():
    from methods import verdict_table

    def run(seed: int, cam: float, raw: float | None = None) -> dict:
        return {"seed": seed, "cams_train_miou": cam, "pseudo-crf_train_miou": cam + 0.1,
                **({"cams-raw_train_miou": raw} if raw is not None else {})}

    results = {"baseline": {"seeds": [run(0, 0.55), run(1, 0.56), run(2, 0.54)]},
               "seam": {"seeds": [run(0, 0.50, raw=0.555), run(1, 0.51, raw=0.565), run(2, 0.50, raw=0.54)]}}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in verdict_table(results).splitlines()[2:]}
    assert set(rows) == {"seam", "seam (raw CAMs)"}  # the other methods have no results: no rows
    assert "**-4.7 ± 0.6** (-5.0 / -5.0 / -4.0)" in rows["seam"] and "no: lowers it beyond the spread" in rows["seam"]
    assert "+0.3 ± 0.3 (+0.5 / +0.5 / +0.0)" in rows["seam (raw CAMs)"]
    assert rows["seam (raw CAMs)"].endswith("| no: within the spread |")
    assert verdict_table({"baseline": results["baseline"]}) == ""
    # a raw-CAM base reads the base's raw CAMs: SEAM + PPC's raw CAMs against SEAM's raw ones (0.555, 0.565, 0.54),
    # not its PCM-refined ones (0.50, 0.51, 0.50)
    results["seam:--aux=ppc"] = {"seeds": [run(0, 0.60, raw=0.575), run(1, 0.60, raw=0.585), run(2, 0.60, raw=0.57)]}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in verdict_table(results).splitlines()[2:]}
    assert rows["seam:--aux=ppc (raw CAMs)"].startswith(
        "| seam:--aux=ppc (raw CAMs) | seam (raw CAMs) | PPC raises SEAM's raw CAMs too | **+2.3 ± 0.6** (+2.0 / +2.0 / +3.0) |")


def test_methods_readme_tables_keep_means_and_the_cam_verdict_only():
    from methods import README_COLUMNS, VERDICT_MEASURES, results_table, verdict_table

    def run(seed: int, cam: float) -> dict:
        return {"seed": seed, "cams_train_miou": cam, "pseudo-crf_train_miou": cam - 0.1,
                "cams-raw_train_miou": cam, "train_cam_epoch_seconds": 100.0 + seed}

    def result(*cams: float) -> dict:
        seeds = [run(seed, cam) for seed, cam in enumerate(cams)]
        keys = ("cams_train_miou", "pseudo-crf_train_miou", "cams-raw_train_miou")
        summary = {key: {"mean": sum(s[key] for s in seeds) / 3, "std": 0.01, "n": 3} for key in keys}
        return {"seeds": seeds, "summary": summary}

    results = {"baseline": result(0.55, 0.56, 0.54), "seam": result(0.50, 0.51, 0.50)}
    table = results_table(results, README_COLUMNS, per_seed_values=False).splitlines()
    # the raw-CAM column is not a README column, the columns nobody has (fitted masks, segmenter) are left out
    assert table[0] == ("| method | seeds | CAM (train) | pseudo masks, CRF at IRN's thresholds (train) "
                        "| train-cam s/epoch |")
    assert table[2] == "| baseline | 0,1,2 | 55.0 ± 1.0 | 45.0 ± 1.0 | 101.0 |"  # no per-seed brackets
    assert "(55.0 / 56.0 / 54.0)" in results_table(results)  # the full table keeps them
    verdicts = verdict_table(results, VERDICT_MEASURES[:1]).splitlines()
    assert verdicts[0] == "| method | against | the paper's claim | CAM change | in the paper's direction? |"
    assert verdicts[2].endswith("| **-4.7 ± 0.6** (-5.0 / -5.0 / -4.0) | no: lowers it beyond the spread |")

def test_memory_methods_verdicts_read_the_per_seed_results_as_stored():
    from memory_methods import verdict_table

    per_seed = {"0": {"pseudo-crf_val_miou": 0.30, "pseudo-crf-memory_val_miou": 0.34, "mcic_val_miou": 0.20},
                "1": {"pseudo-crf_val_miou": 0.29, "pseudo-crf-memory_val_miou": 0.33, "mcic_val_miou": 0.21},
                "2": {"pseudo-crf_val_miou": 0.31, "pseudo-crf-memory_val_miou": 0.34, "mcic_val_miou": 0.22}}
    lines = verdict_table(per_seed).splitlines()
    assert len(lines) == 4  # header, rule, memory contrast on pseudo masks, MCIC; no ground-truth runs: no row
    assert "**+3.7 ± 0.6** (+4.0 / +4.0 / +3.0)" in lines[2] and "yes: raises it beyond the spread" in lines[2]
    assert "**-9.0 ± 1.0**" in lines[3] and lines[3].endswith("| no: lowers it beyond the spread |")


def test_memory_methods_table_gives_each_segmenters_time_and_peak_memory():
    from memory_methods import summarise, table

    per_seed = [{"pseudo-crf_val_miou": 0.30, "pseudo-crf_epoch_seconds": 10.0, "pseudo-crf_peak_rss_mib": 1000.0},
                {"pseudo-crf_val_miou": 0.32, "pseudo-crf_epoch_seconds": 12.0, "pseudo-crf_peak_rss_mib": 1200.0}]
    lines = table(summarise(per_seed)).splitlines()
    assert lines[0] == "| segmenter | val mIoU % | s / epoch | peak MiB |"
    assert lines[2] == ("| segmenter on CRF pseudo masks | 31.0 ± 1.4 (n=2) | 11.0 ± 1.4 (n=2) | "
                        "1100 ± 141 (n=2) |")
    assert lines[3] == "| same + memory contrast | – | – | – |"  # not measured: a dash, not a zero


def test_memory_methods_collect_each_segmenters_score_time_and_peak_memory_from_its_run(tmp_path):
    import json

    from memory_methods import collect

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "segment-pseudo-crf_val.json").write_text(json.dumps({"miou": 0.3}))
    (tmp_path / "eval" / "segment-gt_val.json").write_text(json.dumps({"miou": 0.6}))
    stages = {"segment/pseudo-crf": {"metrics": {"epoch_seconds": 12.0}, "peak_rss_mib": 900.0},
              "segment/gt": {"metrics": {"epoch_seconds": 11.0}}}  # recorded before peak memory was
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}))
    assert collect(tmp_path) == {"pseudo-crf_val_miou": 0.3, "pseudo-crf_epoch_seconds": 12.0,
                                 "pseudo-crf_peak_rss_mib": 900.0, "gt_val_miou": 0.6, "gt_epoch_seconds": 11.0}


def test_stage_hours_count_a_resumed_training_stages_earlier_epochs(tmp_path, capsys, monkeypatch):
    import json

    from stage_hours import main, run_seconds

    run = tmp_path / "baseline-s0"
    run.mkdir()
    stages = {"infer-cam/train": {"seconds": 100.0},
              # resumed after a cut: the last invocation ran 2 of the 3 epochs its history keeps
              "train-cam": {"seconds": 250.0, "metrics": {"history": [{"seconds": 120.0}, {"seconds": 110.0},
                                                                    {"seconds": 115.0}]}},
              # a training stage whose invocation also validated and saved: more than its epochs
              "segment/pseudo-crf": {"seconds": 400.0, "metrics": {"history": [{"seconds": 150.0}] * 2}}}
    (run / "manifest.json").write_text(json.dumps({"stages": stages}))
    assert run_seconds(run) == pytest.approx(100 + 345 + 400)
    assert run_seconds(tmp_path / "no-such-run") is None
    monkeypatch.setattr(sys, "argv", ["stage_hours.py", str(run), str(tmp_path / "no-such-run")])
    main()
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{run}: 0.23 h", f"{tmp_path / 'no-such-run'}: no manifest.json, skipped",
                   "total: 0.23 h of stage wall time"]


def test_ppc_diagnostic_counts_prototype_pixels_from_images_without_their_class():
    import torch

    from ppc_pseudo_labels import Tally

    # two images of 1x2 cells, one class: image 0 shows it in its first cell, image 1 does not have it, yet its
    # (not label-masked) map peaks at 1 as well, so the top 2 pixels are one from each image
    truth = torch.tensor([[[1, 0]], [[0, 0]]])
    confidence = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.2]]], [[[1.0, 1.0]], [[0.9, 0.1]]]])  # (N, C+1, h, w)
    tally = Tally()
    tally.add(truth.clone(), truth, confidence, k=2, labels=torch.tensor([[1.0], [0.0]]))
    summary = tally.summary()
    assert summary["prototype_pixel_precision"] == 0.5
    assert summary["prototype_pixels_in_labelled_images_share"] == 0.5
    assert summary["cell_accuracy"] == 1.0 and summary["fg_share_true"] == 0.25


def test_diagnostic_grid_truth_keeps_the_last_class_and_leaves_unlabelled_cells_out():
    import torch

    from ppc_pseudo_labels import cell_counts, majority_labels

    # 8 foreground classes: a 4x4 mask of class 8 with a 2x2 corner of class 3 and a 2x2 corner left unlabelled
    mask = torch.full((1, 4, 4), 8)
    mask[0, :2, :2] = 3
    mask[0, 2:, 2:] = 255
    mask[0, 3, 3] = 8  # a cell's labelled pixels decide, however few: this cell is class 8
    truth = majority_labels(mask, (2, 2), num_classes=8)
    assert truth.tolist() == [[[3, 8], [8, 8]]]
    mask[0, 3, 3] = 255
    truth = majority_labels(mask, (2, 2), num_classes=8)
    assert truth.tolist() == [[[3, 8], [8, 255]]]
    counts = cell_counts(torch.tensor([[[3, 0], [8, 8]]]), truth)
    assert counts == {"cells": 3, "correct": 2, "fg_labelled": 2, "fg_labelled_right": 2, "fg_true": 3,
                      "fg_true_found": 2}


def test_l2g_diagnostic_reads_scores_as_cams_are_read():
    import torch

    from l2g_transfer import labels_at_threshold, normalised_cams

    cams = torch.tensor([[[[2.0, 1.0, -1.0]], [[0.0, 1.5, 4.0]]]])  # (1, 2 classes, 1, 3)
    scores = normalised_cams(cams, torch.tensor([[1.0, 0.0]]))  # class 2 is not in the image
    assert torch.allclose(scores[0, 0, 0], torch.tensor([2 / (2 + 1e-5), 1 / (2 + 1e-5), 0.0]))
    assert scores[0, 1].abs().sum() == 0
    # background wins ties with the threshold, as the CAM evaluation's argmax
    assert labels_at_threshold(torch.tensor([[[[0.5, 0.7, 0.2]], [[0.6, 0.5, 0.1]]]]), 0.5).tolist() == [[[2, 1, 0]]]
    assert labels_at_threshold(torch.tensor([[[[0.5]]]]), 0.5).tolist() == [[[0]]]
