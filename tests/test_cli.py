"""The CLI: help texts, and one-line errors with exit status 2 for user mistakes."""

import pytest
from typer.testing import CliRunner

from wsss_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", [["--help"], ["data", "synth", "--help"], ["train-cam", "--help"],
                                     ["infer-cam", "--help"], ["pseudo-label", "--help"], ["segment", "--help"],
                                     ["evaluate", "--help"], ["report", "--help"], ["summary", "--help"],
                                     ["saliency", "--help"]])
def test_help(command):
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


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
