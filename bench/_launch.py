"""The launch-bound case (issue 21): two residual models at batch 2 on the CPU, where a step is
bound by kernel launches and Python rather than arithmetic.

- ``resnet18``: torchvision's ResNet-18 architecture written out here (no torchvision): a 7x7
  stride-2 stem conv + BatchNorm + ReLU + 3x3 stride-2 max-pool, four stages of two BasicBlocks
  (64, 128, 256, 512 channels; 3x3 convs without bias, BatchNorm, ``out += identity``, a 1x1
  stride-2 conv + BatchNorm downsample where the shape changes), global average pool, FC 10.
  Input 3x32x32 (CIFAR-sized), so the stages run at 8x8, 4x4, 2x2 and 1x1: 20 convs, 20
  BatchNorms, 1 Linear, 62 parameter tensors, 11.2 M parameters.  ``ssdfa.convert`` places
  one point per BasicBlock (8 points).
- ``transformer``: the classifier of bench/README.md's real_models section: an image's 28 rows
  as 28 tokens of 28 features, Linear 28->64 + a learned position table, a 4-layer
  ``nn.TransformerEncoder`` (d 64, 4 heads, feed-forward 256, GELU, dropout 0.1, post-norm,
  batch_first), mean pooling over the tokens, Linear 64->10.  One point per encoder layer (4).

Both are ``_common.Case`` entries with ``floor="detached"`` (``_common.DetachedFloor``).
"""

from __future__ import annotations

import torch
from torch import nn

import _common as C


# -- ResNet-18 (torchvision's architecture) ----------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], width
        for k, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if k == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- the nn.TransformerEncoder classifier -------------------------------------------------------
class TransformerClassifier(nn.Module):
    def __init__(self, in_features=28, seq=28, d=64, heads=4, layers=4, num_classes=10, dropout=0.1):
        super().__init__()
        self.embed = nn.Linear(in_features, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=dropout, batch_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):  # (B, 28, 28): rows as tokens
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


CASES = {
    "resnet18": C.Case(
        "launch-bound/resnet18",
        ResNet18,
        (3, 32, 32),
        10,
        2,
        False,
        "ResNet-18 (torchvision's architecture, BasicBlock) on 3x32x32",
        floor="detached",
        head="fc",
    ),
    "transformer": C.Case(
        "launch-bound/transformer",
        TransformerClassifier,
        (28, 28),
        10,
        2,
        False,
        "4-layer nn.TransformerEncoder classifier, d 64, 28 tokens",
        floor="detached",
        head="head",
    ),
}

# every direct rule, and ours bp (the wrapper with no points) for scale
METHODS = ["bp", "dfa", "sdfa", "ssdfa", "dkp", "sign_dfa", "drtp", "shallow", "fdfa"]


def expand(names):
    """``launch-bound`` -> both of its models; ``launch-bound/<model>`` -> that one."""
    out = []
    for n in names:
        if n == "launch-bound":
            out += [c.name for c in CASES.values()]
        else:
            out.append(n)
    return out


def case(name):
    return CASES[name.split("/", 1)[1]]
