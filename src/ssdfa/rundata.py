"""Reading what ssdfa wrote, for figures and reports: runs, compares, reproductions, sweeps.

Every file is validated before anything is drawn: a damaged ``config.json``, ``metrics.json``,
``metrics.csv``, ``summary.json``, ``sweep.json``, ``results.json`` or ``checkpoint.pt`` raises
:class:`RunFileError` with one line naming the file and what is wrong with it.  Fields this
module does not use are ignored, so files that gain fields keep reading.

Directory kinds (:func:`read_inputs`):

- a **run**: ``metrics.json`` or ``metrics.csv`` (one row per epoch, ``angle/<key>`` columns
  when alignment was logged), ``config.json``, ``summary.json``, ``checkpoint.pt``;
- a **compare** or **reproduce** directory: runs in ``<row>/seed<k>`` (``<row>/<method>/seed<k>``
  for a reproduction's variant rows, ``pretrain/<method>/seed<k>`` for a transfer's pretraining)
  and ``results.json`` (a partly finished one without it is read from its runs);
- a **sweep**: ``sweep.json`` (:mod:`ssdfa.sweep`), also written by ``reproduce ssdfa-rank``.

Runs of one row are a :class:`Group`: the figures draw its mean over seeds with a ±1 std band.
Single run directories given side by side are each their own group, labelled by seed when one
method appears more than once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from .errors import RunFileError  # noqa: F401  (re-exported)

__all__ = ["RunFileError", "Group", "Source", "load_run", "load_sweep", "load_results",
           "read_inputs", "is_run", "is_sweep", "run_label", "first_conv_weight", "series"]

_SEED_DIR = re.compile(r"seed-?\d+$")
_MAX_DEPTH = 3  # <row>/<method>/seed<k> under a reproduction


# -- files ---------------------------------------------------------------------------------------
def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is not UTF-8 text (damaged?); restore it from a copy, or "
                           "delete the run and train it again") from None
    except IsADirectoryError:
        raise RunFileError(f"{path} is a directory, not a file") from None


def _json(path: Path):
    text = _text(path)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise RunFileError(f"{path} is not valid JSON ({msg}); restore it from a copy, or delete "
                           "the run and train it again") from None


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise RunFileError(f"{path}: {what}; restore the file from a copy, or delete the run and "
                           "train it again")


def _num_or_none(obj: dict, key: str, path: Path, where: str = "") -> None:
    v = obj.get(key)
    _check(v is None or _is_num(v), path, f"{where}{key} is {v!r}, not a number")


def _read_config(path: Path) -> dict:
    if not path.exists():
        return {}
    cfg = _json(path)
    _check(isinstance(cfg, dict), path, f"holds {type(cfg).__name__}, not a JSON object of settings")
    for key in ("method", "dataset", "model", "loss"):
        v = cfg.get(key)
        _check(v is None or isinstance(v, str), path, f"{key} is {v!r}, not a name")
    for key in ("seed", "epochs", "rank", "connections"):
        v = cfg.get(key)
        _check(v is None or (isinstance(v, int) and not isinstance(v, bool)), path,
               f"{key} is {v!r}, not an integer")
    _num_or_none(cfg, "sparsity", path)
    return cfg


def _read_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    s = _json(path)
    _check(isinstance(s, dict), path, f"holds {type(s).__name__}, not a JSON object")
    v = s.get("status")
    _check(v is None or isinstance(v, str), path, f"status is {v!r}, not a word")
    for key in ("final_test_acc", "best_test_acc", "final_test_loss", "train_loss", "train_acc",
                "seconds", "epochs", "seed", "world_size"):
        _num_or_none(s, key, path)
    return s


def _check_rows(rows, path: Path) -> list[dict]:
    _check(isinstance(rows, list), path, f"holds {type(rows).__name__}, not a list of epochs")
    for i, row in enumerate(rows):
        _check(isinstance(row, dict), path, f"row {i + 1} is {type(row).__name__}, not an object")
        for k, v in row.items():
            _check(v is None or _is_num(v), path, f"row {i + 1}: {k} is {v!r}, not a number")
        ep = row.get("epoch")
        _check(ep is None or (isinstance(ep, int) or (isinstance(ep, float) and ep.is_integer())),
               path, f"row {i + 1}: epoch is {ep!r}, not a whole number")
    return rows


def _read_metrics(d: Path) -> list[dict]:
    if (d / "metrics.json").exists():
        return _check_rows(_json(d / "metrics.json"), d / "metrics.json")
    path = d / "metrics.csv"
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(_text(path), newline=""))
        for i, raw in enumerate(reader):
            row = {}
            for k, v in raw.items():
                _check(k is not None, path, f"row {i + 1} has more values than the header")
                if v is None or v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    raise RunFileError(f"{path}: row {i + 1}: {k} is {v!r}, not a number; restore "
                                       "the file from a copy, or delete the run and train it "
                                       "again") from None
            if isinstance(row.get("epoch"), float) and row["epoch"].is_integer():
                row["epoch"] = int(row["epoch"])
            rows.append(row)
    except csv.Error as exc:
        raise RunFileError(f"{path} is not a CSV table ({exc})") from None
    return _check_rows(rows, path)


def is_run(path) -> bool:
    d = Path(path)
    return (d / "metrics.json").is_file() or (d / "metrics.csv").is_file()


def is_sweep(path) -> bool:
    return (Path(path) / "sweep.json").is_file()


def run_label(config: dict, fallback: str) -> str:
    """The rule's name, with the feedback options that set it apart (``sdfa (rank=2)``)."""
    label = config.get("method") or fallback
    opts = [f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}"
            for k in ("sparsity", "connections", "rank") if config.get(k) is not None]
    return label + (" (" + ", ".join(opts) + ")" if opts else "")


