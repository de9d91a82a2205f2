"""Every stage's config, in one module that imports neither torch nor any stage: the CLI builds these from its
options (whose defaults are these defaults), a stage receives one, and the manifest records it.

The options train-cam and segment share (optimisation, augmentation, execution) are `TrainingConfig`'s fields,
declared once; each training stage's config extends it and overrides only the defaults that differ. Checks that
need no files run when a config is made, so a bad option is a one-line error before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .core.errors import UserError
from .core.io import check_plain_name
from .core.limits import check_numbers
from .core.layout import mask_set_name, segment_tag
from .data.coco import DEFAULT_SPLITS as COCO_SPLITS
from .data.synth import SynthConfig
from .data.voc import DEFAULT_SPLITS
from .metrics import DEFAULT_THRESHOLDS
from .registry import (AFFINITY_METHODS, BACKBONES, CAM_ADDONS, CAM_METHODS, REFINEMENTS, SEGMENT_CONTRASTS,
                       SEGMENT_METHODS)


@dataclass(frozen=True)
class Checked:
    """A stage config: its numbers (nested configs' too) are checked against `core.limits` when it is made;
    a config with checks of its own runs them after `super().__post_init__()`."""

    def __post_init__(self):
        check_numbers(self)


@dataclass(frozen=True)
class BackboneConfig:
    backbone: str = "resnet10"
    output_stride: int = 16
    pretrained: str = "none"  # none, imagenet, or a weights file
    frozen_bn: bool = False  # BatchNorm statistics stay as loaded while training (IRN's FixedBatchNorm)


@dataclass(frozen=True)
class CamModelConfig(BackboneConfig):
    """The CAM network's backbone; its head is the method's."""


@dataclass(frozen=True)
class SegModelConfig(BackboneConfig):
    # DeepLabv3 uses rates (6, 12, 18) on a 33x33 map (513 px at OS16); ours is 8x8 (128 px), so scaled down.
    aspp_rates: tuple[int, ...] = (2, 3, 4)
    aspp_channels: int = 128
    decoder_channels: int = 128
    low_level_channels: int = 32


@dataclass(frozen=True)
class AffinityModelConfig(BackboneConfig):
    """The affinity network's backbone: by default the CAM classifier's, with its trained weights."""

    backbone: str = ""  # "" = the CAM checkpoint's backbone
    pretrained: str = "cam"  # cam (the CAM checkpoint's backbone weights), none, imagenet, or a weights file


@dataclass(frozen=True)
class TrainingConfig(Checked):
    """What every training stage takes: its split, the SGD schedule, the augmentation and how it runs."""

    train_split: str = ""  # "" = the dataset's training split (`DatasetIndex.training_split`)
    epochs: int = 5
    batch_size: int = 16  # the global batch: under torchrun each of N processes takes batch_size / N
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each process's share
    lr: float = 0.1  # the backbone's; poly decay
    head_lr_mult: float = 10.0  # the new layers' learning rate, relative to the backbone's
    weight_decay: float = 1e-4
    base_size: int = 128  # long side the scale augmentation is relative to
    crop_size: int = 112  # square training crop
    scale_range: tuple[float, float] = (0.7, 1.3)  # random rescale of the long side
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def on(self, dataset) -> "TrainingConfig":
        """This config with the dataset's training split where none was chosen, as the manifest records it."""
        return self if self.train_split else replace(self, train_split=dataset.training_split)


@dataclass(frozen=True)
class TrainCamConfig(TrainingConfig):
    method: str = "baseline"
    method_options: dict[str, str] = field(default_factory=dict)  # the method's Options, as KEY=VALUE strings
    aux: str = ""  # an add-on loss for two-view methods ("ppc"), or none
    aux_options: dict[str, str] = field(default_factory=dict)  # its Options, as KEY=VALUE strings
    model: CamModelConfig = field(default_factory=CamModelConfig)
    val_split: str = "val"
    saliency_dir: str = ""  # for methods that use saliency (L2G shape transfer); default: the run's saliency/

    def __post_init__(self):
        super().__post_init__()
        CAM_METHODS.check(self.method)
        if self.aux:
            CAM_ADDONS.check(self.aux)
        BACKBONES.check(self.model.backbone)


@dataclass(frozen=True)
class TrainAffinityConfig(TrainingConfig):
    """IRN's schedule by default (run_sample.py: 3 epochs, lr 0.1, weight decay 1e-4, rescale 0.5-1.5)."""

    epochs: int = 3
    scale_range: tuple[float, float] = (0.5, 1.5)
    method: str = "irn"
    method_options: dict[str, str] = field(default_factory=dict)  # the method's Options, as KEY=VALUE strings
    model: AffinityModelConfig = field(default_factory=AffinityModelConfig)
    pseudo: str = "crf"  # the pseudo-mask set it learns from (confident foreground and background, 255 between)
    cam_checkpoint: str = ""  # where --pretrained cam and the default backbone come from (default: the run's)

    def __post_init__(self):
        super().__post_init__()
        AFFINITY_METHODS.check(self.method)
        if self.model.backbone:
            BACKBONES.check(self.model.backbone)
        check_plain_name(mask_set_name(self.pseudo), "mask set name", "crf")


@dataclass(frozen=True)
class InferCamConfig(Checked):
    split: str = "train"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    raw: bool = False  # methods that refine their CAMs (SEAM's PCM): write the unrefined ones instead
    batch_size: int = 16
    part_size: int = 256  # images per part file: a killed run loses at most one part's work per process
    workers: int = 1
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.scales:
            raise UserError("--scales needs at least one scale")


@dataclass(frozen=True)
class SaliencyConfig(Checked):
    split: str = "train"
    source: str = "mbd"  # a registered saliency source's name, or a directory of <id>.png maps
    workers: int = 2


@dataclass(frozen=True)
class PseudoLabelConfig(Checked):
    split: str = "train"
    refine: str = "crf"
    pcm_checkpoint: str = ""  # for --refine pcm: a SEAM checkpoint (default: the run's cam/checkpoint.pt)
    affinity_checkpoint: str = ""  # for --refine rw: an affinity checkpoint (default: the run's affinity/checkpoint.pt)
    saliency_dir: str = ""  # for --refine saliency: <id>.png maps (default: the run's saliency/)
    saliency_threshold: float = 0.5  # for --refine saliency: below it a pixel is background
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    raw: bool = False  # from the unrefined CAMs of `infer-cam --raw`; the masks go to pseudo/<refine>-raw
    name: str = ""  # the mask set's name, to keep sets made with other thresholds apart (default: as above)
    workers: int = 2
    device: str = "auto"  # for --refine rw: where the affinity network and the walk run (batched on a GPU)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.bg_threshold <= self.fg_threshold <= 1:
            raise UserError(f"need 0 <= bg threshold <= fg threshold <= 1, got {self.bg_threshold} and "
                            f"{self.fg_threshold}")
        refinement_names(self.refine)
        check_plain_name(self.mask_set, "mask set name", "crf-fitted")

    @property
    def refinements(self) -> list[str]:
        return refinement_names(self.refine)

    @property
    def mask_set(self) -> str:
        """The masks' name: what `segment --pseudo` and `evaluate pseudo/NAME` take."""
        return self.name or mask_set_name(self.refine, self.raw)


def refinement_names(spec: str) -> list[str]:
    """'none' → []; 'pcm,crf' → ['pcm', 'crf']; an unknown or repeated name is a one-line error."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in REFINEMENTS]
    if unknown or not names:
        raise UserError(f"unknown refinement {', '.join(unknown) or repr(spec)} "
                        f"(choose none or a comma list of: {', '.join(REFINEMENTS)})")
    if len(set(names)) != len(names):
        raise UserError(f"refinement listed twice in {spec!r}")
    return names


@dataclass(frozen=True)
class SegmentConfig(TrainingConfig):
    epochs: int = 8
    lr: float = 0.05
    head_lr_mult: float = 1.0
    method: str = "deeplab"  # a registered segment method: "deeplab" (on masks), "mcic" (image labels + saliency)
    method_options: dict[str, str] = field(default_factory=dict)  # the method's Options, as KEY=VALUE strings
    contrast: str = ""  # an add-on loss for mask training ("memory": cross-image pixel contrast), or none
    contrast_options: dict[str, str] = field(default_factory=dict)
    saliency_dir: str = ""  # for methods that use saliency (mcic); default: the run's saliency/
    labels: str = "pseudo"  # "pseudo" (masks from `wsss pseudo-label`) or "gt" (upper bound)
    pseudo: str = "crf"  # which pseudo masks: their set name (the --refine they were made with, + "-raw")
    model: SegModelConfig = field(default_factory=SegModelConfig)
    predict_splits: tuple[str, ...] = ("val",)
    test_scales: tuple[float, ...] = (1.0,)
    test_flip: bool = False
    crf: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 2:  # the ASPP image-pooling branch sees one value per channel per image
            raise UserError(f"segment trains BatchNorm layers, which need --batch-size 2 or more, got "
                            f"{self.batch_size}")
        SEGMENT_METHODS.check(self.method)
        if self.contrast:
            SEGMENT_CONTRASTS.check(self.contrast)
        BACKBONES.check(self.model.backbone)

    @property
    def tag(self) -> str:
        """The segmenter's folder name under segment/: what `evaluate segment/TAG` and `report --segment` take."""
        return segment_tag(self.method, self.labels, self.pseudo, self.contrast)


@dataclass(frozen=True)
class PredictConfig(Checked):
    """`wsss predict`: masks for new, unlabelled images. The test-time settings left unset (empty, None) are the
    segmenter's own, from its checkpoint, so `predict` repeats what `segment --predict` wrote."""

    inputs: tuple[str, ...] = ()  # image files, folders of images, or .txt files listing image paths
    checkpoint: str = ""  # the segmenter (`segment`'s checkpoint.pt)
    cam_checkpoint: str = ""  # a `train-cam` checkpoint: also the predicted classes and their CAMs
    test_scales: tuple[float, ...] = ()  # () = the segmenter's
    test_flip: bool | None = None  # None = the segmenter's
    crf: bool | None = None  # None = the segmenter's
    overlay: bool = False  # also write the masks' colours on the images
    class_threshold: float = 0.5  # a class is predicted where the classifier's probability exceeds it
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)  # make all's infer-cam scales (with flips)
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    skip_bad: bool = False  # leave unreadable images out (counted, listed) instead of stopping


