"""Where a training step's time goes: torch.profiler over a few steps of chosen variants.

    python bench/profile_step.py --case fc --variants plain-bp,floor,dfa,ssdfa
    python bench/profile_step.py --case wide --variants dfa,ssdfa --top 15

For each variant, the operators with the most self CPU time over ``--steps`` steps (after a
warm-up), and the share of the step spent in matrix products, in the optimizer and elsewhere.
This is the evidence behind a speed target that the floor makes impossible, or behind a
slow kernel in the engine.  Results: bench/results/profile_step-<date>.json.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import _common as C

MATMUL = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "aten::linear",
    "aten::convolution_backward",
    "aten::mkldnn_convolution",
    "aten::_convolution",
    "aten::convolution",
    "aten::conv2d",
    "aten::_sparse_csr_mm",
    "aten::addmm_",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="fc", help=f"of {', '.join(C.CASES)}")
    p.add_argument("--variants", default="plain-bp,floor,dfa,ssdfa")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--biotorch-path", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.top = 1, 8, 5
    torch.set_num_threads(a.threads)
    case = C.CASES[C.parse_list(a.case, list(C.CASES), "case")[0]]
    if a.batch:
        case = C.Case(**{**case.__dict__, "batch": a.batch})
    known = ["plain-bp", "forward-only", "floor", *C.WANTED, *C.OPTIONS, *C.BIOTORCH_MODES]
    names = C.parse_list(a.variants, known, "variant")
    ours = [n for n in names if n in C.WANTED or n in C.OPTIONS]
    _, missing = C.available_methods(ours)
    biotorch = C.import_biotorch(a.biotorch_path)[0] if any(n in C.BIOTORCH_MODES for n in names) else None
    x, y = C.make_data(case, case.batch)
    result = {
        "script": "profile_step",
        "date": C.now_utc(),
        "command": C.command("profile_step.py", argv),
        "machine": C.machine(a.threads),
        "case": case.name,
        "batch": case.batch,
        "steps": a.steps,
        "variants": {},
    }
    for n in names:
        if n in missing or (n in C.BIOTORCH_MODES and biotorch is None):
            continue
        v = C.Variant(n, case, biotorch=biotorch)
        for _ in range(2):
            v.step(x, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.steps):
                with record_function("step"):
                    v.step(x, y)
        events = prof.key_averages()
        step_us = next(e.cpu_time_total for e in events if e.key == "step") / a.steps
        ops = sorted((e for e in events if e.key != "step"), key=lambda e: -e.self_cpu_time_total)
        matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL) / a.steps
        optim = sum(e.cpu_time_total for e in ops if e.key.startswith("Optimizer.step")) / a.steps
        top = [
            {
                "op": e.key,
                "self_us_per_step": e.self_cpu_time_total / a.steps,
                "calls_per_step": e.count / a.steps,
            }
            for e in ops[: a.top]
        ]
        result["variants"][n] = {
            "step_us": step_us,
            "matmul_self_us": matmul,
            "optimizer_us": optim,
            "top_ops": top,
        }
        print(
            f"\n{n}: {step_us / 1e3:.2f} ms/step under the profiler; matrix products "
            f"{matmul / 1e3:.2f} ms ({matmul / step_us:.0%}), optimizer {optim / 1e3:.2f} ms"
        )
        for t in top:
            print(f"  {t['op']:40s} {t['self_us_per_step'] / 1e3:8.3f} ms  x{t['calls_per_step']:.0f}")
    path = C.write_json(result, "profile_step", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
