"""Datasets by name: one entry point, real on-disk formats, clear errors.

``get_datasets(name, ...)`` returns ``(train, test)`` torch datasets and
``make_loader(dataset, ...)`` a DataLoader for one of them. Static image samples
are ``[C, H, W]`` (batches ``[B, C, H, W]``); CIFAR10-DVS samples are frame
sequences ``[T, 2, 48, 48]``, batched time-major as ``[T, B, 2, 48, 48]`` like
every temporal tensor of the library. An ANN sees a frame sequence as its mean
frame (``ann_view``).
"""
from __future__ import annotations

import gzip
import inspect
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hybridkd_lib.base.checks import is_of_type
from hybridkd_lib.data.catalog import (DATASETS, DatasetInfo, DatasetNotFoundError, dataset_info,  # noqa: F401
                                   dataset_table, default_data_root, expected_path, is_present, reader,
                                   search_paths)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _missing(name: str, root: Path) -> DatasetNotFoundError:
    info = dataset_info(name)
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {' and '.join(map(str, search_paths(name, root)))}. "
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


# ----------------------------------------------------------------------------- Fashion-MNIST
# the four IDX files of Fashion-MNIST (Xiao et al. 2017) -> their magic number (images 2051, labels 2049)
FASHION_MNIST_FILES = {"train-images-idx3-ubyte": 2051, "train-labels-idx1-ubyte": 2049,
                       "t10k-images-idx3-ubyte": 2051, "t10k-labels-idx1-ubyte": 2049}


def _idx_problem(path: Path, head: bytes, size: int, magic: int) -> str | None:
    """Why the IDX file ``path`` (``size`` bytes, starting with ``head``) cannot be read, or None."""
    if len(head) < 4 or int.from_bytes(head[:4], "big") != magic:
        found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
        return f"wrong magic number {found} (expected {magic}: not an IDX {'image' if magic == 2051 else 'label'} file)"
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return f"truncated: {size} bytes, shorter than its {4 + 4 * ndim}-byte header"
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    want = 4 + 4 * ndim + int(np.prod(dims))
    if size != want:
        return f"{'truncated' if size < want else 'too long'}: {size} bytes where its header {dims} needs {want}"
    return None


def _unpack_idx(source: Path, target: Path, magic: int) -> None:
    """Check ``source`` (an IDX file, gzipped or not) and write it uncompressed at ``target`` (atomically);
    a damaged file is a one-line error naming it."""
    try:
        raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:   # gzip.BadGzipFile is an OSError
        raise ValueError(f"Fashion-MNIST file {source} is damaged ({type(exc).__name__}: {exc}); "
                         f"replace it") from None
    problem = _idx_problem(source, raw[:16], len(raw), magic)
    if problem:
        raise ValueError(f"Fashion-MNIST file {source} is unreadable: {problem}; replace it")
    if source != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, target)


def fashion_mnist_files(root: Path, download: bool = False) -> Path:
    """``<root>/FashionMNIST/raw/`` holding the four IDX files uncompressed, as torchvision reads them.

    Each file is taken from that folder (plain or ``.gz``), else from the folders the catalogue names
    (Debian's ``dataset-fashion-mnist``); ``.gz`` files are unpacked there first. torchvision's download
    (``download=True``) runs only when no copy is found: it checks md5 sums that Debian's recompressed
    files do not match."""
    raw = Path(root) / dataset_info("fashion_mnist").marker
    folders = search_paths("fashion_mnist", root)
    find = lambda name: next((f / n for f in folders for n in (name, name + ".gz") if (f / n).is_file()), None)
    if download and any(find(n) is None for n in FASHION_MNIST_FILES):
        from torchvision import datasets

        try:
            datasets.FashionMNIST(str(root), train=True, download=True)
        except Exception as exc:  # offline: the same clear error as a missing dataset
            raise _missing("fashion_mnist", Path(root)) from exc
    for name, magic in FASHION_MNIST_FILES.items():
        source = find(name)
        if source is None:
            raise _missing("fashion_mnist", Path(root))
        if source == raw / name:   # the uncompressed file torchvision reads: its header and size
            with open(source, "rb") as f:
                problem = _idx_problem(source, f.read(16), source.stat().st_size, magic)
            if problem:
                raise ValueError(f"Fashion-MNIST file {source} is unreadable: {problem}; replace it")
        else:
            _unpack_idx(source, raw / name, magic)
    return raw


