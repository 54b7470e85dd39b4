"""Fashion-MNIST as the field reads it (torchvision over IDX files, gzipped or not, from the data root or
Debian's package), the fashion profile, its committed records and the claims read off them."""
import dataclasses
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hybridkd_lib.data import catalog, datasets
from hybridkd_lib.book import claims, evidence, report, tinydata
from hybridkd_lib.book.plan import FASHION_SEEDS, plan


@pytest.fixture
def debian(tmp_path, monkeypatch):
    """A stand-in for Debian's /usr/share/datasets/fashion-mnist (the tests never read the real one)."""
    folder = tmp_path / "debian" / "fashion-mnist"
    folder.mkdir(parents=True)
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist",
                        dataclasses.replace(catalog.DATASETS["fashion_mnist"], system_paths=(str(folder),)))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_in_the_data_root_are_read_by_torchvision(tmp_path, debian, gz):
    root = tmp_path / "data"
    n = tinydata.write_fashion_mnist(root / "FashionMNIST" / "raw", per_class=3, gz=gz)
    train, test = datasets.get_datasets("fashion_mnist", root=root)
    assert len(train) == len(test) == n
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 0
    xs = train.tensors[0]
    assert abs(float(xs.mean())) < 1e-5 and float(xs.std()) == pytest.approx(1.0, abs=1e-4)   # normalised
    assert sorted(train.tensors[1].tolist()) == sorted(list(range(10)) * 3)
    raw = root / "FashionMNIST" / "raw"   # unpacked beside the .gz files, where torchvision reads them
    assert all((raw / name).is_file() for name in datasets.FASHION_MNIST_FILES)


def test_debians_gz_files_are_unpacked_into_the_data_root(tmp_path, debian):
    root = tmp_path / "data"
    tinydata.write_fashion_mnist(debian, per_class=4, gz=True)
    assert datasets.is_present("fashion_mnist", root) and datasets.expected_path("fashion_mnist", root) == debian
    train, test = datasets.get_datasets("fashion_mnist", root=root, image_size=16, n_train=20, n_test=10)
    assert train[0][0].shape == (1, 16, 16) and len(train) == 20 and len(test) == 10
    assert torch.bincount(train.tensors[1]).tolist() == [2] * 10      # class-balanced subset
    assert torch.bincount(test.tensors[1]).tolist() == [1] * 10
    raw = root / "FashionMNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 40 * 28 * 28
    # the subset is fixed: the same images for every call (every seed of a profile)
    again, _ = datasets.get_datasets("fashion_mnist", root=root, image_size=16, n_train=20, n_test=10)
    assert torch.equal(train.tensors[0], again.tensors[0])
    aug, _ = datasets.get_datasets("fashion_mnist", root=root, image_size=16, n_train=20, augment=True)
    assert aug[0][0].shape == (1, 16, 16)


