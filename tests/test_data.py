"""Datasets: tiny IDX and CIFAR files written here, look-up order, and corrupt/missing messages.

No test touches the network; the user cache and system folders are redirected to tmp_path.
"""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ssdfa import data as D

pytestmark = pytest.mark.usefixtures("no_real_data")


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX format written from its definition: 0x0000, type 0x08 (ubyte), ndim, dims, data."""
    head = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_idx_set(folder, n_train=6, n_test=4, h=5, w=7, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_standardisation(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "fashion-mnist", gz=gz)
    ds = D.load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.input_shape == (1, 5, 7) and ds.num_classes == 10
    assert len(ds.train) == 6 and len(ds.test) == 4
    x, y = ds.test.batch(torch.arange(4))
    train = arrays["train-images-idx3-ubyte"] / 255.0
    mean, std = train.mean(), train.std()  # the standardisation, computed independently
    expected = (arrays["t10k-images-idx3-ubyte"] / 255.0 - mean) / std
    torch.testing.assert_close(x[:, 0].double(), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert x.dtype == torch.float32
    assert torch.equal(y, torch.tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.long))


def test_data_dir_may_point_straight_at_the_files(tmp_path):
    write_idx_set(tmp_path / "mine")
    ds = D.load_dataset("mnist", data_dir=tmp_path / "mine")
    assert ds.source == str(tmp_path / "mine")


def test_lookup_order_data_dir_then_env_then_cache_then_system(tmp_path, monkeypatch):
    for where, n in (("explicit", 3), ("env", 4), ("cache/ssdfa", 5), ("system", 6)):
        write_idx_set(tmp_path / where / "fashion-mnist", n_train=n)
    monkeypatch.setenv("SSDFA_DATA", str(tmp_path / "env"))
    assert len(D.load_dataset("fashion-mnist", data_dir=tmp_path / "explicit").train) == 3
    assert len(D.load_dataset("fashion-mnist").train) == 4
    monkeypatch.delenv("SSDFA_DATA")
    assert len(D.load_dataset("fashion-mnist").train) == 5
    import shutil

    shutil.rmtree(tmp_path / "cache")
    ds = D.load_dataset("fashion-mnist")
    assert len(ds.train) == 6 and ds.source == str(tmp_path / "system" / "fashion-mnist")


def test_missing_dataset_names_files_places_and_remedy(tmp_path):
    with pytest.raises(D.DatasetNotFound) as info:
        D.load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(info.value)
    for needed in (
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        str(tmp_path / "nowhere"),
        str(tmp_path / "system"),
        "dataset-fashion-mnist",
        "--download",
        "SSDFA_DATA",
    ):
        assert needed in msg


def test_unknown_dataset_lists_choices():
    with pytest.raises(D.DatasetNotFound, match="choose one of: .*digits"):
        D.load_dataset("imagenet-9000")


def test_truncated_idx_is_named_not_half_loaded(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_idx_set(folder, gz=False)
    f = folder / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(D.DatasetCorrupt, match="train-images-idx3-ubyte.*truncated"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path)


def test_truncated_gzip_is_detected(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_idx_set(folder, gz=True)
    f = folder / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-6])  # cuts the CRC-32 and length trailer
    with pytest.raises(D.DatasetCorrupt, match="t10k-labels-idx1-ubyte.gz"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path)


def test_gzip_crc_mismatch_is_detected(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_idx_set(folder, gz=True)
    f = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[-8] ^= 0xFF  # flip a byte of the stored CRC-32
    f.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetCorrupt, match="train-labels-idx1-ubyte.gz"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path)


def test_bad_magic_and_mismatched_counts(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_idx_set(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(D.DatasetCorrupt, match="not an unsigned-byte IDX"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5)))
    with pytest.raises(D.DatasetCorrupt, match="do not match"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path)


# -- CIFAR ------------------------------------------------------------------------------------
def write_cifar10(root, n=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    return folder, batches


def test_cifar10_pickles_load_in_channel_major_layout(tmp_path):
    _, batches = write_cifar10(tmp_path)
    ds = D.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.train) == 15 and len(ds.test) == 3
    raw = ds.test.x[1]  # uint8 (3, 32, 32): row = 1024 red, 1024 green, 1024 blue values
    row = batches["test_batch"][b"data"][1]
    assert raw[0, 0, 0] == row[0] and raw[0, 0, 1] == row[1] and raw[1, 0, 0] == row[1024]
    assert raw[2, 31, 31] == row[3071]
    assert ds.train.y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 4), ("test", 2)):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                    b"fine_labels": [99, 0, 5, 7][:n],
                    b"coarse_labels": [1] * n,
                },
                f,
            )
    ds = D.load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.train.y.tolist() == [99, 0, 5, 7]


def test_truncated_cifar_pickle_is_named(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    f = folder / "data_batch_3"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(D.DatasetCorrupt, match="data_batch_3"):
        D.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _ = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(D.DatasetCorrupt, match="refusing to load builtins.print"):
        D.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_wrong_row_width(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(D.DatasetCorrupt, match=r"expected uint8 \(N, 3072\)"):
        D.load_dataset("cifar10", data_dir=tmp_path)


# -- embedded and synthetic ---------------------------------------------------------------------
def test_digits_split():
    ds = D.load_dataset("digits")
    assert (len(ds.train), len(ds.test), ds.input_shape) == (1347, 450, (1, 8, 8))
    x, _ = ds.train.batch(torch.arange(len(ds.train)))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert len(D.load_dataset("digits", limit_train=100).train) == 100


def test_drtp_synthetic_classification_matches_sklearn_recipe():
    from sklearn.datasets import make_classification

    ds = D.load_dataset("synthetic-classification")
    assert (len(ds.train), len(ds.test), ds.input_shape, ds.num_classes) == (25000, 5000, (1, 16, 16), 10)
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
    xb, yb = ds.test.batch(torch.arange(3))
    torch.testing.assert_close(xb.view(3, -1), torch.tensor(x[25000:25003], dtype=torch.float32))
    assert yb.tolist() == y[25000:25003].tolist()


def test_drtp_synthetic_regression_targets_are_cosines_of_the_mean():
    ds = D.load_dataset("synthetic-regression")
    assert ds.task == "regression" and (len(ds.train), len(ds.test)) == (5000, 1000)
    x, y = ds.train.batch(torch.arange(50))
    phi = torch.tensor([-np.pi / 2 + j * np.pi / 9 for j in range(10)])
    expected = torch.cos(x.double().mean(1, keepdim=True) + phi.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_imagefolder_reads_class_folders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "tiny" / split / cls
            folder.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)).save(folder / f"{k}.png")
    ds = D.load_dataset("imagefolder", data_dir=tmp_path / "tiny", image_size=8)
    assert ds.num_classes == 2 and len(ds.train) == 4 and ds.input_shape == (3, 8, 8)
    x, y = ds.train.batch(torch.tensor([0, 3]))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]


def test_dataset_info_reports_what_is_found(tmp_path):
    write_idx_set(tmp_path / "mnist")
    found = {name: where for name, _, where in D.dataset_info(tmp_path)}
    assert found["mnist"] == str(tmp_path / "mnist")
    assert found["digits"] == "embedded" and found["cifar10"] == "not found"


def _fake_server(monkeypatch, files: dict[str, bytes]):
    import io

    def urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        return io.BytesIO(files[name])

    monkeypatch.setattr(D.urllib.request, "urlopen", urlopen)


def test_download_verifies_md5_then_loads_from_the_cache(tmp_path, monkeypatch):
    import hashlib

    src = tmp_path / "upstream"
    write_idx_set(src, gz=True)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    sums = {name: hashlib.md5(raw).hexdigest() for name, raw in files.items()}
    monkeypatch.setitem(D.DOWNLOADS, "mnist", ("http://example.invalid/", sums))
    _fake_server(monkeypatch, files)
    with pytest.raises(D.DatasetNotFound):
        D.load_dataset("mnist")  # not without --download
    ds = D.load_dataset("mnist", download=True)
    assert len(ds.train) == 6 and ds.source == str(tmp_path / "cache" / "ssdfa" / "mnist")


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    src = tmp_path / "upstream"
    write_idx_set(src, gz=True)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    monkeypatch.setitem(D.DOWNLOADS, "mnist", ("http://example.invalid/", {n: "0" * 32 for n in files}))
    _fake_server(monkeypatch, files)
    with pytest.raises(D.DatasetCorrupt, match="MD5"):
        D.load_dataset("mnist", download=True)
    assert not any((tmp_path / "cache" / "ssdfa" / "mnist").iterdir())


DEBIAN_FASHION = D.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_loads_whole():
    ds = D.load_dataset("fashion-mnist", data_dir=DEBIAN_FASHION)
    assert (len(ds.train), len(ds.test), ds.input_shape) == (60000, 10000, (1, 28, 28))
    assert sorted(ds.train.y.unique().tolist()) == list(range(10))


# -- the registry is the only table of datasets ---------------------------------------------
def _write_cifar100(root, n=2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"fine_labels": [99, 3][:n]}, f
            )


def _load_small(name, tmp_path):
    """Dataset ``name`` from the smallest files of its standard size written here (embedded
    datasets: as they load)."""
    if name in ("mnist", "fashion-mnist"):
        write_idx_set(tmp_path / name, n_train=3, n_test=2, h=28, w=28)
    elif name == "cifar10":
        write_cifar10(tmp_path, n=1)
    elif name == "cifar100":
        _write_cifar100(tmp_path)
    return D.load_dataset(name, data_dir=tmp_path, limit_train=8)


@pytest.mark.parametrize("name", [n for n in D.list_datasets() if n != "imagefolder"])
def test_every_entry_states_what_its_loader_produces(tmp_path, name):
    """A dataset entry's input shape, classes and task are what its loader hands out; the
    cost model's look-up (``dataset_shape``) reads that entry, under every spelling."""
    entry = D.dataset_entry(name)
    ds = _load_small(name, tmp_path)
    assert (ds.input_shape, ds.num_classes, ds.task) == (entry.input_shape, entry.num_classes, entry.task)
    x, _ = ds.train.batch(torch.arange(1))
    assert tuple(x.shape[1:]) == entry.input_shape
    for spelling in (name, name.upper(), name.replace("-", "_"), name.replace("-", ""), *entry.aliases):
        assert D.dataset_shape(spelling) == (entry.input_shape, entry.num_classes), spelling


