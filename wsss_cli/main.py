"""The `wsss` command: one sub-command per pipeline stage. Options are parsed here; the work is in `stages/`."""

from __future__ import annotations

import errno
import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from typer.core import TyperGroup

from stages.config import (AffinityModelConfig, CamModelConfig, CocoDataConfig, EvaluateConfig, FolderDataConfig,
                           InferCamConfig, PredictConfig, PseudoLabelConfig, ReportConfig, SaliencyConfig,
                           SegModelConfig, SegmentConfig, SynthDataConfig, TrainAffinityConfig, TrainCamConfig,
                           VocDataConfig)
from stages.core.errors import UserError
from stages.data.synth import SynthConfig
from stages.registry import (AFFINITY_METHODS, CAM_ADDONS, CAM_METHODS, REFINEMENTS, SALIENCY_SOURCES,
                             SEGMENT_CONTRASTS, SEGMENT_METHODS)

from .click_api import ClickException, NoArgsIsHelpError, UsageError
from .config_file import config_file_option
from .options import (DEFAULT_RUN, AmpOption, DeviceOption, ForceOption, ResumeOption, RunOption, SeedOption,
                      SkipBadOption, VerifyOption, WorkersOption, floats, ints, joined, key_values, names, pair,
                      training_options)


class OneLineErrors(TyperGroup):
    """Click's own errors (a value an option refuses, an unknown option, a missing argument) as one `error:` line
    with exit status 2, like the stages' errors, instead of a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:  # `wsss` or `wsss data` alone: the help, as click shows it
            typer.echo(error.ctx.get_help())
            sys.exit(error.exit_code)
        except ClickException as error:
            message = " ".join(error.format_message().split())
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if isinstance(error, UsageError) and context else ""
            typer.secho(f"error: {message}{hint}", err=True, fg=typer.colors.RED)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # sub-commands inherit it
)


def _print_version(asked: bool) -> None:
    if asked:
        from stages import __version__

        typer.echo(f"wsss {__version__}")
        raise typer.Exit()


@app.callback()
def wsss(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                               help="Print the version and exit.")] = False):
    """Weakly supervised semantic segmentation: image labels → CAMs → pseudo masks → segmenter → mIoU."""


data_app = typer.Typer(help="Make or read a dataset and write the run's dataset index.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Option defaults come from the stage configs, so the CLI and the Python API cannot disagree.
SYNTH, CAM, INFER, PSEUDO, SEG = SynthConfig(), TrainCamConfig(), InferCamConfig(), PseudoLabelConfig(), SegmentConfig()
SALIENCY, EVALUATE, REPORT, AFFINITY = SaliencyConfig(), EvaluateConfig(), ReportConfig(), TrainAffinityConfig()
VOC, FOLDER, PREDICT = VocDataConfig(), FolderDataConfig(), PredictConfig()
COCO = CocoDataConfig()


def user_message(error: UserError) -> str:
    """The one-line message. A UserError raised in a DataLoader worker process reaches us re-made with the
    worker's traceback as its text ("Caught UserError in DataLoader worker process 0. Original Traceback ...");
    its last line is the original message."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught UserError"):
        return lines[-1].split("UserError: ", 1)[-1]
    return str(error)


