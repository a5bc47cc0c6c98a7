"""Peak memory of one reclassify step whose batch holds a large share of the pool, with and
without ``--max-batch`` (issue 12, "large pools"): 64 real images and 4,000 pseudo-negatives
in one batch, the paper's MNIST net, 1 thread. Each setting runs in its own process, so its
peak RSS is its own.

    python -m benchmarks.max_batch_memory [--pool 4000] [--max-batch 256]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys


def one(max_batch: int | None, pool: int) -> None:
    import torch

    from icl_cli.algo.reclassify import SGD, reclassify
    from icl_cli.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10, "softmax")
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(64) % 10
    pn_x, pn_k = torch.randn(pool, 1, 28, 28) * 0.3, torch.arange(pool) % 10
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reclassify(model, SGD(model.parameters(), lr=0.01, momentum=0.9), x, y, pn_x, pn_k,
               epochs=1, batch_size=64, max_batch=max_batch,
               real_gen=torch.Generator().manual_seed(1), pn_gen=torch.Generator().manual_seed(2),
               transform=lambda b: b.float() / 127.5 - 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"max_batch {max_batch or 'off':>5}: peak RSS {peak / 1024:6.0f} MiB "
          f"(+{(peak - before) / 1024:.0f} MiB over the data and net)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        return one(None if args.one == "off" else int(args.one), args.pool)
    print(f"64 real + {args.pool} pseudo-negatives in one batch (mnist-cnn, 1 thread)")
    for setting in ("off", str(args.max_batch)):
        subprocess.run([sys.executable, "-m", "benchmarks.max_batch_memory", "--pool",
                        str(args.pool), "--one", setting], check=True)


if __name__ == "__main__":
    main()
