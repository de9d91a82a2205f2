"""Killed stages resume to the same artifacts as uninterrupted runs; the manifest skips what is up to date.

The kills are real: each stage runs in a subprocess that gets SIGKILL (or SIGINT, as Ctrl-C does) once it has
saved some work, and the re-run's artifacts are compared with an uninterrupted run's.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stages.core.io import load_mask
from wsss_cli.main import app

TRAINING = ["--batch-size", "8", "--base-size", "64", "--crop-size", "56", "--workers", "0", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: results are bitwise comparable
runner = CliRunner()


def default_sigint() -> None:
    """In the child before it starts: SIGINT delivered and not ignored, whatever this test process inherited or
    left (an ignored or blocked SIGINT carries over exec, and Python then never raises KeyboardInterrupt)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wsss_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wsss_cli.main", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def wsss(*args) -> str:
    process = wsss_process(*args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return " ".join(err.split())  # rich wraps long lines at the terminal width


def interrupt_when(process: subprocess.Popen, ready, sig=signal.SIGKILL) -> tuple[int, str]:
    """Send `sig` to `process` as soon as `ready()` holds; (its exit status, its stderr)."""
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, "the stage finished before it could be interrupted: " + process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A dataset big enough that each stage runs for a couple of seconds."""
    run = tmp_path_factory.mktemp("data")
    wsss("data", "synth", "--run", run, "--num-train", 96, "--num-val", 16, "--image-size", 64, "--workers", 1)
    return run


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def state_dicts_equal(first: Path, second: Path) -> bool:
    a = torch.load(first, weights_only=True)["state_dict"]
    b = torch.load(second, weights_only=True)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(data_run, tmp_path_factory):
    """An uninterrupted run: classifier, CAMs and CRF pseudo masks."""
    run = copy_run(data_run, tmp_path_factory.mktemp("reference") / "run")
    wsss("train-cam", "--run", run, "--epochs", 3, *TRAINING)
    wsss("infer-cam", "--run", run, "--scales", "1.0,0.5", "--part-size", 8, "--workers", 0, "--device", "cpu")
    wsss("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    return run


def test_train_cam_killed_then_resumed_equals_an_uninterrupted_run(reference, data_run, tmp_path):
    run = copy_run(data_run, tmp_path / "run")
    state = run / "cam" / "train_state.pt"
    status, _ = interrupt_when(wsss_process("train-cam", "--run", run, "--epochs", 3, *TRAINING), state.exists)
    assert status == -signal.SIGKILL
    assert not (run / "cam" / "checkpoint.pt").exists()
    assert torch.load(state, weights_only=True)["epoch"] in (1, 2)

    err = wsss("train-cam", "--run", run, "--epochs", 3, "--resume", *TRAINING)
    assert "continuing after epoch" in err
    assert state_dicts_equal(run / "cam" / "checkpoint.pt", reference / "cam" / "checkpoint.pt")
    assert not state.exists()  # the finished stage no longer needs it
    history = torch.load(run / "cam" / "checkpoint.pt", weights_only=True)["metrics"]["epochs"]
    reference_history = torch.load(reference / "cam" / "checkpoint.pt", weights_only=True)["metrics"]["epochs"]
    assert [h["cls"] for h in history] == [h["cls"] for h in reference_history]


def test_ctrl_c_exits_cleanly_and_the_run_resumes(reference, data_run, tmp_path):
    run = copy_run(data_run, tmp_path / "run")
    state = run / "cam" / "train_state.pt"
    status, err = interrupt_when(wsss_process("train-cam", "--run", run, "--epochs", 3, *TRAINING), state.exists,
                                 signal.SIGINT)
    assert status == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (run / "cam" / "checkpoint.pt").exists()
    wsss("train-cam", "--run", run, "--epochs", 3, "--resume", *TRAINING)
    assert state_dicts_equal(run / "cam" / "checkpoint.pt", reference / "cam" / "checkpoint.pt")


def test_resume_refuses_a_state_saved_under_another_config(data_run, tmp_path):
    run = copy_run(data_run, tmp_path / "run")
    state = run / "cam" / "train_state.pt"
    interrupt_when(wsss_process("train-cam", "--run", run, "--epochs", 3, *TRAINING), state.exists)
    result = runner.invoke(app, ["train-cam", "--run", str(run), "--epochs", "3", "--lr", "0.05", "--resume",
                                 *TRAINING])
    assert result.exit_code == 2
    assert "cannot resume" in result.output and "lr=0.1" in result.output


def read_cams(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as file:
        return {key: file["cams"][key][()] for key in file["cams"]}


def test_infer_cam_killed_then_rerun_keeps_finished_parts_and_equals_an_uninterrupted_run(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    (run / "cams" / "train.h5").unlink()
    parts = run / "cams" / ".train.h5.parts"
    process = wsss_process("infer-cam", "--run", run, "--scales", "1.0,0.5", "--part-size", 8, "--workers", 0,
                           "--device", "cpu")
    status, _ = interrupt_when(process, lambda: len(list(parts.glob("part-*.h5"))) >= 2)
    assert status == -signal.SIGKILL
    assert not (run / "cams" / "train.h5").exists()
    finished = sorted(parts.glob("part-*.h5"))
    assert 2 <= len(finished) < 12

    err = wsss("infer-cam", "--run", run, "--scales", "1.0,0.5", "--part-size", 8, "--workers", 0, "--device", "cpu")
    assert f"{len(finished)} of 12 parts already done" in err
    ours, theirs = read_cams(run / "cams" / "train.h5"), read_cams(reference / "cams" / "train.h5")
    assert ours.keys() == theirs.keys() and len(ours) == 96
    assert all(np.array_equal(ours[key], theirs[key]) for key in ours)
    assert not parts.exists()


def test_pseudo_label_killed_then_rerun_equals_an_uninterrupted_run(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    masks = run / "pseudo" / "crf"
    shutil.rmtree(masks)
    process = wsss_process("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    status, _ = interrupt_when(process, lambda: len(list(masks.glob("*.png"))) >= 10)
    assert status == -signal.SIGKILL
    assert not (masks / "info.json").exists()
    err = wsss("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    assert "masks already done" in err
    names = sorted(p.name for p in (reference / "pseudo" / "crf").glob("*.png"))
    assert sorted(p.name for p in masks.glob("*.png")) == names and len(names) == 96
    assert all(np.array_equal(load_mask(masks / n), load_mask(reference / "pseudo" / "crf" / n)) for n in names)
    assert json.loads((masks / "info.json").read_text())["ignored_fraction"] == \
        json.loads((reference / "pseudo" / "crf" / "info.json").read_text())["ignored_fraction"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_manifest_skips_an_up_to_date_stage_and_reruns_when_inputs_change(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    mask = run / "pseudo" / "crf" / sorted(p.name for p in (run / "pseudo" / "crf").glob("*.png"))[0]
    written = mask.stat().st_mtime_ns
    assert "up to date" in invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    assert mask.stat().st_mtime_ns == written
    # --force runs it anyway; the masks it rewrites are the same, so a following run is up to date again
    assert "up to date" not in invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1, "--force")
    assert "up to date" in invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    # new CAMs (another scale set) make the masks stale: they are made again
    invoke("infer-cam", "--run", run, "--scales", "1.0", "--part-size", 8, "--workers", 0, "--device", "cpu")
    assert "up to date" not in invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    # an output edited by hand is not "as the stage left it" either
    mask.write_bytes(b"")
    output = invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    assert "up to date" not in output and load_mask(mask).shape == (64, 64)


def test_a_diverging_loss_stops_with_one_line_and_keeps_the_last_good_state(data_run, tmp_path, monkeypatch):
    from stages.methods.baseline import BaselineCam

    run = copy_run(data_run, tmp_path / "run")
    original = BaselineCam.training_losses
    calls = []

    def nan_in_the_second_epoch(self, images, labels, **extra):
        calls.append(1)
        terms = original(self, images, labels, **extra)
        return {k: v * float("nan") for k, v in terms.items()} if len(calls) > 12 else terms

    monkeypatch.setattr(BaselineCam, "training_losses", nan_in_the_second_epoch)
    result = runner.invoke(app, ["train-cam", "--run", str(run), "--epochs", "3", *TRAINING])
    assert result.exit_code == 2
    assert "training diverged: loss is nan at epoch 2" in result.output and "after epoch 1" in result.output
    assert not (run / "cam" / "checkpoint.pt").exists()
    state = torch.load(run / "cam" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["modules"].values() if v.is_floating_point())


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(data_run, tmp_path, monkeypatch):
    import stages.core.checkpoint as checkpoint

    run = copy_run(data_run, tmp_path / "run")

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # what a write that runs out of space leaves behind
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    result = runner.invoke(app, ["train-cam", "--run", str(run), "--epochs", "1", *TRAINING])
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()[-1]) > 0
    assert not (run / "cam" / "checkpoint.pt").exists()
    assert not list((run / "cam").glob(".*.tmp"))  # the temporary file is removed too
    assert "train-cam" not in json.loads((run / "manifest.json").read_text())["stages"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A small run with CRF pseudo masks and saliency maps, for the segmenter methods."""
    run = tmp_path_factory.mktemp("small") / "run"
    invoke("data", "synth", "--run", run, "--num-train", 32, "--num-val", 8, "--image-size", 48, "--workers", 1)
    invoke("train-cam", "--run", run, "--epochs", 1, *TRAINING)
    invoke("infer-cam", "--run", run, "--scales", "1.0", "--workers", 0, "--device", "cpu")
    invoke("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1)
    invoke("saliency", "--run", run, "--workers", 1)
    return run


SEGMENTERS = {
    "pseudo-crf-memory": ["--contrast", "memory", "--contrast-option", "warmup_epochs=0",
                          "--contrast-option", "pixel_memory=50", "--contrast-option", "segment_memory=20"],
    "mcic": ["--method", "mcic", "-o", "rampup_epochs=1", "-o", "memory_size=8"],
}


@pytest.mark.parametrize("tag", SEGMENTERS)
def test_a_resumed_segmenter_keeps_its_memory_bank_and_heads(small_run, tmp_path, monkeypatch, tag):
    """Memory contrast and MCIC carry training state beyond the segmenter (memories, heads): a run stopped after
    its first epoch and resumed must equal an uninterrupted one, which it cannot with an empty memory."""
    from stages.core.training import TrainingState

    command = ["segment", "--labels", "pseudo", "--pseudo", "crf", "--predict", "", "--epochs", 3,
               *SEGMENTERS[tag], *TRAINING]
    uninterrupted, interrupted = copy_run(small_run, tmp_path / "a"), copy_run(small_run, tmp_path / "b")
    invoke(*command, "--run", uninterrupted)

    save = TrainingState.save

    def save_then_stop(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C right after the first epoch's state is saved

    monkeypatch.setattr(TrainingState, "save", save_then_stop)
    result = runner.invoke(app, [str(a) for a in (*command, "--run", interrupted)])
    assert result.exit_code == 130
    state = torch.load(interrupted / "segment" / tag / "train_state.pt", weights_only=True)
    memory_key = next(key for key in state["modules"] if key.endswith("_extra_state"))
    assert state["modules"][memory_key], "the memory bank is in the saved state"
    monkeypatch.setattr(TrainingState, "save", save)
    invoke(*command, "--run", interrupted, "--resume")
    assert state_dicts_equal(interrupted / "segment" / tag / "checkpoint.pt",
                             uninterrupted / "segment" / tag / "checkpoint.pt")
