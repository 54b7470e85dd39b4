"""The dataset catalogue: each dataset's classes, input shape, where it lives and how to get it
(no torch: ``python -m hybridkd_lib datasets`` reads it). ``data`` builds the datasets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hybridkd_lib.base.results import work_root


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's registration: its facts, its reader and where it lives (shapes exclude the batch).

    ``reader`` is ``"module:function"``, imported only when the data is read (this module imports no torch);
    the function's keyword arguments other than ``root`` and ``download`` are the dataset's options
    (``data_kw``), so ``datasets.get_datasets`` and ``datasets.check_options`` need nothing else."""

    name: str
    num_classes: int
    input_shape: tuple
    marker: str | None  # file or folder under the data root whose presence means "the data is there"
    how_to_get: str
    reader: str
    display: str = ""              # the name the book's tables print
    in_memory: bool = False        # held as tensors once read (loader worker processes would only add overhead)
    downloadable: bool = False     # ``datasets --download NAME`` fetches it (where there is internet)
    system_paths: tuple = ()       # absolute folders also searched (a distribution's package of the files)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the catalogue (a plug-in's dataset too); a name registered twice is an error."""
    if info.name in DATASETS:
        raise ValueError(f"dataset {info.name!r} is registered already")
    DATASETS[info.name] = info
    return info


def unregister_dataset(name: str) -> None:
    DATASETS.pop(name, None)


CIFAR_HOW = ("python -m hybridkd_lib datasets --download {n} (or unpack {n2}-python.tar.gz "
             "from https://www.cs.toronto.edu/~kriz/cifar.html into the data root)")
# Debian/Ubuntu's package dataset-fashion-mnist installs the four IDX .gz files here
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"

for _info in (
    DatasetInfo("digits", 10, (1, 8, 8), None,
                "shipped inside scikit-learn (sklearn.datasets.load_digits); nothing to download",
                "hybridkd_lib.data.datasets:digits_datasets", "digits (sklearn)", in_memory=True),
    DatasetInfo("cifar10", 10, (3, 32, 32), "cifar-10-batches-py",
                CIFAR_HOW.format(n="cifar10", n2="cifar-10"), "hybridkd_lib.data.datasets:cifar10_datasets", "CIFAR-10",
                downloadable=True),
    DatasetInfo("cifar100", 100, (3, 32, 32), "cifar-100-python",
                CIFAR_HOW.format(n="cifar100", n2="cifar-100"), "hybridkd_lib.data.datasets:cifar100_datasets", "CIFAR-100",
                downloadable=True),
    DatasetInfo("imagenet", 1000, (3, 224, 224), "imagenet/train",
                "register at https://image-net.org, then lay ILSVRC2012 out as ImageFolder: "
                "<data root>/imagenet/train/<wnid>/*.JPEG and <data root>/imagenet/val/<wnid>/*.JPEG",
                "hybridkd_lib.data.datasets:imagenet_datasets", "ImageNet"),
    DatasetInfo("cifar10dvs", 10, ("T", 2, 48, 48), "cifar10dvs/events_np",
                "python -m hybridkd_lib datasets --download cifar10dvs (spikingjelly fetches the 10 zips "
                "from https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 into "
                "<data root>/cifar10dvs/download and converts them to events_np/)",
                "hybridkd_lib.data.datasets:cifar10dvs_datasets", "CIFAR10-DVS", downloadable=True),
    DatasetInfo("fashion_mnist", 10, (1, 28, 28), "FashionMNIST/raw",
                "apt-get install dataset-fashion-mnist (Debian/Ubuntu: the IDX .gz files in "
                f"{FASHION_MNIST_DEBIAN}, read from there), or python -m hybridkd_lib datasets --download "
                "fashion_mnist (torchvision, needs internet), or put the four IDX files (train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or not) in "
                "<data root>/FashionMNIST/raw/",
                "hybridkd_lib.data.datasets:fashion_mnist_datasets", "Fashion-MNIST", in_memory=True, downloadable=True,
                system_paths=(FASHION_MNIST_DEBIAN,)),
    DatasetInfo("synthetic", 10, (3, 32, 32), None,
                "generated in memory (random CIFAR-shaped tensors, for speed/memory benchmarks only)",
                "hybridkd_lib.data.datasets:synthetic_datasets", "synthetic", in_memory=True),
):
    register_dataset(_info)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk (message: name, path looked in, how to obtain it)."""


def default_data_root() -> Path:
    """``$HYBRIDKD_DATA`` if set, else ``data/`` of the checkout (inside one) or of the working folder."""
    return Path(os.environ.get("HYBRIDKD_DATA", work_root() / "data"))


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def reader(name: str):
    """The function that reads dataset ``name`` (imported now)."""
    import importlib

    module, function = dataset_info(name).reader.split(":")
    return getattr(importlib.import_module(module), function)


def search_paths(name: str, root: str | Path | None = None) -> list[Path]:
    """Where dataset ``name`` is looked for, in order: under the data root, then its system folders."""
    info = dataset_info(name)
    if info.marker is None:
        return []
    return [Path(root or default_data_root()) / info.marker] + [Path(p) for p in info.system_paths]


def expected_path(name: str, root: str | Path | None = None) -> Path | None:
    """Where dataset ``name`` is (the first search path that exists), else where it is expected (the data
    root's); None for a built-in dataset."""
    paths = search_paths(name, root)
    return next((p for p in paths if p.exists()), paths[0] if paths else None)


def is_present(name: str, root: str | Path | None = None) -> bool:
    path = expected_path(name, root)
    return path is None or path.exists()


def dataset_table(root: str | Path | None = None) -> list[dict]:
    """One row per dataset: name, classes, input shape, where it was looked for (``path``: every search path,
    the one found marked), present."""
    rows = []
    for name, info in DATASETS.items():
        paths, found = search_paths(name, root), expected_path(name, root)
        looked = " | ".join(f"{p}{' (found)' if p == found and p.exists() and len(paths) > 1 else ''}" for p in paths)
        rows.append({"name": name, "classes": info.num_classes,
                     "input": "x".join(map(str, info.input_shape)),
                     "path": looked or "(built in)", "present": is_present(name, root)})
    return rows
