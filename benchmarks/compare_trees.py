"""This checkout against another (e.g. `git worktree add /tmp/before COMMIT`), for a change that must keep
behaviour: the same tiny pipeline run by each, its artifacts compared bit for bit; the start-up time of `wsss
--help` and of the commands that run no network (evaluate, report, summary: six of `make all`'s twelve), the two
checkouts alternating round by round, and whether `--help` loads torch; and the imports between stage modules,
and how many modules following `stages.segment`'s imports crosses.

    python benchmarks/compare_trees.py --against /tmp/before [--rounds 5]

Results: benchmarks/results/compare_trees-<the other checkout's commit>.json. Both checkouts run with this
interpreter (this venv).
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_table import machine_info  # noqa: E402

STAGE_MODULES = ("prepare_data", "train_cam", "infer_cam", "saliency", "pseudo_label", "segment", "evaluate",
                 "report", "summary")
TINY = ["--epochs", "2", "--batch-size", "8", "--base-size", "64", "--crop-size", "56", "--workers", "0"]
CHAIN = [
    ["data", "synth", "--num-train", "48", "--num-val", "16", "--image-size", "64", "--workers", "1"],
    ["train-cam", *TINY],
    ["infer-cam", "--split", "train", "--scales", "1.0,0.5", "--workers", "0"],
    ["pseudo-label", "--refine", "crf", "--workers", "1"],
    ["segment", "--labels", "pseudo", "--pseudo", "crf", "--predict", "val", *TINY],
]
# Commands that run no network, timed on the chain's run: what each pays to start (their work here is tiny).
NO_NETWORK = [["evaluate", "pseudo/crf", "--split", "train", "--force"], ["report", "--split", "train", "--force"],
              ["summary"]]


def wsss(tree: Path, *args: str) -> float:
    """Run `wsss ARGS` from `tree`'s code (its folder first on the path); the wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wsss_cli.main", *args], cwd=tree, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def loads_torch(tree: Path) -> bool:
    code = "import sys, wsss_cli.main; print('torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True,
                          text=True).stdout.strip() == "True"


def stages_modules(tree: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the tree's `stages` package."""
    return {".".join(p.relative_to(tree).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (tree / "stages").rglob("*.py")}


def module_imports(files: dict[str, Path], module: str) -> set[str]:
    """The modules of `files` that `module` imports (relative imports resolved against its package)."""
    package = module.split(".") if files[module].name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(files[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = base + (node.module.split(".") if node.module else [])
            names.update([".".join(name)] + [".".join(name + [alias.name]) for alias in node.names])
    return names & files.keys()


def stage_imports(tree: Path) -> list[list[str]]:
    """(importer, imported) pairs of stage modules."""
    files = stages_modules(tree)
    stages = {f"stages.{name}" for name in STAGE_MODULES} & files.keys()
    return sorted([a.removeprefix("stages."), b.removeprefix("stages.")]
                  for a in stages for b in module_imports(files, a) & stages)


def reachable_from(tree: Path, start: str = "stages.segment") -> int:
    """How many modules of `stages` a reader crosses following `start`'s imports, transitively."""
    files = stages_modules(tree)
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += module_imports(files, module)
    return len(seen)


def artifacts(run: Path) -> dict[str, object]:
    """What the chain wrote, as comparable values: checkpoint tensors, CAM arrays, mask pixels."""
    import h5py
    import numpy as np
    import torch
    from PIL import Image

    values: dict[str, object] = {}
    for checkpoint in ("cam/checkpoint.pt", "segment/pseudo-crf/checkpoint.pt"):
        for key, tensor in torch.load(run / checkpoint, weights_only=True)["state_dict"].items():
            values[f"{checkpoint}:{key}"] = tensor.numpy()
    with h5py.File(run / "cams" / "train.h5") as cams:
        cams.visititems(lambda name, item: values.__setitem__(f"cams:{name}", item[()])
                        if isinstance(item, h5py.Dataset) else None)
    for folder in ("pseudo/crf", "segment/pseudo-crf/pred_val"):
        for path in sorted((run / folder).glob("*.png")):
            values[f"{folder}/{path.name}"] = np.asarray(Image.open(path))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of `wsss --help` per checkout")
    args = parser.parse_args()
    import numpy as np

    trees = {"this": ROOT, "against": args.against.resolve()}
    startup = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            startup[label].append(round(wsss(tree, "--help"), 3))
    work = Path(tempfile.mkdtemp(prefix="compare-trees-"))
    stored = {}
    for label, tree in trees.items():
        run = work / label
        for command in CHAIN:
            wsss(tree, *command, "--run", str(run))
        stored[label] = artifacts(run)
    no_network = {label: {" ".join(command[:2]): [] for command in NO_NETWORK} for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for command in NO_NETWORK:
                seconds = wsss(tree, *command, "--run", str(work / label))
                no_network[label][" ".join(command[:2])].append(round(seconds, 3))
    this, other = stored["this"], stored["against"]
    differing = sorted(key for key in this.keys() & other.keys() if not np.array_equal(this[key], other[key]))
    result = {
        "machine": machine_info(),
        "help_seconds": startup,
        "help_loads_torch": {label: loads_torch(tree) for label, tree in trees.items()},
        "no_network_seconds": no_network,
        "stage_imports": {label: stage_imports(tree) for label, tree in trees.items()},
        "modules_reached_from_segment": {label: reachable_from(tree) for label, tree in trees.items()},
        "artifacts_compared": len(this.keys() & other.keys()),
        "artifacts_only_in_one": sorted(this.keys() ^ other.keys()),
        "artifacts_differing": differing,
    }
    shutil.rmtree(work)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=trees["against"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    output = ROOT / "benchmarks" / "results" / f"compare_trees-{commit}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "machine"}, indent=2))


if __name__ == "__main__":
    main()
