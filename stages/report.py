"""Stage `report`: one self-contained HTML page summarising a run (`report.html`).

It shows every evaluation in `eval/`, the stage timings from the manifest, and for a few images of a split
the image, its ground truth, CAM, pseudo mask and prediction side by side. Images are embedded as base64
PNG data URIs so the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from .config import ReportConfig
from .core.camstore import CamReader
from .core.io import atomic_path, load_image, load_mask, read_json
from .core.overlays import PALETTE, heat_overlay, mask_overlay
from .core.runs import Run, Stage
from .data.index import DatasetIndex, Sample
from .results import percent, stale_results

THUMBNAIL_SIZE = 256  # longest side of each picture on the page, to keep the file small
MISSING = "–"

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: center; vertical-align: middle; }
th { background: #f0f0f0; }
td.missing { color: #999; font-size: 2em; }
img { display: block; min-width: 128px; image-rendering: pixelated; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 4px 0 12px; }
"""


def report(run: Run, config: ReportConfig, *, force: bool = False) -> dict:
    """Write the run's report page; skipped when up to date (see `Run.execute`) unless `force`.

    It shows the split's CAMs, the mask set `config.pseudo` and the predictions of segmenter `config.segment`
    where the run has them; an image missing from one of them is shown as "–"."""
    index = run.dataset()
    cam_file, mask_dir, prediction_dir = (artifact.path if artifact.exists() else None for artifact in (
        run.cams(config.split), run.pseudo(config.pseudo), run.predictions(config.segment, config.split)))
    eval_files = sorted(run.eval_dir.glob("*.json"))
    samples = _choose_samples(index, config)
    output = run.report

    def work() -> dict:
        results = [read_json(path, "evaluation result") for path in eval_files]
        cams = CamReader(cam_file) if cam_file is not None else None
        try:
            rows = [_sample_row(sample, cams, mask_dir, prediction_dir) for sample in samples]
        finally:
            if cams is not None:
                cams.close()
        page = _page(run, index, config, results, run.manifest(), rows, stale_results(run))
        with atomic_path(output) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return {"num_samples": len(samples), "num_results": len(results)}

    inputs = [run.dataset_index.path, run.manifest_path, *eval_files,
              *(path for path in (cam_file, mask_dir, prediction_dir) if path is not None)]
    return run.execute(Stage("report", config, inputs, [output], work), force)


def _choose_samples(index: DatasetIndex, config: ReportConfig) -> list[Sample]:
    """`num_samples` images with a ground-truth mask, picked by the seed, in split order."""
    labelled = [sample for sample in index.split(config.split) if sample.mask]
    chosen = random.Random(config.seed).sample(range(len(labelled)), min(config.num_samples, len(labelled)))
    return [labelled[position] for position in sorted(chosen)]


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
                prediction_dir: Path | None) -> tuple[str, list[str | None]]:
    """The sample id and its five pictures as data URIs (None where the artifact lacks the image)."""
    image = load_image(sample.image)
    shape = image.shape[:2]
    pictures: list[str | None] = [png_data_uri(image)]
    pictures.append(png_data_uri(mask_overlay(image, _fit_mask(load_mask(sample.mask), shape))))
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
    return sample.id, pictures


# ---- HTML ----

def _page(run: Run, index: DatasetIndex, config: ReportConfig, results: list[dict], manifest: dict,
          rows: list[tuple[str, list[str | None]]], stale: dict[str, str]) -> str:
    title = f"wsss report: {run.root.name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>dataset {html.escape(index.name)} ({html.escape(index.format)}), "
        f"{len(index.class_names) - 1} foreground classes</p>",
        "<h2>Evaluation</h2>",
        _results_html(results, stale),
        _per_class_html(results),
        "<h2>Stages</h2>",
        _stages_html(manifest),
        f"<h2>Samples of split {html.escape(config.split)}</h2>",
        _legend_html(index.class_names),
        _samples_html(rows, config.split),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


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
            _curve_svg(result["curve"]) if "curve" in result else MISSING,
            html.escape(f"stale: {stale[result['name']]}") if result["name"] in stale else "",
        ])
    headers = ["name", "kind", "split", "images", "mIoU %", "pixel acc %", "best thr", "coverage %",
               "mIoU confident %", "mIoU vs threshold", "up to date"]
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


def _curve_svg(curve: list[list[float | None]], width: int = 200, height: int = 60) -> str:
    """mIoU (0..1, bottom to top) against threshold as an inline SVG polyline, the best point marked."""
    points = [(threshold, miou) for threshold, miou in curve if miou is not None]
    if not points:
        return MISSING
    low, high = points[0][0], points[-1][0]
    span = (high - low) or 1.0

    def position(threshold: float, miou: float) -> tuple[float, float]:
        return 2 + (width - 4) * (threshold - low) / span, 2 + (height - 4) * (1 - miou)

    polyline = " ".join("{:.1f},{:.1f}".format(*position(*point)) for point in points)
    best = max(points, key=lambda point: point[1])
    best_x, best_y = position(*best)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>'
        f'<polyline points="{polyline}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
        f'<circle cx="{best_x:.1f}" cy="{best_y:.1f}" r="3" fill="#d62728"/>'
        f"<title>thresholds {low:.2f}-{high:.2f}; best {best[0]:.2f} at {100 * best[1]:.1f}% mIoU</title>"
        "</svg>"
    )


def _stages_html(manifest: dict) -> str:
    stages = manifest.get("stages", {})
    if not stages:
        return "<p>No stage has been recorded yet.</p>"
    rows = [
        [html.escape(key), html.escape(str(entry.get("started", MISSING))), f"{entry.get('seconds', 0):.1f}"]
        for key, entry in stages.items()
    ]
    return _table(["stage", "started", "seconds"], rows)


def _legend_html(class_names: list[str]) -> str:
    items = []
    for index, name in enumerate(class_names[1:], start=1):
        red, green, blue = (int(value) for value in PALETTE[index])
        items.append(f'<span class="swatch" style="background: rgb({red},{green},{blue})"></span>'
                     f"{html.escape(name)}")
    return "<p>" + "".join(items) + "</p>"


def _samples_html(rows: list[tuple[str, list[str | None]]], split: str) -> str:
    if not rows:
        return f"<p>Split {html.escape(split)} has no image with a ground-truth mask to show.</p>"
    headers = ["image", "ground truth", "CAM", "pseudo mask", "prediction"]
    body = []
    for sample_id, pictures in rows:
        cells = "".join(
            f'<td><img src="{uri}" alt="{html.escape(header)}"></td>' if uri
            else f'<td class="missing">{MISSING}</td>'
            for header, uri in zip(headers, pictures)
        )
        body.append(f"<tr><th>{html.escape(sample_id)}</th>{cells}</tr>")
    head = "<th>id</th>" + "".join(f"<th>{header}</th>" for header in headers)
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
