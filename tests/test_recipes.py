"""`--config FILE` on every command, and the paper recipes in recipes/ that use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from test_cli import invoke
from wsss_cli.config_file import settable_options
from wsss_cli.main import app

ROOT = typer.main.get_command(app)


def errors_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def one_error(result) -> str:
    """The single `error:` line a refused invocation ends with (exit status 2)."""
    errors = errors_of(result)
    assert result.exit_code == 2 and len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    return errors[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from leaf_commands(command, path + (name,))
        else:
            yield path + (name,), command


def test_every_command_with_settings_takes_config():
    lacking = [" ".join(path) for path, command in leaf_commands(ROOT)
               if settable_options(command) and "--config" not in {opt for p in command.params for opt in p.opts}]
    assert not lacking


def test_command_line_beats_the_file_and_the_manifest_records_the_result(tmp_path):
    config = write(tmp_path / "small.toml", "[common]\nseed = 4\n\n[data.synth]\nnum-train = 3\nnum-val = 2\n"
                                           "image-size = 40\nobjects = [1, 2]\n")
    run = tmp_path / "run"
    result = invoke("data", "synth", "--config", config, "--run", run, "--num-val", "1", "--workers", "1")
    assert result.exit_code == 0, result.output
    synth = json.loads((run / "manifest.json").read_text())["stages"]["data"]["config"]["synth"]
    assert (synth["seed"], synth["num_train"], synth["num_val"], synth["image_size"]) == (4, 3, 1, 40)
    assert synth["objects_per_image"] == [1, 2]


def test_the_command_table_beats_common(tmp_path):
    config = write(tmp_path / "c.toml", "[common]\nseed = 4\n\n[data.synth]\nseed = 5\nnum-train = 2\nnum-val = 1\n"
                                       "image-size = 32\n")
    result = invoke("data", "synth", "--config", config, "--run", tmp_path / "run", "--workers", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["data"]["config"]["synth"]["seed"] == 5


@pytest.mark.parametrize("text, expected", [
    ("[train-cam]\nscales = [1.0]\n", "[train-cam] scales: train-cam has no option --scales (it is an option of "
                                      "[infer-cam])"),
    ("[train-cam]\nepoch = 3\n", "[train-cam] epoch: train-cam has no option --epoch (did you mean 'epochs'?)"),
    ("[common]\nseeed = 1\n", "[common] seeed: no command has option --seeed (did you mean 'seed'?)"),
    ("[trian-cam]\nepochs = 1\n", ": unknown table [trian-cam] (did you mean [train-cam]?"),
    ("epochs = 1\n", ": key 'epochs' is outside any table"),
    ("[train-cam]\nrun = \"x\"\n", "[train-cam] run: train-cam has no option --run"),
    ("[train-cam]\nepochs = \"five\"\n", "[train-cam] epochs: takes an integer, got 'five'"),
    ("[train-cam]\nepochs = 0\n", "[train-cam] epochs: "),  # the option's own minimum
    ("[train-cam]\namp = 1\n", "[train-cam] amp: takes true or false, got 1"),
    ("[segment]\nlabels = \"masks\"\n", "[segment] labels: "),  # not one of its choices
    ("[train-cam]\noption = \"view_scale=0.3\"\n", "[train-cam] option: takes an array of strings"),
    ("[train-cam\n", " is not valid TOML: "),
])
def test_a_bad_table_key_or_value_is_one_line_naming_the_file_and_key(tmp_path, text, expected):
    config = write(tmp_path / "bad.toml", text)
    # infer-cam reads the file too: every table is checked, whichever command reads it.
    for command in ("train-cam", "infer-cam"):
        error = one_error(invoke(command, "--config", config, "--run", tmp_path / "run"))
        assert error.startswith(f"error: {config}") and expected in error, error


def test_a_value_the_stage_config_refuses_names_the_file_and_key(tmp_path):
    config = write(tmp_path / "range.toml", "[train-cam]\nlr = -1.0\n\n[infer-cam]\nscales = [1.0, 0]\n")
    error = one_error(invoke("train-cam", "--config", config, "--run", tmp_path / "run"))
    assert error == f"error: --lr must be in (0, 100], got -1 (set by {config} [train-cam] lr)"
    error = one_error(invoke("infer-cam", "--config", config, "--run", tmp_path / "run"))
    assert error == f"error: --scales must be in (0, 16], got 0 (set by {config} [infer-cam] scales)"
    # the same value typed on the command line is the option's error alone
    error = one_error(invoke("train-cam", "--config", config, "--run", tmp_path / "run", "--lr", "-2"))
    assert error == "error: --lr must be in (0, 100], got -2"


def test_a_missing_config_file_is_one_line(tmp_path):
    error = one_error(invoke("train-cam", "--config", tmp_path / "none.toml", "--run", tmp_path / "run"))
    assert error == f"error: config file not found: {tmp_path / 'none.toml'}"
