"""The CLI: help texts, and one-line errors with exit status 2 for user mistakes."""

import re

import pytest
from typer.testing import CliRunner

from stages.config import PseudoLabelConfig, SaliencyConfig, SegmentConfig, TrainCamConfig
from stages.registry import (BACKBONES, CAM_ADDONS, CAM_METHODS, REFINEMENTS, SALIENCY_SOURCES, SEGMENT_CONTRASTS,
                             SEGMENT_METHODS)
from wsss_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


WIDE = {"COLUMNS": "200"}  # a wide terminal, so Rich does not split names across lines
BOX = re.compile(r"[│╭╮╰╯─]+")
GROUPS = {group.name: group.typer_instance for group in app.registered_groups}
COMMANDS = ([[command.name] for command in app.registered_commands] + [[name] for name in GROUPS]
            + [[name, command.name] for name, group in GROUPS.items() for command in group.registered_commands])


def help_of(*command: str) -> str:
    """`wsss COMMAND --help`, checked to exit 0, with Rich's boxes removed and whitespace runs made one space."""
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return " ".join(BOX.sub(" ", result.output).split())


def normalised(text: str) -> str:
    return " ".join(text.split())


def option_help(text: str, option: str) -> str:
    """The row of `option` in a normalised help text, from its type (`<int>`) up to the next option's row."""
    row = r" (?:-\w+ |--[\w-]+ )?<"  # an option row: its name, maybe a short or --no- form, then its type
    match = re.search(rf"(?<!\S){re.escape(option)}{row[:-1]}(<.*?)(?= --[\w-]+{row}|$)", text)
    assert match, f"{option} not in help: {text}"
    return match.group(1)


def assert_lists(text: str, names) -> None:
    """Each name shown as a registry's help shows it: 'name (summary)'."""
    missing = [name for name in names if not re.search(rf"(?<![\w-]){re.escape(name)} \(", text)]
    assert not missing, f"{missing} not in: {text}"


def docstring(callback) -> str:
    return normalised(callback.__doc__)


def callback_of(command: list[str]):
    commands = app.registered_commands if len(command) == 1 else GROUPS[command[0]].registered_commands
    return next(c.callback for c in commands if c.name == command[-1])


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    text = help_of(*command)
    assert re.search(rf"Usage: \S+ {re.escape(' '.join(command))} \[OPTIONS\]", text), text
    if command[0] in GROUPS and len(command) == 1:
        assert normalised(GROUPS[command[0]].info.help) in text
    else:
        assert docstring(callback_of(command)) in text


