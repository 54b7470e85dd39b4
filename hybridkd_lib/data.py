"""Datasets by name: one entry point, real on-disk formats, clear errors.

``get_datasets(name, ...)`` returns ``(train, test)`` torch datasets and
``make_loader(dataset, ...)`` a DataLoader for one of them. Static image samples
are ``[C, H, W]`` (batches ``[B, C, H, W]``); CIFAR10-DVS samples are frame
sequences ``[T, 2, 48, 48]``, batched time-major as ``[T, B, 2, 48, 48]`` like
every temporal tensor of the library. An ANN sees a frame sequence as its mean
frame (``ann_view``).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hybridkd_lib.catalog import (DATASETS, DatasetInfo, DatasetNotFoundError, dataset_info,  # noqa: F401
                                   dataset_table, default_data_root, expected_path, is_present)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _missing(name: str, root: Path) -> DatasetNotFoundError:
    info = dataset_info(name)
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {expected_path(name, root)}. "
        f"To obtain it: {info.how_to_get}. Set --data-root or $HYBRIDKD_DATA to use another folder.")


class Cutout:
    """Zero one random ``size x size`` square of a ``[C, H, W]`` tensor (DeVries & Taylor 2017)."""

    def __init__(self, size: int = 16):
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img


# ----------------------------------------------------------------------------- digits
def digits_datasets(image_size: int = 8, channels: int = 1, test_fraction: float = 0.25,
                    seed: int = 0, augment: bool = False):
    """scikit-learn's 1,797 8x8 digits, stratified split with a fixed seed.

    Samples are ``[channels, image_size, image_size]`` normalised with the train
    split's mean and std. ``augment`` adds random 1-pixel shifts (train only).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r} not allowed; valid: 1, 3")
    if image_size < 8:
        raise ValueError(f"image_size={image_size!r} too small; valid: 8 or larger")
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8]
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                           stratify=bunch.target, random_state=seed)
    if image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = ((x - mean) / std).repeat(1, channels, 1, 1)
    train = TensorDataset(x[idx_train], y[idx_train])
    test = TensorDataset(x[idx_test], y[idx_test])
    if augment:
        train = _ShiftAugment(train, max_shift=max(1, image_size // 8))
    return train, test


class _ShiftAugment(Dataset):
    """Random integer translation (rolled, edges zeroed) of ``[C, H, W]`` samples."""

    def __init__(self, base: Dataset, max_shift: int):
        self.base, self.max_shift = base, max_shift

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return _shift(img, dy, dx), label


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx) pixels, filling with zeros."""
    out = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


# ----------------------------------------------------------------------------- CIFAR
def cifar_transforms(name: str, augment: bool = True):
    """(train, test) torchvision transforms for CIFAR-10/100: the RateBP reference's recipe
    (random crop + flip, AutoAugment, Cutout 16) for every CIFAR run, Table B's too (the paper
    states none); ``augment=False``: normalisation only."""
    from torchvision import transforms as T

    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    train = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        T.ToTensor(), T.Normalize(mean, std), Cutout(16)] if augment else [T.ToTensor(), T.Normalize(mean, std)])
    test = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return train, test


def _files_only(cls):
    """``cls`` whose integrity check asks only that its files exist (no md5 of the real tarball)."""
    class Unverified(cls):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                meta = pickle.load(f, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    return Unverified


def cifar_datasets(name: str, root: Path, download: bool = False, verify_md5: bool = True, augment: bool = True):
    """torchvision CIFAR-10/100; ``verify_md5=False`` accepts files with other bytes than the
    official release (tiny files in the real format, e.g. the full-profile dry run); ``augment``:
    see ``cifar_transforms``."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if not verify_md5:
        cls = _files_only(cls)
    if download and not is_present(name, root):
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:  # offline: give the same clear error as a missing dataset
            raise _missing(name, root) from exc
    if not is_present(name, root):
        raise _missing(name, root)
    train_tf, test_tf = cifar_transforms(name, augment)
    try:
        return (cls(str(root), train=True, transform=train_tf, download=False),
                cls(str(root), train=False, transform=test_tf, download=False))
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"{name}: {_unreadable_cifar_file(cls, root, verify_md5) or 'a file'} is corrupt or "
                         f"truncated ({type(exc).__name__}: {exc}); replace it from the official tarball") from None


