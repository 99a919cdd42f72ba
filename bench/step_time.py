"""Training-step time of every method against plain PyTorch backprop, in one interleaved run.

    python bench/step_time.py                         # all cases, all methods, BioTorch if found
    python bench/step_time.py --cases fc --reps 9     # one case
    python bench/step_time.py --quick                 # seconds: checks the script works
    python bench/step_time.py --cases launch-bound --threads 1 [--compile]   # issue 21

Per case, every variant gets its own copy of the same initial model, the same synthetic batches,
SGD (lr 0.01, momentum 0.9 or `--momentum`) and thread count.  After a warm-up, each repetition times
``--steps`` optimizer steps of every variant, in an order rotated per repetition; we report the
median seconds per step and its ratio to plain PyTorch BP and to the floor (forward + one
weight-gradient product per layer, ``_common.FloorLoop``), and the *paired* ratio: each
repetition's time over plain BP's in the same repetition, median and quartiles, which a drift
of the machine's speed during the run does not move.  ``forward-only`` is a no-grad
forward pass.  Results go to bench/results/step_time-<date>.json.

``launch-bound`` (``_launch.py``) is two cases at batch 2, ResNet-18 and a 4-layer transformer
classifier, whose floor is ``_common.DetachedFloor``; its default methods are every direct rule
(``_launch.METHODS``).  ``--compile`` adds ``torch.compile`` (default mode) of plain BP and of
the ``--compile-methods`` models, each also reported against compiled plain BP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import _common as C
import _launch as L

FLOORS = ["forward-only", "floor"]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(case, variants, a):
    steps = a.steps
    x, y = C.make_data(case, case.batch * steps, a.device)
    batches = [
        (x[i * case.batch : (i + 1) * case.batch], y[i * case.batch : (i + 1) * case.batch])
        for i in range(steps)
    ]
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


def build_variants(case, names, a, biotorch):
    """Each variant that builds and takes one step on this case; the others, with the reason
    (a method that cannot train this model is reported and skipped, not fatal)."""
    x, y = C.make_data(case, case.batch, a.device, seed=1)
    variants, failed = {}, {}
    for n in names:
        try:
            v = C.Variant(n, case, a.device, momentum=a.momentum, biotorch=biotorch)
            v.step(x, y)
            variants[n] = v
        except Exception as exc:  # report any failure by its message, go on
            failed[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"[skip] {case.name}/{n}: {failed[n]}", file=sys.stderr)
    return variants, failed


def paired(times, base):
    """Per variant, the ratio to ``base`` taken repetition by repetition (both ran within the
    same repetition, so a drift of the machine's speed cancels): median and quartiles."""
    out = {}
    for n, t in times.items():
        ratios = sorted(a / b for a, b in zip(t, times[base], strict=True))
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[n] = {"median": statistics.median(ratios), "q1": q1, "q3": q3}
    return out


def report(case, times, failed, threads):
    """Medians and their ratios to plain BP, the floor and (compiled variants) compiled plain BP,
    and the paired per-repetition ratio to plain BP with its quartiles; prints the table and
    returns the JSON entry."""
    med = {n: statistics.median(t) for n, t in times.items()}
    pair = paired(times, "plain-bp")
    nan = float("nan")
    bp, floor = med["plain-bp"], med.get("floor", nan)
    bpc = med.get(f"plain-bp{C.COMPILED}", nan)
    entry = {
        "summary": case.summary,
        "batch": case.batch,
        "median_step_seconds": med,
        "ratio_to_plain_bp": {n: m / bp for n, m in med.items()},
        "ratio_to_floor": {n: m / floor for n, m in med.items()},
        "paired_ratio_to_plain_bp": pair,
        "all_step_seconds": times,
        "failed": failed,
    }
    if bpc == bpc:
        entry["ratio_to_compiled_plain_bp"] = {n: m / bpc for n, m in med.items() if n.endswith(C.COMPILED)}
        compiled = {n: t for n, t in times.items() if n.endswith(C.COMPILED)}
        entry["paired_ratio_to_compiled_plain_bp"] = paired(compiled, f"plain-bp{C.COMPILED}")
    print(f"\n{case.name}: {case.summary}, batch {case.batch}, {threads} threads")
    print(
        f"  {'variant':18s} {'ms/step':>9s} {'x BP':>7s} {'paired x BP [q1, q3]':>22s} "
        f"{'x floor':>8s} {'x BP+compile':>13s}"
    )
    for n in med:
        xc = f"{med[n] / bpc:13.3f}" if n.endswith(C.COMPILED) else ""
        pr = pair[n]
        spread = f"{pr['median']:.3f} [{pr['q1']:.3f}, {pr['q3']:.3f}]"
        print(f"  {n:18s} {med[n] * 1e3:9.2f} {med[n] / bp:7.3f} {spread:>22s} {med[n] / floor:8.3f} {xc}")
    for n, why in failed.items():
        print(f"  {n:18s} skipped: {why}")
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cases",
        default=None,
        help=f"of {', '.join(C.CASES)}, launch-bound[/resnet18|/transformer] "
        "(default: the first four; fc with --quick)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="ssdfa methods (missing ones are skipped with a message; default "
        f"{','.join(C.WANTED + ['drtp-unlocked'])}, launch-bound: {','.join(L.METHODS)})",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile of plain BP and of --compile-methods (slow to build)",
    )
    p.add_argument("--compile-methods", default="dfa", help="methods compiled with --compile")
    p.add_argument("--no-biotorch", action="store_true", help="leave BioTorch out")
    p.add_argument(
        "--biotorch-path",
        default=None,
        help="folder holding the biotorch package (pip install --no-deps --target DIR)",
    )
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--momentum",
        type=float,
        default=0.9,
        help="SGD momentum of every variant (0: plain SGD, the cheapest optimizer step)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small batches, 2 reps of 1 step: checks the script, measures nothing",
    )
    p.add_argument("--out", default=None, help="JSON path (default bench/results/step_time-<date>.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.steps, a.warmup = 2, 1, 1
        a.batch = a.batch or 8
        a.cases = a.cases or "fc"
    a.cases = a.cases or ",".join(C.CASES)
    torch.set_num_threads(a.threads)
    launch = [c.name for c in L.CASES.values()]
    cases = L.expand(C.parse_list(a.cases, [*C.CASES, "launch-bound", *launch], "case"))
    known = list(dict.fromkeys(C.WANTED + list(C.OPTIONS) + L.METHODS))
    compiled = C.parse_list(a.compile_methods, known, "method") if a.compile else []
    biotorch, bt_reason = (
        (None, "disabled with --no-biotorch") if a.no_biotorch else C.import_biotorch(a.biotorch_path)
    )
    if biotorch is None:
        print(f"[skip] BioTorch: {bt_reason}", file=sys.stderr)

    result = {
        "script": "step_time",
        "date": C.now_utc(),
        "command": C.command("step_time.py", argv),
        "machine": C.machine(a.threads, a.device),
        "reps": a.reps,
        "steps_per_rep": a.steps,
        "optimizer": f"SGD lr=0.01 momentum={a.momentum}",
        "skipped_methods": {},
        "biotorch": "used" if biotorch is not None else f"skipped: {bt_reason}",
        "cases": {},
    }
    for cname in cases:
        case = C.CASES[cname] if cname in C.CASES else L.case(cname)
        if a.batch:
            case = C.Case(**{**case.__dict__, "batch": a.batch})
        default = L.METHODS if cname in launch else C.WANTED + ["drtp-unlocked"]
        methods, missing = C.available_methods(
            C.parse_list(a.methods, known, "method") if a.methods else default
        )
        result["skipped_methods"][cname] = missing
        names = ["plain-bp", *FLOORS, *methods]
        if biotorch is not None and case.biotorch:
            names += list(C.BIOTORCH_MODES)
        if a.compile:
            names += [f"{n}{C.COMPILED}" for n in ["plain-bp", *compiled]]
        variants, failed = build_variants(case, names, a, biotorch)
        result["cases"][cname] = report(case, time_case(case, variants, a), failed, a.threads)
    path = C.write_json(result, "step_time", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