# Write failures that are the machine's state, not a bug: a full disk, a quota, a read-only or forbidden folder.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def user_errors(command: Callable) -> Callable:
    """Report a UserError (or a full disk) as one line on stderr with exit status 2, and Ctrl-C as one line with
    status 130, instead of a traceback. Artifacts are written atomically, so either way nothing half-written is
    left under a final name, and finished work (epochs, CAM parts, masks) is kept for the re-run."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            typer.secho(f"error: {user_message(error)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except OSError as error:
            if error.errno not in DISK_ERRORS:
                raise
            where = f" {error.filename}" if error.filename else ""
            typer.secho(f"error: cannot write{where}: {error.strerror}; finished work is kept, re-run the command "
                        "once there is room", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is kept; re-run the command (training stages with --resume) "
                        "to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


# ----------------------------------------------------------------------------------------------- data
@data_app.command("synth")
@user_errors
@config_file_option
def data_synth(
    run: RunOption = DEFAULT_RUN,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the images (default RUN/synth). Reused if it "
                                                     "already holds the same config.")] = None,
    seed: SeedOption = SYNTH.seed,
    num_train: Annotated[int, typer.Option(min=1, help="Training images.")] = SYNTH.num_train,
    num_val: Annotated[int, typer.Option(min=1, help="Validation images.")] = SYNTH.num_val,
    image_size: Annotated[int, typer.Option(min=32, help="Square image side in pixels.")] = SYNTH.image_size,
    num_classes: Annotated[int, typer.Option(help="Foreground classes (even, 2-12): pairs share a body and "
                                                  "differ by a small marker (partial activation).")] = SYNTH.num_classes,
    objects: Annotated[str, typer.Option(help="MIN,MAX objects per image.")] = joined(SYNTH.objects_per_image),
    two_class_prob: Annotated[float, typer.Option(help="Probability of a second class in an image.")] = SYNTH.two_class_prob,
    object_scale: Annotated[str, typer.Option(help="MIN,MAX object length as a fraction of the image.")] = joined(SYNTH.object_scale),
    context_classes: Annotated[str, typer.Option(help="Classes shown on a typical background context "
                                                      "(over-activation), comma-separated.")] = joined(SYNTH.context_classes),
    context_prob: Annotated[float, typer.Option(help="How often a context class appears on its context.")] = SYNTH.context_prob,
    context_distractor_prob: Annotated[float, typer.Option(help="How often a context appears without its "
                                                                "class.")] = SYNTH.context_distractor_prob,
    occluder_prob: Annotated[float, typer.Option(help="Probability of an occluder drawn over objects.")] = SYNTH.occluder_prob,
    colour_jitter: Annotated[float, typer.Option(help="Brightness/contrast/saturation jitter.")] = SYNTH.colour_jitter,
    noise_std: Annotated[float, typer.Option(help="Gaussian pixel noise (0-255 scale).")] = SYNTH.noise_std,
    jpeg_quality: Annotated[str, typer.Option(help="MIN,MAX JPEG quality.")] = joined(SYNTH.jpeg_quality),
    workers: WorkersOption = SynthDataConfig().workers,
    force: ForceOption = False,
):
    """Generate the synthetic benchmark (VOC layout, deterministic for a seed) and index it for the run."""
    low, high = ints(objects, "--objects")
    quality = ints(jpeg_quality, "--jpeg-quality")
    synth = SynthConfig(
        seed=seed, num_train=num_train, num_val=num_val, image_size=image_size, num_classes=num_classes,
        objects_per_image=(low, high), two_class_prob=two_class_prob,
        object_scale=pair(object_scale, "--object-scale"), context_classes=names(context_classes),
        context_prob=context_prob, context_distractor_prob=context_distractor_prob, occluder_prob=occluder_prob,
        colour_jitter=colour_jitter, noise_std=noise_std, jpeg_quality=(quality[0], quality[-1]),
    )
    config = SynthDataConfig(synth=synth, out=str(out) if out else "", workers=workers)
    from stages.prepare_data import data_synth as stage

    stage(_run(run), config, force=force)


@data_app.command("voc")
@user_errors
@config_file_option
def data_voc(
    root: Annotated[Path, typer.Argument(help="VOC2012 folder, or a folder containing VOCdevkit/VOC2012.")],
    run: RunOption = DEFAULT_RUN,
    splits: Annotated[str, typer.Option(help="Split lists to read (ImageSets/Segmentation or SegmentationAug).")]
    = joined(VOC.splits),
    workers: WorkersOption = VOC.workers,
    verify: VerifyOption = VOC.verify,
    skip_bad: SkipBadOption = VOC.skip_bad,
    force: ForceOption = False,
):
    """Index PASCAL VOC 2012 (+ SBD SegmentationClassAug); image labels come from the masks (or XML)."""
    config = VocDataConfig(root=str(root), splits=names(splits), verify=verify, skip_bad=skip_bad, workers=workers)
    from stages.prepare_data import data_voc as stage

    stage(_run(run), config, force=force)


@data_app.command("coco")
@user_errors
@config_file_option
def data_coco(
    root: Annotated[Path, typer.Argument(help="COCO 2014 folder: annotations/instances_{train,val}2014.json and "
                                              "train2014/, val2014/ (or images/train2014/, ...).")],
    run: RunOption = DEFAULT_RUN,
    splits: Annotated[str, typer.Option(help="Splits to index: train (train2014) and/or val (val2014).")]
    = joined(COCO.splits),
    render: Annotated[bool, typer.Option(help="Render the masks from the annotation files even where a "
                                              "pre-rendered mask folder (SegmentationClass/ or mask/) exists.")]
    = COCO.render,
    workers: WorkersOption = COCO.workers,
    verify: VerifyOption = COCO.verify,
    skip_bad: SkipBadOption = COCO.skip_bad,
    force: ForceOption = False,
):
    """Index MS COCO 2014: labels from the instance annotations, masks rendered into the run once (crowds 255)."""
    config = CocoDataConfig(root=str(root), splits=names(splits), render=render, verify=verify, skip_bad=skip_bad,
                            workers=workers)
    from stages.prepare_data import data_coco as stage

    stage(_run(run), config, force=force)


@data_app.command("folder")
@user_errors
@config_file_option
def data_folder(
    root: Annotated[Path, typer.Argument(help="Folder with images/ (or images directly) and labels.csv|json.")],
    run: RunOption = DEFAULT_RUN,
    labels: Annotated[Optional[Path], typer.Option(help="Labels file (default ROOT/labels.csv or .json).")] = None,
    classes: Annotated[str, typer.Option(help="The class names in order, comma-separated (names may hold spaces); "
                                              "else ROOT/classes.txt, one per line, or 'classes' in labels.json. "
                                              "Class ids follow this order.")] = "",
    workers: WorkersOption = FOLDER.workers,
    verify: VerifyOption = FOLDER.verify,
    skip_bad: SkipBadOption = FOLDER.skip_bad,
    force: ForceOption = False,
):
    """Index your own images: a CSV (id,labels[,split]) or JSON labels file, the class list; optional masks/ for
    evaluation."""
    config = FolderDataConfig(root=str(root), labels=str(labels) if labels else "", classes=names(classes),
                              verify=verify, skip_bad=skip_bad, workers=workers)
    from stages.prepare_data import data_folder as stage

    stage(_run(run), config, force=force)


# ----------------------------------------------------------------------------------------------- train-cam
@app.command("train-cam")
@user_errors
@config_file_option
@training_options(CAM, CAM.model)
def train_cam(
    run: RunOption = DEFAULT_RUN,
    method: Annotated[str, typer.Option(help="CAM method: " + CAM_METHODS.help() + ".")] = CAM.method,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A method hyper-parameter KEY=VALUE (repeatable); see the method's Options.")] = None,
    aux: Annotated[str, typer.Option(help="An add-on loss for two-view methods: " + CAM_ADDONS.help()
                                          + "; '' for none.")] = CAM.aux,
    aux_option: Annotated[Optional[list[str]], typer.Option(
        "--aux-option", help="An add-on hyper-parameter KEY=VALUE (repeatable), e.g. intra_weight=0.")] = None,
    val_split: Annotated[str, typer.Option(help="Split for the per-epoch mAP / F1 ('' for none).")] = CAM.val_split,
    saliency: Annotated[str, typer.Option(help="Saliency maps (<id>.png) for methods that use them (L2G shape "
                                               "transfer); default: RUN/saliency from `wsss saliency`.")] = CAM.saliency_dir,
    local_backbone: Annotated[Optional[str], typer.Option(help="L2G: the local network's backbone (default: --backbone); "
                                                              "same as -o local_backbone=NAME.")] = None,
    local_views: Annotated[Optional[int], typer.Option(min=1, help="L2G: local views per image (default 6); same as "
                                                                   "-o local_views=N.")] = None,
    resume: ResumeOption = False,
    force: ForceOption = False,
    training: dict = None,
    backbone: dict = None,
):
    """Train the classifier whose CAMs seed the rest (the method's network, GAP and a multilabel loss)."""
    method_options = key_values(option)
    # Shortcuts for method options the L2G paper names; a method without them rejects them like any -o KEY.
    method_options.update({key: str(value) for key, value in
                           (("local_backbone", local_backbone), ("local_views", local_views)) if value is not None})
    config = TrainCamConfig(method=method, method_options=method_options, aux=aux,
                            aux_options=key_values(aux_option, "--aux-option"), saliency_dir=saliency,
                            val_split=val_split, model=CamModelConfig(**backbone), **training)
    from stages.train_cam import train_cam as stage

    stage(_run(run), config, resume=resume, force=force)


# ----------------------------------------------------------------------------------------------- infer-cam
@app.command("infer-cam")
@user_errors
@config_file_option
def infer_cam(
    run: RunOption = DEFAULT_RUN,
    split: Annotated[str, typer.Option(help="Split whose CAMs to write.")] = INFER.split,
    scales: Annotated[str, typer.Option(help="Comma-separated test scales.")] = joined(INFER.scales),
    flip: Annotated[bool, typer.Option(help="Also run each scale's horizontal flip.")] = INFER.flip,
    raw: Annotated[bool, typer.Option(help="For methods that refine their CAMs (SEAM's PCM): write the raw CAMs "
                                           "to RUN/cams/SPLIT-raw.h5 instead.")] = INFER.raw,
    batch_size: Annotated[int, typer.Option(min=1, help="Images of one size per forward pass.")] = INFER.batch_size,
    part_size: Annotated[int, typer.Option(min=1, help="Images per part file; a killed run resumes at the first "
                                                      "missing part.")] = INFER.part_size,
    force: ForceOption = False,
    workers: WorkersOption = INFER.workers,
    device: DeviceOption = INFER.device,
    amp: AmpOption = INFER.amp,
    seed: SeedOption = INFER.seed,
):
    """Write multi-scale, flipped, per-class max-normalised CAMs of a split to RUN/cams/SPLIT.h5."""
    config = InferCamConfig(split=split, scales=floats(scales, "--scales"), flip=flip, raw=raw, batch_size=batch_size,
                            part_size=part_size, workers=workers, device=device, amp=amp, seed=seed)
    from stages.infer_cam import infer_cam as stage

    stage(_run(run), config, force=force)


# ----------------------------------------------------------------------------------------------- saliency
@app.command("saliency")
@user_errors
@config_file_option
def saliency(
    run: RunOption = DEFAULT_RUN,
    split: Annotated[str, typer.Option(help="Split whose saliency maps to write.")] = SALIENCY.split,
    source: Annotated[str, typer.Option(help=SALIENCY_SOURCES.help() + ", or a directory of grayscale <id>.png "
                                             "maps (e.g. PoolNet's).")] = SALIENCY.source,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes.")] = SALIENCY.workers,
    force: ForceOption = False,
):
    """Write saliency maps of a split to RUN/saliency/<id>.png and, where there is ground truth, their MAE and max
    F-measure against the ground-truth foreground. Used by L2G's shape transfer and `pseudo-label --refine saliency`."""
    config = SaliencyConfig(split=split, source=source, workers=workers)
    from stages.saliency import saliency as stage

    stage(_run(run), config, force=force)


# ----------------------------------------------------------------------------------------------- train-affinity
@app.command("train-affinity")
@user_errors
@config_file_option
@training_options(AFFINITY, AFFINITY.model)
def train_affinity(
    run: RunOption = DEFAULT_RUN,
    method: Annotated[str, typer.Option(help="Affinity method: " + AFFINITY_METHODS.help() + ".")] = AFFINITY.method,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A method hyper-parameter KEY=VALUE (repeatable), training and walk alike (e.g. "
                               "beta=8); see the method's Options.")] = None,
    pseudo: Annotated[str, typer.Option(help="The pseudo-mask set to learn from, RUN/pseudo/SET (confident "
                                             "foreground and background, 255 between).")] = AFFINITY.pseudo,
    cam_checkpoint: Annotated[str, typer.Option(help="CAM checkpoint whose backbone (the default --backbone) and "
                                                     "weights (--pretrained cam, the default) it starts from "
                                                     "(default: the run's).")] = AFFINITY.cam_checkpoint,
    resume: ResumeOption = False,
    force: ForceOption = False,
    training: dict = None,
    backbone: dict = None,
):
    """Train the inter-pixel affinity network whose random walk refines CAMs (`pseudo-label --refine rw`), from
    pseudo masks. --backbone '' and --pretrained cam (the defaults) start from the CAM classifier's backbone."""
    config = TrainAffinityConfig(method=method, method_options=key_values(option), pseudo=pseudo,
                                 cam_checkpoint=cam_checkpoint, model=AffinityModelConfig(**backbone), **training)
    from stages.train_affinity import train_affinity as stage

    stage(_run(run), config, resume=resume, force=force)


