"""Stage `data`: make or read a dataset and write the run's dataset index (`dataset.json`).

`synth` generates the built-in benchmark; `voc` reads PASCAL VOC 2012 (+ SBD SegmentationClassAug);
`folder` reads a folder of images with a labels file. Every later stage reads only the index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from rich.table import Table

from .core.console import console, progress_bar
from .core.runs import DATASET_INDEX, Run
from .data.folder import read_folder
from .data.index import DatasetIndex
from .data.synth import SynthConfig, generate
from .data.verify import bad_sample_error, distinct_samples, find_problems, skipped_summary, without_problems
from .data.voc import DEFAULT_SPLITS, find_voc_dir, read_voc


def data_synth(run: Run, config: SynthConfig, out_dir: Path | None = None, workers: int = 2) -> DatasetIndex:
    config.validate()
    out_dir = Path(out_dir) if out_dir else run.path("synth")
    total = config.num_train + config.num_val
    with run.stage("data", {"source": "synth", "out": str(out_dir), "workers": workers, **asdict(config)}) as record:
        with progress_bar() as bar:
            task = bar.add_task("data synth", total=total, status="")
            index = generate(config, out_dir, workers=workers, progress=lambda n: bar.update(task, advance=n))
        _finish(run, index, record)
    return index


def data_voc(run: Run, root: Path, splits: Sequence[str] = DEFAULT_SPLITS, workers: int = 8, verify: bool = True,
             skip_bad: bool = False) -> DatasetIndex:
    """Index VOC. `verify` decodes every image and mask once (see `data.verify`); a bad one is an error, or with
    `skip_bad` left out and listed in the index's `skipped`."""
    find_voc_dir(root)  # a wrong path fails before any progress bar is drawn
    config = {"source": "voc", "root": str(root), "splits": list(splits), "verify": verify, "skip_bad": skip_bad}
    with run.stage("data", config) as record:
        with progress_bar() as bar:
            task = bar.add_task("data voc", total=None, status="reading masks")
            index = read_voc(root, splits, workers=workers, progress=lambda n: bar.update(task, advance=n),
                             skip_bad=skip_bad)
        if verify:
            index = _verified(index, workers, skip_bad)
        _finish(run, index, record, verify)
    return index


def data_folder(run: Run, root: Path, labels_file: Path | None = None, workers: int = 8, verify: bool = True,
                skip_bad: bool = False) -> DatasetIndex:
    """Index a folder of images; `verify` and `skip_bad` as for `data_voc`."""
    config = {"source": "folder", "root": str(root), "labels": str(labels_file), "verify": verify,
              "skip_bad": skip_bad}
    with run.stage("data", config) as record:
        index = read_folder(root, labels_file)
        if verify:
            index = _verified(index, workers, skip_bad)
        _finish(run, index, record, verify)
    return index


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


def _finish(run: Run, index: DatasetIndex, record, verified: bool = False) -> None:
    index.save(run.path(DATASET_INDEX))
    record.inputs.append(index.root)
    record.outputs.append(run.path(DATASET_INDEX))
    record.metrics = {f"{split}_images": len(samples) for split, samples in index.splits.items()}
    if verified or index.skipped:
        record.metrics["skipped_images"] = [asdict(entry) for entry in index.skipped]
    if index.skipped:
        # One unwrapped line for logs and grep; markup=False: rich would take "[...]" in paths for style tags.
        console.print(skipped_summary(index.skipped), markup=False, highlight=False, soft_wrap=True)
    console.print(summary_table(index))


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
