"""Run under torchrun by test_ddp.py: train each case of ``CASES`` on this rank's slices
(``reclassify(distributed=True)``); rank 0 saves the weights and epoch stats per case.

Also importable: ``train(case, distributed)`` is the one-process reference the test uses.
"""

import sys
from dataclasses import asdict

import torch

from icl_cli.algo.reclassify import SGD, reclassify
from icl_cli.models import build_model

# 33 real rows in batches of 8: the last batch has 1 row, so rank 1 gets none of it; the
# real-only epoch leaves every rank without pseudo-negatives.
CASES = {
    "softmax-per-sample-clip-augment": dict(mode="softmax", pn_weighting="per-sample",
                                            clip_grad=0.5, augment=True),
    "softmax-batch-mean-max-batch": dict(mode="softmax", pn_weighting="batch-mean",
                                         max_batch=3),
    "ova-per-sample": dict(mode="ova", pn_weighting="per-sample"),
    "ova-batch-mean-max-batch": dict(mode="ova", pn_weighting="batch-mean", max_batch=4,
                                     pn_weight=0.5),
    "softmax-drawn-max-batch": dict(mode="softmax", pn_weighting="drawn", max_batch=5),
    "ova-drawn": dict(mode="ova", pn_weighting="drawn", pn_recency=0.8),
}


def initial(case: str) -> dict:
    torch.manual_seed(0)
    return build_model("tiny", (1, 6, 6), 3, CASES[case]["mode"]).state_dict()


def train(case: str, distributed: bool):
    kw = dict(CASES[case])
    mode, augment = kw.pop("mode"), kw.pop("augment", False)
    torch.manual_seed(0)
    model = build_model("tiny", (1, 6, 6), 3, mode)
    x = torch.randint(0, 256, (33, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(33) % 3
    pn_x, pn_k = torch.randn(29, 1, 6, 6) * 2, torch.arange(29) % 3
    real_gen = torch.Generator().manual_seed(1)

    def transform(b):
        out = b.float() / 127.5 - 1
        if augment:  # random per row, drawn from the real generator for the whole batch
            out = out + 0.1 * torch.randn(out.shape, generator=real_gen)
        return out

    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    pn_round = torch.arange(29) // 10 + 1  # rounds 1, 2, 3 (drawn by recency)
    hist = reclassify(model, opt, x, y, pn_x, pn_k, epochs=2, real_epochs=1, batch_size=8,
                      mode=mode, pn_round=pn_round, real_gen=real_gen,
                      pn_gen=torch.Generator().manual_seed(2),
                      transform=transform, distributed=distributed, **kw)
    return model.state_dict(), [asdict(h) for h in hist]


def main(out: str) -> None:
    import torch.distributed as dist

    from icl_cli.distributed import finish

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for case in CASES:
        print(f"rank {rank}: {case}", file=sys.stderr, flush=True)  # where a failure was
        state, hist = train(case, distributed=True)
        if rank == 0:
            torch.save({"state": state, "history": hist}, f"{out}/{case}.pt")
    print(f"rank {rank}: trained every case", file=sys.stderr, flush=True)
    # As icl's commands end: every rank leaves together (rank 0 has written its last file)
    # and ends without the interpreter's teardown (finish says why).
    finish()


if __name__ == "__main__":
    main(sys.argv[1])