@dataclass(frozen=True)
class EvaluateConfig(Checked):
    target: str = "cams"  # cams, cams-raw, pseudo/SET, segment/TAG, or a folder of masks
    split: str = "train"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS  # the CAM background thresholds swept


@dataclass(frozen=True)
class ReportConfig(Checked):
    split: str = "train"
    pseudo: str = "crf"  # the pseudo-mask set to show
    segment: str = SegmentConfig().tag  # the segmenter whose predictions to show
    num_samples: int = 12
    seed: int = 0


@dataclass(frozen=True)
class SynthDataConfig(Checked):
    synth: SynthConfig = field(default_factory=SynthConfig)  # what to generate
    out: str = ""  # where to write the images (default: the run's synth/); reused if it holds the same config
    workers: int = 2

    def __post_init__(self):
        super().__post_init__()
        self.synth.validate()


@dataclass(frozen=True)
class VocDataConfig(Checked):
    root: str = ""  # VOC2012, or a folder containing VOCdevkit/VOC2012
    splits: tuple[str, ...] = DEFAULT_SPLITS
    verify: bool = True  # decode every image and mask once (see data.verify)
    skip_bad: bool = False  # leave bad images out, listed in the index's `skipped`, instead of stopping
    workers: int = 8


@dataclass(frozen=True)
class CocoDataConfig(Checked):
    root: str = ""  # annotations/instances_{train,val}2014.json, train2014/, val2014/ (see data.coco)
    splits: tuple[str, ...] = COCO_SPLITS  # train (train2014) and/or val (val2014)
    render: bool = False  # render masks from the json even where a pre-rendered mask folder exists
    verify: bool = True
    skip_bad: bool = False
    workers: int = 8


@dataclass(frozen=True)
class FolderDataConfig(Checked):
    root: str = ""  # images/ (or images directly) and labels.csv|json
    labels: str = ""  # the labels file (default ROOT/labels.csv or .json)
    classes: tuple[str, ...] = ()  # the class names in order (else ROOT/classes.txt or labels.json's 'classes')
    verify: bool = True
    skip_bad: bool = False
    workers: int = 8
