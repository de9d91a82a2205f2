"""Stage `predict`: masks for new images without labels, from a trained segmenter (and, if asked, the CAM
classifier's predicted classes and their CAMs).

Input: a `segment` checkpoint, optionally a `train-cam` checkpoint, and images given as files, folders (their
images, not their sub-folders) or `.txt` lists of image paths (one per line, relative to the list's folder).
Output: the folder OUT, a run of its own (`core.layout`: masks/, overlays/, cams/, classes.json, manifest.json).
An image's NAME is its file name without the suffix; two inputs with one NAME are an error.

The test-time settings default to the segmenter's own (its checkpoint's config), and the masks come from the same
code as `segment --predict` (`models.inference.predict_masks`), so predicting a split's images gives the masks
`segment` wrote. A killed run is resumed: the masks of the same checkpoints and settings are kept and only the
other images predicted (a new image added to a folder is predicted alone, not the whole folder again).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import CamModelConfig, PredictConfig, SegModelConfig
from .core.camstore import CamReader, CamWriter
from .core.checkpoint import checkpoint_normalization, load_checkpoint, load_state, model_config
from .core.console import console, progress_bar
from .core.device import memory_format, resolve_device
from .core.distributed import processes
from .core.errors import UserError
from .core.io import write_json
from .core.resumable import resumable_directory
from .core.runs import Run, Stage, comparable, config_record, fingerprint
from .data.index import Sample, check_sample_id
from .data.loading import same_size_batches
from .methods import cam_model_from_checkpoint
from .models.deeplab import DeepLab
from .models.inference import PredictionSettings, predict_masks
from .models.multiscale import fused_cams, labelled_cams

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
STAGE_KEY = "predict"


def predict(run: Run, config: PredictConfig, *, force: bool = False) -> dict:
    """Predict every input image into `run` (the output folder); skipped when up to date unless `force`."""
    if not config.checkpoint:
        raise UserError("predict needs --checkpoint: a segmenter's checkpoint.pt (from `wsss segment`)")
    _check_output_folder(run)
    samples = input_images(config.inputs)
    checkpoints = [Path(config.checkpoint)] + ([Path(config.cam_checkpoint)] if config.cam_checkpoint else [])
    outputs = [run.predicted_masks] + ([run.predicted_overlays] if config.overlay else [])
    outputs += [run.predicted_cams, run.predicted_classes] if config.cam_checkpoint else []

    def work() -> dict:
        segmenter = load_checkpoint(config.checkpoint, "segmenter")
        trained = segmenter["config"]
        settings = PredictionSettings(
            test_scales=config.test_scales or tuple(trained.get("test_scales", (1.0,))),
            test_flip=trained.get("test_flip", False) if config.test_flip is None else config.test_flip,
            crf=trained.get("crf", False) if config.crf is None else config.crf,
            amp=config.amp, batch_size=config.batch_size, workers=config.workers)
        device = resolve_device(config.device)
        # What the files are made from; not the inputs, so that adding images to a folder keeps the others' files.
        recorded = {key: value for key, value in comparable(config_record(config)).items() if key != "inputs"}
        identity = {**recorded, "settings": asdict(settings),
                    "checkpoints": [fingerprint(path) for path in checkpoints]}
        skipped: list[dict] = []

        def skip(sample: Sample, reason: str) -> None:
            if not config.skip_bad:
                raise UserError(reason)
            skipped.append({"image": sample.image, "reason": reason})

        metrics = {"images": len(samples), "settings": asdict(settings)}
        model = _segmenter(segmenter, config.checkpoint).to(device, memory_format=memory_format(device))
        done = _prepared(run.predicted_masks, identity, samples, ".png")
        if config.overlay:
            done &= _prepared(run.predicted_overlays, identity, samples, ".jpg")
        todo = [sample for sample in samples if sample.id not in done]
        console.print(f"predict: {len(samples)} images with {config.checkpoint}, scales {list(settings.test_scales)}"
                      f", flip {settings.test_flip}, crf {settings.crf}, device {device}"
                      + (f"; {len(samples) - len(todo)} already done" if len(todo) < len(samples) else ""))
        metrics["predicted"] = predict_masks(model, todo, run.predicted_masks, settings, device,
                                             description="predict",
                                             overlay_dir=run.predicted_overlays if config.overlay else None,
                                             on_bad=skip)
        if config.cam_checkpoint:
            bad = {entry["image"] for entry in skipped}
            metrics["classes"] = _classes_and_cams(run, config, [s for s in samples if s.image not in bad], identity,
                                                   device, skip)
        metrics["skipped"] = skipped
        if skipped:
            console.print(f"predict: {len(skipped)} unreadable images left out, e.g. {skipped[0]['reason']}",
                          markup=False, highlight=False, soft_wrap=True)
        return metrics

    return run.execute(Stage(STAGE_KEY, config, checkpoints + [Path(p) for p in config.inputs], outputs, work),
                       force)


def input_images(inputs: tuple[str, ...]) -> list[Sample]:
    """The images named by `inputs` (files, folders, .txt lists), in the given order, as samples named by their
    file names without the suffix."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() == ".txt":
            paths += _listed_images(path)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)}) nor a .txt list of images")
            paths.append(path)
        else:
            raise UserError(f"input not found: {path}")
    by_name: dict[str, Path] = {}
    for path in paths:
        name = check_sample_id(path.stem)
        if name in by_name and by_name[name].resolve() != path.resolve():
            raise UserError(f"two inputs would write the same mask {name}.png: {by_name[name]} and {path} "
                            "(rename one, or predict them into separate folders)")
        by_name[name] = path
    if not by_name:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return [Sample(name, str(path), None, ()) for name, path in by_name.items()]


