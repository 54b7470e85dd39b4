"""The data layer on tiny files written in each dataset's real on-disk format."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from hybridkd_lib.data import datasets
from hybridkd_lib.book import tinydata


def _write_cifar(root, name, per_class=3):
    n = tinydata.write_cifar(root, name, per_class=per_class)
    n_classes = 10 if name == "cifar10" else 100
    return n, np.repeat(np.arange(n_classes), per_class).tolist()


@pytest.fixture(autouse=True)
def _skip_integrity(monkeypatch):
    # torchvision checks md5 sums of the real files; our tiny files are the same format, not the same bytes.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickled_batches_load(tmp_path, name):
    n, labels = _write_cifar(tmp_path, name)
    train, test = datasets.get_datasets(name, root=tmp_path)
    assert len(train) == (5 * n if name == "cifar10" else n) and len(test) == n
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == labels[0]
    assert sorted({int(test[i][1]) for i in range(len(test))}) == sorted(set(labels))
    # augmentation: the same train sample differs between two reads, the test one does not
    torch.manual_seed(0)
    a, b = train[1][0], train[1][0]
    assert not torch.equal(a, b)
    assert torch.equal(test[1][0], test[1][0])
    # Cutout zeroes a square in normalised space: some exact zeros appear in train samples
    assert any((train[i][0] == 0).all(0).sum() >= 16 for i in range(10))


def test_cifar_loaders_batch(tmp_path):
    _write_cifar(tmp_path, "cifar10")  # 30 images per file: 150 train (5 batches), 30 test
    train, test = datasets.get_datasets("cifar10", root=tmp_path)
    loader = datasets.make_loader(train, "cifar10", 8, train=True, num_workers=1)
    assert loader.persistent_workers and loader.drop_last and len(loader) == 150 // 8
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    assert len(datasets.make_loader(test, "cifar10", 8, train=False)) == 4  # evaluation keeps the last batch
    assert datasets.default_num_workers("digits") == 0 and datasets.default_num_workers("cifar10") >= 1


def test_cifar_tiny_files_load_without_md5_check_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real integrity check
    tinydata.write_cifar(tmp_path, "cifar100", n_images=8)
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.get_datasets("cifar100", root=tmp_path)
    train, test = datasets.get_datasets("cifar100", root=tmp_path, verify_md5=False)
    assert len(train) == 8 and train[0][0].shape == (3, 32, 32)
    plain, _ = datasets.get_datasets("cifar100", root=tmp_path, verify_md5=False, augment=False)
    assert torch.equal(plain[0][0], plain[0][0]) and torch.equal(plain[0][0], test.transform(plain.data[0]))


def test_imagenet_imagefolder(tmp_path):
    tinydata.write_imagenet(tmp_path, per_class=2)
    train, val = datasets.get_datasets("imagenet", root=tmp_path)
    assert len(train) == 4 and len(val) == 4
    assert train[0][0].shape == (3, 224, 224) and val[3][0].shape == (3, 224, 224)
    assert val.classes == ["n01440764", "n01443537"] and val[3][1] == 1


def test_cifar10dvs_events_integrate_to_frames(tmp_path):
    tinydata.write_cifar10dvs(tmp_path, per_class=10)
    train, test = datasets.get_datasets("cifar10dvs", root=tmp_path, T=4)
    assert len(train) == 9 * 10 and len(test) == 1 * 10  # 9:1 per class
    x, y = test[0]
    assert x.shape == (4, 2, 48, 48) and x.dtype == torch.float32
    assert x.sum() > 0
    assert sorted(int(test[i][1]) for i in range(len(test))) == list(range(10))
    # the split is per class, disjoint and deterministic
    assert set(train.indices).isdisjoint(test.indices)
    tr2, te2 = datasets.get_datasets("cifar10dvs", root=tmp_path, T=4)
    assert tr2.indices == train.indices
    # batches are time-major, as every temporal tensor of the library
    xb, yb = next(iter(datasets.make_loader(test, "cifar10dvs", 3, train=False)))
    assert xb.shape == (4, 3, 2, 48, 48) and yb.shape == (3,)
    assert torch.equal(xb[:, 1], test[1][0])
    assert datasets.ann_view(xb).shape == (3, 2, 48, 48)


def test_imagenet_without_val_and_dvs_without_events_named(tmp_path):
    tinydata.write_imagenet(tmp_path, per_class=1)
    import shutil
    shutil.rmtree(tmp_path / "imagenet" / "val")
    with pytest.raises(datasets.DatasetNotFoundError, match=r"ImageNet folder .*imagenet has no val/: expected"):
        datasets.get_datasets("imagenet", root=tmp_path)
    (tmp_path / "cifar10dvs" / "events_np" / "airplane").mkdir(parents=True)
    with pytest.raises(datasets.DatasetNotFoundError, match=r"events_np holds no event files: expected"):
        datasets.get_datasets("cifar10dvs", root=tmp_path)


def test_digits_split_deterministic_and_stratified():
    train, test = datasets.get_datasets("digits")
    train2, test2 = datasets.get_datasets("digits")
    assert torch.equal(train.tensors[0], train2.tensors[0])
    assert torch.equal(test.tensors[1], test2.tensors[1])
    assert len(train) + len(test) == 1797
    counts_train = torch.bincount(train.tensors[1], minlength=10).float()
    counts_test = torch.bincount(test.tensors[1], minlength=10).float()
    frac = counts_test / (counts_train + counts_test)
    assert frac.min() > 0.22 and frac.max() < 0.28  # every class ~25 % in test
    assert abs(float(train.tensors[0].mean())) < 1e-5  # normalised from the train split
    assert train.tensors[0].shape[1:] == (1, 8, 8)


def test_digits_options():
    train, test = datasets.get_datasets("digits", image_size=16, channels=3)
    assert train.tensors[0].shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="channels=2.*valid: 1, 3"):
        datasets.get_datasets("digits", channels=2)


def test_synthetic_shapes():
    train, test = datasets.get_datasets("synthetic", n_train=16, n_test=4)
    assert train[0][0].shape == (3, 32, 32) and len(test) == 4


@pytest.mark.parametrize("name, fragment", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
    ("imagenet", "imagenet"), ("cifar10dvs", "events_np")])
def test_missing_dataset_error_names_path_and_how(tmp_path, name, fragment):
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.get_datasets(name, root=tmp_path)
    msg = str(info.value)
    assert repr(name) in msg and str(tmp_path) in msg and fragment in msg
    assert "To obtain it" in msg


def test_offline_download_gives_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(datasets.DatasetNotFoundError, match="cifar-10-batches-py.*To obtain it"):
        datasets.get_datasets("cifar10", root=tmp_path, download=True)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: digits, cifar10"):
        datasets.get_datasets("mnist")


def test_cli_datasets(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hybridkd_lib", "datasets", "--data-root", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    table, checkpoints = out.split("\n\n")
    lines = {l.split()[0]: l for l in table.splitlines()[1:]}
    assert set(lines) == set(datasets.DATASETS)
    assert "vit_imagenet" in checkpoints and "vit_small_patch16_224_imagenet.pth" in checkpoints
    assert "yes" in lines["digits"]
    for name in ("cifar10", "cifar100", "imagenet", "cifar10dvs"):
        assert "MISSING" in lines[name] and str(tmp_path) in lines[name]