def test_a_dataset_sized_by_its_files_lists_its_presets_instead():
    """imagefolder's shape and classes come from its folder tree; the cost model's ``imagenet``
    is one of its presets (3x224x224, 1000 classes), not a table of its own."""
    entry = D.dataset_entry("imagefolder")
    assert entry.input_shape is None and entry.num_classes is None
    assert D.dataset_shape("imagefolder") is None
    assert D.dataset_shape("ImageNet") == ((3, 224, 224), 1000) == D.dataset_shapes()["imagenet"]
    assert D.dataset_shape("no-such-set") is None


@pytest.mark.parametrize("name", D.list_datasets())
def test_every_entry_names_a_default_model_that_builds(name):
    from ssdfa.models import create_model, default_model, list_models

    entry = D.dataset_entry(name)
    assert entry.default_model in list_models() and default_model(name, ()) == entry.default_model
    shape, classes = entry.input_shape or (3, 32, 32), entry.num_classes or 5
    with torch.device("meta"):
        net = create_model(entry.default_model, shape, classes)
        assert net(torch.zeros(2, *shape)).shape == (2, classes)


def test_shapes_classes_and_default_model_are_read_from_the_entry(monkeypatch):
    """Change an entry and every reader follows: there is no second table to forget."""
    import dataclasses

    from ssdfa import cost
    from ssdfa.data import registry
    from ssdfa.models import default_model

    assert not hasattr(cost, "DATASET_SHAPES")
    changed = dataclasses.replace(
        registry._REGISTRY["mnist"], input_shape=(1, 9, 9), num_classes=7, default_model="mlp-800"
    )
    monkeypatch.setitem(registry._REGISTRY, "mnist", changed)
    assert cost.dataset_shape("MNIST") == ((1, 9, 9), 7) == D.dataset_shape("mnist")
    assert default_model("mnist", ()) == "mlp-800"
    assert default_model("not-registered", ()) == "digits-fc"  # as before: the embedded default
