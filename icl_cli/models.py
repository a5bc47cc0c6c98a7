"""Networks by name, each able to run as one softmax net or as K stacked one-vs-all nets.

Every network maps (B, C, H, W) inputs to (B, K) logits f_k(x). In one-vs-all mode
(``heads=K``) the network is K independent binary networks computed together as grouped
convolutions: group k only ever sees group k's channels, so the K networks share nothing,
and their summed loss gives each exactly the gradient it would get trained alone. One
forward pass then evaluates all K networks (paper 3.3, "one-vs-all").

Example:
    >>> net = build_model("mnist-cnn", (1, 28, 28), num_classes=10, mode="ova")
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Shape = tuple[int, int, int]  # (C, H, W) of one input
ModelFactory = Callable[[Shape, int, int], nn.Module]  # (shape, outputs, heads) -> module
REGISTRY: dict[str, ModelFactory] = {}


def register(name: str):
    """Decorator: make an architecture available by ``name``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        REGISTRY[name] = factory
        return factory

    return wrap


def build_model(arch: str, shape: Shape, num_classes: int, mode: str = "softmax") -> nn.Module:
    """One network with K logits (softmax), or K one-logit networks side by side (ova),
    for inputs of ``shape`` (C, H, W)."""
    if arch not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown architecture {arch!r} (choose from {known})")
    if mode == "softmax":
        return REGISTRY[arch](shape, num_classes, 1)
    if mode == "ova":
        return REGISTRY[arch](shape, 1, num_classes)
    raise ValueError(f"unknown mode {mode!r} (choose softmax or ova)")


class _Flatten(nn.Module):
    """(B, heads*C, H, W) -> (B, heads, C*H*W): channels of group k are contiguous."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.heads, -1)


class GroupedLinear(nn.Module):
    """K independent linear layers: (B, K, D) -> (B, K * out)."""

    def __init__(self, heads: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(heads, out_features))
        bound = in_features**-0.5  # nn.Linear's default init, per head
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:  # plain linear: one matmul, no einsum overhead
            return F.linear(x[:, 0], self.weight[0], self.bias[0])
        y = torch.einsum("bkd,kod->bko", x, self.weight) + self.bias
        return y.reshape(x.shape[0], -1)


@register("mnist-cnn")
def mnist_cnn(shape: Shape, outputs: int, heads: int = 1) -> nn.Module:
    """The paper's MNIST net (section 4.1): 4 conv 5x5 stride 2 (64-128-256-512),
    LeakyReLU(0.2), no batch norm, no pooling, then a linear layer. 28x28 -> 2x2x512."""
    widths = [64, 128, 256, 512]
    layers: list[nn.Module] = []
    c_in = shape[0]
    for i, w in enumerate(widths):
        # The first conv sees the shared input; later convs are per-head groups.
        groups = 1 if i == 0 else heads
        layers += [nn.Conv2d(c_in, w * heads, 5, stride=2, padding=2, groups=groups),
                   nn.LeakyReLU(0.2)]
        c_in = w * heads
    return _ConvHead(nn.Sequential(*layers), heads, outputs, shape)


@register("tiny")
def tiny(shape: Shape, outputs: int, heads: int = 1) -> nn.Module:
    """A small net for tests: 2 conv 3x3 stride 2 (8-16), global average pool, linear."""
    body = nn.Sequential(
        nn.Conv2d(shape[0], 8 * heads, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(8 * heads, 16 * heads, 3, stride=2, padding=1, groups=heads),
        nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1),
    )
    return _ConvHead(body, heads, outputs, shape)


class _ConvHead(nn.Module):
    """Conv body, then one linear head per group: (B, C, H, W) -> (B, heads * outputs)."""

    def __init__(self, body: nn.Module, heads: int, outputs: int, shape: Shape) -> None:
        super().__init__()
        self.body, self.flatten = body, _Flatten(heads)
        with torch.no_grad():
            d = self.flatten(body(torch.zeros(1, *shape))).shape[-1]
        self.head = GroupedLinear(heads, d, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.body(x)))


# --- CIFAR ResNet (He et al. 2016, section 4.2): 3 stages x n basic blocks, 16/32/64 ---


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, heads: int) -> None:
        super().__init__()
        g = heads
        self.conv1 = nn.Conv2d(c_in * g, c_out * g, 3, stride, 1, bias=False, groups=g)
        self.bn1 = nn.BatchNorm2d(c_out * g)
        self.conv2 = nn.Conv2d(c_out * g, c_out * g, 3, 1, 1, bias=False, groups=g)
        self.bn2 = nn.BatchNorm2d(c_out * g)
        self.heads, self.pad = g, c_out - c_in
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: subsample and zero-pad channels (per head), no parameters."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        b, _, h, w = x.shape
        x = x.reshape(b, self.heads, -1, h, w)
        x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cifar_resnet(n: int, shape: Shape, outputs: int, heads: int) -> nn.Module:
    g = heads
    layers: list[nn.Module] = [
        nn.Conv2d(shape[0], 16 * g, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16 * g),
        nn.ReLU(),
    ]
    c = 16
    for stage, width in enumerate([16, 32, 64]):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            layers.append(_BasicBlock(c, width, stride, g))
            c = width
    layers.append(nn.AdaptiveAvgPool2d(1))
    net = _ConvHead(nn.Sequential(*layers), g, outputs, shape)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


@register("resnet32")
def resnet32(shape: Shape, outputs: int, heads: int = 1) -> nn.Module:
    """CIFAR ResNet-32: 3 stages x 5 basic blocks, 16/32/64 channels, batch norm, GAP."""
    return _cifar_resnet(5, shape, outputs, heads)


@register("resnet8")
def resnet8(shape: Shape, outputs: int, heads: int = 1) -> nn.Module:
    """The same family with 1 block per stage: for smoke tests of the resnet code path."""
    return _cifar_resnet(1, shape, outputs, heads)
