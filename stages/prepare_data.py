"""Stage `data`: make or read a dataset and write the run's dataset index (`dataset.json`).

`synth` generates the built-in benchmark; `voc` reads PASCAL VOC 2012 (+ SBD SegmentationClassAug); `coco`
reads MS COCO 2014, rendering its masks into the run; `folder` reads a folder of images with a labels file.
Every later stage reads only the index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from .config import CocoDataConfig, FolderDataConfig, SynthDataConfig, VocDataConfig
from .core.console import console, progress_bar
from .core.runs import Run, Stage
from .data.coco import read_coco, split_sources
from .data.folder import CLASSES_FILE, read_folder
from .data.index import DatasetIndex
from .data.synth import generate
from .data.verify import bad_sample_error, distinct_samples, find_problems, skipped_summary, without_problems
from .data.voc import find_voc_dir, read_voc


def data_synth(run: Run, config: SynthDataConfig, *, force: bool = False) -> dict:
    """Generate the synthetic benchmark and index it."""
    out_dir = Path(config.out) if config.out else run.synth_images
    synth = config.synth

    def work() -> dict:
        with progress_bar() as bar:
            task = bar.add_task("data synth", total=synth.num_train + synth.num_val, status="")
            index = generate(synth, out_dir, workers=max(config.workers, 1),
                             progress=lambda n: bar.update(task, advance=n))
        return _finish(run, index)

    return run.execute(Stage("data", {"source": "synth", **asdict(config)}, [],
                             [run.dataset_index.path, out_dir], work), force)


def data_voc(run: Run, config: VocDataConfig, *, force: bool = False) -> dict:
    """Index VOC. `verify` decodes every image and mask once (see `data.verify`); a bad one is an error, or with
    `skip_bad` left out and listed in the index's `skipped`."""
    root = Path(config.root)
    find_voc_dir(root)  # a wrong path fails before any progress bar is drawn

    def work() -> dict:
        with progress_bar() as bar:
            task = bar.add_task("data voc", total=None, status="reading masks")
            index = read_voc(root, config.splits, workers=max(config.workers, 1),
                             progress=lambda n: bar.update(task, advance=n), skip_bad=config.skip_bad)
        if config.verify:
            index = _verified(index, max(config.workers, 1), config.skip_bad)
        return _finish(run, index, config.verify)

    return run.execute(Stage("data", {"source": "voc", **asdict(config)}, [root], [run.dataset_index.path], work),
                       force)


def data_coco(run: Run, config: CocoDataConfig, *, force: bool = False) -> dict:
    """Index COCO 2014, rendering each split's masks into the run once (or reading a pre-rendered mask folder);
    `verify` and `skip_bad` as for `data_voc`. Images without labels are left out and counted in the metrics."""
    root = Path(config.root)
    sources = split_sources(root, config.splits, config.render)  # a wrong path fails before any progress bar
    rendered = [run.coco_masks(source.split).path for source in sources if source.kind == "annotations"]

    def work() -> dict:
        with progress_bar() as bar:
            task = bar.add_task("data coco", total=None, status="rendering masks")
            index, reports = read_coco(root, lambda split: run.coco_masks(split).path, config.splits,
                                       workers=max(config.workers, 1), progress=lambda n: bar.update(task, advance=n),
                                       skip_bad=config.skip_bad, render=config.render)
        if config.verify:
            index = _verified(index, max(config.workers, 1), config.skip_bad)
        for split, report in reports.items():
            reused = f", {report.reused} reused from an earlier run" if report.reused else ""
            made = f"{report.rendered} rendered{reused}" if report.masks == "rendered" else "pre-rendered"
            console.print(f"{split}: masks {made} ({report.source}); {report.unlabelled} image"
                          f"{'s' if report.unlabelled != 1 else ''} without labels left out",
                          markup=False, highlight=False, soft_wrap=True)
        metrics = _finish(run, index, config.verify)
        for split, report in reports.items():
            metrics.update({f"{split}_unlabelled_images": report.unlabelled, f"{split}_masks": report.masks,
                            f"{split}_masks_rendered": report.rendered, f"{split}_masks_reused": report.reused})
        return metrics

    return run.execute(Stage("data", {"source": "coco", **asdict(config)}, [source.path for source in sources],
                             [run.dataset_index.path, *rendered], work), force)


def data_folder(run: Run, config: FolderDataConfig, *, force: bool = False) -> dict:
    """Index a folder of images; `verify` and `skip_bad` as for `data_voc`."""
    root = Path(config.root)
    labels_file = Path(config.labels) if config.labels else None

    def work() -> dict:
        index = read_folder(root, labels_file, config.classes)
        if config.verify:
            index = _verified(index, max(config.workers, 1), config.skip_bad)
        return _finish(run, index, config.verify)

    inputs = ([root] + ([labels_file] if labels_file else [])
              + ([root / CLASSES_FILE] if (root / CLASSES_FILE).is_file() else []))
    return run.execute(Stage("data", {"source": "folder", **asdict(config)}, inputs, [run.dataset_index.path], work),
                       force)


def _verified(index: DatasetIndex, workers: int, skip_bad: bool) -> DatasetIndex:
    """`index` after the decode pass: the first bad sample raises, unless `skip_bad` leaves them all out."""
    samples = distinct_samples(index)
    with progress_bar() as bar:
        task = bar.add_task("verify", total=len(samples), status="decoding images and masks")
        problems = find_problems(samples, len(index.class_names), workers,
                                 progress=lambda n: bar.update(task, advance=n), first_only=not skip_bad)
    if problems and not skip_bad:
        raise bad_sample_error(problems[0])
    return without_problems(index, problems)


def _finish(run: Run, index: DatasetIndex, verified: bool = False) -> dict:
    """Write the index; its metrics (images per split, and the images left out)."""
    index.save(run.dataset_index.path)
    metrics = {f"{split}_images": len(samples) for split, samples in index.splits.items()}
    if verified or index.skipped:
        metrics["skipped_images"] = [asdict(entry) for entry in index.skipped]
    if index.skipped:
        # One unwrapped line for logs and grep; markup=False: rich would take "[...]" in paths for style tags.
        console.print(skipped_summary(index.skipped), markup=False, highlight=False, soft_wrap=True)
    console.print(summary_table(index))
    return metrics


def summary_table(index: DatasetIndex) -> Table:
    """Images per split, and per class how many images contain it."""
    table = Table(title=f"dataset {index.name} ({index.format}) at {index.root}")
    table.add_column("class")
    for split in index.splits:
        table.add_column(split, justify="right")
    counts = {split: Counter(label for s in samples for label in s.labels) for split, samples in index.splits.items()}
    table.add_row("[bold]images", *[str(len(samples)) for samples in index.splits.values()])
    for class_index, name in enumerate(index.class_names[1:], start=1):
        table.add_row(name, *[str(counts[split][class_index]) for split in index.splits])
    return table
