"""The same steps on a CUDA device: run with ``pytest -m gpu`` on a machine with a GPU
(skipped by default, and wherever torch sees none)."""

import pytest
import torch

from icl_cli.algo.ascent import Ascent, reference_noise, synthesize, targets_per_class
from icl_cli.models import build_model
from tests.kit import TINY, icl, icl_json

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]
GPU = ["--no-mlflow", "--device", "cuda"]


def test_synthesis_on_cuda_raises_the_target_logit():
    torch.manual_seed(0)
    net = build_model("mnist-cnn", (1, 28, 28), 10, "softmax").cuda()
    target = targets_per_class(10, 8)
    x0 = reference_noise(len(target), (1, 28, 28), 0.3, torch.Generator().manual_seed(0))
    x0 = x0.cuda()
    before = net(x0).gather(1, target.cuda()[:, None])[:, 0]

    out = synthesize(net, x0, target, Ascent(max_steps=200, lr=0.01),
                     generator=torch.Generator(device="cuda").manual_seed(0))

    assert out.samples.is_cuda and out.samples.shape == x0.shape
    after = net(out.samples).gather(1, target.cuda()[:, None])[:, 0]
    assert torch.allclose(after, out.logit, atol=1e-4)
    assert out.passed.float().mean() > 0.5
    rose = out.passed & (before < 0)  # those already positive at the start take no step
    assert rose.any() and (after[rose] > before[rose]).all()


@pytest.mark.parametrize("amp", [[], ["--amp"]], ids=["fp32", "bf16"])
def test_a_round_on_cuda_is_recorded_and_readable_on_cpu(tmp_path, amp):
    icl("init", "-w", tmp_path, "-e", "base", "--method", "baseline", *TINY, *GPU)
    icl("init", "-w", tmp_path, "-e", "icl", "--method", "icl", "--from", "base:0", *GPU)
    icl("run", "-w", tmp_path, "-e", "icl", "--rounds", "1", *amp, *GPU)
    icl("run", "-w", tmp_path, "-e", "base", "--rounds", "1", *GPU)

    # What the GPU wrote, a CPU-only machine reads: evaluation, inspection, FGSM, verify.
    cpu = ["--no-mlflow", "--device", "cpu", "--threads", "1"]
    on_gpu = {e["split"]: e["error"]
              for e in icl_json("evaluate", "-w", tmp_path, "-e", "icl", "--round", "1", *GPU)}
    on_cpu = {e["split"]: e["error"]
              for e in icl_json("evaluate", "-w", tmp_path, "-e", "icl", "--round", "1",
                                *cpu)}
    assert on_gpu.keys() == on_cpu.keys() == {"test", "val"}
    for split in on_gpu:  # the same weights: at most a few images flip on rounding
        assert abs(on_gpu[split] - on_cpu[split]) < 0.02
    shown = icl_json("inspect", "-w", tmp_path, "-e", "icl", "--round", "1")
    assert sum(c["count"] for c in shown["classes"]) == 40
    icl("attack", "-w", tmp_path, "-e", "icl", "--round", "1", "--against", "base:1", *GPU)
    icl("verify", "-w", tmp_path)


@pytest.mark.parametrize("how", [{"channels_last": True}, {"compile": True}],
                         ids=["channels_last", "compile"])
def test_prepared_networks_train_as_the_default_on_cuda(how, monkeypatch):
    """channels_last and torch.compile on cuDNN (TF32 off, so that only float order
    differs): the same logits and, after a few reclassify steps, the same weights within
    1e-4 relative, the state_dict keys unchanged."""
    import copy

    from icl_cli.algo.prepare import is_channels_last, prepare
    from icl_cli.algo.reclassify import make_optimizer, reclassify

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    plain = build_model("mnist-cnn", (1, 28, 28), 10).cuda()
    fast = prepare(copy.deepcopy(plain), **how)
    assert is_channels_last(fast) == how.get("channels_last", False)
    assert list(fast.state_dict()) == list(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    real_x = torch.randn(128, 1, 28, 28, generator=g).cuda()
    real_y = torch.randint(0, 10, (128,), generator=g).cuda()
    pn_k = targets_per_class(10, 6).cuda()
    pn_x = reference_noise(len(pn_k), (1, 28, 28), 0.3, g).cuda()
    with torch.no_grad():
        want = plain(real_x)
        torch.testing.assert_close(fast(real_x), want, rtol=0,
                                   atol=1e-4 * float(want.abs().max()))
    for net in (plain, fast):
        reclassify(net, make_optimizer(net, 0.01), real_x, real_y, pn_x, pn_k, epochs=2,
                   batch_size=32, real_gen=torch.Generator().manual_seed(2),
                   pn_gen=torch.Generator().manual_seed(3))
    for (k, p), q in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-4 * float(p.abs().max()), msg=k)
