"""Tiny datasets and checkpoints in the real on-disk formats (tests and the full-profile dry run).

Each writer lays files out exactly as the real source does, so the real loaders
read them: CIFAR-10/100 python pickles, an ImageNet ``train/`` + ``val/`` folder
of JPEGs, CIFAR10-DVS event files as spikingjelly stores them
(``events_np/<class>/*.npz``), and timm checkpoints (safetensors, a ``state_dict``
dict with a ``module.`` prefix as DDP saves, or timm ``train.py``'s dict).
The pixels are random: these files test formats and code paths, never accuracy.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

IMAGENET_WNIDS = ("n01440764", "n01443537")


def write_cifar(root: str | Path, name: str, per_class: int = 1, n_images: int | None = None,
                seed: int = 0) -> int:
    """Pickled batches as in ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (the same images in
    every split): ``per_class`` images of every class, or ``n_images`` with labels 0, 1, 2, ...; returns the count."""
    root = Path(root)
    n_classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_images) % n_classes if n_images else np.repeat(np.arange(n_classes), per_class)).tolist()
    images = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(base / fname, "wb") as f:
                pickle.dump({"data": images, "labels": labels}, f)
        with open(base / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True, exist_ok=True)
        for fname in ("train", "test"):
            with open(base / fname, "wb") as f:
                pickle.dump({"data": images, "fine_labels": labels, "coarse_labels": labels}, f)
        with open(base / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return len(labels)


def write_imagenet(root: str | Path, wnids=IMAGENET_WNIDS, per_class: int = 2, size=(300, 260), seed: int = 0):
    """``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` (ILSVRC2012 as ImageFolder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for wnid in wnids:
            d = Path(root) / "imagenet" / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG")


def write_cifar10dvs(root: str | Path, per_class: int = 10, events: int = 400, seed: int = 0):
    """``<root>/cifar10dvs/events_np/<class>/*.npz`` with ``t, x, y, p`` as spikingjelly converts them."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES

    rng = np.random.default_rng(seed)
    raw = Path(root) / "cifar10dvs" / "events_np"
    for cname in CIFAR10DVS_CLASS_NAMES:
        (raw / cname).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            np.savez(raw / cname / f"cifar10_{cname}_{i}.npz",
                     t=np.sort(rng.integers(0, 10**6, events)).astype(np.int64),
                     x=rng.integers(0, 128, events).astype(np.uint16),
                     y=rng.integers(0, 128, events).astype(np.uint16),
                     p=rng.integers(0, 2, events).astype(np.uint8))


def write_timm_checkpoint(name: str, path: str | Path, fmt: str = "safetensors", num_classes: int = 1000,
                          seed: int = 0, **kw) -> Path:
    """A randomly initialised timm ``name`` saved as ``fmt``: ``safetensors``, ``ddp`` (``{"state_dict":
    {"module.<key>": ...}}``) or ``timm_train`` (timm ``train.py``'s ``{"epoch", "arch", "state_dict",
    "state_dict_ema"}``)."""
    import timm

    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw).state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "timm_train":
        torch.save({"epoch": 0, "arch": name, "state_dict": state, "state_dict_ema": state}, path)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; valid: safetensors, ddp, timm_train")
    return path


def write_idx(path: str | Path, array: np.ndarray, gz: bool = False) -> Path:
    """One IDX file (LeCun's MNIST format, big-endian header: magic ``0x0000 08 <ndim>``, then each dimension)
    of ``uint8`` ``array``; ``gz``: gzipped, the name ending in ``.gz``."""
    import gzip

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.tobytes()) if gz else header + array.tobytes())
    return path


def write_fashion_mnist(folder: str | Path, per_class: int = 2, gz: bool = True, seed: int = 0) -> int:
    """The four Fashion-MNIST IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``) in
    ``folder``, as the release (``gz``) or unpacked: ``per_class`` random 28x28 images of every class in each
    split, labels 0..9 in turn; returns the images per split."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    for split in ("train", "t10k"):
        write_idx(Path(folder) / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(Path(folder) / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return n
