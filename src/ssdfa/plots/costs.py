"""Fig. 8's cost bars, and the paper networks' costs they show (read from the registries)."""

from __future__ import annotations

import torch

from ..cost import count_costs, layer_shapes
from ..data import dataset_shape
from ..models import paper_network
from .style import STYLE, _figure, plt, rule_color


def figure_cost_bars(results: dict, scope: str = "only FC layers train, as in Fig. 8"):
    """Fig. 8: MACs and data movement (MB) per method, one row of panels per network.

    ``results`` maps a title to :func:`ssdfa.cost.count_costs` output.
    """
    with plt.rc_context(STYLE):
        fig, axes = _figure("cost", len(results), 2)
        for row, (title, res) in zip(axes, results.items()):
            methods = list(res)
            colors = [rule_color(m) for m in methods]
            macs = [res[m]["totals"]["macs"] / 1e6 for m in methods]
            mb = [res[m]["totals"]["movement_bytes"] / 1e6 for m in methods]
            for ax, vals, ylabel, log in (
                (row[0], macs, "MACs (millions)", False),
                (row[1], mb, "data movement (MB)", True),
            ):
                bars = ax.bar(methods, vals, color=colors)
                if log:  # movement spans orders of magnitude; MACs differ by about 2x
                    ax.set_yscale("log")
                ax.set_ylabel(ylabel + (", log scale" if log else ""))
                ax.set_title(f"{title}: {ylabel.split(' (')[0]}")
                for b, v in zip(bars, vals):
                    ax.annotate(
                        f"{v:,.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9
                    )
                ax.margins(y=0.2)
        fig.suptitle(f"backward-pass cost of one training example, Table I counting ({scope})")
        fig.tight_layout()
    return fig


def paper_costs(methods=("bp", "dfa", "ssdfa"), train="fc") -> dict:
    """Costs of the paper's Fig. 8 networks: AlexNet/ImageNet and the CIFAR-100 CNN."""
    out = {}
    for title, name, ds in (
        ("CIFAR-100 CNN", "cifar-cnn", "cifar100"),
        ("ImageNet AlexNet", "alexnet", "imagenet"),
    ):
        shape, m = dataset_shape(ds)
        with torch.device("meta"):
            net = paper_network(name, shape, m)
        out[title] = count_costs(layer_shapes(net, shape), methods, num_classes=m, train=train)
    return out
