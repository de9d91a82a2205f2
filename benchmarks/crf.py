"""Dense CRF pseudo labels: `wsss pseudo-label --refine crf` over a split against the serial pydensecrf loop of
IRN's cam_to_ir_label.py, with the same parameters, side by side in one run; the labels must be identical.

    python benchmarks/crf.py --run runs/bench [--images 300] [--voc-sized 16] [--rounds 2]

The serial loop, per image: the CAMs under a constant background score, argmax, dense CRF (gaussian 3/3,
bilateral 50/5/10, gt_prob 0.7, 10 iterations, a fresh `DenseCRF2D` each time, as IRN's crf_inference_label), once
at the foreground and once at the background threshold; disagreements become 255; one PNG per image. Ours runs
the pseudo-label stage with 1 worker process and with one per core: images/s, per core, and the scaling from 1
to N workers. Two image sets: the run's synthetic 128x128 training images with their CAMs, and VOC-sized copies
(see subset_run.py) with the CAMs resized alike (a VOC image has 11x the pixels, and the CRF's cost grows with
them). Results: benchmarks/results/crf.json and the table in benchmarks/README.md between the bench:crf markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
import torch.nn.functional as F
from PIL import Image
from pydensecrf.utils import unary_from_labels

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.camstore import CamReader, CamWriter  # noqa: E402
from stages.core.io import load_image, load_mask  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.config import PseudoLabelConfig  # noqa: E402
from stages.pseudo_label import pseudo_label  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import interleaved_runs  # noqa: E402
from subset_run import add_sample_options, sample_paths, subset_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "crf.json"
CONFIG = PseudoLabelConfig(refine="crf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_options(parser, images=300, voc_sized=16, work="runs/bench-crf", run_help="a run with cams/train.h5")
    args = parser.parse_args()
    run, work = sample_paths(args)
    cores = os.cpu_count() or 1
    worker_counts = sorted({1, cores})
    results = {}
    for name, count, voc_sized in (("synthetic 128x128", args.images, False), ("VOC-sized", args.voc_sized, True)):
        bench = subset_run(work / name.split()[0].lower(), run, count, voc_sized)
        write_cams(run.path("cams", "train.h5"), bench)
        samples = bench.dataset().split("train")
        variants = {"serial pydensecrf loop (IRN way)": lambda: serial_loop(bench, samples, work / "serial")}
        variants |= {f"wsss pseudo-label, {w} worker{'s' * (w > 1)}": (lambda w=w: ours(bench, w))
                     for w in worker_counts}

        def same_labels(round_index: int, outputs: dict[str, Path]) -> None:
            reference = outputs.pop("serial pydensecrf loop (IRN way)")
            for variant, masks in outputs.items():
                differing = differing_pixels(samples, reference, masks)
                assert differing == 0, f"{variant}: {differing} pixels differ from the serial loop"

        seconds = interleaved_runs(variants, args.rounds, name, same_labels)
        serial = statistics.median(seconds["serial pydensecrf loop (IRN way)"])
        one_worker = statistics.median(seconds["wsss pseudo-label, 1 worker"])
        rows = {}
        for variant, values in seconds.items():
            median = statistics.median(values)
            processes = 1 if variant.startswith("serial") else int(variant.split(", ")[1].split()[0])
            rows[variant] = {"seconds": [round(v, 2) for v in values], "processes": processes,
                             "images_per_second": len(samples) / median,
                             "images_per_second_per_core": len(samples) / median / processes,
                             "speedup_vs_serial": serial / median, "scaling_vs_1_worker": one_worker / median}
        pixels = sum(np.prod(Image.open(s.image).size) for s in samples) / len(samples)
        results[name] = {"images": len(samples), "mean_pixels": float(pixels), "identical_labels": True, "variants": rows}
    result = {"machine": machine_info(), "params": "gaussian 3/3, bilateral 50/5/10, gt_prob 0.7, 10 iterations",
              "thresholds": [CONFIG.fg_threshold, CONFIG.bg_threshold], "image_sets": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("crf", table(result))
    print(table(result))


def write_cams(source: Path, bench: Run) -> None:
    """The bench images' CAMs from `source`, resized (bilinear) to the images where they were resized."""
    with CamReader(source) as reader, CamWriter(bench.path("cams", "train.h5"), class_names=reader.class_names,
                                                split="train", scales=reader.scales, config=reader.config) as writer:
        for sample in bench.dataset().split("train"):
            cams, classes = reader.read(sample.id)
            with Image.open(sample.image) as image:
                width, height = image.size
            if cams.shape[1:] != (height, width):
                cams = F.interpolate(torch.from_numpy(cams)[None], size=(height, width), mode="bilinear",
                                     align_corners=False)[0].numpy()
            writer.write(sample.id, cams, classes)


def ours(bench: Run, workers: int) -> Path:
    config = PseudoLabelConfig(refine="crf", workers=workers, name=f"crf-{workers}-workers")  # a folder each
    pseudo_label(bench, config, force=True)
    return bench.pseudo(config.mask_set).path


def serial_loop(bench: Run, samples, out_dir: Path) -> Path:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with CamReader(bench.path("cams", "train.h5")) as reader:
        for sample in samples:
            image = load_image(sample.image)
            cams, classes = reader.read(sample.id)
            keys = np.pad(classes, (1, 0))
            confident = []
            for threshold in (CONFIG.fg_threshold, CONFIG.bg_threshold):
                scores = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold)
                labels = crf_inference_label(image, np.argmax(scores, axis=0), len(keys))
                confident.append(keys[labels])
            foreground, background = confident
            mask = foreground.copy()
            mask[foreground == 0] = 255
            mask[(background + foreground) == 0] = 0
            Image.fromarray(mask.astype(np.uint8)).save(out_dir / f"{sample.id}.png")
    return out_dir


def crf_inference_label(image: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, num_labels, gt_prob=0.7, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    q = crf.inference(10)
    return np.argmax(np.array(q).reshape((num_labels, height, width)), axis=0)


def differing_pixels(samples, reference: Path, ours_dir: Path) -> int:
    return sum(int((np.asarray(Image.open(reference / f"{s.id}.png")) != load_mask(ours_dir / f"{s.id}.png")).sum())
               for s in samples)


def table(result: dict) -> str:
    lines = [f"CRF {result['params']}, thresholds fg/bg {result['thresholds']}; {result['machine']['cores']} CPU "
             "cores; labels identical to the serial loop's in every run (asserted) (`python benchmarks/crf.py`).",
             "",
             "| images | way | processes | images/s | images/s per core | vs serial loop | vs 1 worker |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, image_set in result["image_sets"].items():
        for variant, row in image_set["variants"].items():
            lines.append(f"| {name} ({image_set['images']}) | {variant} | {row['processes']} | "
                         f"{row['images_per_second']:.2f} | {row['images_per_second_per_core']:.2f} | "
                         f"{row['speedup_vs_serial']:.2f}x | {row['scaling_vs_1_worker']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
