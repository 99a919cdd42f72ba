"""Peak memory of a training step per method, and of DRTP's update-unlocked mode against depth.

    python bench/memory.py                  # every case x method, then the depth study
    python bench/memory.py --quick          # two measurements: checks the script works

tracemalloc does not see torch's CPU allocator, so each (case, method) runs in a fresh
subprocess that reads the kernel's resident-set high-water mark: after two warm-up steps (so
optimizer state exists) it frees the gradients (``zero_grad``), resets the mark
(``echo 5 > /proc/self/clear_refs``), runs one step and reports ``VmHWM - VmRSS before``: the
memory of a training step (saved activations, gradients, backward temporaries; the largest
over ``--steps`` steps), the part beyond the gradients' own bytes, and the process peak.  On CUDA the
allocator's own peak statistics are used instead.  Results: bench/results/memory-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import _common as C

HERE = Path(__file__).resolve().parent


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this script needs Linux)")


def child(a):
    """Runs in the subprocess: build one variant, measure, print one JSON line."""
    torch.set_num_threads(a.threads)
    if a.case.startswith("depth"):
        depth = int(a.case[5:])
        case = C.Case(
            a.case,
            lambda: C.fc_net((784, *[a.width] * depth, 10)),
            (784,),
            10,
            a.batch or 128,
            False,
            f"FC 784-{a.width}x{depth}-10 tanh",
        )
    else:
        case = C.CASES[a.case]
        if a.batch:
            case = C.Case(**{**case.__dict__, "batch": a.batch})
    biotorch = None
    if a.method in C.BIOTORCH_MODES:
        biotorch, why = C.import_biotorch(a.biotorch_path)
        if biotorch is None:
            print(json.dumps({"skipped": why}))
            return
    v = C.Variant(a.method, case, a.device, biotorch=biotorch)
    x, y = C.make_data(case, case.batch, a.device)
    for _ in range(2):
        v.step(x, y)
    cuda = a.device.startswith("cuda")
    peaks, befores = [], []
    for _ in range(a.steps):
        # the step's memory is measured from after zero_grad (gradients freed) to its peak
        v.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            befores.append(torch.cuda.memory_allocated())
        else:
            befores.append(_status_kib("VmRSS") * 1024)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        v.step(x, y)
        if cuda:
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated())
        else:
            peaks.append(_status_kib("VmHWM") * 1024)
    extra = max(p - b for p, b in zip(peaks, befores))
    peak, before = max(peaks), min(befores)
    params = sum(p.numel() * p.element_size() for p in v.model.parameters())
    grads = sum(p.numel() * p.element_size() for p in v.model.parameters() if p.grad is not None)
    print(
        json.dumps(
            {
                "step_extra_bytes": extra,
                "peak_bytes": peak,
                "before_step_bytes": before,
                "parameter_bytes": params,
                "gradient_bytes": grads,
                "beyond_gradients_bytes": extra - grads,
                "counter": "cuda max_memory_allocated" if cuda else "VmHWM (RSS)",
            }
        )
    )


def measure(case, method, a, batch=None):
    cmd = [
        sys.executable,
        str(HERE / "memory.py"),
        "--child",
        case,
        method,
        "--threads",
        str(a.threads),
        "--steps",
        str(a.steps),
        "--device",
        a.device,
        "--width",
        str(a.width),
    ]
    if batch:
        cmd += ["--batch", str(batch)]
    if a.biotorch_path:
        cmd += ["--biotorch-path", a.biotorch_path]
    # glibc keeps freed memory for reuse, which hides a step's peak from RSS; a fixed mmap
    # threshold makes every tensor over 64 KiB its own mapping, returned to the kernel on free
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"subprocess failed: {err}"}
    return json.loads(lines[-1])


def mib(b):
    return b / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=None, help=f"of {', '.join(C.CASES)} (default all; fc with --quick)")
    p.add_argument("--methods", default=",".join(C.WANTED + ["drtp-unlocked"]))
    p.add_argument("--depths", default="2,4,8,16", help="hidden layers for the DRTP depth study")
    p.add_argument("--width", type=int, default=256, help="hidden width in the depth study")
    p.add_argument(
        "--depth-batch",
        type=int,
        default=4096,
        help="batch in the depth study: large, so activations outweigh weights",
    )
    p.add_argument("--depth-methods", default="bp,dfa,drtp,drtp-unlocked")
    p.add_argument("--no-biotorch", action="store_true")
    p.add_argument("--biotorch-path", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quick", action="store_true", help="plain BP on fc and BP at depth 2, small: checks the script"
    )
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        a.case, a.method = a.child
        return child(a)
    if a.quick:
        a.cases = a.cases or "fc"
        a.depths, a.steps, a.width, a.depth_batch = "2", 1, 64, 256
        a.batch = a.batch or 16
        a.methods, a.depth_methods, a.no_biotorch = "bp,drtp-unlocked", "bp,drtp-unlocked", True
    cases = C.parse_list(a.cases or ",".join(C.CASES), list(C.CASES), "case")
    methods, missing = C.available_methods(C.parse_list(a.methods, C.WANTED + list(C.OPTIONS), "method"))
    depth_methods, _ = C.available_methods(
        C.parse_list(a.depth_methods, C.WANTED + list(C.OPTIONS), "method")
    )
    use_bt = not a.no_biotorch and C.import_biotorch(a.biotorch_path)[0] is not None
    result = {
        "script": "memory",
        "date": C.now_utc(),
        "command": C.command("memory.py", argv),
        "machine": C.machine(a.threads, a.device),
        "steps": a.steps,
        "depth_study": {"width": a.width, "batch": a.depth_batch},
        "skipped_methods": missing,
        "cases": {},
        "depth": {},
    }
    for cname in cases:
        names = ["plain-bp"] if a.quick else ["plain-bp", "forward-only", *methods]
        if use_bt and C.CASES[cname].biotorch:
            names += list(C.BIOTORCH_MODES)
        rows = {}
        print(
            f"\n{cname}: MiB of a step (activations, gradients, temporaries), "
            "the part beyond gradients, process peak"
        )
        for n in names:
            rows[n] = r = measure(cname, n, a, a.batch)
            if "skipped" in r:
                print(f"  {n:14s} skipped: {r['skipped']}")
            else:
                print(
                    f"  {n:14s} {mib(r['step_extra_bytes']):9.1f} "
                    f"{mib(r['beyond_gradients_bytes']):9.1f} {mib(r['peak_bytes']):9.1f}"
                )
        bp = rows["plain-bp"].get("step_extra_bytes")
        for r in rows.values():
            if bp and "step_extra_bytes" in r:
                r["ratio_to_plain_bp"] = r["step_extra_bytes"] / bp
        result["cases"][cname] = rows
    depths = [int(d) for d in a.depths.split(",") if d]
    if a.quick:  # one subprocess per measurement: keep it to two
        depth_methods = [m for m in depth_methods if m in a.methods.split(",")][:1]
    print(
        f"\ndepth study: FC 784-{a.width}xD-10 tanh, batch {a.depth_batch}: step memory "
        "beyond parameters and gradients (MiB)"
    )
    print("  " + f"{'method':14s}" + "".join(f"{'D=' + str(d):>9s}" for d in depths))
    for n in depth_methods:
        result["depth"][n] = {str(d): measure(f"depth{d}", n, a, a.depth_batch) for d in depths}
        print(
            f"  {n:14s}"
            + "".join(
                f"{mib(r['beyond_gradients_bytes']):9.1f}" if "step_extra_bytes" in r else f"{'-':>9s}"
                for r in result["depth"][n].values()
            )
        )
    path = C.write_json(result, "memory", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
