"""Attention Branch Network (ABN) built from torchvision's ResNet blocks.

Fukui et al., "Attention Branch Network", CVPR 2019. The feature extractor is a
ResNet cut before its last stage. An attention branch (a stride-1 copy of the
last stage plus a K-channel head, K = classes) produces class logits of its own
and a one-channel attention map M. The perception branch (the real last stage)
classifies the features re-weighted as (1 + M) * g.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

Block = type[BasicBlock] | type[Bottleneck]


class ABNOutput(NamedTuple):
    logits: Tensor  # perception branch, B x K
    attention_logits: Tensor  # attention branch, B x K
    attention: Tensor  # the map that was applied, B x 1 x h x w, in [0, 1]


def make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage, as torchvision's ResNet._make_layer builds it."""
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(outplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class AttentionBranch(nn.Module):
    """Stride-1 stage + K-channel head: class logits and the attention map."""

    def __init__(self, block: Block, inplanes: int, planes: int, blocks: int, num_classes: int):
        super().__init__()
        channels = planes * block.expansion
        self.stage = make_stage(block, inplanes, planes, blocks, stride=1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Sequential(conv1x1(channels, num_classes), nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True))
        self.classifier = conv1x1(num_classes, num_classes)
        self.map = nn.Sequential(
            nn.Conv2d(num_classes, 1, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.head(self.bn(self.stage(x)))
        logits = self.classifier(a).mean(dim=(2, 3))
        return logits, self.map(a)


class ABN(nn.Module):
    """features -> (attention branch, perception branch on (1 + M) * features)."""

    def __init__(
        self,
        features: nn.Module,
        attention_branch: AttentionBranch,
        perception: nn.Module,
        perception_channels: int,
        num_classes: int,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.attention_branch = attention_branch
        self.perception = perception
        self.fc = nn.Linear(perception_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, attention: Tensor | None = None, supplied: Tensor | None = None) -> ABNOutput:
        """Classify x. A given attention map (B or 1 x 1 x h x w) replaces the model's own: for every
        sample, or for those where supplied (B, bool) is true."""
        g = self.features(x)
        attention_logits, own = self.attention_branch(g)
        m = own
        if attention is not None:
            m = _check_map(attention, own)
            if supplied is not None:
                m = torch.where(supplied.view(-1, 1, 1, 1), m, own)
        p = self.perception(g * (1 + m))
        logits = self.fc(torch.flatten(p.mean(dim=(2, 3), keepdim=True), 1))
        return ABNOutput(logits, attention_logits, m.expand_as(own))

    def backbone(self) -> list[nn.Module]:
        """The parts built from a ResNet's blocks (a pretrained file fills them): the features, the
        perception branch and the attention branch's stage. The heads (fc, the attention branch's head and
        map) are the ABN's own."""
        return [self.features, self.perception, self.attention_branch.stage]

    @torch.no_grad()
    def map_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the attention map for an input of input_size = (H, W)."""
        was_training = self.training
        self.eval()
        h, w = self(torch.zeros(1, 3, *input_size)).attention.shape[-2:]
        self.train(was_training)
        return int(h), int(w)


def _check_map(attention: Tensor, own: Tensor) -> Tensor:
    b, _, h, w = own.shape
    if (
        attention.dim() != 4
        or attention.shape[1] != 1
        or attention.shape[0] not in (1, b)
        or tuple(attention.shape[-2:]) != (h, w)
    ):
        raise ValueError(
            f"attention map must have shape ({b} or 1)x1x{h}x{w}, got {'x'.join(map(str, attention.shape))}"
        )
    return attention.to(own.dtype)


def _imagenet_abn(block: Block, layers: list[int], num_classes: int) -> ABN:
    """224x224 inputs: stem + layer1..3 are the features (14x14), layer4 perceives."""
    stem = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    e = block.expansion
    features = nn.Sequential(
        stem,
        make_stage(block, 64, 64, layers[0], stride=1),
        make_stage(block, 64 * e, 128, layers[1], stride=2),
        make_stage(block, 128 * e, 256, layers[2], stride=2),
    )
    branch = AttentionBranch(block, 256 * e, 512, layers[3], num_classes)
    perception = make_stage(block, 256 * e, 512, layers[3], stride=2)
    return ABN(features, branch, perception, 512 * e, num_classes)


# Where a torchvision ResNet's tensors go in an _imagenet_abn model (finetune/pretrained.py loads them):
# stem and layer1..3 are the features, layer4 the perception branch. The attention branch's stage has layer4's
# shapes (only its stride differs, which is not a weight), so it starts from layer4 too; docs/knowledge.md
# says why. fc is loaded only where the class counts agree.
RESNET_NAMES = {
    "conv1.": ("features.0.0.",),
    "bn1.": ("features.0.1.",),
    "layer1.": ("features.1.",),
    "layer2.": ("features.2.",),
    "layer3.": ("features.3.",),
    "layer4.": ("perception.", "attention_branch.stage."),
    "fc.": ("fc.",),
}


def _small_abn(block: Block, layers: list[int], widths: tuple[int, int, int], num_classes: int) -> ABN:
    """Inputs around 32x32, CIFAR-style three stages: the branch attaches after stage 2 (map at H/2)."""
    w1, w2, w3 = widths
    e = block.expansion
    features = nn.Sequential(
        nn.Conv2d(3, w1, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(w1),
        nn.ReLU(inplace=True),
        make_stage(block, w1, w1, layers[0], stride=1),
        make_stage(block, w1 * e, w2, layers[1], stride=2),
    )
    branch = AttentionBranch(block, w2 * e, w3, layers[2], num_classes)
    perception = make_stage(block, w2 * e, w3, layers[2], stride=2)
    return ABN(features, branch, perception, w3 * e, num_classes)


_MODELS: dict[str, Callable[[int], ABN]] = {
    "abn_resnet18": lambda k: _imagenet_abn(BasicBlock, [2, 2, 2, 2], k),
    "abn_resnet34": lambda k: _imagenet_abn(BasicBlock, [3, 4, 6, 3], k),
    "abn_resnet50": lambda k: _imagenet_abn(Bottleneck, [3, 4, 6, 3], k),
    "abn_small": lambda k: _small_abn(BasicBlock, [2, 2, 2], (16, 32, 64), k),
}

# The ResNet whose ImageNet weights each architecture can start from (abn train --pretrained).
RESNETS = {"abn_resnet18": "ResNet-18", "abn_resnet34": "ResNet-34", "abn_resnet50": "ResNet-50"}

# The input size each architecture is built for; any other size works too.
DEFAULT_INPUT_SIZE = {"abn_resnet18": 224, "abn_resnet34": 224, "abn_resnet50": 224, "abn_small": 32}


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int) -> ABN:
    if name not in _MODELS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(list_models())}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return _MODELS[name](num_classes)
