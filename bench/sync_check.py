"""Which methods' training steps wait for the device (issue 21).

    python bench/sync_check.py                                   # CPU: every method, 3 cases
    python bench/sync_check.py --device cuda --batch 128         # on a GPU (bench/gpu_issue21.sh)

A read of a tensor's value on the host (``.item()``, ``int(t)``, a copy from pageable memory)
makes the CPU wait for every queued kernel: a launch-bound GPU step then costs CPU time plus GPU
time instead of the larger of the two.  Per case and method, after two warm-up steps, one step
runs under the detector: on CUDA ``torch.cuda.set_sync_debug_mode("error")``, which raises at
the first synchronising call (reported with the innermost ssdfa frame); on the CPU
``ssdfa.host_reads`` (Tensor methods wrapped, value-reading aten operators in a profile).
DRTP reads its labels once per step, by design (a clear message for an out-of-range label).
Results: bench/results/sync_check-<date>.json.
"""

from __future__ import annotations

import argparse
import traceback

import torch
from torch.profiler import profile

import _common as C
import _launch as L
import ssdfa
from ssdfa.host_reads import aten_reads, host_reads

CASES = ["fc", "launch-bound/resnet18", "launch-bound/transformer"]


def _where(exc) -> str:
    """The innermost frame of ssdfa (else of the bench) in the traceback that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ssdfa/" in f.filename] or [f for f in frames if "/bench/" in f.filename]
    f = (ours or frames)[-1]
    return f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"


def check(v, x, y, device) -> dict:
    """One step of variant ``v`` under the detector: what read the device's values, if any."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            v.step(x, y)
            return {"syncs": False}
        except RuntimeError as exc:
            return {"syncs": True, "first": f"{_where(exc)}: {str(exc).splitlines()[0]}"}
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    with host_reads() as seen, profile() as prof:
        v.step(x, y)
    ops = aten_reads(prof)
    return {"syncs": bool(seen or ops), "python_reads": [f"{n} at {w}" for n, w in seen], "aten_reads": ops}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--methods", default=None, help="default: plain-bp and every registered method")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fc at batch 8, three methods")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.batch, a.methods = "fc", 8, a.methods or "bp,dfa,drtp"
    torch.set_num_threads(a.threads)
    methods = ["plain-bp", *C.available_methods((a.methods or ",".join(ssdfa.METHODS)).split(","))[0]]
    result = {
        "script": "sync_check",
        "date": C.now_utc(),
        "command": C.command("sync_check.py", argv),
        "machine": C.machine(a.threads, a.device),
        "cases": {},
    }
    for cname in C.parse_list(a.cases, CASES, "case"):
        case = C.CASES[cname] if cname in C.CASES else L.case(cname)
        if a.batch:
            case = C.Case(**{**case.__dict__, "batch": a.batch})
        x, y = C.make_data(case, case.batch, a.device, seed=1)
        found = result["cases"][cname] = {}
        for n in methods:
            try:
                v = C.Variant(n, case, a.device)
                v.step(x, y)
                v.step(x, y)
            except Exception as exc:  # a method that cannot train this model: reported, not fatal
                found[n] = {
                    "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                }
                continue
            found[n] = check(v, x, y, a.device)
        print(f"\n{cname}, batch {case.batch}, {a.device}")
        for n, r in found.items():
            what = r.get("skipped") or (r.get("first") or r.get("python_reads") or r.get("aten_reads") or "")
            print(
                f"  {n:14s} {'skipped' if 'skipped' in r else 'SYNCS' if r['syncs'] else 'no sync':8s} {what}"
            )
    path = C.write_json(result, "sync_check", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
