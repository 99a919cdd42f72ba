"""Reading the files ssdfa writes into a run directory, each validated: ``config.json``,
``summary.json``, ``metrics.json``/``metrics.csv``, ``sweep.json``, ``results.json``, the
checkpoint's first conv weight.  A damaged file raises :class:`RunFileError` naming it."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import torch

from ..errors import RunFileError


# -- files ---------------------------------------------------------------------------------------
def _not_utf8(path: Path) -> RunFileError:
    return RunFileError(
        f"{path} is not UTF-8 text (damaged?); restore it from a copy, or delete the run and train it again"
    )


def _a_directory(path: Path) -> RunFileError:
    return RunFileError(f"{path} is a directory, not a file")


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except IsADirectoryError:
        raise _a_directory(path) from None


def _json(path: Path):
    """A run file for plot and report: damage and a directory in its place are RunFileError."""

    def damaged(exc) -> RunFileError:
        if isinstance(exc, UnicodeDecodeError):
            return _not_utf8(path)
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return RunFileError(
            f"{path} is not valid JSON ({msg}); restore it from a copy, or delete the run and train it again"
        )

    try:
        return read_json(path, damaged)
    except IsADirectoryError:
        raise _a_directory(path) from None


def read_json(path: Path, damaged):
    """A run directory's JSON file, read in this one place for every command: the parsed value;
    FileNotFoundError when it is absent (the caller decides what that means: not finished, no
    cells yet); ``damaged(exc)`` raised when it is not UTF-8 JSON or nests too deeply to parse,
    so each caller's error says what to do in its own terms (delete the cell, the run, start it
    again)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise damaged(exc) from None


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise RunFileError(
            f"{path}: {what}; restore the file from a copy, or delete the run and train it again"
        )


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
        _check(
            v is None or (isinstance(v, int) and not isinstance(v, bool)),
            path,
            f"{key} is {v!r}, not an integer",
        )
    _num_or_none(cfg, "sparsity", path)
    return cfg


def _read_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    s = _json(path)
    _check(isinstance(s, dict), path, f"holds {type(s).__name__}, not a JSON object")
    v = s.get("status")
    _check(v is None or isinstance(v, str), path, f"status is {v!r}, not a word")
    for key in (
        "final_test_acc",
        "best_test_acc",
        "final_test_loss",
        "train_loss",
        "train_acc",
        "seconds",
        "epochs",
        "seed",
        "world_size",
    ):
        _num_or_none(s, key, path)
    return s


def _check_rows(rows, path: Path) -> list[dict]:
    _check(isinstance(rows, list), path, f"holds {type(rows).__name__}, not a list of epochs")
    for i, row in enumerate(rows):
        _check(isinstance(row, dict), path, f"row {i + 1} is {type(row).__name__}, not an object")
        for k, v in row.items():
            _check(v is None or _is_num(v), path, f"row {i + 1}: {k} is {v!r}, not a number")
        ep = row.get("epoch")
        _check(
            ep is None or (isinstance(ep, int) or (isinstance(ep, float) and ep.is_integer())),
            path,
            f"row {i + 1}: epoch is {ep!r}, not a whole number",
        )
    return rows


def read_metrics(d: Path) -> list[dict]:
    """The rows of ``metrics.json`` (or, without it, ``metrics.csv``) of run directory ``d``."""
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
                    raise RunFileError(
                        f"{path}: row {i + 1}: {k} is {v!r}, not a number; restore "
                        "the file from a copy, or delete the run and train it "
                        "again"
                    ) from None
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
    opts = [
        f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}"
        for k in ("sparsity", "connections", "rank")
        if config.get(k) is not None
    ]
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
    metrics = read_metrics(d)
    return {
        "dir": d,
        "label": run_label(config, d.name),
        "config": config,
        "metrics": metrics,
        "summary": summary,
    }


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
            _check(
                isinstance(v, int) and not isinstance(v, bool),
                p,
                f"cell {i + 1}: {key} is {v!r}, not an integer",
            )
        _check(_is_num(c.get("sparsity")), p, f"cell {i + 1}: sparsity is {c.get('sparsity')!r}")
        for key in c:
            if key.endswith(("_mean", "_std")):
                _num_or_none(c, key, p, f"cell {i + 1}: ")
    for key, kind in (("base", dict), ("skipped", list), ("seeds", list), ("runs", list)):
        _check(key not in sw or isinstance(sw[key], kind), p, f"{key} is not a {kind.__name__}")
    for s in sw.get("skipped", []):
        _check(
            isinstance(s, dict) and isinstance(s.get("rank"), int) and _is_num(s.get("sparsity")),
            p,
            f"skipped entry {s!r} is not {{rank, sparsity, reason}}",
        )
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
                _check(
                    v is None or (isinstance(v, int) and not isinstance(v, bool)),
                    p,
                    f"row {i + 1}: {key} is {v!r}, not an integer",
                )
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
        raise RunFileError(
            f"{path} is not a readable checkpoint ({first}); restore it from a "
            "copy, or delete the run and train it again"
        ) from None

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
