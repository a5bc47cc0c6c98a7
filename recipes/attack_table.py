"""Markdown table of `icl attack --json` (two-way FGSM counts) beside the paper's counts.

    icl attack ... --json | python recipes/attack_table.py
"""

import json
import sys

PAPER = {"baseline": "6,876 fool the baseline; 4,661 of those fool ICL",
         "icl": "5,989 fool ICL; 5,542 of those fool the baseline"}

rows = json.load(sys.stdin)
print("| made on | correct test images | fool it | of those, fool the other | paper (MNIST) |")
print("| --- | --- | --- | --- | --- |")
for r in sorted(rows, key=lambda r: r["source"].endswith("-icl")):
    kind = "icl" if r["source"].endswith("-icl") else "baseline"
    share = 100 * r["fool_both"] / max(1, r["fool_source"])
    print(f"| {r['source']} | {r['correct']} | {r['fool_source']} | "
          f"{r['fool_both']} ({share:.1f}%) | {PAPER[kind]} |")
