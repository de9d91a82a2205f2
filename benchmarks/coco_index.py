"""What `wsss data coco` costs: a synthetic COCO-format tree of N images (COCO-like sizes and annotation counts),
indexed as the stage does it, and the time per 1000 images and peak memory of each step, extrapolated to
COCO 2014 (82,783 train + 40,504 val images). Results: `benchmarks/results/coco_index.json` and the table in
benchmarks/README.md `bench:coco_index`.

    python benchmarks/coco_index.py [--images 2000] [--workers 2] [--workdir /tmp]

The tree: N JPEGs of 640x480, 480x640 or 640x427 px (smooth random colours with noise, quality 90), and one
`instances_train2014.json` with about 7.3 instances per image (COCO 2014 train has 604,907 for 82,783 images):
polygons of 8-40 vertices around random centres, areas spread as COCO's are (many small, a few large), plus a
crowd region (uncompressed RLE) in one image in ten and no annotation in one in a hundred.

Each step runs in a fresh Python process, so its peak RSS (`ru_maxrss`) is its own:
  render  read_coco into an empty mask folder: parse the json, paint and write every mask;
  rerun   read_coco again: every mask reused (the digests compared, nothing painted);
  verify  the decode pass of `--verify`: every image and mask decoded and checked.
The render step also runs on a tree of N/2 images, so that the peak RSS can be fitted as fixed + slope x images:
the json is parsed whole, so memory grows with the split's annotation file.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "coco_index.json"
COCO_2014 = {"train": 82_783, "val": 40_504}
# COCO 2014 train: 604,907 instance annotations for 82,783 images.
INSTANCES_PER_IMAGE = 604_907 / 82_783
SIZES = ((640, 480), (480, 640), (640, 427))
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80


def build_tree(root: Path, count: int, seed: int = 0) -> dict:
    """The synthetic tree under `root`; returns what it holds (images, instances, json bytes)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "train2014"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for number in range(1, count + 1):
        width, height = SIZES[number % len(SIZES)]
        name = f"COCO_train2014_{number:012d}.jpg"
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        picture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.int16)
        picture = np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8)
        Image.fromarray(picture).save(image_dir / name, quality=90)
        images.append({"id": number, "file_name": name, "height": height, "width": width})
        if number % 100 == 0:
            continue  # COCO has images without any annotation
        for _ in range(max(1, rng.poisson(INSTANCES_PER_IMAGE))):
            annotations.append({"image_id": number, "category_id": int(rng.choice(CATEGORY_IDS)), "iscrowd": 0,
                                "segmentation": [random_polygon(rng, width, height)]})
        if number % 10 == 0:
            crowd = np.zeros((height, width), np.uint8, order="F")
            top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            crowd[top:top + height // 3, left:left + width // 3] = 1
            annotations.append({"image_id": number, "category_id": 1, "iscrowd": 1,
                                "segmentation": uncompressed_rle(crowd)})
    for number, entry in enumerate(annotations, start=1):
        entry["id"] = number
    categories = [{"id": i, "name": f"class{i}", "supercategory": "thing"} for i in CATEGORY_IDS]
    json_path = root / "annotations" / "instances_train2014.json"
    json_path.parent.mkdir(parents=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"images": count, "instances": len(annotations), "json_bytes": json_path.stat().st_size}


def random_polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A star-shaped polygon; its radius log-uniform from 4 px to half the short side, as COCO's many small and few
    large objects."""
    vertices = int(rng.integers(8, 41))
    radius = math.exp(rng.uniform(math.log(4), math.log(min(width, height) / 2)))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
    return [round(float(v), 2) for pair in zip(xs, ys) for v in pair]


def uncompressed_rle(bitmap: np.ndarray) -> dict:
    flat = bitmap.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(bitmap.shape), "counts": counts}


def measure(step: str, tree: Path, masks: Path, workers: int) -> dict:
    """One step in this process (run through `--step`): its seconds and this process's peak RSS."""
    from stages.data.coco import read_coco
    from stages.data.verify import distinct_samples, find_problems

    clock = time.perf_counter()
    index, reports = read_coco(tree, lambda split: masks / split, splits=["train"], workers=workers)
    seconds = time.perf_counter() - clock
    result = {"seconds": seconds, "rendered": reports["train"].rendered, "reused": reports["train"].reused,
              "indexed": len(index.split("train")), "unlabelled": reports["train"].unlabelled}
    if step == "verify":
        samples = distinct_samples(index)
        clock = time.perf_counter()
        problems = find_problems(samples, len(index.class_names), workers)
        result.update(seconds=time.perf_counter() - clock, problems=len(problems))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def run_step(step: str, tree: Path, masks: Path, workers: int) -> dict:
    command = [sys.executable, __file__, "--step", step, "--tree", str(tree), "--masks", str(masks),
               "--workers", str(workers)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--step", choices=("render", "rerun", "verify"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--masks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(measure(args.step, args.tree, args.masks, args.workers)))
        return

    work = Path(tempfile.mkdtemp(prefix="coco-index-", dir=args.workdir))
    try:
        sizes = {}
        for count in (args.images // 2, args.images):
            tree = work / f"tree-{count}"
            clock = time.perf_counter()
            held = build_tree(tree, count)
            print(f"built {count} images in {time.perf_counter() - clock:.0f} s: {held}", file=sys.stderr)
            steps = {"render": run_step("render", tree, work / f"masks-{count}", args.workers)}
            if count == args.images:
                steps["rerun"] = run_step("rerun", tree, work / f"masks-{count}", args.workers)
                steps["verify"] = run_step("verify", tree, work / f"masks-{count}", args.workers)
            mask_bytes = sum(path.stat().st_size for path in (work / f"masks-{count}" / "train").glob("*.png"))
            sizes[count] = {**held, "mask_bytes": mask_bytes, "steps": steps}
            print(f"{count} images: {steps}", file=sys.stderr)
            shutil.rmtree(tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = summarise(sizes, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_readme_table("coco_index", table(results))
    print(table(results))


def summarise(sizes: dict, args) -> dict:
    small, large = sorted(sizes)
    big = sizes[large]
    per_thousand = {step: 1000 * result["seconds"] / big["images"] for step, result in big["steps"].items()}
    # Peak RSS = fixed + slope x images, from the render step at the two sizes.
    rss_small, rss_large = (sizes[n]["steps"]["render"]["peak_rss_mib"] for n in (small, large))
    slope = (rss_large - rss_small) / (large - small)
    fixed = rss_large - slope * large
    full_images = sum(COCO_2014.values())
    estimate = {
        "render_minutes": per_thousand["render"] * full_images / 1000 / 60,
        "rerun_minutes": per_thousand["rerun"] * full_images / 1000 / 60,
        "verify_minutes": per_thousand["verify"] * full_images / 1000 / 60,
        # The splits are read one after the other: the peak is the larger split's (train).
        "peak_rss_gib": (fixed + slope * COCO_2014["train"]) / 1024,
        "mask_gib": big["mask_bytes"] / big["images"] * full_images / 2**30,
        "json_mib_train": big["json_bytes"] / big["images"] * COCO_2014["train"] / 2**20,
    }
    return {"images": large, "workers": args.workers, "sizes": sizes, "seconds_per_1000": per_thousand,
            "rss_fixed_mib": fixed, "rss_mib_per_1000_images": 1000 * slope, "coco2014_estimate": estimate,
            "machine": machine_info()}


def table(results: dict) -> str:
    big = results["sizes"][results["images"]]
    per, estimate = results["seconds_per_1000"], results["coco2014_estimate"]
    steps = big["steps"]
    rows = [
        "| step | s / 1000 images | peak RSS MiB | COCO 2014 (123,287 images), estimated |",
        "|---|---:|---:|---:|",
        f"| render: parse the json, paint and write every mask | {per['render']:.1f} | "
        f"{steps['render']['peak_rss_mib']:.0f} | {estimate['render_minutes']:.0f} min |",
        f"| rerun: every mask reused | {per['rerun']:.2f} | {steps['rerun']['peak_rss_mib']:.0f} | "
        f"{estimate['rerun_minutes']:.1f} min |",
        f"| verify: decode every image and mask | {per['verify']:.1f} | {steps['verify']['peak_rss_mib']:.0f} | "
        f"{estimate['verify_minutes']:.0f} min |",
    ]
    note = (f"\n{results['images']} synthetic images (640x480-sized, {big['instances'] / big['images']:.1f} "
            f"instances each, json {big['json_bytes'] / big['images'] / 1024:.1f} kB per image), "
            f"{results['workers']} worker threads, {results['machine']['cores']} CPU cores. Peak RSS of the render "
            f"step fitted as {results['rss_fixed_mib']:.0f} MiB + {results['rss_mib_per_1000_images']:.0f} MiB per "
            f"1000 images (from {results['images'] // 2} and {results['images']} images): for train2014, "
            f"{estimate['peak_rss_gib']:.1f} GiB estimated (the json, about {estimate['json_mib_train']:.0f} MB at "
            f"this density, is parsed whole). Masks: {estimate['mask_gib']:.2f} GiB for both splits. Estimates scale "
            "the measured rates linearly; the real json's polygons differ from these. "
            "`python benchmarks/coco_index.py`, raw numbers in `benchmarks/results/coco_index.json`.")
    return "\n".join(rows) + "\n" + note


if __name__ == "__main__":
    main()
