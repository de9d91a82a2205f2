"""Stage `report`: one self-contained HTML page summarising a run (`report.html`), or several runs side by side.

A run's part of the page shows every evaluation in `eval/` (a table, the CAM mIoU against the background threshold,
where the errors go, a confusion matrix per mask set), the training curves recorded in the manifest, the stage
timings, and for a few images of a split their labels and the image, its ground truth, CAM, pseudo mask and
prediction side by side. Plots are inline SVG (`stages.plots`) and images base64 PNG data URIs, so the page can be
mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import ReportConfig
from .core.camstore import CamReader
from .core.history import loss_terms
from .core.io import atomic_path, load_image, load_mask, read_json
from .core.overlays import PALETTE, heat_overlay, mask_overlay
from .core.runs import Run, Stage
from .data.index import DatasetIndex, Sample
from .plots import Marker, Series, bar_chart, heat_map, line_plot
from .results import headline, load_results, percent, stale_results

THUMBNAIL_SIZE = 256  # longest side of each picture on the page, to keep the file small
MISSING = "–"
# Manifest keys of the stages that train, whose per-epoch history the page plots.
TRAINING_STAGES = ("train-cam", "train-affinity", "segment/")

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: center; vertical-align: middle; }
th { background: #f0f0f0; }
td.missing { color: #999; font-size: 2em; }
th .labels { display: block; font-weight: normal; font-size: 0.85em; color: #555; margin-top: 4px; }
img { display: block; min-width: 128px; image-rendering: pixelated; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; margin-bottom: 2em; }
svg.plot { background: #fff; border: 1px solid #ddd; }
.stale { color: #b00; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 4px 0 12px; }
section.run { border-top: 3px solid #888; margin-top: 3em; }
"""


@dataclass
class Sources:
    """What a run's part of the page reads: its evaluations and the artifacts shown in the sample rows (None
    where the run does not have them)."""

    eval_files: list[Path]
    cam_file: Path | None
    mask_dir: Path | None
    prediction_dir: Path | None

    @classmethod
    def of(cls, run: Run, config: ReportConfig) -> "Sources":
        cam_file, mask_dir, prediction_dir = (artifact.path if artifact.exists() else None for artifact in (
            run.cams(config.split), run.pseudo(config.pseudo), run.predictions(config.segment, config.split)))
        return cls(sorted(run.eval_dir.glob("*.json")), cam_file, mask_dir, prediction_dir)

    def paths(self) -> list[Path]:
        return [*self.eval_files, *(path for path in (self.cam_file, self.mask_dir, self.prediction_dir) if path)]


def report(run: Run, config: ReportConfig, *, force: bool = False) -> dict:
    """Write the run's report page; skipped when up to date (see `Run.execute`) unless `force`.

    It shows the split's CAMs, the mask set `config.pseudo` and the predictions of segmenter `config.segment`
    where the run has them; an image missing from one of them is shown as "–"."""
    index = run.dataset()
    sources = Sources.of(run, config)
    samples = _choose_samples(index, config)
    output = run.report

    def work() -> dict:
        body = _run_sections(run, index, config, sources, samples, heading=2)
        _write_page(output, f"wsss report: {run.root.name}", body)
        return {"num_samples": len(samples), "num_results": len(sources.eval_files)}

    inputs = [run.dataset_index.path, run.manifest_path, *sources.paths()]
    return run.execute(Stage("report", config, inputs, [output], work), force)


def report_runs(runs: list[Run], config: ReportConfig, out: Path) -> None:
    """Write one page comparing `runs` to `out`: their headline numbers, their CAM threshold curves in one plot,
    then each run's own sections. It belongs to no run, so it is not recorded in a manifest and always written."""
    names = run_names(runs)
    results = {name: load_results(run) for name, run in zip(names, runs)}
    parts = ["<h2>Headline numbers</h2>", _headline_html(runs, names),
             '<div class="plots">', _threshold_plot(results), "</div>"]
    for name, run in zip(names, runs):
        index = run.dataset()
        sources = Sources.of(run, config)
        parts += [f'<section class="run"><h2>Run {html.escape(name)}</h2>',
                  f"<p>{html.escape(str(run.root))}</p>",
                  _run_sections(run, index, config, sources, _choose_samples(index, config), heading=3),
                  "</section>"]
    _write_page(out, f"wsss report: {', '.join(names)}", "\n".join(parts))