def _unreadable_cifar_file(cls, root: Path, verify_md5: bool = True) -> str | None:
    """The first CIFAR file under ``root`` (batches, then the meta file) that does not unpickle as one,
    or (``verify_md5``) whose bytes are not the official release's."""
    from torchvision.datasets.utils import check_integrity

    folder = Path(root) / cls.base_folder
    for fname, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]:
        try:
            with open(folder / fname, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            if not isinstance(entry, dict) or ("data" not in entry and fname != cls.meta["filename"]):
                return str(folder / fname)
            if verify_md5 and not check_integrity(str(folder / fname), md5):
                return str(folder / fname)
        except Exception:
            return str(folder / fname)
    return None


# ----------------------------------------------------------------------------- ImageNet
def imagenet_transforms():
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    test = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return train, test


def imagenet_datasets(root: Path):
    from torchvision import datasets

    base = root / "imagenet"
    if not (base / "train").is_dir():
        raise _missing("imagenet", root)
    if not (base / "val").is_dir():
        raise DatasetNotFoundError(f"ImageNet folder {base} has no val/: expected {base}/val/<wnid>/*.JPEG "
                                   f"beside {base}/train/<wnid>/*.JPEG")
    train_tf, test_tf = imagenet_transforms()
    return (datasets.ImageFolder(str(base / "train"), transform=train_tf),
            datasets.ImageFolder(str(base / "val"), transform=test_tf))


# ----------------------------------------------------------------------------- CIFAR10-DVS
class DVSFrames(Dataset):
    """Frames ``[T, 2, H, W]`` from spikingjelly, resized to ``size``; optional flip + roll."""

    def __init__(self, base: Dataset, indices, size: int = 48, augment: bool = False,
                 max_roll: int = 5):
        self.base, self.indices = base, list(indices)
        self.size, self.augment, self.max_roll = size, augment, max_roll

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        frames, label = self.base[self.indices[i]]
        x = torch.as_tensor(np.asarray(frames), dtype=torch.float32)  # [T, 2, 128, 128]
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                            align_corners=False)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = torch.flip(x, dims=(-1,))
            dy, dx = torch.randint(-self.max_roll, self.max_roll + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        return x, int(label)


def split_per_class(targets, train_fraction: float = 0.9, seed: int = 0):
    """Indices (train, test) taking ``train_fraction`` of every class, shuffled with ``seed``."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        k = int(round(train_fraction * len(idx)))
        train.extend(idx[:k].tolist())
        test.extend(idx[k:].tolist())
    return sorted(train), sorted(test)


def cifar10dvs_datasets(root: Path, T: int = 10, size: int = 48, download: bool = False):
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    base = root / "cifar10dvs"
    if not (base / "events_np").is_dir():
        if not download:
            raise _missing("cifar10dvs", root)
        try:
            base.mkdir(parents=True, exist_ok=True)
            CIFAR10DVS(str(base), data_type="event")
        except Exception as exc:
            raise _missing("cifar10dvs", root) from exc
    if not any((base / "events_np").rglob("*.npz")):
        raise DatasetNotFoundError(f"CIFAR10-DVS folder {base / 'events_np'} holds no event files: expected "
                                   f"events_np/<class>/*.npz (spikingjelly's conversion of the downloaded zips)")
    frames = CIFAR10DVS(str(base), data_type="frame", frames_number=T, split_by="number")
    train_idx, test_idx = split_per_class(frames.targets, 0.9)
    return (DVSFrames(frames, train_idx, size, augment=True),
            DVSFrames(frames, test_idx, size, augment=False))


# ----------------------------------------------------------------------------- synthetic
def synthetic_datasets(n_train: int = 512, n_test: int = 128, shape=(3, 32, 32),
                       num_classes: int = 10, seed: int = 0):
    """CIFAR-shaped random tensors: for speed and memory benchmarks only, never accuracy."""
    g = torch.Generator().manual_seed(seed)
    make = lambda n: TensorDataset(torch.randn(n, *shape, generator=g),
                                   torch.randint(num_classes, (n,), generator=g))
    return make(n_train), make(n_test)


# ----------------------------------------------------------------------------- entry points
def get_datasets(name: str, root: str | Path | None = None, download: bool = False, **options):
    """``(train, test)`` datasets for ``name`` (see ``DATASETS``).

    Options: digits: ``image_size``, ``channels``, ``seed``, ``augment``; cifar10/cifar100:
    ``verify_md5``, ``augment``; cifar10dvs: ``T`` (frames), ``size``; synthetic: ``n_train``, ``n_test``, ``shape``.
    """
    dataset_info(name)
    root = Path(root or default_data_root())
    if name == "digits":
        return digits_datasets(**options)
    if name in ("cifar10", "cifar100"):
        return cifar_datasets(name, root, download=download, **options)
    if name == "imagenet":
        return imagenet_datasets(root)
    if name == "cifar10dvs":
        return cifar10dvs_datasets(root, download=download, **options)
    return synthetic_datasets(**options)


def is_sequence(name: str) -> bool:
    """Whether the samples of ``name`` are frame sequences ``[T, C, H, W]``."""
    return dataset_info(name).input_shape[0] == "T"


def time_major_collate(batch):
    """Samples ``([T, C, H, W], label)`` -> ``([T, B, C, H, W], [B])``."""
    x, y = torch.utils.data.default_collate(batch)
    return x.transpose(0, 1), y


def ann_view(x: torch.Tensor) -> torch.Tensor:
    """What an ANN (a teacher) sees: a frame sequence ``[T, B, C, H, W]`` as its mean frame
    ``[B, C, H, W]`` (the event counts per pixel and polarity, averaged over the T frames);
    a static batch ``[B, C, H, W]`` as it is. The one place this choice is made."""
    return x.mean(0) if x.dim() == 5 else x


def in_memory(name: str) -> bool:
    """Datasets held as tensors in memory (worker processes would only add overhead)."""
    return name in ("digits", "synthetic")


def default_num_workers(name: str, local_world_size: int = 1) -> int:
    """Loader processes per training process: 0 for in-memory data, else the CPUs shared
    among the processes of this machine, at most 8."""
    if in_memory(name):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(local_world_size, 1)))


def make_loader(dataset: Dataset, name: str, batch_size: int, train: bool, num_workers: int = 0,
                pin_memory: bool = False, sampler=None) -> DataLoader:
    """The DataLoader of a training (``drop_last``) or evaluation split; frame sequences are
    batched time-major (``time_major_collate``); workers persist across epochs."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=train,
                      persistent_workers=num_workers > 0,
                      collate_fn=time_major_collate if is_sequence(name) else None)


def _option_functions() -> dict:
    return {"digits": digits_datasets, "cifar10": cifar_datasets, "cifar100": cifar_datasets,
            "imagenet": imagenet_datasets, "cifar10dvs": cifar10dvs_datasets, "synthetic": synthetic_datasets}


def _same_kind(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_options(name: str, options: dict) -> None:
    """``data_kw`` of dataset ``name``: known keys of the right types, or an error listing the options."""
    import inspect

    if not isinstance(options, dict):
        raise ValueError(f"data_kw={options!r} not allowed: expected a dict (a JSON object)")
    params = {k: p for k, p in inspect.signature(_option_functions()[dataset_info(name)
                                                                       .name]).parameters.items()
              if k not in ("name", "root", "download")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"data_kw key(s) {unknown} are not options of dataset {name!r}; options: "
                         f"{', '.join(params) or 'none'}")
    for k, v in options.items():
        default = params[k].default
        if default not in (inspect.Parameter.empty, None) and not _same_kind(v, default):
            raise ValueError(f"data_kw {k}={v!r} not allowed for dataset {name!r}: expected "
                             f"{type(default).__name__} (default {default!r})")
