"""``ssdfa info``: the methods, models and datasets available, and where data was found."""

from __future__ import annotations

import json

import torch

import ssdfa

from ..data import dataset_info, search_roots
from ..models import list_models, model_summary
from ..rules import RULES


def register(sub):
    p = sub.add_parser(
        "info",
        help="list methods, models and datasets found on this machine",
        description="List the learning rules, models and datasets, and where "
        "each dataset was found. Example: ssdfa info",
    )
    p.add_argument("--data-dir", default=None, help="also look for datasets here first")
    p.add_argument("--json", action="store_true", help="print the lists as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    methods = {name: getattr(RULES[name], "summary", "") for name in ssdfa.METHODS}
    models = {name: model_summary(name) for name in list_models()}
    datasets = {
        name: {"summary": summary, "found": where} for name, summary, where in dataset_info(args.data_dir)
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.json:
        print(
            json.dumps(
                {
                    "version": ssdfa.__version__,
                    "torch": torch.__version__,
                    "devices": devices,
                    "methods": methods,
                    "models": models,
                    "datasets": datasets,
                    "searched": [str(p) for p in search_roots(args.data_dir)],
                }
            )
        )
        return 0
    print(f"ssdfa {ssdfa.__version__}, torch {torch.__version__}, devices: {', '.join(devices)}")
    print("\nmethods (--method):")
    for name, summary in methods.items():
        print(f"  {name:14s} {summary}")
    print("\nmodels (--model):")
    for name, summary in models.items():
        print(f"  {name:14s} {summary}")
    print("\ndatasets (--dataset):")
    for name, d in datasets.items():
        print(f"  {name:25s} {d['found']}\n  {'':25s} {d['summary']}")
    print("\ndataset folders searched: " + ", ".join(str(p) for p in search_roots(args.data_dir)))
    return 0
