"""ResNet backbones from torchvision, with output stride 32, 16 or 8 and optional ImageNet weights.

Each architecture is a `ResNetSpec` below (`RESNET10` ... `RESNET101`), registered by name in
`stages.registry.BACKBONES`: that registry is how `Backbone(name)` finds it, and what `--backbone` lists.

`resnet10` is torchvision's `ResNet` with one `BasicBlock` per stage: the default on the synthetic benchmark,
where a CPU must train two networks in minutes. It has no ImageNet weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.checkpoint import safe_load
from ..core.errors import UserError
from ..core.tv import torchvision
from ..registry import BACKBONES


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet, by names in torchvision.models.resnet: its block, its blocks per stage and its weights enum."""

    block: str  # "BasicBlock" or "Bottleneck"
    layers: tuple[int, int, int, int]
    weights: str | None  # the ImageNet weights enum, or None when torchvision has none


RESNET10 = ResNetSpec("BasicBlock", (1, 1, 1, 1), None)
RESNET18 = ResNetSpec("BasicBlock", (2, 2, 2, 2), "ResNet18_Weights")
RESNET34 = ResNetSpec("BasicBlock", (3, 4, 6, 3), "ResNet34_Weights")
RESNET50 = ResNetSpec("Bottleneck", (3, 4, 6, 3), "ResNet50_Weights")
RESNET101 = ResNetSpec("Bottleneck", (3, 4, 23, 3), "ResNet101_Weights")

# Stages (layer3, layer4) whose stride is replaced by dilation to reach each output stride.
_DILATED_STAGES = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}


class Backbone(nn.Module):
    """ResNet without its pooling and fc head; returns the stage outputs (layer1..layer4)."""

    def __init__(self, name: str, output_stride: int = 16, pretrained: str = "none"):
        super().__init__()
        spec: ResNetSpec = BACKBONES.get(name)  # "unknown backbone ..." (choose from the registered names)
        if output_stride not in _DILATED_STAGES:
            raise UserError(f"output stride must be 8, 16 or 32, got {output_stride}")
        resnet = torchvision().models.resnet
        block = getattr(resnet, spec.block)
        net = resnet.ResNet(block, list(spec.layers))
        load_pretrained(net, name, pretrained)
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


def load_pretrained(net: nn.Module, name: str, pretrained: str) -> None:
    """`none`: random init; `imagenet`: torchvision's weights (downloaded or cached); else a path to a state dict."""
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        weights_name = BACKBONES.get(name).weights
        if weights_name is None:
            raise UserError(f"{name} has no ImageNet weights in torchvision; use --pretrained none or a file")
        try:
            state = getattr(torchvision().models.resnet, weights_name).DEFAULT.get_state_dict(progress=False)
        except Exception as error:  # urllib errors differ by platform; all mean "could not get the weights"
            raise UserError(
                f"cannot load ImageNet weights for {name} ({type(error).__name__}: {error}); offline, put the "
                f"file in $TORCH_HOME/hub/checkpoints or pass --pretrained PATH") from None
    else:
        state = safe_load(pretrained, "--pretrained weights file (or none / imagenet)")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(f"weights do not match {name}: {len(missing)} missing, {len(unexpected)} unexpected keys "
                        f"(e.g. {(missing + unexpected)[0]})")
