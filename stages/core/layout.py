"""The run folder's layout: every artifact a stage reads or writes, declared once, with the command that makes it.

Stages never spell a path: they ask the layout (`run.cams("train")`, `run.pseudo("crf")`, ...), and an input that
is missing is a one-line error naming the command to run (`Artifact.require`). The naming rules live here too:
a mask set is named after its refinements (`pcm,crf` → `pcm+crf`, `-raw` for raw CAMs), a segmenter after
its method and training masks (`pseudo-crf`, `gt-memory`, `mcic`), an evaluation after its target and split.

    RUN/
      dataset.json                 data synth | voc | coco | folder
      synth/                       data synth: the generated images and masks
      coco_masks/SPLIT/ID.png      data coco: the ground-truth masks rendered from COCO's instance annotations
      manifest.json                every stage: config, inputs, outputs and their fingerprints, time, metrics
      cam/checkpoint.pt            train-cam  (cam/train_state.pt while it trains)
      cams/SPLIT.h5, SPLIT-raw.h5  infer-cam
      saliency/ID.png              saliency   (info-SPLIT.json: the maps' quality)
      affinity/checkpoint.pt       train-affinity  (affinity/train_state.pt while it trains)
      pseudo/SET/ID.png            pseudo-label --refine ... (SET = mask_set_name); pseudo/mcic: segment --method mcic
      segment/TAG/checkpoint.pt    segment    (train_state.pt while it trains; pred_SPLIT/ID.png its predictions)
      eval/NAME.json               evaluate
      report.html                  report

A `wsss predict` output folder is a run of its own (its manifest says which checkpoints and images made it):

    OUT/
      manifest.json                predict
      masks/NAME.png               the segmenter's masks (NAME: the input image's name without its suffix)
      overlays/NAME.jpg            predict --overlay: the masks' colours on the images
      cams/NAME.h5                 predict --cam-checkpoint: the CAMs of the classes the classifier predicts
      classes.json                 predict --cam-checkpoint: each image's predicted classes and class scores
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# Segment methods that also write pseudo masks of the training images, under pseudo/<method>.
SEED_WRITERS = ("mcic",)


@dataclass(frozen=True)
class Artifact:
    """A path in the run folder and the command that makes it."""

    path: Path
    made_by: str  # the command that makes it, e.g. "wsss train-cam"
    alternatives: str = ""  # other commands that make it, as the message gives them

    def require(self) -> Path:
        """The path, or a one-line error naming the command that makes it."""
        if not self.path.exists():
            raise UserError(f"missing input {self.path}: run `{self.made_by}`{self.alternatives} first")
        return self.path

    def exists(self) -> bool:
        return self.path.exists()


def mask_set_name(refine: str, raw: bool = False) -> str:
    """The pseudo-mask set made by `pseudo-label --refine REFINE [--raw]`, as a folder name: `pcm,crf` → `pcm+crf`."""
    return refine.replace(",", "+") + ("-raw" if raw else "")


def segment_tag(method: str, labels: str, pseudo: str, contrast: str) -> str:
    """The segmenter's folder name: the method for methods without masks, else the masks it learns from
    (`gt` or `pseudo-SET`), + `-CONTRAST` with an add-on contrast loss."""
    if method != "deeplab":
        return method
    masks = "gt" if labels == "gt" else f"pseudo-{mask_set_name(pseudo)}"
    return f"{masks}-{contrast}" if contrast else masks


class Layout:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # ---- data
    @property
    def dataset_index(self) -> Artifact:
        return Artifact(self.path("dataset.json"), "wsss data synth",
                        " (or `wsss data voc` / `wsss data coco` / `wsss data folder`)")

    @property
    def synth_images(self) -> Path:
        """Where `data synth` writes its images unless told otherwise."""
        return self.path("synth")

    def coco_masks(self, split: str) -> Artifact:
        """The masks `data coco` renders from a split's instance annotations (one PNG per image)."""
        return Artifact(self.path("coco_masks", split), "wsss data coco")

    @property
    def manifest_path(self) -> Path:
        return self.path("manifest.json")

    # ---- CAMs
    @property
    def cam_checkpoint(self) -> Artifact:
        return Artifact(self.path("cam", "checkpoint.pt"), "wsss train-cam")

    @property
    def cam_training_state(self) -> Path:
        return self.path("cam", "train_state.pt")

    def cams(self, split: str, raw: bool = False) -> Artifact:
        return Artifact(self.path("cams", f"{split}-raw.h5" if raw else f"{split}.h5"),
                        f"wsss infer-cam --split {split}{' --raw' if raw else ''}")

    # ---- saliency
    @property
    def saliency(self) -> Artifact:
        return Artifact(self.path("saliency"), "wsss saliency")

    def saliency_info(self, split: str) -> Path:
        return self.path("saliency", f"info-{split}.json")

    # ---- inter-pixel affinity
    @property
    def affinity_checkpoint(self) -> Artifact:
        return Artifact(self.path("affinity", "checkpoint.pt"), "wsss train-affinity")

    @property
    def affinity_training_state(self) -> Path:
        return self.path("affinity", "train_state.pt")

    # ---- pseudo masks
    def pseudo(self, mask_set: str) -> Artifact:
        """The mask set's folder; `mask_set` as `segment --pseudo` or `evaluate pseudo/SET` take it."""
        name = mask_set_name(mask_set)
        command = (f"wsss segment --method {name}" if name in SEED_WRITERS
                   else f"wsss pseudo-label --refine {name.removesuffix('-raw').replace('+', ',')}"
                        + (" --raw" if name.endswith("-raw") else ""))
        return Artifact(self.path("pseudo", name), command)

    # ---- segmenter
    def segment(self, tag: str) -> Path:
        return self.path("segment", tag)

    def segment_checkpoint(self, tag: str) -> Artifact:
        return Artifact(self.segment(tag) / "checkpoint.pt", "wsss segment")

    def segment_training_state(self, tag: str) -> Path:
        return self.segment(tag) / "train_state.pt"

    def predictions(self, tag: str, split: str) -> Artifact:
        return Artifact(self.segment(tag) / f"pred_{split}", f"wsss segment --predict {split}")

    def all_predictions(self, tag: str) -> list[Path]:
        """The prediction folders the segmenter's folder holds, of whichever splits."""
        return sorted(self.segment(tag).glob("pred_*"))

    # ---- a `wsss predict` folder
    @property
    def predicted_masks(self) -> Path:
        return self.path("masks")

    @property
    def predicted_overlays(self) -> Path:
        return self.path("overlays")

    @property
    def predicted_cams(self) -> Path:
        return self.path("cams")

    @property
    def predicted_classes(self) -> Path:
        return self.path("classes.json")

    # ---- results
    @property
    def eval_dir(self) -> Path:
        return self.path("eval")

    def eval(self, name: str) -> Path:
        return self.eval_dir / f"{name}.json"

    @property
    def report(self) -> Path:
        return self.path("report.html")

    def evaluation_target(self, target: str, split: str) -> tuple[Artifact, str, str]:
        """What `wsss evaluate TARGET --split SPLIT` scores: (artifact, result name, kind "cam" or "masks").

        TARGET is `cams` (or `cams-raw`), `pseudo/SET`, `segment/TAG` or a folder of masks; the result is named
        after it and the split, e.g. `cams_train`, `pseudo-crf_train`, `segment-gt_val`."""
        if target in ("cams", "cams-raw"):
            return self.cams(split, raw=target == "cams-raw"), f"{target}_{split}", "cam"
        if target.startswith("pseudo/"):
            artifact = self.pseudo(target.split("/", 1)[1])
            return artifact, f"pseudo-{artifact.path.name}_{split}", "masks"
        if target.startswith("segment/"):
            tag = target.split("/", 1)[1]
            return self.predictions(tag, split), f"segment-{tag}_{split}", "masks"
        if Path(target).is_dir():
            return Artifact(Path(target), "the stage that writes it"), f"{Path(target).name}_{split}", "masks"
        raise UserError(f"unknown evaluation target {target!r}: use cams, cams-raw, pseudo/REFINE, segment/TAG or a "
                        "folder of predicted masks")