# ----------------------------------------------------------------------------------------------- pseudo-label
@app.command("pseudo-label")
@user_errors
@config_file_option
def pseudo_label(
    run: RunOption = DEFAULT_RUN,
    split: Annotated[str, typer.Option(help="Split whose CAMs become pseudo masks.")] = PSEUDO.split,
    refine: Annotated[str, typer.Option(help="none, or a comma list of refinements applied in order: "
                                             + REFINEMENTS.help() + ".")] = PSEUDO.refine,
    pcm_checkpoint: Annotated[str, typer.Option(help="SEAM checkpoint for --refine pcm (default: the run's "
                                                     "cam/checkpoint.pt).")] = PSEUDO.pcm_checkpoint,
    affinity_checkpoint: Annotated[str, typer.Option(help="Affinity checkpoint for --refine rw (default: the run's "
                                                          "affinity/checkpoint.pt from `wsss train-affinity`).")]
    = PSEUDO.affinity_checkpoint,
    saliency: Annotated[str, typer.Option(help="Saliency maps (<id>.png) for --refine saliency (default: "
                                               "RUN/saliency from `wsss saliency`).")] = PSEUDO.saliency_dir,
    saliency_threshold: Annotated[float, typer.Option(help="--refine saliency: pixels less salient than this are "
                                                           "background.")] = PSEUDO.saliency_threshold,
    fg_threshold: Annotated[float, typer.Option(help="Background score for confident foreground (IRN 0.30; "
                                                     "after IRN's random walk, 0.25 for both).")]
    = PSEUDO.fg_threshold,
    bg_threshold: Annotated[float, typer.Option(help="Background score for confident background (IRN 0.05).")]
    = PSEUDO.bg_threshold,
    raw: Annotated[bool, typer.Option("--raw", help="Use the unrefined CAMs of `infer-cam --raw`; the masks are "
                                                    "named REFINE-raw (e.g. pseudo/crf-raw).")] = PSEUDO.raw,
    name: Annotated[str, typer.Option(help="Name of the mask set, pseudo/NAME (default: REFINE, or REFINE-raw), "
                                           "e.g. to keep masks made with other thresholds apart.")] = PSEUDO.name,
    force: ForceOption = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes.")] = PSEUDO.workers,
    device: Annotated[str, typer.Option(help="--refine rw: where the affinity network and the random walk run: "
                                             "auto, cpu, cuda or cuda:N; on a GPU images walk in batches there, "
                                             "the workers do the rest.")] = PSEUDO.device,
):
    """Turn CAMs into pseudo masks (VOC palette PNGs); uncertain pixels are 255."""
    config = PseudoLabelConfig(split=split, refine=refine, pcm_checkpoint=pcm_checkpoint,
                               affinity_checkpoint=affinity_checkpoint, saliency_dir=saliency,
                               saliency_threshold=saliency_threshold, fg_threshold=fg_threshold,
                               bg_threshold=bg_threshold, raw=raw, name=name, workers=workers, device=device)
    from stages.pseudo_label import pseudo_label as stage

    stage(_run(run), config, force=force)