def run_names(runs: list[Run]) -> list[str]:
    """How the page names each run: its folder's name, or its whole path where two runs share a folder name."""
    short = [run.root.name for run in runs]
    return [name if short.count(name) == 1 else str(run.root) for name, run in zip(short, runs)]


def _choose_samples(index: DatasetIndex, config: ReportConfig) -> list[Sample]:
    """`num_samples` images of the split (with or without a ground-truth mask), picked by the seed, in split
    order."""
    images = index.split(config.split)
    chosen = random.Random(config.seed).sample(range(len(images)), min(config.num_samples, len(images)))
    return [images[position] for position in sorted(chosen)]


# ---- pictures ----

def png_data_uri(rgb: np.ndarray) -> str:
    picture = Image.fromarray(rgb)
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask at the image's size (nearest neighbour), in case it was written at another resolution."""
    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def _fit_heat(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if heat.shape == shape:
        return heat
    resized = Image.fromarray(heat.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _sample_row(sample: Sample, cams: CamReader | None, mask_dir: Path | None,
                prediction_dir: Path | None) -> tuple[Sample, list[str | None]]:
    """The sample and its five pictures as data URIs (None where the sample has no ground truth or the
    artifact lacks the image)."""
    image = load_image(sample.image)
    shape = image.shape[:2]
    pictures: list[str | None] = [png_data_uri(image)]
    pictures.append(png_data_uri(mask_overlay(image, _fit_mask(load_mask(sample.mask), shape)))
                    if sample.mask else None)
    if cams is not None and sample.id in cams:
        maps, _ = cams.read(sample.id)
        heat = maps.max(axis=0) if len(maps) else np.zeros(maps.shape[1:], np.float32)
        pictures.append(png_data_uri(heat_overlay(image, _fit_heat(heat, shape))))
    else:
        pictures.append(None)
    for directory in (mask_dir, prediction_dir):
        path = directory / f"{sample.id}.png" if directory is not None else None
        if path is not None and path.is_file():
            pictures.append(png_data_uri(mask_overlay(image, _fit_mask(load_mask(path), shape))))
        else:
            pictures.append(None)
    return sample, pictures


# ---- HTML ----

def _write_page(path: Path, title: str, body: str) -> None:
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        body,
        "</body></html>",
    ]) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def _run_sections(run: Run, index: DatasetIndex, config: ReportConfig, sources: Sources, samples: list[Sample],
                  heading: int) -> str:
    """One run's part of the page, its section titles at level `heading` (2 on a run's own page)."""
    results = [read_json(path, "evaluation result") for path in sources.eval_files]
    stale = stale_results(run)
    manifest = run.manifest()
    cams = CamReader(sources.cam_file) if sources.cam_file is not None else None
    try:
        rows = [_sample_row(sample, cams, sources.mask_dir, sources.prediction_dir) for sample in samples]
    finally:
        if cams is not None:
            cams.close()
    title = f"h{heading}"
    return "\n".join([
        f"<p>dataset {html.escape(index.name)} ({html.escape(index.format)}), "
        f"{len(index.class_names) - 1} foreground classes</p>",
        f"<{title}>Evaluation</{title}>",
        _results_html(results, stale),
        _per_class_html(results),
        _evaluation_plots(results, stale),
        f"<{title}>Training</{title}>",
        _training_html(manifest),
        f"<{title}>Stages</{title}>",
        _stages_html(manifest),
        f"<{title}>Samples of split {html.escape(config.split)}</{title}>",
        _legend_html(index.class_names),
        _samples_html(rows, index.class_names, config.split),
    ])


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """An HTML table; headers are escaped here, cells must already be HTML."""
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _results_html(results: list[dict], stale: dict[str, str]) -> str:
    """The evaluations; those whose inputs changed since they ran are marked stale, with why."""
    if not results:
        return "<p>No evaluation results yet (run <code>wsss evaluate</code>).</p>"
    rows = []
    for result in results:
        threshold = result.get("best_threshold")
        rows.append([
            html.escape(str(result["name"])),
            html.escape(str(result["kind"])),
            html.escape(str(result["split"])),
            str(result["num_images"]),
            percent(result["miou"]),
            percent(result["pixel_accuracy"]),
            MISSING if threshold is None else f"{threshold:.2f}",
            percent(result.get("coverage")),
            percent(result.get("miou_confident")),
            f'<span class="stale">{html.escape("stale: " + stale[result["name"]])}</span>'
            if result["name"] in stale else "yes",
        ])
    headers = ["name", "kind", "split", "images", "mIoU %", "pixel acc %", "best thr", "coverage %",
               "mIoU confident %", "up to date"]
    return _table(headers, rows)


