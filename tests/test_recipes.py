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


# --- the shipped recipes ------------------------------------------------------------------------------------------
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.toml"))
METHOD_OPTIONS = {  # (command, option): (the registry whose entry takes it, the option naming the entry)
    ("train-cam", "option"): ("CAM_METHODS", "method"), ("train-cam", "aux_option"): ("CAM_ADDONS", "aux"),
    ("segment", "option"): ("SEGMENT_METHODS", "method"),
    ("segment", "contrast_option"): ("SEGMENT_CONTRASTS", "contrast"),
    ("train-affinity", "option"): ("AFFINITY_METHODS", "method"),
}


def test_there_are_recipes():
    assert {"irn-voc", "seam-voc", "ppc-voc", "l2g-voc", "mcic-voc"} <= {path.stem for path in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_step_of_a_recipe_parses_with_its_config(recipe, tmp_path):
    """Each step's command line with the recipe as its --config: every table, key and value of the file is checked
    (as for any --config), the step's own options too, and the method options (-o ...) are the method's."""
    import stages.registry
    from stages.methods import method_options
    from wsss_cli.recipes import recipe_steps, step_context

    steps = recipe_steps(recipe, str(tmp_path / "VOC2012"), tmp_path / "run")
    for step in steps:
        context = step_context(step)
        for (command, option), (registry, entry) in METHOD_OPTIONS.items():
            values = context.params.get(option)
            if context.info_name == command and values:
                chosen = getattr(stages.registry, registry).get(context.params[entry])
                method_options(chosen.Options, dict(value.split("=", 1) for value in values), f"{recipe.name}")


def test_reproduce_dry_run_prints_the_chain(tmp_path):
    result = invoke("reproduce", "irn-voc", tmp_path / "VOC2012", "--run", tmp_path / "run", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"wsss data voc {tmp_path / 'VOC2012'} --config recipes/irn-voc.toml --run {tmp_path / 'run'}"
    assert any(line.startswith("wsss train-affinity --config recipes/irn-voc.toml") for line in lines)
    assert not (tmp_path / "run").exists()


def test_reproduce_runs_each_step_and_stops_at_the_first_that_fails(tmp_path):
    recipe = write(tmp_path / "two.toml", "[reproduce]\nsteps = [\"data synth\", \"evaluate cams --split train\"]\n\n"
                                         "[data.synth]\nnum-train = 2\nnum-val = 1\nimage-size = 32\nworkers = 1\n")
    result = invoke("reproduce", recipe, "unused", "--run", tmp_path / "run")
    assert result.exit_code == 2, result.output  # the failing step's status
    assert (tmp_path / "run" / "dataset.json").is_file()  # the first step ran, with the recipe's values
    assert "reproduce: stopped at step 2 of 2" in result.output


def test_reproduce_names_an_unknown_recipe(tmp_path):
    error = one_error(invoke("reproduce", "irn-vco", tmp_path, "--dry-run"))
    assert error.startswith("error: unknown recipe 'irn-vco': choose one of ") and "irn-voc" in error


def tiny_voc(root: Path) -> Path:
    """A VOC-layout tree: 8 images of 40x48 px with one or two coloured squares (cat = 8, dog = 12) on noise."""
    import numpy as np
    from PIL import Image

    voc, rng = root / "VOCdevkit" / "VOC2012", np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        (voc / folder).mkdir(parents=True)
    ids = [f"2007_00000{i}" for i in range(8)]
    for number, sample_id in enumerate(ids):
        image = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        for class_id, colour, top in ((8, (230, 60, 40), 4), (12, (40, 90, 230), 20))[: 1 + number % 2]:
            left = 4 + 5 * (number % 4)
            image[top:top + 14, left:left + 16] = colour
            mask[top:top + 14, left:left + 16] = class_id
        Image.fromarray(image).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        Image.fromarray(mask, mode="L").save(voc / "SegmentationClassAug" / f"{sample_id}.png")
    (voc / "ImageSets/SegmentationAug/train_aug.txt").write_text("\n".join(ids[:6]) + "\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:4]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[6:]) + "\n")
    return voc


# Command-line options that scale a recipe down to the tiny tree on a CPU: they follow the step's own, so they win.
TRAINING = ["--epochs", "1", "--batch-size", "2", "--base-size", "48", "--crop-size", "32", "--workers", "0",
            "--device", "cpu"]
SMALL = {
    ("data", "voc"): ["--workers", "1"],
    ("train-cam",): TRAINING + ["--backbone", "resnet10", "--pretrained", "none", "--output-stride", "16"],
    ("infer-cam",): ["--scales", "1.0", "--workers", "0", "--device", "cpu"],
    ("train-affinity",): TRAINING + ["--backbone", "", "--pretrained", "cam"],
    ("pseudo-label",): ["--workers", "1"],
    ("segment",): TRAINING + ["--backbone", "resnet10", "--pretrained", "none", "--output-stride", "16",
                              "--aspp-rates", "1,2", "--no-crf"],
}


def test_the_irn_recipe_scaled_down_runs_end_to_end(tmp_path):
    from wsss_cli.recipes import recipe_steps

    run = tmp_path / "run"
    for step in recipe_steps(RECIPE_DIR / "irn-voc.toml", str(tiny_voc(tmp_path)), run):
        command = tuple(step[:2]) if step[0] == "data" else (step[0],)
        result = invoke(*step, *SMALL.get(command, []))
        assert result.exit_code == 0, (step, result.output)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    train_cam = stages["train-cam"]["config"]
    assert train_cam["epochs"] == 1 and train_cam["crop_size"] == 32  # the command line's
    assert train_cam["train_split"] == "train_aug" and train_cam["lr"] == 0.1  # the recipe's
    segment = stages["segment/pseudo-rw"]["config"]
    assert segment["weight_decay"] == 5e-4 and segment["lr"] == 2.5e-4 and segment["train_split"] == "train_aug"
    assert stages["pseudo-label/rw"]["config"]["fg_threshold"] == 0.25  # the step's own option
    assert stages["pseudo-label/crf"]["config"]["fg_threshold"] == 0.30  # the recipe's [pseudo-label]
    assert (run / "eval" / "segment-pseudo-rw-memory_val.json").is_file()
