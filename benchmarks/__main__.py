"""``python -m benchmarks [--quick] [--json] [--threads N] [--only a,b]``: run the
benchmarks, print a table (stderr gets progress), or one JSON document with ``--json``.
``--quick`` leaves out ``scale`` (fresh torchrun processes: ``--only scale`` runs it).

Paired ratios come with a 95 % bootstrap interval and a verdict read from it: "met",
"not met" or "undecided". ``--gpu-pass --device cuda --out FILE`` is the unattended GPU
run (full-size reclassify, synthesis and one-vs-all, one JSON file, a few minutes); CI
checks it on the CPU with ``--smoke``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import Result, Scale, load_average, machine

ALL = ("hardware", "reclassify", "synthesis", "early-stop", "ova", "store", "startup",
       "read-only", "processes", "finished", "fixed-cost", "loop", "scale", "memory")
GPU_PASS = ("hardware", "reclassify", "synthesis", "ova")
# scale times fresh torchrun and icl processes, whose start-up (~10 s a call here) no
# smaller problem removes: its pairs alone took 6 minutes at --quick. It runs in the full
# pass, or on its own with --only scale.
QUICK = tuple(n for n in ALL if n != "scale")


def run_one(name: str, scale: Scale, threads: int, mmap_threshold: int | None = None,
            trim: bool = False) -> list[Result]:
    if name == "hardware":
        from benchmarks import hardware
        return [hardware.run(scale)]
    if name == "reclassify":
        from benchmarks import reclassify
        return [reclassify.run(scale)]
    if name == "synthesis":
        from benchmarks import synthesis
        return [synthesis.run_per_step(scale)]
    if name == "early-stop":
        from benchmarks import synthesis
        return synthesis.run_early_stop(scale)
    if name == "ova":
        from benchmarks import ova
        return ova.run(scale)
    if name == "store":
        from benchmarks import startup
        return startup.run_store(max(scale.repeats, 5))
    if name == "startup":
        from benchmarks import startup
        return [startup.run_help()]
    if name == "read-only":  # icl status / report / verify on a three-experiment workspace
        from benchmarks import startup
        return startup.run_read_only(1 if scale.smoke else 3 if scale.quick else 5)
    if name == "processes":  # each step's fresh-process start-up against `import torch`
        from benchmarks import processes
        return processes.run(1 if scale.smoke else 2 if scale.quick else 5)
    if name == "finished":  # a finished step's second call answers from the catalog
        from benchmarks import finished
        return finished.run(1 if scale.smoke else 5 if scale.quick else 7,
                            steps=("synthesize", "evaluate") if scale.smoke else None)
    if name == "fixed-cost":  # a step with work: from its start to its work's start
        from benchmarks import fixed_cost
        return fixed_cost.run(1 if scale.smoke else 4 if scale.quick else 9, scale.smoke)
    if name == "loop":  # a shell loop of single-step calls against one icl run
        from benchmarks import loop
        return loop.run("smoke" if scale.smoke else "quick" if scale.quick else "full",
                        1 if scale.quick else 3)
    if name == "scale":  # 2 gloo ranks against 1 process, 2 synthesis parts against 1
        from benchmarks import scale as scale_out
        return scale_out.run(scale)
    if name == "memory":
        from benchmarks import memory
        return [memory.run(scale.memory_rounds, scale.memory_train_size, threads,
                           count=scale.memory_count, mmap_threshold=mmap_threshold,
                           trim=trim)]
    raise ValueError(name)


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def fmt_ratio(r: Result) -> str:
    if r.ci is None:
        return fmt(r.ratio)
    return f"{fmt(r.ratio)} [{fmt(r.ci[0])}, {fmt(r.ci[1])}]"


def table(results: list[Result], markdown: bool = False) -> str:
    rows = [("benchmark", "metric", "icl", "bare/ref", "unit", "ratio [95 % CI]", "pairs",
             "cpu-time ratio", "target", "verdict")]
    for r in results:
        rows.append((r.name, r.metric, fmt(r.icl), fmt(r.bare), r.unit, fmt_ratio(r),
                     str(r.details.get("pairs", "-")), fmt(r.details.get("ratio_cpu_time")),
                     r.target, r.verdict or "-"))
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + " --- |" * len(rows[0]))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def chosen(gpu_pass: bool, quick: bool, only: str | None) -> list[str]:
    """The benchmarks a run does: the GPU pass's, ``--only``'s list, or every one (all but
    scale with ``--quick``)."""
    if gpu_pass:
        return list(GPU_PASS)
    if only is None:
        return list(QUICK if quick else ALL)
    return [n.strip() for n in only.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="smaller problems, and all but scale unless --only names it (about "
                   "16 minutes on 2 idle cores)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny problems (seconds): checks that the benchmarks run, no figures")
    p.add_argument("--gpu-pass", action="store_true",
                   help=f"only {', '.join(GPU_PASS)} (full size unless --quick/--smoke), "
                   "for an unattended GPU run")
    p.add_argument("--out", type=str, default=None, help="also write the JSON document here")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--show", metavar="FILE", default=None,
                   help="run nothing: print the table of a document written by --out")
    p.add_argument("--markdown", action="store_true", help="the table in Markdown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant")
    p.add_argument("--device", default="cpu", help="cpu or cuda (store, startup and memory "
                   "always run on the CPU)")
    p.add_argument("--only", default=None,
                   help=f"comma list of {', '.join(ALL)} (default: all; with --quick: all "
                   "but scale)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="memory: run the steps with glibc's MALLOC_MMAP_THRESHOLD_ fixed")
    p.add_argument("--malloc-trim", action="store_true",
                   help="memory: call glibc's malloc_trim(0) after each step")
    a = p.parse_args(argv)
    if a.show is not None:
        with open(a.show) as f:
            doc = json.load(f)
        print(report(doc, [Result(**{**r, "ci": tuple(r["ci"]) if r.get("ci") else None})
                           for r in doc["results"]], a.markdown))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    scale = Scale.make(a.quick, a.repeats, a.device, smoke=a.smoke)
    names = chosen(a.gpu_pass, a.quick, a.only)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)} (choose from {', '.join(ALL)})")
    results: list[Result] = []
    loads, t_start = [load_average()], time.time()
    for name in names:
        print(f"[bench] {name} (load {load_average()}) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results += run_one(name, scale, a.threads, a.malloc_mmap_threshold, a.malloc_trim)
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        loads.append(load_average())
    doc = {"machine": machine(), "quick": a.quick, "smoke": a.smoke, "gpu_pass": a.gpu_pass,
           "threads": a.threads, "device": a.device,
           "repeats": scale.repeats, "load_average_1_5_15": loads,
           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start)),
           "seconds": round(time.time() - t_start, 1),
           "ratios": {r.name: r.ratio for r in results},
           "intervals": {r.name: r.ci for r in results if r.ci is not None},
           "verdicts": {r.name: r.verdict for r in results},
           "results": [r.to_dict() for r in results]}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=2)
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        print(report(doc, results, a.markdown))
    return 0


def report(doc: dict, results: list[Result], markdown: bool = False) -> str:
    """The table, each projection's basis, and the conditions of the run."""
    lines = [table(results, markdown)]
    lines += [f"\n{r.name}: {r.details['basis']}" for r in results if r.details.get("basis")]
    lines.append(f"\nmachine: {doc['machine']}\nstarted {doc.get('started')}, "
                 f"{doc.get('seconds')} s; threads: {doc['threads']}, repeats: "
                 f"{doc['repeats']}, load averages (1/5/15 min) before/after each: "
                 f"{doc['load_average_1_5_15']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
