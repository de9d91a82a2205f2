"""Everything plugged in by name, one registry per kind: CAM methods, their add-on losses, segmenter methods and
their add-on contrasts, affinity methods, pseudo-mask refinements, backbones and saliency sources.

An entry is a name, where its code lives (`module:attribute`, imported only when it is used, so `wsss --help`
and every option error run without loading torch) and a one-line summary. The CLI's help texts, its "choose
from" errors and the registry-driven tests all come from here: registering a module is what adds it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterator

from .core.errors import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    summary: str  # one line for --help


class Registry:
    def __init__(self, kind: str, *entries: Entry, fallback: str = "", fallback_help: str = ""):
        """`fallback` ("module:function"): for a name not registered, `function(name)` gives the object or None;
        `fallback_help` says which names it takes ("any timm model name")."""
        self.kind = kind  # "CAM method", for messages
        self._entries = {entry.name: entry for entry in entries}
        self._fallback = fallback
        self._fallback_help = fallback_help

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def check(self, name: str) -> str:
        """`name`, or a one-line error listing the registered names (and what the fallback takes)."""
        if name in self._entries or not self._fallback:
            self._registered(name)
        else:
            self.get(name)
        return name

    def get(self, name: str) -> Any:
        """The registered object (class or builder), imported on first use; else the fallback's."""
        if name not in self._entries and self._fallback:
            found = _attribute(self._fallback)(name)
            if found is None:
                raise UserError(f"unknown {self.kind} {name!r} (choose from {', '.join(self._entries)}, "
                                f"or {self._fallback_help})")
            return found
        return _attribute(self._registered(name).target)

    def _registered(self, name: str) -> Entry:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r} (choose from {', '.join(self._entries)})")
        return self._entries[name]

    def help(self) -> str:
        """'name (summary), name (summary)' for an option's help text."""
        listed = ", ".join(f"{entry.name} ({entry.summary})" for entry in self._entries.values())
        return listed + (f", or {self._fallback_help}" if self._fallback else "")


def _attribute(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


CAM_METHODS = Registry(
    "CAM method",
    Entry("baseline", "stages.methods.baseline:BaselineCam", "CAM: 1x1 classifier, GAP, multilabel soft margin"),
    Entry("seam", "stages.methods.seam:SeamCam", "SEAM: equivariant CAMs across two views, PCM"),
    Entry("l2g", "stages.methods.l2g:L2GCam", "L2G: local-to-global transfer, shape transfer from saliency"),
)

CAM_ADDONS = Registry(
    "add-on loss",
    Entry("ppc", "stages.methods.ppc:PixelPrototypeContrast", "PPC: pixel-to-prototype contrast on two views"),
)

SEGMENT_METHODS = Registry(
    "segment method",
    Entry("deeplab", "stages.methods.supervised:MaskTraining", "DeepLab trained on masks"),
    Entry("mcic", "stages.methods.mcic:McicTrainer",
          "MCIC: end to end from image labels and saliency; also writes RUN/pseudo/mcic"),
)

SEGMENT_CONTRASTS = Registry(
    "contrast loss",
    Entry("memory", "stages.methods.pixel_contrast:MemoryPixelContrast",
          "cross-image pixel contrast with memory banks"),
)

AFFINITY_METHODS = Registry(
    "affinity method",
    Entry("irn", "stages.affinity.irn:IrnAffinity", "IRN: class boundaries on a frozen backbone, stride 4"),
    Entry("psa", "stages.affinity.psa:PsaAffinity", "AffinityNet (PSA, as SEAM uses it): feature distances, stride 8"),
)

REFINEMENTS = Registry(
    "refinement",
    Entry("crf", "stages.refine.crf:DenseCrf", "dense CRF"),
    Entry("pcm", "stages.refine.pcm:PcmRefinement", "SEAM's pixel correlation module, from a SEAM checkpoint"),
    Entry("saliency", "stages.refine.saliency_background:SaliencyBackground", "background from saliency maps"),
    Entry("rw", "stages.refine.random_walk:RandomWalk", "random walk of the run's affinity network (train-affinity)"),
)

BACKBONES = Registry(
    "backbone",
    Entry("resnet10", "stages.models.backbone:RESNET10", "one BasicBlock per stage, no ImageNet weights"),
    Entry("resnet18", "stages.models.backbone:RESNET18", "torchvision ResNet-18"),
    Entry("resnet34", "stages.models.backbone:RESNET34", "torchvision ResNet-34"),
    Entry("resnet50", "stages.models.backbone:RESNET50", "torchvision ResNet-50"),
    Entry("resnet101", "stages.models.backbone:RESNET101", "torchvision ResNet-101"),
    Entry("efficientnet_lite0", "stages.models.backbone:EFFICIENTNET_LITE0",
          "timm tf_efficientnet_lite0, ImageNet weights offline"),
    Entry("efficientnet_lite1", "stages.models.backbone:EFFICIENTNET_LITE1",
          "timm tf_efficientnet_lite1, ImageNet weights offline"),
    Entry("efficientnet_lite2", "stages.models.backbone:EFFICIENTNET_LITE2",
          "timm tf_efficientnet_lite2, ImageNet weights offline"),
    fallback="stages.models.backbone:timm_spec", fallback_help="any timm model name (ImageNet weights downloaded)",
)

SALIENCY_SOURCES = Registry(
    "saliency source",
    Entry("mbd", "stages.data.saliency_maps:MinimumBarrierSaliency", "built-in Minimum Barrier saliency, no weights"),
)

REGISTRIES = (CAM_METHODS, CAM_ADDONS, SEGMENT_METHODS, SEGMENT_CONTRASTS, AFFINITY_METHODS, REFINEMENTS, BACKBONES,
              SALIENCY_SOURCES)