def _per_class_html(results: list[dict]) -> str:
    """Per-class IoU, one column per evaluation result."""
    if not results:
        return ""
    class_names = list(results[0]["per_class"])
    rows = [
        [html.escape(name)] + [percent(result["per_class"].get(name, {}).get("iou")) for result in results]
        for name in class_names
    ]
    return _table(["IoU % per class"] + [str(result["name"]) for result in results], rows)


def _plot_title(result: dict, what: str, stale: dict[str, str]) -> str:
    return f"{result['name']}: {what}" + (" (stale)" if result["name"] in stale else "")


def _evaluation_plots(results: list[dict], stale: dict[str, str]) -> str:
    """The CAM threshold curves, where the errors go, and a confusion matrix per evaluation. Results written
    before the error shares and the confusion matrix were recorded simply have no such plot."""
    plots = [_threshold_curve(result, _plot_title(result, "mIoU vs background threshold", stale))
             for result in results if result.get("curve")]
    with_errors = [result for result in results if "errors" in result]
    if with_errors:
        plots.append(_errors_chart(with_errors))
    plots += [_confusion_heat_map(result, _plot_title(result, _confusion_caption(result), stale))
              for result in results if "confusion" in result]
    return f'<div class="plots">{"".join(plots)}</div>' if plots else ""


def _curve_points(curve: list[list[float | None]]) -> list[tuple[float, float]]:
    """(threshold, mIoU %) of a CAM evaluation's curve, without the thresholds whose mIoU is undefined."""
    return [(threshold, 100 * miou) for threshold, miou in curve if miou is not None]


def _threshold_curve(result: dict, title: str) -> str:
    """One CAM evaluation's mIoU against the background threshold, the chosen threshold marked."""
    best, miou = result.get("best_threshold"), result.get("miou")
    markers = (Marker(best, 100 * miou, f"best {best:.2f}: {100 * miou:.1f}%"),) if None not in (best, miou) else ()
    return line_plot([Series("mIoU", _curve_points(result["curve"]))], title=title, x_label="background threshold",
                     y_label="mIoU %", markers=markers)


def _threshold_plot(results: dict[str, list[dict]]) -> str:
    """Every run's CAM threshold curves in one plot (several runs' page)."""
    series = [Series(f"{run_name}: {result['name']}", _curve_points(result["curve"]))
              for run_name, run_results in results.items() for result in run_results if result.get("curve")]
    if not series:
        return "<p>No run has a CAM evaluation with a threshold curve.</p>"
    return line_plot(series, title="CAM mIoU vs background threshold", x_label="background threshold",
                     y_label="mIoU %")


# What each error share counts (see `ConfusionMatrix.error_shares`), as the chart's legend says it.
ERROR_KINDS = {"missed": "missed: object pixels predicted background",
               "confused": "confused: object pixels given another object",
               "spill": "spill: object predictions on background"}


def _errors_chart(results: list[dict]) -> str:
    """Each evaluation's missed / confused / spill shares."""
    shares = {legend: [None if result["errors"].get(kind) is None else 100 * result["errors"][kind]
                       for result in results] for kind, legend in ERROR_KINDS.items()}
    return bar_chart([str(result["name"]) for result in results], shares, title="Where the errors go",
                     x_label="share %", y_label="evaluation", x_range=(0, 100))


def _confusion_caption(result: dict) -> str:
    threshold = result.get("best_threshold")
    return "confusion" + ("" if threshold is None else f" at threshold {threshold:.2f}")


def _confusion_heat_map(result: dict, title: str) -> str:
    """The evaluation's confusion matrix, each ground-truth row as shares of its pixels."""
    counts = result["confusion"]
    shares = [[count / sum(row) if sum(row) else None for count in row] for row in counts]
    return heat_map(shares, counts, list(result["per_class"]), title=title, x_label="predicted class",
                    y_label="ground-truth class")