def test_a_missing_dataset_names_every_place_looked_and_how_to_get_it(tmp_path, debian):
    with pytest.raises(datasets.DatasetNotFoundError) as err:
        datasets.get_datasets("fashion_mnist", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(debian) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download fashion_mnist" in msg


@pytest.mark.parametrize("damage, why", [
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "wrong magic number 2049 (expected 2051"),
    (lambda b: b[:-100], "truncated"),
    (lambda b: b[:10], "truncated"),
])
@pytest.mark.parametrize("gz", [True, False])
def test_a_damaged_idx_file_is_a_one_line_error_naming_it(tmp_path, debian, damage, why, gz):
    raw = tmp_path / "FashionMNIST" / "raw"
    tinydata.write_fashion_mnist(raw, gz=False)
    bad = raw / "train-images-idx3-ubyte"
    content = damage(bad.read_bytes())
    bad.unlink()
    if gz:
        bad = bad.with_name(bad.name + ".gz")
        bad.write_bytes(gzip.compress(content))
    else:
        bad.write_bytes(content)
    with pytest.raises(ValueError) as err:
        datasets.get_datasets("fashion_mnist", root=tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and why in msg and "\n" not in msg


def test_a_truncated_gzip_stream_names_the_file(tmp_path, debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    tinydata.write_fashion_mnist(raw, gz=True)
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(ValueError, match=f"{bad}.*damaged"):
        datasets.get_datasets("fashion_mnist", root=tmp_path)


def test_a_corrupt_gzip_body_names_the_file(tmp_path, debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    tinydata.write_fashion_mnist(raw, per_class=20, gz=True)
    bad = raw / "train-images-idx3-ubyte.gz"
    body = bytearray(bad.read_bytes())
    body[40:60] = bytes(b ^ 0xFF for b in body[40:60])   # zlib's "invalid stored block" / "invalid distance"
    bad.write_bytes(bytes(body))
    with pytest.raises(ValueError, match=f"{bad}.*(damaged|unreadable)"):
        datasets.get_datasets("fashion_mnist", root=tmp_path)


def test_options_are_the_readers_keywords(tmp_path):
    datasets.check_options("fashion_mnist", {"image_size": 16, "n_train": 2000, "n_test": 2000, "augment": False})
    with pytest.raises(ValueError, match=r"\['size'\] are not options of dataset 'fashion_mnist'; options: "
                                         r"image_size, n_train, n_test, augment"):
        datasets.check_options("fashion_mnist", {"size": 16})
    with pytest.raises(ValueError, match="n_train=5 not allowed; valid: None"):
        datasets.fashion_mnist_datasets(tmp_path, n_train=5)
    with pytest.raises(ValueError, match=r"data_kw n_train='1500' not allowed for dataset 'fashion_mnist': expected int"):
        datasets.check_options("fashion_mnist", {"n_train": "1500"})
    datasets.check_options("fashion_mnist", {"n_train": None})
    assert datasets.in_memory("fashion_mnist") and not datasets.in_memory("cifar10")


def test_a_dataset_is_one_registration(tmp_path):
    """A new dataset is its catalogue entry and its reader: options, reading and listing follow from it."""
    def tiny(image_size: int = 4):
        x = torch.zeros(4, 1, image_size, image_size)
        return torch.utils.data.TensorDataset(x, torch.arange(4)), torch.utils.data.TensorDataset(x, torch.arange(4))

    sys.modules[__name__].tiny_reader = tiny
    catalog.register_dataset(catalog.DatasetInfo("tiny", 4, (1, 4, 4), None, "made in the test",
                                                 f"{__name__}:tiny_reader", in_memory=True))
    try:
        train, _ = datasets.get_datasets("tiny", image_size=6)
        assert train[0][0].shape == (1, 6, 6)
        datasets.check_options("tiny", {"image_size": 6})
        assert any(r["name"] == "tiny" for r in catalog.dataset_table(tmp_path))
        with pytest.raises(ValueError, match="registered already"):
            catalog.register_dataset(catalog.DATASETS["tiny"])
    finally:
        catalog.unregister_dataset("tiny")


def test_cli_datasets_says_where_it_looked_for_fashion_mnist(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hybridkd_lib", "datasets", "--data-root", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("fashion_mnist"))
    assert str(tmp_path / "FashionMNIST" / "raw") in line and catalog.FASHION_MNIST_DEBIAN in line


def test_the_fashion_plan_pairs_every_cell_over_the_same_seeds():
    runs = plan("fashion")
    students = [r for r in runs if r.notebook == "train_student"]
    cells = {}
    for r in students:
        p = r.params
        cells.setdefault((p["method"], p["student"], p["T"]), []).append(p["seed"])
    assert all(sorted(seeds) == sorted(FASHION_SEEDS) for seeds in cells.values()) and len(FASHION_SEEDS) >= 3
    assert {(m, T) for m, s, T in cells if s == "spiking_resnet18"} >= {("hybrid", 2), ("hybrid", 4), ("hybrid", 6),
                                                                        ("hybrid", 8), ("ratebp", 4), ("kd", 4)}
    assert {m for m, s, T in cells if s == "spikingformer_4_256"} == {"ratebp", "kd", "hybrid"}
    assert {(s, T) for m, s, T in cells if s == "spiking_resnet19"} == {("spiking_resnet19", T) for T in (2, 4, 6, 8)}
    assert {r.params["dataset"] for r in runs if "dataset" in r.params} == {"fashion_mnist"}
    teachers = [r for r in runs if r.notebook == "train_teacher"]
    assert len(teachers) == 3 and all(r.params["seed"] == 0 for r in teachers)
    assert all(r.params["teacher_ckpt"] is None or r.params["teacher_ckpt"].startswith("@fashion_teacher_")
               for r in students)


def test_the_committed_records_match_todays_plan():
    """Stale evidence is caught: every run of today's fashion plan is in the committed file with its settings."""
    ev = evidence.read_evidence("fashion")
    assert ev is not None, "book/data/fashion/fashion_runs.json is missing: reproduce --profile fashion"
    assert evidence.stale_runs(ev) == []
    students = [r for r in ev["records"] if r["notebook"] == "train_student"]
    per_cell = {}
    for r in students:
        per_cell.setdefault((r["method"], r["student"], r["T"]), set()).add(r["seed"])
    assert all(len(seeds) >= 3 for seeds in per_cell.values())
    assert ev["machine"]["cpu"] and ev["command"] == "python -m hybridkd_lib reproduce --profile fashion"
    assert evidence.cam_figure("fashion").is_file()


def test_stale_records_are_named_and_not_shown(tmp_path, monkeypatch):
    ev = evidence.read_evidence("fashion")
    assert ev is not None, "book/data/fashion/fashion_runs.json is missing: reproduce --profile fashion"
    ev["records"][3]["settings"] = dict(ev["records"][3]["settings"], epochs=99)
    ev["records"].pop()
    stale = evidence.stale_runs(ev)
    assert f"{ev['records'][3]['run']}: settings differ" in stale and any("not in the committed file" in s for s in stale)
    path = tmp_path / "fashion_runs.json"
    path.write_text(json.dumps(ev))
    monkeypatch.setattr(evidence, "evidence_file", lambda profile="fashion": path)
    report.evidence.cache_clear()
    report.stale_evidence.cache_clear()
    try:
        assert report.evidence_records() == [] and "Stale evidence, not shown" in report.evidence_note()
        assert not report.table_a("quick")["source"].str.contains("fashion").any()
    finally:
        report.evidence.cache_clear()
        report.stale_evidence.cache_clear()


def test_paired_intervals_and_verdicts():
    from scipy import stats

    diffs = [1.0, 2.0, 1.5]
    m, lo, hi = claims.t_interval(diffs)
    sd = float(np.std(diffs, ddof=1))
    assert m == pytest.approx(1.5)
    assert hi - m == pytest.approx(stats.t.ppf(0.975, 2) * sd / np.sqrt(3))
    assert claims.verdict(lo, hi) == claims.SUPPORTED
    assert claims.verdict(-2.0, -0.1) == claims.CONTRADICTED and claims.verdict(-1.0, 0.5) == claims.NOT_RESOLVED
    with pytest.raises(ValueError, match="2 or more"):
        claims.t_interval([1.0])
    assert claims.slope([(2, 1.0), (4, 2.0), (8, 4.0)]) == pytest.approx(0.5)


def _record(method, student, teacher, T, seed, top1, teacher_top1=90.0):
    return {"notebook": "train_student", "method": method, "student": student, "teacher": teacher, "T": T,
            "seed": seed, "top1": top1, "teacher_top1": teacher_top1}


def test_claims_pair_runs_by_seed():
    """Seed 2 of T=8 is missing: the T comparison pairs seeds 0 and 1 only; ours beats KD on every seed."""
    recs = [_record("hybrid", "spiking_resnet18", "cifar_resnet18", T, s, 80 + T / 2 + s) for T in (2, 8)
            for s in (0, 1, 2) if (T, s) != (8, 2)]
    recs += [_record("kd", "spiking_resnet18", "cifar_resnet18", 4, s, 70.0 + s) for s in (0, 1, 2)]
    recs += [_record("hybrid", "spiking_resnet18", "cifar_resnet18", 4, s, 72.0 + s) for s in (0, 1, 2)]
    out = {(c.claim, c.setting): c for c in claims.accuracy_comparisons(recs)}
    larger = out[(claims.LARGER_T, "spiking_resnet18 <- cifar_resnet18, ours: T=8 vs T=2")]
    assert larger.diffs == {0: 3.0, 1: 3.0}
    vs_kd = next(c for (claim, _), c in out.items() if claim == claims.OURS_VS_KD)
    assert vs_kd.diffs == {0: 2.0, 1: 2.0, 2: 2.0}
    row = claims.summary_row(vs_kd)   # the same +2 on every seed: an interval of zero width above 0
    assert row["verdict"] == claims.SUPPORTED and row["paired difference [95 % CI]"].startswith("+2.00 [+2.00, +2.00]")
    assert not any(claim == claims.OURS_VS_RATEBP for claim, _ in out)   # no RateBP runs: no claim


def test_a_run_at_chance_is_left_out_and_named():
    """A diverged run (final top-1 at chance) leaves its seed out of every comparison it enters, by name."""
    recs = [dict(_record("hybrid", "spiking_resnet18", "cifar_resnet18", T, s, 80.0 + T / 2 + s), run=f"h{T}s{s}")
            for T in (2, 4, 6, 8) for s in (0, 1, 2)]
    recs[-1].update(top1=10.0, at_chance=True)          # T=8, seed 2
    out = {c.claim: c for c in claims.accuracy_comparisons(recs)}
    assert out[claims.LARGER_T].diffs == {0: 3.0, 1: 3.0} and out[claims.LARGER_T].left_out == ("h8s2",)
    assert set(out[claims.GAP_SHRINKS].diffs) == {0, 1}
    assert claims.summary_row(out[claims.LARGER_T])["left out (run at chance)"] == "h8s2"
    cell = report._seed_cell([r for r in recs if r["T"] == 8] and [dict(r, converged=True) for r in recs if r["T"] == 8])
    assert cell.startswith("84.50 ± 0.71") and "(1 of 3 at chance, left out)" in cell
    assert evidence.at_chance({"top1": 10.5, "dataset": "fashion_mnist"})
    assert not evidence.at_chance({"top1": 12.0, "dataset": "fashion_mnist"})


def test_a_gap_closing_towards_the_teacher_is_a_positive_slope():
    """Students below their teacher approaching it as T grows: the gap claim is supported; moving away: contradicted."""
    closing = [_record("hybrid", "spiking_resnet19", "cifar_resnet34", T, s, 80.0 + T + s / 10) for T in (2, 4, 6, 8)
               for s in (0, 1, 2)]
    row = next(claims.summary_row(c) for c in claims.accuracy_comparisons(closing) if c.claim == claims.GAP_SHRINKS)
    assert row["verdict"] == claims.SUPPORTED and row["paired difference [95 % CI]"].startswith("+1.00")
    opening = [dict(r, top1=100 - r["top1"] - 30) for r in closing]
    row = next(claims.summary_row(c) for c in claims.accuracy_comparisons(opening) if c.claim == claims.GAP_SHRINKS)
    assert row["verdict"] == claims.CONTRADICTED


def test_the_book_shows_the_committed_rows_and_verdicts(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDKD_RESULTS", str(tmp_path))
    a, costs = report.table_a_views("quick")
    fashion = a[a["source"] == report.evidence_source()]
    assert len(fashion) == 2 and fashion["T=8"].str.match(r"^\d+\.\d\d ± \d+\.\d\d \([+-]\d+\.\d\d\)").all()
    assert list(a.columns) == report.TABLE_A_ACCURACY and "firing rate (T=2 / 4 / 6 / 8)" in costs
    b, _ = report.table_b_views("quick")
    assert set(b[b["source"] == report.evidence_source()]["method"]) == {"RateBP", "Vanilla KD", "Ours"}
    table = report.claims_table()
    assert {claims.LARGER_T, claims.GAP_SHRINKS, claims.OURS_VS_KD, claims.OURS_VS_RATEBP} <= set(table["claim"])
    assert set(table["verdict"]) <= {claims.SUPPORTED, claims.CONTRADICTED, claims.NOT_RESOLVED}
    assert any("Fig. 4" in p for p in table["paper"])
    assert report.claims_plot() is not None and report.fig_a_evidence()[0] is not None
    note = report.evidence_note()
    ev = evidence.read_evidence("fashion")
    assert ev["machine"]["cpu"] in note and ev["command"] in note and "student runs converged" in note
