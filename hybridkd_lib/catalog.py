"""The dataset catalogue: each dataset's classes, input shape, where it lives and how to get it
(no torch: ``python -m hybridkd_lib datasets`` reads it). ``data`` builds the datasets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hybridkd_lib.results import REPO_ROOT


@dataclass(frozen=True)
class DatasetInfo:
    """What the library knows about one dataset (shapes exclude the batch)."""

    name: str
    num_classes: int
    input_shape: tuple
    marker: str | None  # file or folder whose presence means "the data is there"
    how_to_get: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", 10, (1, 8, 8), None,
        "shipped inside scikit-learn (sklearn.datasets.load_digits); nothing to download"),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), "cifar-10-batches-py",
        "python -m hybridkd_lib datasets --download cifar10 (or unpack cifar-10-python.tar.gz "
        "from https://www.cs.toronto.edu/~kriz/cifar.html into the data root)"),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), "cifar-100-python",
        "python -m hybridkd_lib datasets --download cifar100 (or unpack cifar-100-python.tar.gz "
        "from https://www.cs.toronto.edu/~kriz/cifar.html into the data root)"),
    "imagenet": DatasetInfo(
        "imagenet", 1000, (3, 224, 224), "imagenet/train",
        "register at https://image-net.org, then lay ILSVRC2012 out as ImageFolder: "
        "<data root>/imagenet/train/<wnid>/*.JPEG and <data root>/imagenet/val/<wnid>/*.JPEG"),
    "cifar10dvs": DatasetInfo(
        "cifar10dvs", 10, ("T", 2, 48, 48), "cifar10dvs/events_np",
        "python -m hybridkd_lib datasets --download cifar10dvs (spikingjelly fetches the 10 zips "
        "from https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 into "
        "<data root>/cifar10dvs/download and converts them to events_np/)"),
    "synthetic": DatasetInfo(
        "synthetic", 10, (3, 32, 32), None,
        "generated in memory (random CIFAR-shaped tensors, for speed/memory benchmarks only)"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk (message: name, path looked in, how to obtain it)."""


def default_data_root() -> Path:
    """``$HYBRIDKD_DATA`` if set, else ``<repo>/data``."""
    return Path(os.environ.get("HYBRIDKD_DATA", REPO_ROOT / "data"))


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def expected_path(name: str, root: str | Path | None = None) -> Path | None:
    info = dataset_info(name)
    if info.marker is None:
        return None
    return Path(root or default_data_root()) / info.marker


def is_present(name: str, root: str | Path | None = None) -> bool:
    path = expected_path(name, root)
    return path is None or path.exists()



def dataset_table(root: str | Path | None = None) -> list[dict]:
    """One row per dataset: name, classes, input shape, expected path, present."""
    rows = []
    for name, info in DATASETS.items():
        path = expected_path(name, root)
        rows.append({"name": name, "classes": info.num_classes,
                     "input": "x".join(map(str, info.input_shape)),
                     "path": str(path) if path else "(built in)", "present": is_present(name, root)})
    return rows
