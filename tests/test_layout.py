"""The run folder's layout and the shape of the code: no stage imports another, every stage runs through
`Run.execute`, and the CLI's help and option errors load no torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.config import PseudoLabelConfig, SegmentConfig
from stages.core.errors import UserError
from stages.core.layout import Layout, mask_set_name, segment_tag

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "stages"
# The stage modules: each a function (Run, Config) -> metrics, written through Run.execute.
STAGE_MODULES = {"prepare_data", "train_cam", "infer_cam", "saliency", "train_affinity", "pseudo_label", "segment",
                 "predict", "evaluate", "report"}


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the `stages` modules a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            names.add(".".join(module))
            names.update(".".join(module + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("stages")}


def test_the_stage_modules_are_the_ones_listed_here():
    defined = {path.stem for path in STAGES.glob("*.py")
               if "run.execute(" in path.read_text() or "Run.execute" in path.read_text()}
    assert defined == STAGE_MODULES


@pytest.mark.parametrize("path", sorted(STAGES.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_under_stages_imports_a_stage(path):
    stage_names = {f"stages.{name}" for name in STAGE_MODULES}
    assert not imported_modules(path) & stage_names


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_every_stage_runs_through_the_one_helper_and_spells_no_artifact_path(name):
    source = (STAGES / f"{name}.py").read_text()
    assert source.count("run.execute(") >= 1
    # Paths come from the layout: no stage writes the run folder's names itself.
    for literal in ('"dataset.json"', '"manifest.json"', 'checkpoint.pt"', 'train_state.pt"', '"report.html"',
                    '"pred_', '"info-', '"cam/', '"cams/', '"pseudo/', '"eval/', "run.path("):
        assert literal not in source, literal


def test_the_import_checker_sees_relative_imports(tmp_path):
    probe = STAGES / "methods" / "seam.py"
    assert "stages.methods.common" in imported_modules(probe) or "stages.models.backbone" in imported_modules(probe)


def test_artifacts_name_the_command_that_makes_them(tmp_path):
    layout = Layout(tmp_path)
    cases = [
        (layout.dataset_index, "dataset.json", "wsss data synth"),
        (layout.cam_checkpoint, "cam/checkpoint.pt", "wsss train-cam"),
        (layout.cams("val", raw=True), "cams/val-raw.h5", "wsss infer-cam --split val --raw"),
        (layout.saliency, "saliency", "wsss saliency"),
        (layout.pseudo("pcm,crf"), "pseudo/pcm+crf", "wsss pseudo-label --refine pcm,crf"),
        (layout.pseudo("crf-raw"), "pseudo/crf-raw", "wsss pseudo-label --refine crf --raw"),
        (layout.pseudo("mcic"), "pseudo/mcic", "wsss segment --method mcic"),
        (layout.predictions("gt", "val"), "segment/gt/pred_val", "wsss segment --predict val"),
    ]
    for artifact, relative, command in cases:
        assert artifact.path == tmp_path / relative
        with pytest.raises(UserError, match=re.escape(f"missing input {artifact.path}: run `{command}`") + ".*first$"):
            artifact.require()
    (tmp_path / "dataset.json").write_text("{}")
    assert layout.dataset_index.require() == tmp_path / "dataset.json"


def test_one_naming_rule_for_mask_sets_and_segmenter_tags():
    assert mask_set_name("saliency,crf") == "saliency+crf" and mask_set_name("crf", raw=True) == "crf-raw"
    assert PseudoLabelConfig(refine="pcm,crf", raw=True).mask_set == "pcm+crf-raw"
    assert PseudoLabelConfig(refine="pcm,crf", name="mine").mask_set == "mine"
    assert SegmentConfig(pseudo="pcm,crf").tag == "pseudo-pcm+crf" == segment_tag("deeplab", "pseudo", "pcm+crf", "")
    assert SegmentConfig(labels="gt", contrast="memory").tag == "gt-memory"
    assert SegmentConfig(method="mcic").tag == "mcic"


@pytest.mark.parametrize("target, path, name", [
    ("cams", "cams/train.h5", "cams_train"), ("cams-raw", "cams/train-raw.h5", "cams-raw_train"),
    ("pseudo/saliency,crf", "pseudo/saliency+crf", "pseudo-saliency+crf_train"),
    ("segment/gt", "segment/gt/pred_train", "segment-gt_train")])
def test_evaluation_targets_resolve_through_the_layout(tmp_path, target, path, name):
    artifact, result_name, _ = Layout(tmp_path).evaluation_target(target, "train")
    assert (artifact.path, result_name) == (tmp_path / path, name)


def test_help_and_option_errors_load_no_torch():
    """`wsss --help`, every command's --help and a bad option answer without importing torch (or torchvision)."""
    script = """
import sys
from typer.testing import CliRunner
from wsss_cli.main import app
runner = CliRunner()
commands = [[]] + [[c.name] for c in app.registered_commands] + [["data", c] for c in ("synth", "voc", "folder")]
for command in commands:
    assert runner.invoke(app, command + ["--help"]).exit_code == 0, command
result = runner.invoke(app, ["train-cam", "--method", "magic", "--run", "nowhere"])
assert result.exit_code == 2 and "unknown CAM method 'magic'" in result.output, result.output
result = runner.invoke(app, ["pseudo-label", "--refine", "magic", "--run", "nowhere"])
assert result.exit_code == 2 and "unknown refinement magic" in result.output, result.output
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


def test_the_stages_without_a_network_load_no_torch(tmp_path):
    """evaluate, report and summary run six times in `make all`; importing torch would cost each about 1.6 s
    of start-up. They run here on a small synthetic run whose ground truth, copied, stands in for
    the pseudo masks evaluated."""
    script = f"""
import shutil, sys
from pathlib import Path
from typer.testing import CliRunner
from wsss_cli.main import app
runner = CliRunner()
run = Path({str(tmp_path / "run")!r})
result = runner.invoke(app, ["data", "synth", "--run", str(run), "--num-train", "8", "--num-val", "4",
                             "--image-size", "32"])
assert result.exit_code == 0, result.output
shutil.copytree(run / "synth" / "SegmentationClass", run / "pseudo" / "crf")
for command in (["evaluate", "pseudo/crf", "--split", "train"], ["report", "--split", "train"], ["summary"]):
    result = runner.invoke(app, command + ["--run", str(run)])
    assert result.exit_code == 0, (command, result.output)
assert (run / "eval" / "pseudo-crf_train.json").exists() and (run / "report.html").exists()
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert output.returncode == 0, output.stderr[-2000:]
    assert output.stdout.strip().splitlines()[-1] == "[]"
