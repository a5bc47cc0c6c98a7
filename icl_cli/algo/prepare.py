"""How a network runs, not what it computes: ``torch.compile`` and the channels_last memory
format, both off by default (a GPU is where they may pay; neither is measured yet).

``prepare`` changes the module in place and returns it, so the module that trains and
samples is the one whose ``state_dict`` a checkpoint holds, under the same keys
(``torch.compile(model)`` would return a wrapper whose keys start with ``_orig_mod.``).
Neither option changes the arithmetic beyond floating-point order: results agree with the
default to about 1e-6 relative (``tests/algo/test_compile.py`` checks 1e-5).

Pure tensor code: no I/O; ``torch._dynamo`` and inductor are imported only when
``compile`` is asked for (their import costs seconds).
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS_LAST = torch.channels_last


def prepare(model: nn.Module, *, compile: bool = False, channels_last: bool = False,
            compile_mode: str | None = None) -> nn.Module:
    """``model`` made ready to train or sample: with ``channels_last``, its 4-D weights and
    its inputs in NHWC memory order (convolutions then run in that layout on cuDNN and
    oneDNN; ``state_dict`` still gives contiguous NCHW tensors, so a checkpoint is laid
    out as without it); with ``compile``, its ``forward`` compiled by ``torch.compile``
    (``nn.Module.compile``: in place, the same parameters and state_dict keys;
    ``forward_heads``, one-vs-all's per-network path, stays eager). Returns ``model``.

    ``compile_mode``: torch.compile's ``mode`` (None: its default; ``max-autotune`` tries
    more kernels, at a longer first step).

    Example:
        >>> net = prepare(build_model("mnist-cnn", (1, 28, 28), 10).to("cuda"),
        ...               channels_last=True)
        >>> net(torch.zeros(2, 1, 28, 28, device="cuda")).shape
        torch.Size([2, 10])
    """
    if channels_last and not getattr(model, "_icl_channels_last", False):
        model.to(memory_format=CHANNELS_LAST)  # 4-D parameters and buffers only
        model.register_forward_pre_hook(_inputs_channels_last)
        model.register_state_dict_post_hook(_contiguous_state)
        model._icl_channels_last = True
    if compile:
        model.compile(mode=compile_mode)
    return model


def is_channels_last(model: nn.Module) -> bool:
    """Whether every 4-D parameter of ``model`` is laid out channels_last (True for a
    model without any)."""
    return all(p.is_contiguous(memory_format=CHANNELS_LAST)
               for p in model.parameters() if p.dim() == 4)


def _inputs_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a 4-D input tensor in NHWC order (a copy only when it is not)."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=CHANNELS_LAST), *args[1:])
    return args


def _contiguous_state(module: nn.Module, state_dict: dict, prefix: str,
                      local_metadata: dict) -> None:
    """state_dict post-hook: every tensor of this module's entries in NCHW (contiguous)
    order, so saved checkpoints do not depend on the memory format a run used."""
    for key, value in state_dict.items():
        # a Parameter itself (``keep_vars=True``) stays: callers want its identity
        if key.startswith(prefix) and isinstance(value, torch.Tensor) \
                and not isinstance(value, nn.Parameter) and not value.is_contiguous():
            state_dict[key] = value.contiguous()