def click_commands(command, path=()):
    """Every (path, click command) below `command`, groups included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from click_commands(sub, path + (name,))


def test_every_option_of_every_command_says_what_it_does():
    import typer.main

    missing = [f"{' '.join(path)} {param.opts[0]}" for path, command in click_commands(typer.main.get_command(app))
               for param in command.params
               if getattr(param, "param_type_name", "") == "option" and not (param.help or "").strip()]
    assert not missing


def test_short_help_and_version():
    assert help_of("-h") == help_of()
    assert help_of("predict", "-h") == help_of("predict")
    result = invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"wsss \d+\.\d+\.\d+\n", result.output), result.output


def test_top_level_help_lists_every_command_and_group():
    text = help_of()
    commands = text[text.index("Commands"):]
    for command in app.registered_commands:  # each row: the name, then its docstring's first words
        first_words = " ".join(docstring(command.callback).split()[:4])
        assert f" {command.name} {first_words}" in commands, (command.name, commands)
    for name, group in GROUPS.items():
        assert f" {name} {normalised(group.info.help)}" in commands
        group_text = help_of(name)
        for command in group.registered_commands:
            first_words = " ".join(docstring(command.callback).split()[:4])
            assert f" {command.name} {first_words}" in group_text, (command.name, group_text)


def assert_defaults(text: str, defaults: dict) -> None:
    for option, value in defaults.items():
        assert f"[default: {value}]" in option_help(text, option), (option, value, option_help(text, option))


def test_train_cam_help_names_every_method_addon_and_backbone_with_the_config_defaults():
    text = help_of("train-cam")
    assert_lists(option_help(text, "--method"), CAM_METHODS.names())
    assert_lists(option_help(text, "--aux"), CAM_ADDONS.names())
    assert_lists(option_help(text, "--backbone"), BACKBONES.names())
    config = TrainCamConfig()
    assert_defaults(text, {
        "--method": config.method, "--epochs": config.epochs, "--batch-size": config.batch_size, "--lr": config.lr,
        "--head-lr-mult": config.head_lr_mult, "--weight-decay": config.weight_decay,
        "--base-size": config.base_size, "--crop-size": config.crop_size,
        "--scale-range": ",".join(map(str, config.scale_range)), "--workers": config.workers,
        "--device": config.device, "--seed": config.seed, "--val-split": config.val_split, "--backbone": config.model.backbone,
        "--output-stride": config.model.output_stride, "--pretrained": config.model.pretrained,
    })
    assert option_help(text, "--epochs").startswith("<int range> [x>=1]")
    assert config.train_split == "" and "default: the dataset's training split" in option_help(text, "--train-split")


def test_segment_help_names_every_method_and_contrast_with_the_config_defaults():
    text = help_of("segment")
    assert_lists(option_help(text, "--method"), SEGMENT_METHODS.names())
    assert_lists(option_help(text, "--contrast"), SEGMENT_CONTRASTS.names())
    assert_lists(option_help(text, "--backbone"), BACKBONES.names())
    config = SegmentConfig()
    assert config.epochs != TrainCamConfig().epochs  # so the check below tells the two commands' defaults apart
    assert_defaults(text, {
        "--method": config.method, "--epochs": config.epochs, "--lr": config.lr,
        "--head-lr-mult": config.head_lr_mult, "--batch-size": config.batch_size, "--labels": config.labels,
        "--pseudo": config.pseudo, "--aspp-rates": ",".join(map(str, config.model.aspp_rates)),
        "--predict": ",".join(config.predict_splits), "--test-scales": ",".join(map(str, config.test_scales)),
        "--backbone": config.model.backbone, "--output-stride": config.model.output_stride,
    })


def test_pseudo_label_help_names_every_refinement():
    text = help_of("pseudo-label")
    assert_lists(option_help(text, "--refine"), REFINEMENTS.names())
    config = PseudoLabelConfig()
    assert_defaults(text, {"--refine": config.refine, "--fg-threshold": config.fg_threshold,
                           "--bg-threshold": config.bg_threshold, "--saliency-threshold": config.saliency_threshold})


def test_saliency_help_names_every_source():
    text = help_of("saliency")
    assert_lists(option_help(text, "--source"), SALIENCY_SOURCES.names())
    assert_defaults(text, {"--source": SaliencyConfig().source})


def test_synth_help_documents_the_failure_mode_knobs():
    text = invoke("data", "synth", "--help").output
    for option in ("--context-prob", "--context-classes", "--num-classes", "--occluder-prob", "--jpeg-quality"):
        assert option in text


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    assert fragment in errors[0]
    assert "Traceback" not in result.output


def test_stage_without_its_input_names_the_stage_to_run(tmp_path):
    assert_one_line_error(invoke("train-cam", "--run", tmp_path), "wsss data synth")
    assert_one_line_error(invoke("infer-cam", "--run", tmp_path), "wsss data synth")


def test_bad_values_are_one_line_errors(tmp_path):
    assert_one_line_error(invoke("data", "synth", "--run", tmp_path, "--num-classes", "7"), "num_classes")
    assert_one_line_error(invoke("data", "synth", "--run", tmp_path, "--context-classes", "zebra"), "zebra")
    assert_one_line_error(invoke("data", "synth", "--run", tmp_path, "--object-scale", "0.5,0.1"), "--object-scale")
    assert_one_line_error(invoke("pseudo-label", "--run", tmp_path, "--refine", "magic"), "magic")
    assert_one_line_error(invoke("pseudo-label", "--run", tmp_path, "--name", "../elsewhere"), "mask set name")
    assert_one_line_error(invoke("data", "voc", tmp_path / "nowhere", "--run", tmp_path), "nowhere")
    assert_one_line_error(invoke("evaluate", "bogus", "--run", tmp_path), "bogus")


def test_a_report_of_several_runs_needs_out_and_runs(tmp_path):
    assert_one_line_error(invoke("report", "--run", tmp_path / "a", "--run", tmp_path / "b"), "--out")
    assert_one_line_error(invoke("report", "--run", tmp_path / "a", "--run", tmp_path / "b", "--out",
                                 tmp_path / "page.html"), "no wsss run at")
    assert not (tmp_path / "page.html").exists()


def test_cuda_without_a_gpu_is_a_user_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    invoke("data", "synth", "--run", tmp_path, "--num-train", 4, "--num-val", 2, "--image-size", 48)
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--device", "cuda"), "no CUDA device")


def test_method_options_are_checked(tmp_path):
    invoke("data", "synth", "--run", tmp_path, "--num-train", 4, "--num-val", 2, "--image-size", 48)
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--option", "novalue"), "KEY=VALUE")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "-o", "speed=3"), "has no option 'speed'")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--local-views", "3"), "has no option 'local_views'")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--aux", "ppc", "--aux-option", "tau"),
                          "--aux-option takes KEY=VALUE")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--aux", "ppc", "--aux-option", "tau=1"),
                          "add-on 'ppc' has no option 'tau'")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--aux", "magic"), "unknown add-on loss 'magic'")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--method", "l2g", "--aux", "ppc"),
                          "needs a method with two views")


def test_saliency_inputs_are_checked(tmp_path):
    invoke("data", "synth", "--run", tmp_path, "--num-train", 4, "--num-val", 2, "--image-size", 48)
    assert_one_line_error(invoke("saliency", "--run", tmp_path, "--source", tmp_path / "maps"), "maps")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--method", "l2g"), "wsss saliency")
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--method", "l2g", "-o", "crop_mode=grid"),
                          "crop_mode")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("train-cam", "--run", tmp_path, "--method", "l2g", "--saliency", tmp_path / "empty"),
                          "no saliency map for any")


def test_segment_methods_and_contrast_options_are_checked(tmp_path):
    invoke("data", "synth", "--run", tmp_path, "--num-train", 4, "--num-val", 2, "--image-size", 48)
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--method", "magic"), "unknown segment method 'magic'")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--labels", "gt", "--contrast", "magic"),
                          "unknown contrast loss 'magic'")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--labels", "gt", "--contrast", "memory",
                                 "--contrast-option", "tau=1"), "contrast 'memory' has no option 'tau'")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--method", "mcic", "--contrast", "memory"),
                          "needs mask labels")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--method", "mcic", "-o", "memory=3"),
                          "segment method 'mcic' has no option 'memory'")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--method", "mcic"), "wsss saliency")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--labels", "gt", "--contrast", "memory",
                                 "--contrast-option", "pixel_memory=0"), "pixel_memory must be at least 1")
    assert_one_line_error(invoke("segment", "--run", tmp_path, "--method", "mcic", "-o", "seed_threshold=2"),
                          "seed_threshold must be in [0, 1]")
