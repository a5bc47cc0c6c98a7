"""Figure 3: an experiment's pseudo-negatives across rounds (rows) and classes (columns).

Finds each round's active shard through `icl inspect --json` and reads it with plain h5py.

    python recipes/figure3_grid.py WORKSPACE EXPERIMENT OUT.png
"""

import json
import subprocess
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def shard_paths(ws: str, exp: str) -> list[tuple[int, str]]:
    paths, t = [], 1
    while True:
        r = subprocess.run(["icl", "inspect", "-w", ws, "-e", exp, "--round", str(t), "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return paths
        paths.append((t, json.loads(r.stdout)["path"]))
        t += 1


def main(ws: str, exp: str, out: str, per_class: int = 2) -> None:
    rows = []
    for t, path in shard_paths(ws, exp):
        with h5py.File(path) as f:
            x, k = f["samples"][:], f["target"][:]
        rows.append((t, x, k))
    if not rows:
        sys.exit(f"no shards for experiment {exp!r} in {ws}")
    classes = int(max(k.max() for _, _, k in rows)) + 1
    fig, axes = plt.subplots(len(rows), classes * per_class, squeeze=False,
                             figsize=(classes * per_class * 0.45, len(rows) * 0.5 + 0.3),
                             dpi=150)
    for i, (t, x, k) in enumerate(rows):
        for c in range(classes):
            mine = x[k == c][:per_class]
            for j in range(per_class):
                ax = axes[i][c * per_class + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(mine):
                    img = (mine[j].transpose(1, 2, 0) + 1) / 2
                    ax.imshow(img.clip(0, 1).squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[i][0].set_ylabel(f"t={t}", rotation=0, labelpad=14, fontsize=7)
    for c in range(classes):  # class labels over the first row
        axes[0][c * per_class].set_title(f"k={c}", fontsize=7, loc="left")
    fig.savefig(out, bbox_inches="tight")


if __name__ == "__main__":
    main(*sys.argv[1:4])
