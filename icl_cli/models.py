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

Besides the built-in networks, ``arch`` may name a network of the user's (see
``resolve_arch``): ``module.path:factory``, a name an installed package publishes in the
entry-point group ``icl.architectures``, or ``timm:NAME``. Such a factory is called as
``factory(input_shape=(C, H, W), num_outputs=K)`` and returns an ``nn.Module`` mapping
(B, C, H, W) inputs to (B, K) logits; in one-vs-all mode it is called K times with
``num_outputs=1`` (K separate networks: K times the parameters and the cost).

Example:
    >>> net = build_model("mnist-cnn", (1, 28, 28), num_classes=10, mode="ova")
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from icl_cli.config import ARCH_GROUP, BUILTIN_ARCHS, ModelConfig
from icl_cli.errors import StepError

Shape = tuple[int, int, int]  # (C, H, W) of one input
ModelFactory = Callable[[Shape, int, int], nn.Module]  # (shape, outputs, heads) -> module
REGISTRY: dict[str, ModelFactory] = {}


def register(name: str):
    """Decorator: make an architecture available by ``name``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        REGISTRY[name] = factory
        return factory

    return wrap


class ArchError(StepError, ValueError):
    """An ``--arch`` that cannot be found, imported or built, or builds a network of the
    wrong shape: one line naming it and what to do (exit 3)."""


def build_model(arch: str, shape: Shape, num_classes: int, mode: str = "softmax") -> nn.Module:
    """One network with K logits (softmax), or K one-logit networks side by side (ova),
    for inputs of ``shape`` (C, H, W). ``arch``: a built-in name or a user's network (see
    ``resolve_arch``), whose output is checked on a batch of zeros (ArchError if it is
    not (B, K) logits)."""
    if mode not in ("softmax", "ova"):
        raise ValueError(f"unknown mode {mode!r} (choose softmax or ova)")
    if arch in REGISTRY:
        if mode == "softmax":
            return REGISTRY[arch](shape, num_classes, 1)
        return REGISTRY[arch](shape, 1, num_classes)
    found = resolve_arch(arch)
    if mode == "softmax":
        return _checked(found, found.build(shape, num_classes), shape, num_classes)
    # One factory, one shape: the first copy tells whether all K fit.
    nets = [_checked(found, found.build(shape, 1), shape, 1)]
    nets += [found.build(shape, 1) for _ in range(num_classes - 1)]
    params = [id(p) for net in nets for p in net.parameters()]
    if len(set(params)) < len(params):
        raise ArchError(f"--arch {found.spec}: --mode ova builds the network {num_classes} "
                        "times, and the factory returned networks that share parameters: it "
                        "must make a new network at every call")
    return OneVsAll(nets)


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


# --- a user's network: module.path:factory, an installed entry point, timm:NAME ---


class OneVsAll(nn.Module):
    """K separate one-logit networks: (B, C, H, W) -> (B, K), network k giving logit k
    (ICL eq. 7 with a user's network; K times the cost of one)."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.heads, self.outputs = len(nets), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], dim=1)

    def forward_heads(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Network k on ``xs[k]`` only: [(B_k, C, H, W)] * K -> [(B_k, 1)] * K."""
        if len(xs) != self.heads:
            raise ValueError(f"forward_heads needs {self.heads} inputs, got {len(xs)}")
        return [net(x) for net, x in zip(self.nets, xs, strict=True)]


@dataclass(frozen=True)
class FoundArch:
    """Where ``--arch`` leads: ``kind`` is ``module`` (``module.path:factory``),
    ``entry-point`` (an installed package's) or ``timm``; ``make(shape, outputs)`` builds
    one network; ``source`` is what the experiment records of its code (see
    ``arch_source``)."""

    spec: str
    kind: str
    make: Callable[[Shape, int], Any]
    source: str

    def build(self, shape: Shape, outputs: int) -> nn.Module:
        try:
            net = self.make(tuple(shape), outputs)
        except ArchError:
            raise
        except Exception as exc:
            raise ArchError(f"--arch {self.spec}: building the network for input_shape="
                            f"{tuple(shape)}, num_outputs={outputs} raised "
                            f"{_one_line(exc)}") from None
        if not isinstance(net, nn.Module):
            raise ArchError(f"--arch {self.spec}: the factory returned a "
                            f"{type(net).__name__}, not a torch.nn.Module")
        return net


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _checked(found: FoundArch, net: nn.Module, shape: Shape, outputs: int) -> nn.Module:
    """``net`` if it maps a batch of 2 zero inputs to (2, outputs) logits (in eval mode,
    without gradients: no batch-norm statistic moves); else ArchError. Lazy modules get
    their parameters here, before any optimizer or checkpoint sees them."""
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(2, *shape))
    except Exception as exc:
        raise ArchError(f"--arch {found.spec}: the network fails on a batch of shape "
                        f"{(2, *shape)}: {_one_line(exc)}") from None
    finally:
        net.train(was_training)
    got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    if got != (2, outputs) or not out.is_floating_point():
        raise ArchError(f"--arch {found.spec}: the network maps inputs of shape "
                        f"{(2, *shape)} to {got}; icl needs (B, K) logits, here (2, "
                        f"{outputs}) (a tensor of floats, one logit per class)")
    return net


def resolve_arch(arch: str) -> FoundArch:
    """The network ``arch`` names, imported (torch is already loaded; no network built):

    - ``module.path:factory``: the module is imported as ``python -m`` would find it (the
      current folder first, then PYTHONPATH and installed packages), ``factory`` looked up
      in it (dots allowed: ``Class.method``);
    - ``timm:NAME`` or ``timm:NAME@FILE``: ``timm.create_model(NAME)`` without pretrained
      weights, or with those of the local FILE (nothing is downloaded);
    - any other name: the entry point of that name in the group ``icl.architectures``
      (``[project.entry-points."icl.architectures"] my-net = "my_nets:build"``).

    Raises ArchError (one line) when it cannot be found, imported or called.
    """
    if arch in REGISTRY:
        raise ArchError(f"--arch {arch} is a built-in network")
    if arch.startswith("timm:"):
        return _timm(arch)
    if ":" in arch:
        module, _, attr = arch.partition(":")
        factory = _import_factory(arch, module, attr)
        return FoundArch(arch, "module", _keywords(factory), _code_source(factory))
    return _entry_point(arch)


def _keywords(factory: Callable) -> Callable[[Shape, int], Any]:
    return lambda shape, outputs: factory(input_shape=shape, num_outputs=outputs)


def _import_factory(spec: str, module: str, attr: str) -> Callable:
    if not module or not attr or not all(p.isidentifier() for p in module.split(".")) \
            or not all(p.isidentifier() for p in attr.split(".")):
        raise ArchError(f"--arch {spec}: expected module.path:factory (e.g. my_nets:build), "
                        "a built-in name, an installed one or timm:NAME")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:  # as `python -m` does
        sys.path.insert(0, here)
    try:
        # A module that makes tensors as it is imported draws from torch's generator:
        # forked, so that the weights of a seeded build never depend on the first import.
        with torch.random.fork_rng(devices=[]):
            mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")
        if exc.name in {".".join(top[: i + 1]) for i in range(len(top))}:
            raise ArchError(
                f"--arch {spec}: no module named {module!r} in the current folder "
                f"({here}), PYTHONPATH or the installed packages: run icl from the folder "
                f"that holds {top[0]}.py (or {top[0]}/), or set PYTHONPATH to it") from None
        raise ArchError(f"--arch {spec}: importing {module} failed: {_one_line(exc)} "
                        "(a package it imports is missing: install it)") from None
    except Exception as exc:
        raise ArchError(f"--arch {spec}: importing {module} raised {_one_line(exc)}") from None
    factory: Any = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            where = getattr(mod, "__file__", None) or module
            raise ArchError(f"--arch {spec}: {where} has no {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ArchError(f"--arch {spec}: {attr} is a {type(factory).__name__}, not a "
                        "callable factory(input_shape=(C, H, W), num_outputs=K)")
    return factory


def _entry_point(name: str) -> FoundArch:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ARCH_GROUP) if ep.name == name]
    if not found:
        from icl_cli.config import installed_architectures

        known = ", ".join([*BUILTIN_ARCHS, *installed_architectures()])
        raise ArchError(f"unknown architecture {name!r} (choose from {known}; or "
                        "module.path:factory for your own, timm:NAME through timm)")
    dists = {_dist_label(ep) for ep in found}
    if len(dists) > 1:
        raise ArchError(f"--arch {name} is published by several installed packages "
                        f"({', '.join(sorted(dists))}): uninstall all but one")
    ep = found[0]
    try:
        with torch.random.fork_rng(devices=[]):  # as for a module (``_import_factory``)
            factory = ep.load()
    except Exception as exc:
        raise ArchError(f"--arch {name}: loading {ep.value} (from {_dist_label(ep)}) "
                        f"raised {_one_line(exc)}") from None
    if not callable(factory):
        raise ArchError(f"--arch {name}: {ep.value} (from {_dist_label(ep)}) is not callable")
    return FoundArch(name, "entry-point", _keywords(factory),
                     f"{_dist_label(ep)}, {_code_source(factory)}")


def _dist_label(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else ep.value


def _code_source(factory: Callable) -> str:
    """``FILE sha256:HEX`` of the file that defines ``factory`` (its module's file when
    it has no source of its own, such as an instance of a class)."""
    try:
        path = inspect.getsourcefile(factory) or inspect.getfile(factory)
    except TypeError:
        path = getattr(sys.modules.get(getattr(factory, "__module__", ""), None),
                       "__file__", None)
    if not path or not os.path.isfile(path):
        return "source unknown"
    return f"{Path(path).name} sha256:{_sha256(path)}"


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _timm(spec: str) -> FoundArch:
    """``timm:NAME[@FILE]``: timm's model NAME with ``num_classes``, ``in_chans`` and (for
    the models that take one) ``img_size`` set from the data."""
    name, _, weights = spec[len("timm:"):].partition("@")
    try:
        with torch.random.fork_rng(devices=[]):  # as for a module (``_import_factory``)
            import timm
    except ImportError:
        raise ArchError(f"--arch {spec} needs timm: pip install 'icl-toolkit[timm]'") from None
    if not timm.is_model(name):
        raise ArchError(f"--arch {spec}: timm {timm.__version__} has no model {name!r} "
                        "(python -c \"import timm; print(timm.list_models('resnet*'))\" "
                        "lists them)")
    source = f"timm {timm.__version__}"
    if weights:
        if not os.path.isfile(weights):
            raise ArchError(f"--arch {spec}: weights file {weights} does not exist")
        source += f", {Path(weights).name} sha256:{_sha256(weights)}"

    def make(shape: Shape, outputs: int) -> nn.Module:
        kwargs: dict[str, Any] = {"num_classes": outputs, "in_chans": shape[0]}
        if weights:  # a local file only: timm's hub and URL sources switched off
            kwargs.update(pretrained=True, pretrained_cfg_overlay={
                "file": os.path.abspath(weights), "source": "", "hf_hub_id": None,
                "url": None})
        try:
            return timm.create_model(name, img_size=tuple(shape[1:]), **kwargs)
        except TypeError as exc:  # a model without an input size of its own (a CNN)
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, **kwargs)

    return FoundArch(spec, "timm", make, source)


def arch_source(arch: str) -> str | None:
    """What an experiment records of ``arch``'s code: None for a built-in network (it is
    icl's own); ``FILE sha256:HEX`` of the file that defines a ``module:factory``; the
    package and version, and that file, for an installed entry point; timm's version
    (and the weights file's sha256) for ``timm:NAME``."""
    return None if arch in REGISTRY else resolve_arch(arch).source


def normalized_arch(arch: str) -> str:
    """``arch`` as recorded: a ``timm:NAME@FILE`` weights file as an absolute path (later
    steps may run from another folder); anything else as given."""
    if arch.startswith("timm:") and "@" in arch:
        name, _, weights = arch.partition("@")
        return f"{name}@{os.path.abspath(os.path.expanduser(weights))}"
    return arch


def checked_model(model: ModelConfig, shape: Shape, num_classes: int) -> ModelConfig:
    """``model`` with its network checked and its source recorded (``icl init``): the
    network is built once for this data, in this mode, and its output shape checked
    (ArchError otherwise), torch's random state left as it was. A source already
    recorded (an experiment started ``--from`` another) is kept."""
    arch = normalized_arch(model.arch)
    with torch.random.fork_rng(devices=[]):
        build_model(arch, shape, num_classes, model.mode)
    source = model.source if model.source is not None else arch_source(arch)
    return model.replace(arch=arch, source=source)


def check_spec(arch: str) -> None:
    """``arch`` names a network that can be found and imported (no network built, no data
    needed): a built-in name, ``module:factory``, an installed entry point, ``timm:NAME``.
    ArchError (one line) otherwise."""
    if arch not in REGISTRY:
        resolve_arch(normalized_arch(arch))


def arch_drift(model: ModelConfig | dict) -> str | None:
    """None when the code behind an experiment's network is what it recorded at ``icl
    init``; else one sentence saying what changed (for ``--replay``). Imports the user's
    module: never called by the read-only commands."""
    if isinstance(model, dict):
        model = ModelConfig.from_dict(model)
    if model.arch in REGISTRY or model.source is None:
        return None
    try:
        now = arch_source(model.arch)
    except ArchError as exc:
        return f"the network's code cannot be loaded now ({exc})"
    if now == model.source:
        return None
    return (f"the code of --arch {model.arch} changed since the experiment was made "
            f"(recorded: {_short(model.source)}; now: {_short(now)})")


def _short(source: str | None) -> str:
    """A recorded source with its sha256s cut to 12 digits, for a message."""
    return re.sub(r"sha256:([0-9a-f]{12})[0-9a-f]{52}", r"sha256:\1", str(source))
