"""
ResNet-18/34/50 backbones with a width multiplier (He et al., CVPR 2016).

Written for depth crops trained from scratch (no ImageNet weights are available here):
single-channel input by default, a ``width`` multiplier on every stage so small variants
run fast on a CPU, and an optional dilated last stage (stride 1, dilation 2) as A2J uses.
"""

from torch import nn

# Blocks per stage and block type for each depth.
RESNET_SPECS = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
}


def scaled_channels(channels, width):
    """Return ``channels * width`` rounded to a multiple of 8 (at least 8)."""
    if width <= 0:
        raise ValueError(f'width multiplier must be positive, got {width}')
    return max(8, int(round(channels * width / 8.0)) * 8)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut."""

    expansion = 1

    def __init__(self, in_channels, channels, stride=1, dilation=1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with an identity or projection shortcut."""

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, dilation=1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def conv_bn_relu(in_channels, out_channels, kernel=3, stride=1):
    """Return a conv + BatchNorm + ReLU block with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


def _projection(in_channels, out_channels, stride):
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    """
    ResNet trunk returning the outputs of its four stages.

    :param depth: 'resnet18', 'resnet34' or 'resnet50'.
    :param width: channel multiplier applied to every stage (1.0 = the standard network).
    :param in_channels: input channels (1 for a depth crop).
    :param dilate_layer4: stride 1 and dilation 2 in the last stage, so layer4 keeps 1/16
        of the input resolution instead of 1/32.
    """

    def __init__(self, depth='resnet18', width=1.0, in_channels=1, dilate_layer4=False):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(
                f'unknown backbone {depth!r}; choose one of {sorted(RESNET_SPECS)}')
        kind, blocks = RESNET_SPECS[depth]
        block = BasicBlock if kind == 'basic' else Bottleneck
        stem = scaled_channels(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1))
        stages = []
        channels_in = stem
        self.stage_channels = []
        for index, count in enumerate(blocks):
            channels = scaled_channels(64 * 2 ** index, width)
            stride = 1 if index == 0 else 2
            dilation = 1
            if index == 3 and dilate_layer4:
                stride, dilation = 1, 2
            layers = []
            for block_index in range(count):
                layers.append(block(channels_in, channels,
                                    stride if block_index == 0 else 1, dilation))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*layers))
            self.stage_channels.append(channels_in)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stride = 16 if dilate_layer4 else 32
        _init_weights(self)

    def forward(self, x):
        """Return (layer1, layer2, layer3, layer4) feature maps."""
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return x1, x2, x3, self.layer4(x3)


def _init_weights(module):
    """Kaiming-normal convolutions, unit BatchNorm; zero the last BN of each residual branch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
