"""Which runs an input directory holds, grouped as the figures and reports draw them: the
runs of one row over seeds are a :class:`Group`, one input is a :class:`Source`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .files import is_run, is_sweep, load_results, load_run, load_sweep, run_label

_SEED_DIR = re.compile(r"seed-?\d+$")
_MAX_DEPTH = 3  # <row>/<method>/seed<k> under a reproduction


# -- groups and sources --------------------------------------------------------------------------
@dataclass
class Group:
    """The runs of one row (one method and its options) over seeds."""

    label: str
    tag: str  # for file names: unique within its source
    runs: list[dict]
    left_out: list[tuple[dict, str]] = field(default_factory=list)  # (run, why): diverged, empty

    @property
    def method(self) -> str:
        for r in self.runs + [r for r, _ in self.left_out]:
            if r["config"].get("method"):
                return r["config"]["method"]
        return self.label.split(" ")[0]

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclass
class Source:
    """One input: a compare, reproduce or sweep directory, or the single runs given together."""

    kind: str  # "runs" | "compare" | "reproduce" | "sweep"
    name: str  # for titles
    tag: str  # for file names: unique among the sources
    path: Path | None
    groups: list[Group] = field(default_factory=list)
    results: dict | None = None
    sweep: dict | None = None


def _is_seed_run(run: dict) -> bool:
    return _SEED_DIR.fullmatch(run["dir"].name) is not None


def _sort_out(label: str, runs: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Finished (or running) runs with epochs; the others with why they are left out."""
    keep, out = [], []
    for r in runs:
        status = r["summary"].get("status")
        if status not in (None, "finished"):
            where = r["summary"].get("diverged_at") or {}
            at = f" at epoch {where['epoch']}" if isinstance(where, dict) and where.get("epoch") else ""
            out.append((r, f"{status}{at}"))
        elif not r["metrics"]:
            out.append((r, "no epoch logged yet"))
        else:
            keep.append(r)
    return keep, out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _unique_tags(paths: list[Path]) -> list[str]:
    """The shortest trailing path parts that tell the paths apart, joined by '_'."""
    parts = [[_safe(p) for p in Path(path).resolve().parts[1:]] or ["root"] for path in paths]
    depth = 1
    while True:
        tags = ["_".join(p[-depth:]) for p in parts]
        if len(set(tags)) == len(tags) or depth > max(len(p) for p in parts):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for t in tags:  # identical paths given twice
        seen[t] = seen.get(t, 0) + 1
        out.append(t if seen[t] == 1 else f"{t}-{seen[t]}")
    return out


def _find_runs(root: Path) -> list[Path]:
    found = []

    def walk(d: Path, depth: int):
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for c in children:
            if c.name in ("cells", "plots") or c.name.startswith("."):
                continue
            if is_run(c):
                found.append(c)
            elif depth < _MAX_DEPTH:
                walk(c, depth + 1)

    walk(root, 1)
    return found


def _loose_groups(runs: list[dict]) -> list[Group]:
    """Single runs side by side: each its own group, labelled by seed when a label repeats."""
    labels = [r["label"] for r in runs]
    out = []
    for r in runs:
        label = r["label"]
        if labels.count(label) > 1:
            seed = r["config"].get("seed", r["summary"].get("seed"))
            label += f" seed {seed}" if seed is not None else f" ({r['dir'].name})"
        out.append(label)
    for i, lab in enumerate(out):  # same method and seed in two places: name the folder
        if out.count(lab) > 1:
            out[i] = f"{lab} ({runs[i]['dir']})"
    tags = _unique_tags([r["dir"] for r in runs])
    groups = []
    for r, lab, tag in zip(runs, out, tags):
        keep, left = _sort_out(lab, [r])
        groups.append(Group(lab, tag, keep, left))
    return groups


def _container_groups(root: Path, results: dict | None) -> list[Group]:
    by_key: dict[tuple, list[dict]] = {}
    for d in _find_runs(root):
        run = load_run(d)
        rel = d.relative_to(root).parts
        key = rel[:-1] if _is_seed_run(run) and len(rel) > 1 else rel
        by_key.setdefault(key, []).append(run)
    order = []
    if results:
        order = list(results.get("methods") or {}) + [
            r["method"] for r in results.get("rows") or [] if isinstance(r.get("method"), str)
        ]
    groups = []
    for key, runs in by_key.items():
        if key[0] == "pretrain":
            label = f"pretrain ({key[-1]}, all layers)"
        elif len(key) == 1 and runs[0]["config"].get("method") == key[0]:
            label = run_label(runs[0]["config"], key[0])  # a compare with --rank: the options too
        else:
            label = key[0]
        runs.sort(
            key=lambda r: (r["config"].get("seed") is None, r["config"].get("seed") or 0, str(r["dir"]))
        )
        keep, left = _sort_out(label, runs)
        groups.append(Group(label, _safe("_".join(key)), keep, left))

    def rank(g: Group):
        for i, name in enumerate(order):
            if g.label == name or g.tag == _safe(name):
                return (0, i, g.label)
        return (0 if g.label.startswith("pretrain") else 1, -1, g.label)

    return sorted(groups, key=rank)


def read_inputs(paths) -> list[Source]:
    """Every input read and validated: a list of sources (single runs together as one)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a directory")
    loose = [p for p in paths if is_run(p) and not is_sweep(p)]
    others = [p for p in paths if p not in loose]
    sources: list[Source] = []
    if loose:
        sources.append(
            Source(
                "runs",
                ", ".join(str(p) for p in loose),
                "runs",
                None,
                _loose_groups([load_run(p) for p in loose]),
            )
        )
    tags = _unique_tags(others) if others else []
    for p, tag in zip(others, tags):
        if is_sweep(p):
            sources.append(Source("sweep", str(p), tag, p, results=load_results(p), sweep=load_sweep(p)))
            continue
        results = load_results(p)
        groups = _container_groups(p, results)
        if not groups and not (results and results.get("rows")):
            raise FileNotFoundError(
                f"{p} has no metrics.json, metrics.csv, sweep.json or "
                "results.json, nor runs below it: not a run, compare, "
                "reproduce or sweep directory"
            )
        kind = "reproduce" if results and "experiment" in results else "compare"
        sources.append(Source(kind, str(p), tag, p, groups, results=results))
    return sources