# ----------------------------------------------------------------------------------------------- segment
class Labels(str, Enum):
    pseudo = "pseudo"
    gt = "gt"


@app.command("segment")
@user_errors
@config_file_option
@training_options(SEG, SEG.model)
def segment(
    run: RunOption = DEFAULT_RUN,
    method: Annotated[str, typer.Option(help="Segment method: " + SEGMENT_METHODS.help() + ".")] = SEG.method,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A method hyper-parameter KEY=VALUE (repeatable); see the method's Options.")] = None,
    contrast: Annotated[str, typer.Option(help="An add-on loss for mask training: " + SEGMENT_CONTRASTS.help()
                                               + "; '' for none.")] = SEG.contrast,
    contrast_option: Annotated[Optional[list[str]], typer.Option(
        "--contrast-option", help="A contrast hyper-parameter KEY=VALUE (repeatable), e.g. pixel_memory=1000.")]
    = None,
    saliency: Annotated[str, typer.Option(help="Saliency maps (<id>.png) for methods that use them (mcic); "
                                               "default: RUN/saliency from `wsss saliency`.")] = SEG.saliency_dir,
    labels: Annotated[Labels, typer.Option(help="pseudo masks, or gt for the fully supervised upper bound.")]
    = Labels(SEG.labels),
    pseudo: Annotated[str, typer.Option(help="Which pseudo masks: the --refine they were made with (+ -raw if made "
                                             "with --raw), or their --name.")] = SEG.pseudo,
    aspp_rates: Annotated[str, typer.Option(help="ASPP dilation rates.")] = joined(SEG.model.aspp_rates),
    predict: Annotated[str, typer.Option(help="Splits to predict after training.")] = joined(SEG.predict_splits),
    test_scales: Annotated[str, typer.Option(help="Comma-separated test scales.")] = joined(SEG.test_scales),
    test_flip: Annotated[bool, typer.Option(help="Average with the flipped prediction.")] = SEG.test_flip,
    crf: Annotated[bool, typer.Option(help="Dense CRF post-processing (DeepLab settings).")] = SEG.crf,
    resume: ResumeOption = False,
    force: ForceOption = False,
    training: dict = None,
    backbone: dict = None,
):
    """Train a DeepLab segmenter on pseudo masks (or ground truth), or end to end with MCIC, and predict splits to
    RUN/segment/TAG/ (TAG: pseudo-REFINE or gt, + -memory with --contrast memory; mcic)."""
    config = SegmentConfig(
        method=method, method_options=key_values(option), contrast=contrast,
        contrast_options=key_values(contrast_option, "--contrast-option"), saliency_dir=saliency,
        labels=labels.value, pseudo=pseudo,
        model=SegModelConfig(**backbone, aspp_rates=ints(aspp_rates, "--aspp-rates")),
        predict_splits=names(predict), test_scales=floats(test_scales, "--test-scales"), test_flip=test_flip, crf=crf,
        **training,
    )
    from stages.segment import segment as stage

    stage(_run(run), config, resume=resume, force=force)


