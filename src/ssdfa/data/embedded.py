"""Datasets that need no file: scikit-learn's 8x8 digits and the DRTP paper's synthetic tasks."""

from __future__ import annotations

import numpy as np
import torch

from .registry import dataset_entry, register
from .splits import Dataset, TensorSplit


def _dataset(name, xtr, ytr, xte, yte, mean=None, std=None, source="scikit-learn") -> Dataset:
    """The two splits as ``name``'s entry declares it (shape, classes, task)."""
    entry = dataset_entry(name)
    return Dataset(
        name,
        TensorSplit(xtr, ytr, mean, std),
        TensorSplit(xte, yte, mean, std),
        entry.input_shape,
        entry.num_classes,
        task=entry.task,
        source=source,
    )


@register(
    "digits",
    summary="scikit-learn 8x8 handwritten digits (1347 train / 450 test)",
    input_shape=(1, 8, 8),
    num_classes=10,
    default_model="digits-fc",
    embedded=True,
)
def _load_digits(**_):
    from sklearn.datasets import load_digits  # heavy: imported when the dataset is loaded
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)  # (N, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return _dataset("digits", xtr, ytr, xte, yte, xtr.mean(), xtr.std())


# -- DRTP synthetic tasks (Frenkel et al., Sec. 4.1-4.2) ------------------------------------
@register(
    "synthetic-classification",
    embedded=True,
    aliases=("drtp-classification",),
    input_shape=(1, 16, 16),
    num_classes=10,
    default_model="drtp-fc2-500",
    summary="DRTP Sec. 4.2: make_classification, 256 features (128 informative), "
    "10 classes x 5 clusters, class_sep 4.5; 25k train / 5k test, as 16x16",
)
def _load_synth_classification(**_):
    from sklearn.datasets import make_classification  # heavy: imported when loaded

    x, y = make_classification(
        n_samples=30000,
        n_features=256,
        n_informative=128,
        n_redundant=0,
        n_repeated=0,
        n_classes=10,
        n_clusters_per_class=5,
        class_sep=4.5,
        random_state=0,
    )
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 16, 16)
    y = torch.tensor(y, dtype=torch.long)
    return _dataset("synthetic-classification", x[:25000], y[:25000], x[25000:], y[25000:])


@register(
    "synthetic-regression",
    embedded=True,
    aliases=("drtp-regression",),
    input_shape=(256,),
    num_classes=10,
    default_model="drtp-reg",
    task="regression",
    summary="DRTP Sec. 4.1: 10 cosine targets cos(mean(x) + phi_j) of 256-d inputs; 5k train / 1k test",
)
def _load_synth_regression(**_):
    gen = np.random.default_rng(0)
    n = 6000
    centre = gen.uniform(-np.pi, np.pi, size=(n, 1))  # each example's mean ~ U(-pi, pi)
    x = centre + gen.standard_normal((n, 256))  # (n, 256), unit variance around it
    phi = -np.pi / 2 + np.arange(10) * np.pi / 9  # phi_j = -pi/2 + j*pi/9, j = 0..9
    y = np.cos(x.mean(axis=1, keepdims=True) + phi)  # (n, 10)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    return _dataset("synthetic-regression", x[:5000], y[:5000], x[5000:], y[5000:], source="generated")
