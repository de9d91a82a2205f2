"""Values and artifacts checked at the door: diverging weights, stray mask values, BatchNorm's smallest batch,
stale predictions, summaries of missing or several runs, device names, and checkpoint refusals without advice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.config import TrainCamConfig
from stages.core.checkpoint import safe_load
from stages.core.device import resolve_device
from stages.core.errors import UserError
from stages.core.io import load_mask, save_mask
from stages.core.training import TrainingState, train_epochs, weights_finite
from stages.core.distributed import processes
from test_cli import assert_one_line_error, invoke

TINY = ["--epochs", "1", "--batch-size", "4", "--base-size", "32", "--crop-size", "32", "--workers", "0",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("door") / "run"
    result = invoke("data", "synth", "--run", run, "--num-train", 8, "--num-val", 4, "--image-size", 32,
                    "--workers", 1)
    assert result.exit_code == 0, result.output
    return run


def test_weights_finite_sees_a_nan_anywhere():
    weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = torch.optim.SGD(weights, lr=0.1)
    assert weights_finite(optimizer)
    with torch.no_grad():
        weights[1][0, 1] = float("nan")
    assert not weights_finite(optimizer)


def test_training_stops_when_the_weights_diverge_with_a_finite_loss(tmp_path):
    # sqrt(w) at w = 0: the loss is 0, its gradient infinite, so one step makes w -inf while the loss stays finite.
    weight = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.weight = weight
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 0.1, "base_lr": 0.1}], lr=0.1)
    class Items(list):
        epoch = 0  # what train_epochs sets on its dataset

    items = Items(range(4))
    loader = torch.utils.data.DataLoader(items, batch_size=2, sampler=torch.utils.data.DistributedSampler(items, 1, 0))
    config = TrainCamConfig(epochs=1, batch_size=2)
    state = TrainingState(tmp_path / "state.pt", module, {}, False)
    with pytest.raises(UserError, match="weights became NaN or infinite"):
        train_epochs(loader=loader, optimizer=optimizer, config=config, device=torch.device("cpu"), amp=False,
                     losses_fn=lambda batch, step: {"loss": torch.sqrt(weight).sum()},
                     on_epoch_end=lambda epoch, log: None, description="test", state=state, procs=processes())


def test_a_mask_value_that_is_no_class_is_refused_where_it_is_read(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 2] = 42
    save_mask(tmp_path / "m.png", mask)
    with pytest.raises(UserError, match="holds value 42, which is no class"):
        load_mask(tmp_path / "m.png", num_labels=3)
    mask[1, 2] = 255  # unknown is allowed
    save_mask(tmp_path / "m.png", mask)
    assert load_mask(tmp_path / "m.png", num_labels=3)[1, 2] == 255


def split_samples(run, split: str) -> list[dict]:
    return json.loads((run / "dataset.json").read_text())["splits"][split]


def test_pseudo_masks_with_a_stray_value_stop_segment_training(tiny_run, tmp_path):
    masks = tiny_run / "pseudo" / "crf"
    masks.mkdir(parents=True, exist_ok=True)
    for sample in split_samples(tiny_run, "train"):
        ground_truth = load_mask(sample["mask"]).copy()
        ground_truth[0, 0] = 42
        save_mask(masks / f"{sample['id']}.png", ground_truth)
    assert_one_line_error(invoke("segment", "--run", tiny_run, *TINY), "holds value 42, which is no class")


def test_evaluating_a_folder_of_predictions_with_a_stray_value_is_refused(tiny_run, tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    for sample in split_samples(tiny_run, "val"):
        save_mask(folder / f"{sample['id']}.png", np.full(load_mask(sample["mask"]).shape, 42, np.uint8))
    assert_one_line_error(invoke("evaluate", folder, "--run", tiny_run, "--split", "val"), "holds value 42")


def test_segment_refuses_a_batch_batchnorm_cannot_train_on(tiny_run):
    assert_one_line_error(invoke("segment", "--run", tiny_run, "--batch-size", 1), "--batch-size 2 or more")


def test_summary_of_a_missing_run_is_an_error_and_several_runs_share_one_table(tiny_run, tmp_path):
    assert_one_line_error(invoke("summary", "--run", tmp_path / "nothing"), "no wsss run at")
    result = invoke("summary", "--run", tiny_run, "--run", tiny_run)
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output


@pytest.mark.parametrize("name, message", [("gpu", "unknown device"), ("cuda:x", "unknown device"),
                                           ("cpu:0", "unknown device")])
def test_device_names(name, message):
    with pytest.raises(UserError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_numbered_gpu_without_cuda_says_so():
    with pytest.raises(UserError, match="no CUDA device is available"):
        resolve_device("cuda:1")


def test_a_garbage_checkpoint_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError) as refused:
        safe_load(path, "checkpoint")
    message = str(refused.value)
    assert message.startswith("cannot read checkpoint") and "\n" not in message
    assert "weights_only" not in message and "will likely succeed" not in message


def test_a_new_segmenter_leaves_no_predictions_of_the_old_one(tiny_run):
    first = invoke("segment", "--run", tiny_run, "--labels", "gt", "--predict", "val,train", *TINY)
    assert first.exit_code == 0, first.output
    assert (tiny_run / "segment" / "gt" / "pred_train").is_dir()
    second = invoke("segment", "--run", tiny_run, "--labels", "gt", "--predict", "val", "--lr", 0.04, *TINY)
    assert second.exit_code == 0, second.output
    assert not (tiny_run / "segment" / "gt" / "pred_train").exists()
    assert_one_line_error(invoke("evaluate", "segment/gt", "--run", tiny_run, "--split", "train"),
                          "wsss segment --predict train")


# ----------------------------------------------------------------------------------------------- staleness
INFER = ("infer-cam", "--split", "train", "--scales", "1.0", "--workers", 0, "--device", "cpu")


@pytest.fixture
def chain(tmp_path):
    """A tiny run through train-cam, infer-cam, evaluate and pseudo-label."""
    run = tmp_path / "chain"
    for command in (("data", "synth", "--num-train", 8, "--num-val", 4, "--image-size", 32, "--workers", 1),
                    ("train-cam", *TINY), INFER, ("evaluate", "cams", "--split", "train"),
                    ("pseudo-label", "--refine", "none")):
        words = 2 if command[0] == "data" else 1
        result = invoke(*command[:words], "--run", run, *command[words:])
        assert result.exit_code == 0, result.output
    return run


def test_a_stage_refuses_inputs_from_a_stage_whose_own_inputs_changed(chain):
    # A new classifier: the CAMs (and everything made from them) are now out of date.
    assert invoke("train-cam", "--run", chain, *TINY, "--lr", 0.05).exit_code == 0
    assert_one_line_error(invoke("pseudo-label", "--run", chain, "--refine", "none"),
                          "cams/train.h5 is out of date: it was made by infer-cam/train, and cam/checkpoint.pt "
                          "changed since it ran; run infer-cam/train again first (or pass --force")
    stale = invoke("summary", "--run", chain)
    assert stale.exit_code == 0 and "stale" in stale.output and "infer-cam/train" in stale.output
    forced = invoke("pseudo-label", "--run", chain, "--refine", "none", "--force")
    assert forced.exit_code == 0, forced.output  # --force uses the input as it is
    assert invoke(INFER[0], "--run", chain, *INFER[1:]).exit_code == 0
    assert invoke("pseudo-label", "--run", chain, "--refine", "none").exit_code == 0  # fresh again


def test_an_unfinished_later_run_makes_its_earlier_outputs_out_of_date(chain):
    manifest_path = chain / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert "train-cam" not in manifest.get("unfinished", {})  # a finished stage leaves no mark
    # What a train-cam killed after its start leaves: its mark, and the checkpoint of the run before.
    manifest.setdefault("unfinished", {})["train-cam"] = {"started": "2026-01-01T00:00:00+00:00", "config": {}}
    manifest_path.write_text(json.dumps(manifest))
    assert_one_line_error(invoke(INFER[0], "--run", chain, *INFER[1:]),
                          "cam/checkpoint.pt is out of date: it was made by train-cam, and its later run (started "
                          "2026-01-01T00:00:00+00:00) did not finish")