# ----------------------------------------------------------------------------------------------- predict
@app.command("predict")
@user_errors
@config_file_option
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Images: files, folders of images, or .txt files listing image "
                                                     "paths (one per line, relative to the list).")],
    out: Annotated[Path, typer.Option(help="Output folder (new, empty, or an earlier predict's, which is resumed): "
                                           "masks/NAME.png, overlays/, cams/, classes.json, manifest.json.")],
    checkpoint: Annotated[Path, typer.Option(help="The segmenter: RUN/segment/TAG/checkpoint.pt from `wsss "
                                                  "segment`.")],
    cam_checkpoint: Annotated[Optional[Path], typer.Option(
        help="A classifier (RUN/cam/checkpoint.pt): also write its predicted classes (classes.json) and their CAMs "
             "(cams/NAME.h5).")] = None,
    test_scales: Annotated[str, typer.Option(help="Comma-separated test scales; default: the segmenter's own.")]
    = "",
    test_flip: Annotated[Optional[bool], typer.Option(
        help="Average with the flipped prediction; default: as the segmenter was configured.")] = None,
    crf: Annotated[Optional[bool], typer.Option(
        help="Dense CRF post-processing (DeepLab settings); default: as the segmenter was configured.")] = None,
    overlay: Annotated[bool, typer.Option(help="Also write each mask's colours on its image (overlays/NAME.jpg).")]
    = PREDICT.overlay,
    class_threshold: Annotated[float, typer.Option(
        help="With --cam-checkpoint: a class is predicted where the classifier's probability exceeds this.")]
    = PREDICT.class_threshold,
    cam_scales: Annotated[str, typer.Option(help="With --cam-checkpoint: the CAMs' scales (with flips).")]
    = joined(PREDICT.cam_scales),
    batch_size: Annotated[int, typer.Option(help="Images of one size per forward pass.")] = PREDICT.batch_size,
    workers: WorkersOption = PREDICT.workers,
    device: DeviceOption = PREDICT.device,
    amp: AmpOption = PREDICT.amp,
    skip_bad: Annotated[bool, typer.Option(help="Leave unreadable images out (counted and listed in the manifest) "
                                                "instead of stopping at the first.")] = PREDICT.skip_bad,
    force: ForceOption = False,
):
    """Masks for new images without labels, from a trained segmenter (and the CAM classifier's classes and CAMs
    with --cam-checkpoint), written to OUT/masks/NAME.png."""
    config = PredictConfig(
        inputs=tuple(inputs), checkpoint=str(checkpoint), cam_checkpoint=str(cam_checkpoint or ""),
        test_scales=floats(test_scales, "--test-scales"), test_flip=test_flip, crf=crf, overlay=overlay,
        class_threshold=class_threshold, cam_scales=floats(cam_scales, "--cam-scales"), batch_size=batch_size,
        workers=workers, device=device, amp=amp, skip_bad=skip_bad)
    from stages.predict import predict as stage

    stage(_run(out), config, force=force)