def _listed_images(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"image list {list_file} is not a text file") from None
    paths = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            path = list_file.parent / line.strip()
            if not path.is_file():
                raise UserError(f"{list_file}:{number}: image not found: {path}")
            paths.append(path)
    return paths


def _check_output_folder(run: Run) -> None:
    """OUT must be new, empty, or an earlier `predict`'s folder: predict never clears a folder it did not make."""
    if run.root.is_file():
        raise UserError(f"--out {run.root} is a file, not a folder")
    if not run.root.is_dir() or not any(run.root.iterdir()):
        return
    if not run.manifest_path.is_file():
        raise UserError(f"--out {run.root} holds files that `wsss predict` did not write: choose a new or empty "
                        "folder")
    others = sorted(set(run.manifest()["stages"]) - {STAGE_KEY})
    if others:
        raise UserError(f"--out {run.root} is a run folder (it holds {others[0]}): predict into a folder of its own")


def _prepared(folder: Path, identity: dict, samples: list[Sample], suffix: str) -> set[str]:
    """The names of the images whose file in `folder` was made with this `identity` (kept); every other file,
    including those of images no longer among the inputs, is removed. The identity marker stays after the run, so
    a later run with more images predicts only the new ones."""
    finished = resumable_directory(folder, identity, processes())
    wanted = {sample.id + suffix for sample in samples}
    for name in finished - wanted:
        (folder / name).unlink()
    return {name.removesuffix(suffix) for name in finished & wanted}


def _segmenter(payload: dict, path: str) -> DeepLab:
    model = DeepLab(model_config(SegModelConfig, payload, path), len(payload["class_names"]))
    load_state(model, payload, path)
    trained_with = checkpoint_normalization(payload, path)
    if trained_with != model.normalization:  # a backbone whose expected input changed since the checkpoint
        raise UserError(f"checkpoint {path} was trained with input normalisation {trained_with}, its backbone now "
                        f"expects {model.normalization}")
    return model.eval()


@torch.inference_mode()
def _classes_and_cams(run: Run, config: PredictConfig, samples: list[Sample], identity: dict, device, skip) -> dict:
    """Per image: the classifier's probability of each class (at scale 1), the classes above the threshold, and
    their CAMs over `cam_scales` with flips, fused and normalised as `infer-cam` does; cams/NAME.h5 per image and
    classes.json for all. The counts of images per predicted class."""
    payload = load_checkpoint(config.cam_checkpoint, "cam")
    class_names = payload["class_names"]
    model = cam_model_from_checkpoint(payload, config.cam_checkpoint).to(device, memory_format=memory_format(device))
    output_stride = model_config(CamModelConfig, payload, config.cam_checkpoint).output_stride
    normalization = checkpoint_normalization(payload, config.cam_checkpoint)
    done = _prepared(run.predicted_cams, identity, samples, ".h5")
    todo = [sample for sample in samples if sample.id not in done]
    attributes = dict(class_names=class_names, split="predict", scales=list(config.cam_scales),
                      config={"predict": config_record(config), "train": payload["config"]}, kind="cam")
    with progress_bar() as bar:
        task = bar.add_task("predict classes + cams", total=len(todo), status="")
        for batch_samples, images in same_size_batches(todo, normalization, config.batch_size, config.workers,
                                                        on_bad=skip):
            images = images.to(device)
            scores = torch.sigmoid(model(images).float()).cpu().numpy()
            classes = [np.flatnonzero(image_scores > config.class_threshold) + 1 for image_scores in scores]
            cams = fused_cams(model.cams, images, config.cam_scales, True, device, config.amp, output_stride, classes)
            for sample, image_scores, image_classes, image_cams in zip(batch_samples, scores, classes,
                                                                        labelled_cams(cams, classes)):
                with CamWriter(run.predicted_cams / f"{sample.id}.h5", **attributes) as writer:
                    writer.write(sample.id, image_cams.cpu().numpy(), image_classes, image_scores)
            bar.update(task, advance=len(batch_samples))
    table = {}
    for sample in samples:
        with CamReader(run.predicted_cams / f"{sample.id}.h5") as reader:
            probabilities = reader.scores(sample.id)
            classes = reader.read(sample.id)[1]
        table[sample.id] = {"classes": [class_names[c] for c in classes],
                            "scores": {name: round(float(p), 4) for name, p in zip(class_names[1:], probabilities)}}
    write_json(run.predicted_classes, {"class_threshold": config.class_threshold, "images": table})
    counts = {name: sum(name in entry["classes"] for entry in table.values()) for name in class_names[1:]}
    return {name: count for name, count in counts.items() if count}

