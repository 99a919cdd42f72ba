"""Directories for the figure and report tests, written as ssdfa's commands write them."""

import json
from pathlib import Path

from ssdfa.commands.reproduce import rows_for
from ssdfa.experiments import get


def fake_reproduction(root: Path, accs: dict[str, list[float]]) -> Path:
    """A reproduce directory of dfa-mlp: seed runs with these final accuracies, rows_for's table."""
    exp = get("dfa-mlp")
    results = {}
    for method, vals in accs.items():
        results[method] = []
        for seed, acc in enumerate(vals):
            d = root / method / f"seed{seed}"
            d.mkdir(parents=True)
            summary = {
                "status": "finished",
                "method": method,
                "seed": seed,
                "epochs": 2,
                "final_test_acc": acc,
                "best_test_acc": acc,
                "final_test_loss": 1 - acc,
            }
            rows = [
                {
                    "epoch": e,
                    "train_loss": 1.0 / e,
                    "train_acc": acc - 0.1 / e,
                    "test_loss": 1 - acc + 0.1 / e,
                    "test_acc": acc - 0.05 / e,
                }
                for e in (1, 2)
            ]
            (d / "summary.json").write_text(json.dumps(summary))
            (d / "metrics.json").write_text(json.dumps(rows))
            (d / "config.json").write_text(
                json.dumps({"method": method, "seed": seed, "dataset": "digits", "epochs": 2})
            )
            results[method].append(summary)
    payload = {
        "experiment": exp.name,
        "title": exp.title,
        "metric": exp.metric,
        "dataset": "digits",
        "stand_in": None,
        "budget": {"epochs": 2, "seeds": 3},
        "rows": rows_for(exp, results),
        "a_field_from_the_future": [1, 2],
    }
    (root / "results.json").write_text(json.dumps(payload))
    return root