# ----------------------------------------------------------------------------------------------- evaluate
@app.command("evaluate")
@user_errors
@config_file_option
def evaluate(
    target: Annotated[str, typer.Argument(help="cams, cams-raw, pseudo/SET (e.g. pseudo/crf), segment/TAG (e.g. "
                                               "segment/gt), or a folder of predicted PNG masks.")],
    run: RunOption = DEFAULT_RUN,
    split: Annotated[str, typer.Option(help="Split to score (its ground-truth masks).")] = EVALUATE.split,
    per_class: Annotated[bool, typer.Option(help="Also print per-class IoU / precision / recall.")] = False,
    force: ForceOption = False,
):
    """mIoU, per-class IoU, precision and recall; for CAMs a background-threshold sweep. JSON in RUN/eval/."""
    config = EvaluateConfig(target=target, split=split)
    from stages.core.console import console
    from stages.core.io import read_json
    from stages.evaluate import evaluate as stage
    from stages.results import per_class_table, results_table

    the_run = _run(run)
    stage(the_run, config, force=force)
    result = read_json(the_run.eval(the_run.evaluation_target(target, split)[1]), "evaluation result")
    console.print(results_table([result]))
    if per_class:
        console.print(per_class_table(result))


# ----------------------------------------------------------------------------------------------- report
@app.command("report")
@user_errors
@config_file_option
def report(
    runs: Annotated[Optional[list[Path]], typer.Option(
        "--run", help="Run folder; repeat it to compare several runs on one page (written to --out).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Write one page for the runs given (their headline numbers side by side, then each run's part) to this "
             "file, instead of RUN/report.html; needed with several --run.")] = None,
    split: Annotated[str, typer.Option(help="Split whose images the sample rows show.")] = REPORT.split,
    pseudo: Annotated[str, typer.Option(help="Pseudo masks to show (their set name, e.g. crf).")] = REPORT.pseudo,
    segment_tag: Annotated[str, typer.Option("--segment", help="Segmenter whose predictions to show (its TAG).")]
    = REPORT.segment,
    samples: Annotated[int, typer.Option(min=1, help="Sample rows to show (chosen with --seed).")] = REPORT.num_samples,
    seed: SeedOption = REPORT.seed,
    force: ForceOption = False,
):
    """Write RUN/report.html: evaluations with plots (mIoU vs threshold, errors, confusion matrices), training curves,
    timings and image | GT | CAM | pseudo mask | prediction rows; with several --run, one page comparing them."""
    config = ReportConfig(split=split, pseudo=pseudo, segment=segment_tag, num_samples=samples, seed=seed)
    from stages.core.console import console
    from stages.report import report as stage
    from stages.report import report_runs
    from stages.results import require_run

    folders = runs or [DEFAULT_RUN]
    if out is None:
        if len(folders) > 1:
            raise UserError(f"{len(folders)} runs make one page that belongs to none of them: name its file "
                            "with --out")
        stage(_run(folders[0]), config, force=force)
        return
    report_runs([require_run(_run(folder)) for folder in folders], config, out)
    console.print(f"report wrote {out}")


