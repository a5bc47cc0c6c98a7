"""Networks by name, each able to run as one softmax net or as K stacked one-vs-all nets.

Every network maps (B, C, H, W) inputs to (B, K) logits f_k(x). In one-vs-all mode
(``heads=K``) the network is K independent binary networks computed together as grouped
convolutions: group k only ever sees group k's channels, so the K networks share nothing,
and their summed loss gives each exactly the gradient it would get trained alone. One
forward pass then evaluates all K networks (paper 3.3, "one-vs-all").

``forward_heads`` runs network k on its own inputs only (a pseudo-negative of class k
concerns network k alone), so sampling and the pseudo-negative loss cost one network
evaluation per sample, not K. On CPU, plain conv stacks run head by head on slices of the
stacked weights: oneDNN's grouped convolutions are slower there than K dense ones with the
same arithmetic (see BENCHMARKS.md); on a GPU the grouped convolutions are used.

Example:
    >>> net = build_model("mnist-cnn", (1, 28, 28), num_classes=10, mode="ova")
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
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
        # Sizes spelled out, not -1: an empty batch (say, FGSM examples of which none fooled
        # the source model) must give (0, heads, D), not an error.
        return x.reshape(x.shape[0], self.heads, math.prod(x.shape[1:]) // self.heads)


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
        return y.flatten(1)  # not reshape(B, -1): an empty batch must work too


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
        self.heads, self.outputs = heads, outputs
        with torch.no_grad():
            d = self.flatten(body(torch.zeros(1, *shape))).shape[-1]
        self.head = GroupedLinear(heads, d, outputs)
        self._sliceable = heads > 1 and _sliceable(body, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sliceable and x.device.type == "cpu":
            return torch.cat(self._sliced([x] * self.heads), dim=1)
        return self.head(self.flatten(self.body(x)))

    def forward_heads(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Network k on ``xs[k]`` only: [(B_k, C, H, W)] * K -> [(B_k, outputs)] * K.

        Equals ``[self(x)[:, k * outputs:(k + 1) * outputs] for k, x in enumerate(xs)]`` at
        1/K of the cost. The grouped form pads every head to max B_k rows; in training mode
        that would put the padding into batch-norm statistics, so callers use it for
        training only on networks without batch norm (``has_batch_norm``).
        """
        if len(xs) != self.heads:
            raise ValueError(f"forward_heads needs {self.heads} inputs, got {len(xs)}")
        if self.heads == 1:
            return [self(xs[0])]
        if self._sliceable and xs[0].device.type == "cpu":
            return self._sliced(xs)
        first = self.body[0] if isinstance(self.body, nn.Sequential) else None
        if not isinstance(first, nn.Conv2d) or first.groups != 1:  # no shortcut: K x cost
            o = self.outputs
            return [self(x)[:, k * o:(k + 1) * o] for k, x in enumerate(xs)]
        # Heads side by side in the channels, padded to m rows: the first convolution
        # becomes grouped (network k's filters see only head k's input), the rest is as is.
        m = max(len(x) for x in xs)
        stacked = xs[0].new_zeros(m, self.heads, *xs[0].shape[1:])
        for k, x in enumerate(xs):
            stacked[: len(x), k] = x
        y = F.conv2d(stacked.flatten(1, 2), first.weight, first.bias, first.stride,
                     first.padding, first.dilation, groups=self.heads)
        out = self.head(self.flatten(self.body[1:](y))).view(m, self.heads, self.outputs)
        return [out[: len(x), k] for k, x in enumerate(xs)]

    def _sliced(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The K networks one after another on slices of the stacked parameters (CPU)."""
        h = self.heads
        for layer in self.body:
            if isinstance(layer, nn.Conv2d):
                ws = layer.weight.chunk(h)  # network k's filters: rows k*C_out..(k+1)*C_out
                bs = layer.bias.chunk(h) if layer.bias is not None else [None] * h
                g = max(1, layer.groups // h)
                xs = [F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, g)
                      for x, w, b in zip(xs, ws, bs, strict=True)]
            else:
                xs = [layer(x) for x in xs]
        return [F.linear(x.flatten(1), w, b) for x, w, b in
                zip(xs, self.head.weight.unbind(0), self.head.bias.unbind(0), strict=True)]


_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d)


def _sliceable(body: nn.Module, heads: int) -> bool:
    """A plain stack of convolutions and per-channel layers, head k in channel block k."""
    if not isinstance(body, nn.Sequential):
        return False
    convs = [m for m in body if isinstance(m, nn.Conv2d)]
    if not convs or convs[0].groups != 1 or any(c.padding_mode != "zeros" for c in convs):
        return False
    if any(c.groups % heads for c in convs[1:]):
        return False
    return all(isinstance(m, (nn.Conv2d, *_ELEMENTWISE)) for m in body)


def has_batch_norm(model: nn.Module) -> bool:
    """Batch statistics couple the samples of a batch (see ``forward_heads``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


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
        b, c, h, w = x.shape  # sizes spelled out, not -1: an empty batch must work too
        x = x.reshape(b, self.heads, c // self.heads, h, w)
        x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x.reshape(b, self.heads * (c // self.heads + self.pad), h, w)

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