def _training_html(manifest: dict) -> str:
    """Per training stage, its losses and its validation metrics per epoch, as the stage recorded them in the
    manifest (runs trained before that was recorded have none)."""
    stages = {key: entry for key, entry in manifest.get("stages", {}).items() if key.startswith(TRAINING_STAGES)}
    if not stages:
        return "<p>No training stage has run yet.</p>"
    parts = []
    for key, entry in stages.items():
        history = entry.get("metrics", {}).get("history")
        if not history:
            parts.append(f"<p>{html.escape(key)}: no per-epoch history recorded.</p>")
            continue
        losses = list(dict.fromkeys(name for epoch in history for name in loss_terms(epoch)))
        validation = list(dict.fromkeys(name for epoch in history for name in epoch if name.startswith("val_")))
        plots = [_epoch_plot(history, losses, f"{key}: training loss", "loss", None)]
        if validation:
            plots.append(_epoch_plot(history, validation, f"{key}: validation", "%", (0, 100)))
        parts.append(f'<div class="plots">{"".join(plots)}</div>')
    return "\n".join(parts)


def _epoch_plot(history: list[dict], names: list[str], title: str, y_label: str,
                y_range: tuple[float, float] | None) -> str:
    """The named per-epoch values against the epoch (1, 2, ...); `y_range` (0..100) plots them as percentages."""
    scale = 100 if y_range else 1
    series = [Series(name, [(epoch, scale * values[name]) for epoch, values in enumerate(history, start=1)
                            if values.get(name) is not None]) for name in names]
    return line_plot(series, title=title, x_label="epoch", y_label=y_label, y_range=y_range, integer_x=True)


def _headline_html(runs: list[Run], names: list[str]) -> str:
    """The runs' headline numbers (`stages.results.headline`), one column per run."""
    numbers = [headline(run) for run in runs]
    keys = list(dict.fromkeys(key for run_numbers in numbers for key in run_numbers if key != "seconds"))
    rows = [[html.escape(_headline_label(key))] + [_headline_value(key, run_numbers.get(key))
                                                   for run_numbers in numbers] for key in keys]
    return _table(["result"] + names, rows)


def _headline_label(key: str) -> str:
    """What a key of `stages.results.headline` is, for the table's first column."""
    if key == "classifier_val_map":
        return "classifier val mAP %"
    if key == "weak_over_full":
        return "segmenter: pseudo masks / ground truth"
    if key == "total_seconds":
        return "total stage time (s)"
    if key.endswith("_miou"):
        return f"{key.removesuffix('_miou')} mIoU %"
    return f"{key.removesuffix('_best_threshold')} best threshold"


def _headline_value(key: str, value: float | None) -> str:
    """A headline number as the tables show it: scores in %, the weak/full ratio and thresholds as fractions."""
    if value is None:
        return MISSING
    if key == "classifier_val_map" or key.endswith("_miou"):
        return percent(value)
    if key == "weak_over_full":
        return f"{value:.3f}"
    if key == "total_seconds":
        return f"{value:.1f}"
    return f"{value:.2f}"


def _stages_html(manifest: dict) -> str:
    stages = manifest.get("stages", {})
    if not stages:
        return "<p>No stage has been recorded yet.</p>"
    rows = [
        [html.escape(key), html.escape(str(entry.get("started", MISSING))), f"{entry.get('seconds', 0):.1f}",
         f"{entry['peak_rss_mib']:.0f}" if "peak_rss_mib" in entry else MISSING]
        for key, entry in stages.items()
    ]
    return _table(["stage", "started", "seconds", "peak memory (MiB)"], rows)


def _legend_html(class_names: list[str]) -> str:
    items = []
    for index, name in enumerate(class_names[1:], start=1):
        red, green, blue = (int(value) for value in PALETTE[index])
        items.append(f'<span class="swatch" style="background: rgb({red},{green},{blue})"></span>'
                     f"{html.escape(name)}")
    return "<p>" + "".join(items) + "</p>"


def _samples_html(rows: list[tuple[Sample, list[str | None]]], class_names: list[str], split: str) -> str:
    if not rows:
        return f"<p>Split {html.escape(split)} has no images to show.</p>"
    headers = ["image", "ground truth", "CAM", "pseudo mask", "prediction"]
    body = []
    for sample, pictures in rows:
        cells = "".join(
            f'<td><img src="{uri}" alt="{html.escape(header)}"></td>' if uri
            else f'<td class="missing">{MISSING}</td>'
            for header, uri in zip(headers, pictures)
        )
        labels = ", ".join(class_names[label] for label in sample.labels) or "no labels"
        body.append(f'<tr><th>{html.escape(sample.id)}<span class="labels">{html.escape(labels)}</span></th>'
                    f"{cells}</tr>")
    head = "<th>id (labels)</th>" + "".join(f"<th>{header}</th>" for header in headers)
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
