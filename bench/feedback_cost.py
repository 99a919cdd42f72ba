"""What the feedback itself costs: time of computing every point's e·B_l, and bytes stored.

    python bench/feedback_cost.py            # wide case (1000 classes, 4096-wide hidden layers)
    python bench/feedback_cost.py --quick

For each direct method the model's own feedback modules (``model.feedback``) project the same
error batch e (batch, M); we time the projections of all points together (median over
repetitions, methods interleaved) and compare with dense DFA.  Storage counts every buffer and
parameter that holds a B (``model.feedback`` for direct rules, each layer's ``feedback`` for
fa/kp), with the MACs one example's projections need.  Rows ``<method>/alt-kernel`` compute
the same signals (checked equal) from the same stored (index, value) with other kernels, to
show how much of the time is the engine's gather rather than the work itself.  Results: bench/results/feedback_cost-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import _common as C

DIRECT = ["dfa", "sdfa", "ssdfa", "dkp", "drtp"]


def feedback_bytes(model):
    """Bytes of every tensor holding feedback (deduplicated), and of the parameters for scale."""
    seen, total = set(), 0
    for name, t in [*model.named_buffers(), *model.named_parameters()]:
        if "feedback" in name and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def project_all(model, e):
    if isinstance(model, Alternative):
        return model.project(e)
    return [fb.project(e) for fb in model.feedback]


class Alternative:
    """The same e·B_l from the same stored (index, value), by other kernels, to show what the
    engine's gather costs: ``index_select`` for one connection, a CSR product for several."""

    def __init__(self, model):
        self.ops = []
        for fb in model.feedback:
            if not hasattr(fb, "index"):
                mat = fb.matrix.detach()
                self.ops.append(lambda e, mat=mat: e @ mat)
            elif fb.connections == 1:
                idx, val = fb.index[:, 0].contiguous(), fb.value.detach()[:, 0].contiguous()
                self.ops.append(lambda e, idx=idx, val=val: torch.index_select(e, 1, idx) * val)
            else:
                with warnings.catch_warnings():  # "sparse CSR support is in beta"
                    warnings.simplefilter("ignore")
                    bt = fb.dense().t().contiguous().to_sparse_csr()  # (N, M), S non-zeros per row
                self.ops.append(lambda e, bt=bt: (bt @ e.t()).t())

    def project(self, e):
        return [op(e) for op in self.ops]


def macs_per_example(model):
    """Multiply-adds of e·B_l for one example: M·N dense, S·N sparse (S connections)."""
    total = 0
    for fb in model.feedback:
        s = getattr(fb, "connections", fb.num_errors)
        total += s * fb.num_neurons
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="wide", help=f"of {', '.join(C.CASES)}")
    p.add_argument("--methods", default=",".join(C.WANTED))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--inner", type=int, default=3, help="projections per timed repetition")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.case, a.reps, a.inner, a.batch = "fc", 3, 1, 16
    torch.set_num_threads(a.threads)
    case = C.CASES[C.parse_list(a.case, list(C.CASES), "case")[0]]
    methods, missing = C.available_methods(C.parse_list(a.methods, C.WANTED + list(C.OPTIONS), "method"))
    e = torch.randn(a.batch, case.classes, generator=torch.Generator().manual_seed(0))
    models, storage = {}, {}
    for n in methods:
        m = C.Variant(n, case).model
        storage[n] = {
            "feedback_bytes": feedback_bytes(m),
            "parameter_bytes": sum(
                p.numel() * p.element_size()
                for p in m.net.parameters()
                if not any(p is q for q in m.feedback.parameters())
            ),
        }
        if n in DIRECT and len(m.feedback):
            storage[n]["macs_per_example"] = macs_per_example(m)
            models[n] = m
            if any(hasattr(fb, "index") for fb in m.feedback):
                alt = Alternative(m)
                for got, want in zip(alt.project(e), project_all(m, e)):
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
                models[f"{n}/alt-kernel"] = alt
    names = list(models)
    times = {n: [] for n in names}
    for n in names:
        project_all(models[n], e)  # warm-up
    with torch.no_grad():
        for r in range(a.reps):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                t0 = time.perf_counter()
                for _ in range(a.inner):
                    project_all(models[n], e)
                times[n].append((time.perf_counter() - t0) / a.inner)
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    ref = med.get("dfa")
    result = {
        "script": "feedback_cost",
        "date": C.now_utc(),
        "command": C.command("feedback_cost.py", argv),
        "machine": C.machine(a.threads),
        "case": case.name,
        "summary": case.summary,
        "batch": a.batch,
        "reps": a.reps,
        "skipped_methods": missing,
        "projection_seconds": med,
        "projection_seconds_min": best,
        "storage": storage,
        "dfa_over_method": {n: ref / m for n, m in med.items()} if ref else {},
    }
    print(f"{case.name}: {case.summary}; e·B_l for all points, batch {a.batch}")
    print(f"  {'method':17s} {'µs':>10s} {'dfa / it':>9s} {'feedback KiB':>13s} {'MAC/example':>12s}")
    for n in [*methods, *(k for k in med if "/" in k)]:
        st = storage.get(n, storage.get(n.split("/")[0]))
        t = f"{med[n] * 1e6:10.1f}" if n in med else f"{'-':>10s}"
        sp = f"{ref / med[n]:9.1f}" if ref and n in med else f"{'-':>9s}"
        print(f"  {n:17s} {t} {sp} {st['feedback_bytes'] / 1024:13.1f} {st.get('macs_per_example', 0):12d}")
    path = C.write_json(result, "feedback_cost", a.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
