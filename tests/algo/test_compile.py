"""How a network runs (``icl_cli.algo.prepare``): channels_last and torch.compile change
the layout or the kernels, keep what a round computes within 1e-5 relative of the default,
and keep the state_dict's keys and layout, so checkpoints stay as they are. Also: an
epoch's batch indices reach the device in one copy per dtype, not per batch."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from icl_cli.algo.ascent import Ascent, reference_noise, synthesize, targets_per_class
from icl_cli.algo.prepare import is_channels_last, prepare
from icl_cli.algo.reclassify import _on_device, make_optimizer, reclassify
from icl_cli.models import build_model

RTOL = 1e-5  # relative to the largest value compared; float order is all that changes


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.detach(), want.detach()
    torch.testing.assert_close(got, want, rtol=0, atol=RTOL * float(want.abs().max()))


def nets(arch: str = "tiny", shape=(1, 12, 12)):
    torch.manual_seed(0)
    net = build_model(arch, shape, 3)
    return net, copy.deepcopy(net)


def train(net, seed: int = 0):
    """Two mixed epochs of reclassification on a tiny problem; the final weights."""
    g = torch.Generator().manual_seed(seed)
    real_x = torch.randn(24, 1, 12, 12, generator=g)
    real_y = torch.randint(0, 3, (24,), generator=g)
    pn_k = targets_per_class(3, 4)
    pn_x = reference_noise(len(pn_k), (1, 12, 12), 0.3, g)
    opt = make_optimizer(net, 0.05)
    reclassify(net, opt, real_x, real_y, pn_x, pn_k, epochs=2, batch_size=8,
               real_gen=torch.Generator().manual_seed(1), pn_gen=torch.Generator().manual_seed(2))
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_channels_last_changes_the_layout_not_the_results():
    plain, fast = nets("mnist-cnn", (1, 28, 28))
    assert prepare(fast, channels_last=True) is fast
    assert is_channels_last(fast) and not is_channels_last(plain)
    x = torch.randn(6, 1, 28, 28)
    close(fast(x), plain(x))
    # the state_dict: same keys, NCHW (contiguous) tensors as without channels_last
    state = fast.state_dict()
    assert list(state) == list(plain.state_dict())
    assert all(v.is_contiguous() for v in state.values())
    # a model loaded from it stays channels_last
    fresh = prepare(build_model("mnist-cnn", (1, 28, 28), 3), channels_last=True)
    fresh.load_state_dict(state)
    assert is_channels_last(fresh)


def test_channels_last_training_and_sampling_stay_within_tolerance():
    plain, fast = nets()
    prepare(fast, channels_last=True)
    want, got = train(plain), train(fast)
    assert is_channels_last(fast)
    for k in want:
        close(got[k], want[k])
    x0 = reference_noise(9, (1, 12, 12), 0.3, torch.Generator().manual_seed(3))
    k = targets_per_class(3, 3)
    a = synthesize(plain, x0, k, Ascent(max_steps=5, stop_rule="none"))
    b = synthesize(fast, x0, k, Ascent(max_steps=5, stop_rule="none"))
    close(b.samples, a.samples)
    close(b.logit, a.logit)


def test_prepare_is_off_by_default():
    plain, same = nets()
    prepare(same)
    assert not is_channels_last(same)
    assert type(same.forward) is type(plain.forward)
    for p, q in zip(plain.parameters(), same.parameters(), strict=True):
        assert p.stride() == q.stride()


@pytest.mark.slow  # compiling even the tiny net takes about a minute on 2 CPU cores
def test_compile_gives_the_same_logits_training_and_keys():
    plain, fast = nets()
    prepare(fast, compile=True)
    x = torch.randn(5, 1, 12, 12)
    close(fast(x), plain(x))
    assert list(fast.state_dict()) == list(plain.state_dict())
    want, got = train(plain), train(fast)
    for k in want:
        close(got[k], want[k])


class _Copies(TorchDispatchMode):
    """Counts tensor copies to another device or dtype (``aten._to_copy``)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


def test_an_epoch_plan_goes_to_the_device_in_one_copy_per_dtype():
    # 6 batches of (real rows, pseudo-negative rows, loss shares): 2 copies, not 18
    plan = [(torch.arange(4) + i, torch.arange(i), torch.rand(i)) for i in range(6)]
    with _Copies() as copies:
        moved = _on_device(plan, torch.device("meta"))
    assert copies.n == 2
    assert len(moved) == len(plan)
    for got, want in zip(moved, plan, strict=True):
        assert [(t.shape, t.dtype, t.device.type) for t in got] == \
            [(t.shape, t.dtype, "meta") for t in want]
    assert _on_device(plan, torch.device("cpu")) is plan