def fashion_mnist_datasets(root: Path, download: bool = False, image_size: int = 28, n_train: int | None = None,
                           n_test: int | None = None, augment: bool = False):
    """Fashion-MNIST's 60,000 training and 10,000 test 28x28 grey images (10 classes), read by torchvision's
    ``FashionMNIST`` from ``<root>/FashionMNIST/raw/`` (``fashion_mnist_files``), held in memory.

    Samples are ``[1, image_size, image_size]`` (bilinear, antialiased resize), normalised with the training
    images' mean and std. ``n_train``, ``n_test``: a fixed class-balanced subset of the training (test) images,
    the same for every seed; ``augment``: random horizontal flip and 1-pixel shifts per 8 pixels (train only)."""
    from torchvision import datasets

    if image_size < 8:
        raise ValueError(f"image_size={image_size!r} too small; valid: 8 or larger")
    for what, n, total in (("n_train", n_train, 60000), ("n_test", n_test, 10000)):
        if n is not None and not 10 <= n <= total:
            raise ValueError(f"{what}={n!r} not allowed; valid: None (all {total:,}) or 10 to {total}")
    fashion_mnist_files(Path(root), download)

    def tensors(train: bool):
        ds = datasets.FashionMNIST(str(root), train=train, download=False)
        x = ds.data.unsqueeze(1).float() / 255.0                                   # [N, 1, 28, 28]
        if image_size != 28:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False, antialias=image_size < 28)
        return x, ds.targets.long()

    (x_train, y_train), (x_test, y_test) = tensors(True), tensors(False)
    if n_train is not None:
        keep = balanced_subset(y_train, n_train)
        x_train, y_train = x_train[keep], y_train[keep]
    if n_test is not None:
        keep = balanced_subset(y_test, n_test)
        x_test, y_test = x_test[keep], y_test[keep]
    mean, std = x_train.mean(), x_train.std()
    train = TensorDataset((x_train - mean) / std, y_train)
    test = TensorDataset((x_test - mean) / std, y_test)
    return (_ShiftAugment(train, max_shift=max(1, image_size // 8), flip=True) if augment else train), test


def balanced_subset(targets: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` samples, as equal a share of every class as ``n`` allows, drawn with ``seed``
    (sorted)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(targets)
    picks = []
    for i, c in enumerate(classes.tolist()):
        idx = (targets == c).nonzero().flatten()
        k = n // len(classes) + (1 if i < n % len(classes) else 0)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picks).sort().values


class _ShiftAugment(Dataset):
    """Random integer translation (rolled, edges zeroed) of ``[C, H, W]`` samples, and with ``flip`` a random
    horizontal flip."""

    def __init__(self, base: Dataset, max_shift: int, flip: bool = False):
        self.base, self.max_shift, self.flip = base, max_shift, flip

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        if self.flip and torch.rand(()) < 0.5:
            img = torch.flip(img, dims=(-1,))
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
    (random crop + flip, AutoAugment, Cutout 16) for every CIFAR run, Table B's too (the
    supplementary states none); ``augment=False``: normalisation only."""
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
    except RuntimeError:   # torchvision's "Dataset not found or corrupted": which file, and what is wrong
        problem = _cifar_file_problem(cls, root)
        if problem is None:
            raise
        raise CorruptDataFile(f"{name}: {problem}; replace it: {dataset_info(name).how_to_get}") from None


class CorruptDataFile(ValueError, RuntimeError):
    """A dataset file that is missing or not the official release's (message: one line naming it). A
    ``RuntimeError`` too, as torchvision's "Dataset not found or corrupted" it replaces."""


def _cifar_file_problem(cls, root: Path) -> str | None:
    """The first CIFAR file under ``root`` (batches, then the meta file) that is missing or whose bytes are not
    the official release's (its md5 sum), said in words; None where every file is the release's."""
    from torchvision.datasets.utils import calculate_md5

    folder = Path(root) / cls.base_folder
    for fname, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]:
        path = folder / fname
        if not path.is_file():
            return f"{path} is missing"
        got = calculate_md5(str(path))
        if got != md5:
            return (f"{path} is corrupted or not the official release's file ({path.stat().st_size} bytes, md5 "
                    f"{got}; the release's: {md5})")
    return None


def cifar10_datasets(root: Path, download: bool = False, verify_md5: bool = True, augment: bool = True):
    """CIFAR-10 (``cifar_datasets``)."""
    return cifar_datasets("cifar10", root, download, verify_md5, augment)


def cifar100_datasets(root: Path, download: bool = False, verify_md5: bool = True, augment: bool = True):
    """CIFAR-100 (``cifar_datasets``)."""
    return cifar_datasets("cifar100", root, download, verify_md5, augment)


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
    """``(train, test)`` datasets for ``name``, read by its registered reader (``catalog.DATASETS``); the
    reader's keyword arguments are the options (``check_options`` lists them)."""
    fn = reader(name)
    params = inspect.signature(fn).parameters
    fixed = {k: v for k, v in (("root", Path(root or default_data_root())), ("download", download)) if k in params}
    return fn(**fixed, **options)


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
    return dataset_info(name).in_memory


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


def _same_kind(value, default) -> bool:
    """``value`` of ``default``'s type (``checks.is_of_type``); a list passes for a tuple (JSON has no tuples)."""
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple))
    return is_of_type(value, type(default))


def check_options(name: str, options: dict) -> None:
    """``data_kw`` of dataset ``name``: known keys of the right types, or an error listing the options."""
    if not isinstance(options, dict):
        raise ValueError(f"data_kw={options!r} not allowed: expected a dict (a JSON object)")
    params = {k: p for k, p in inspect.signature(reader(name)).parameters.items() if k not in ("root", "download")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"data_kw key(s) {unknown} are not options of dataset {name!r}; options: "
                         f"{', '.join(params) or 'none'}")
    for k, v in options.items():
        default, kind = params[k].default, _annotated_kind(params[k].annotation)
        if default not in (inspect.Parameter.empty, None) and not _same_kind(v, default):
            raise ValueError(f"data_kw {k}={v!r} not allowed for dataset {name!r}: expected "
                             f"{type(default).__name__} (default {default!r})")
        if default is None and v is not None and kind is not None and not _same_kind(v, kind()):
            raise ValueError(f"data_kw {k}={v!r} not allowed for dataset {name!r}: expected {kind.__name__} or None")


def _annotated_kind(annotation) -> type | None:
    """``int`` of an option annotated ``int | None`` (the readers' annotations are strings), else None."""
    text = str(annotation).replace(" ", "")
    return next((t for t in (bool, int, float, str) if text in (f"{t.__name__}|None", f"None|{t.__name__}")), None)