# ----------------------------------------------------------------------------------------------- summary
@app.command("summary")
@user_errors
def summary(
    runs: Annotated[Optional[list[Path]], typer.Option(
        "--run", help="Run folder; repeat it (e.g. one per seed) for one table with each run's mIoU and their "
                      "mean ± sd.")] = None,
):
    """Print the run's results and stage timings (from its manifest and RUN/eval/); with several --run, their
    evaluations side by side."""
    from stages.core.console import console
    from stages.results import require_run, runs_table, summary_tables

    folders = runs or [DEFAULT_RUN]
    chosen = [require_run(_run(folder)) for folder in folders]
    for table in summary_tables(chosen[0]) if len(chosen) == 1 else [runs_table(chosen)]:
        console.print(table)


# ----------------------------------------------------------------------------------------------- reproduce
@app.command("reproduce")
@user_errors
def reproduce(
    recipe: Annotated[str, typer.Argument(help="A recipe in recipes/ (e.g. irn-voc, seam-voc) or a .toml file with "
                                               "a [reproduce] table.")],
    data: Annotated[str, typer.Argument(help="The dataset root the recipe's data step reads (e.g. the VOC2012 "
                                             "folder).")],
    run: RunOption = DEFAULT_RUN,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands and run none of them.")] = False,
):
    """Run a paper's chain of commands from a recipe, each with --config RECIPE and --run RUN; stops at the first
    step that fails."""
    from .recipes import reproduce as chain

    raise typer.Exit(chain(recipe, data, run, dry_run))


def _run(folder: Path):
    from stages.core.runs import Run

    return Run(folder)


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())


if __name__ == "__main__":  # `python -m wsss_cli.main`, e.g. under `torchrun -m`
    main()