def load_run(path) -> dict:
    """``{"dir", "label", "config", "metrics", "summary"}`` of one run directory, validated."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory")
    if not is_run(d):
        raise FileNotFoundError(f"{d} has neither metrics.json nor metrics.csv: not a run directory")
    config = _read_config(d / "config.json")
    summary = _read_summary(d / "summary.json")
    metrics = _read_metrics(d)
    return {"dir": d, "label": run_label(config, d.name), "config": config, "metrics": metrics,
            "summary": summary}


def load_sweep(path) -> dict:
    """``sweep.json`` of a sweep directory, its cells checked."""
    p = Path(path) / "sweep.json"
    sw = _json(p)
    _check(isinstance(sw, dict), p, f"holds {type(sw).__name__}, not a JSON object")
    cells = sw.get("cells", [])
    _check(isinstance(cells, list), p, "cells is not a list")
    for i, c in enumerate(cells):
        _check(isinstance(c, dict), p, f"cell {i + 1} is not an object")
        for key in ("rank", "n"):
            v = c.get(key)
            _check(isinstance(v, int) and not isinstance(v, bool), p,
                   f"cell {i + 1}: {key} is {v!r}, not an integer")
        _check(_is_num(c.get("sparsity")), p, f"cell {i + 1}: sparsity is {c.get('sparsity')!r}")
        for key in c:
            if key.endswith(("_mean", "_std")):
                _num_or_none(c, key, p, f"cell {i + 1}: ")
    for key, kind in (("base", dict), ("skipped", list), ("seeds", list), ("runs", list)):
        _check(key not in sw or isinstance(sw[key], kind), p, f"{key} is not a {kind.__name__}")
    for s in sw.get("skipped", []):
        _check(isinstance(s, dict) and isinstance(s.get("rank"), int) and _is_num(s.get("sparsity")),
               p, f"skipped entry {s!r} is not {{rank, sparsity, reason}}")
    return sw


def load_results(path) -> dict | None:
    """``results.json`` of a compare or reproduce directory (None when absent), checked."""
    p = Path(path) / "results.json"
    if not p.is_file():
        return None
    res = _json(p)
    _check(isinstance(res, dict), p, f"holds {type(res).__name__}, not a JSON object")
    rows = res.get("rows")
    if rows is not None:
        _check(isinstance(rows, list), p, "rows is not a list")
        for i, r in enumerate(rows):
            _check(isinstance(r, dict), p, f"row {i + 1} is not an object")
            label = r.get("method", r.get("quantity"))
            _check(isinstance(label, str), p, f"row {i + 1} has no method name")
            for key in ("paper", "ours_mean", "ours_std", "gap_paper", "gap_ours", "ours"):
                _num_or_none(r, key, p, f"row {i + 1}: ")
            for key in ("ours_runs", "runs"):
                v = r.get(key)
                _check(v is None or (isinstance(v, int) and not isinstance(v, bool)), p,
                       f"row {i + 1}: {key} is {v!r}, not an integer")
    methods = res.get("methods")
    _check(methods is None or isinstance(methods, dict), p, "methods is not an object")
    for key in ("experiment", "title", "metric", "dataset", "stand_in", "citation", "source"):
        v = res.get(key)
        _check(v is None or isinstance(v, str), p, f"{key} is {v!r}, not text")
    for key in ("config", "budget"):
        _check(res.get(key) is None or isinstance(res.get(key), dict), p, f"{key} is not an object")
    return res


def first_conv_weight(run_dir):
    """The first 4-D ``weight`` tensor in ``checkpoint.pt`` (searched recursively), or None."""
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same error to the user
        text = str(exc).strip()
        if "Weights only load failed" in text:
            first = "it holds objects other than tensors and plain containers"
        else:
            first = text.splitlines()[0][:100] if text else type(exc).__name__
        raise RunFileError(f"{path} is not a readable checkpoint ({first}); restore it from a "
                           "copy, or delete the run and train it again") from None

    def search(obj, depth=0):
        if depth > 20:
            return None
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, torch.Tensor) and v.dim() == 4 and str(k).endswith("weight"):
                    return v
            obj = list(obj.values())
        if isinstance(obj, (list, tuple)):
            for v in obj:
                if isinstance(v, (dict, list, tuple)):
                    found = search(v, depth + 1)
                    if found is not None:
                        return found
        return None

    w = search(ckpt)
    return None if w is None else w.detach().float().numpy()


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
            r["method"] for r in results.get("rows") or [] if isinstance(r.get("method"), str)]
    groups = []
    for key, runs in by_key.items():
        if key[0] == "pretrain":
            label = f"pretrain ({key[-1]}, all layers)"
        elif len(key) == 1 and runs[0]["config"].get("method") == key[0]:
            label = run_label(runs[0]["config"], key[0])  # a compare with --rank: the options too
        else:
            label = key[0]
        runs.sort(key=lambda r: (r["config"].get("seed") is None, r["config"].get("seed") or 0,
                                 str(r["dir"])))
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
        sources.append(Source("runs", ", ".join(str(p) for p in loose), "runs", None,
                              _loose_groups([load_run(p) for p in loose])))
    tags = _unique_tags(others) if others else []
    for p, tag in zip(others, tags):
        if is_sweep(p):
            sources.append(Source("sweep", str(p), tag, p, results=load_results(p),
                                  sweep=load_sweep(p)))
            continue
        results = load_results(p)
        groups = _container_groups(p, results)
        if not groups and not (results and results.get("rows")):
            raise FileNotFoundError(f"{p} has no metrics.json, metrics.csv, sweep.json or "
                                    "results.json, nor runs below it: not a run, compare, "
                                    "reproduce or sweep directory")
        kind = "reproduce" if results and "experiment" in results else "compare"
        sources.append(Source(kind, str(p), tag, p, groups, results=results))
    return sources


def series(metrics: list[dict], key: str) -> dict[int, float]:
    """``{epoch: value}`` of one column, missing and NaN values left out."""
    out = {}
    for i, row in enumerate(metrics):
        v = row.get(key)
        if v is None or not math.isfinite(v):
            continue
        ep = row.get("epoch")
        out[int(ep) if ep is not None else i + 1] = float(v)
    return out
