"""Training-step time of every method against plain PyTorch backprop, in one interleaved run.

    python bench/step_time.py                         # all cases, all methods, BioTorch if found
    python bench/step_time.py --cases fc --reps 9     # one case
    python bench/step_time.py --quick                 # seconds: checks the script works

Per case, every variant gets its own copy of the same initial model, the same synthetic batches,
SGD (lr 0.01, momentum 0.9 or `--momentum`) and thread count.  After a warm-up, each repetition times
``--steps`` optimizer steps of every variant, in an order rotated per repetition; we report the
median seconds per step and its ratio to plain PyTorch BP and to the floor (forward + one
weight-gradient product per layer, ``_common.FloorLoop``).  ``forward-only`` is a no-grad
forward pass.  Results go to bench/results/step_time-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import _common as C

FLOORS = ["forward-only", "floor"]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(case, variants, a):
    steps = a.steps
    x, y = C.make_data(case, case.batch * steps, a.device)
    batches = [(x[i * case.batch:(i + 1) * case.batch], y[i * case.batch:(i + 1) * case.batch])
               for i in range(steps)]
    for v in variants.values():  # warm-up
        for xb, yb in batches[: max(1, a.warmup)]:
            v.step(xb, yb)
    sync(a.device)
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(a.reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            v = variants[n]
            sync(a.device)
            t0 = time.perf_counter()
            for xb, yb in batches:
                v.step(xb, yb)
            sync(a.device)
            times[n].append((time.perf_counter() - t0) / steps)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=None,
                   help=f"of {', '.join(C.CASES)} (default all; fc with --quick)")
    p.add_argument("--methods", default=",".join(C.WANTED + ["drtp-unlocked"]),
                   help="ssdfa methods (missing ones are skipped with a message)")
    p.add_argument("--no-biotorch", action="store_true", help="leave BioTorch out")
    p.add_argument("--biotorch-path", default=None,
                   help="folder holding the biotorch package (pip install --no-deps --target DIR)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum of every variant (0: plain SGD, the cheapest optimizer step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="small batches, 2 reps of 1 step: checks the script, measures nothing")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/step_time-<date>.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.steps, a.warmup = 2, 1, 1
        a.batch = a.batch or 8
        a.cases = a.cases or "fc"
    a.cases = a.cases or ",".join(C.CASES)
    torch.set_num_threads(a.threads)
    cases = C.parse_list(a.cases, list(C.CASES), "case")
    wanted = C.parse_list(a.methods, C.WANTED + list(C.OPTIONS), "method")
    methods, missing = C.available_methods(wanted)
    biotorch, bt_reason = (None, "disabled with --no-biotorch") if a.no_biotorch \
        else C.import_biotorch(a.biotorch_path)
    if biotorch is None:
        print(f"[skip] BioTorch: {bt_reason}", file=sys.stderr)

    result = {"script": "step_time", "date": C.now_utc(), "command": C.command("step_time.py", argv),
              "machine": C.machine(a.threads, a.device), "reps": a.reps, "steps_per_rep": a.steps,
              "optimizer": f"SGD lr=0.01 momentum={a.momentum}", "skipped_methods": missing,
              "biotorch": "used" if biotorch is not None else f"skipped: {bt_reason}", "cases": {}}
    for cname in cases:
        case = C.CASES[cname]
        if a.batch:
            case = C.Case(**{**case.__dict__, "batch": a.batch})
        names = ["plain-bp", *FLOORS, *methods]
        if biotorch is not None and case.biotorch:
            names += list(C.BIOTORCH_MODES)
        variants, failed = {}, {}
        for n in names:
            try:
                variants[n] = C.Variant(n, case, a.device, momentum=a.momentum, biotorch=biotorch)
            except Exception as exc:  # a method that cannot build this case: say so, go on
                failed[n] = f"{type(exc).__name__}: {exc}"
                print(f"[skip] {cname}/{n}: {failed[n]}", file=sys.stderr)
        times = time_case(case, variants, a)
        med = {n: statistics.median(t) for n, t in times.items()}
        bp, floor = med["plain-bp"], med.get("floor", float("nan"))
        result["cases"][cname] = {
            "summary": case.summary, "batch": case.batch,
            "median_step_seconds": med,
            "ratio_to_plain_bp": {n: m / bp for n, m in med.items()},
            "ratio_to_floor": {n: m / floor for n, m in med.items()},
            "all_step_seconds": times, "failed": failed,
        }
        print(f"\n{cname}: {case.summary}, batch {case.batch}, {a.threads} threads")
        print(f"  {'variant':14s} {'ms/step':>9s} {'x BP':>7s} {'x floor':>8s}")
        for n in med:
            print(f"  {n:14s} {med[n] * 1e3:9.2f} {med[n] / bp:7.3f} {med[n] / floor:8.3f}")
    path = C.write_json(result, "step_time", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
