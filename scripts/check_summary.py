#!/usr/bin/env python3
"""Condenses `qfuse check --all` output: per dtype and kernel family, how many results were
compared and the worst measured value (the table rows are `│ # │ computes │ value │ dtype │
measured │ tolerance │ ok/FAIL │`)."""
import re
import sys

worst = {}
for line in open(sys.argv[1], encoding="utf-8"):
    cells = [c.strip() for c in re.split(r"[│┆]", line)[1:-1]]
    if len(cells) != 7 or not cells[0].isdigit():
        continue
    _, computes, _, dtype, measured, tol, verdict = cells
    op = computes.split()[0]
    nums = [float(x) for x in re.findall(r"\d+\.\d+e[-+]\d+|\d+\.\d+(?=%)", measured)]
    key = (op, dtype)
    w = worst.setdefault(key, {"n": 0, "fail": 0, "worst": None, "tol": tol})
    w["n"] += 1
    w["fail"] += verdict != "ok"
    score = nums[0] if nums else 0.0
    if w["worst"] is None or score > w["worst"][0]:
        w["worst"] = (score, measured)
for (op, dtype), w in sorted(worst.items()):
    print(f"  {op:20s} {dtype:8s} {w['n']:3d} results, {w['fail']} failed; worst: {w['worst'][1]}  [{w['tol']}]")
