"""A method and a student registered from this file alone (nothing under hybridkd_lib/ knows them), trained
and benched as the built-in ones are: in this process through ``train()``, and through the command line with
``--plugin tests/test_plugins.py`` (this file is then imported as the plug-in).

- ``hint``: a FitNets-style hint loss (Romero et al., 2015) on the stage outputs, trained with RateBP: each
  alignment module A_k regresses the frozen teacher's paired stage output from the student's rate feature r_k,
  ``L = CE(y_S, y) + hint * mean_k MSE(A_k(r_k), f_{j_k})``.
- ``spiking_vgg4``: a small 4-stage spiking VGG (conv3x3-BN-LIF per stage, average pooling between stages).
"""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridkd_lib.snn.layers import GlobalAvgPool, RateBatchNorm2d, Temporal, conv
from hybridkd_lib.method.methods import Method, register_method
from hybridkd_lib.models import SpikingStageModel, register_model
from hybridkd_lib.models.resnet import neuron_config
from hybridkd_lib.snn.neurons import LIF

THIS_FILE = Path(__file__).resolve()
REPO = THIS_FILE.parents[1]


# ----------------------------------------------------------------------------- the plug-in method
@dataclass(frozen=True)
class Hint(Method):
    """FitNets' hint: ``hint`` weighs the mean over k of ``MSE(A_k(r_k), teacher stage j_k's output)``."""

    hint: float = 1.0

    def loss_terms(self, out, loss_cfg):
        learner = out.learner
        hints = [F.mse_loss(align(r).float(), out.teacher_features[j].float())
                 for align, r, j in zip(learner.aligns, out.features, learner.distiller.pairs)]
        return {"ce": loss_cfg.ce * F.cross_entropy(out.logits.float(), out.labels),
                "hint": self.hint * sum(hints) / len(hints)}


HINT = Hint("hint", trains="student", propagation="rate", teacher=True, aligns=True, features=True,
            terms=("ce", "hint"), title="FitNets hint (plug-in)")


# ----------------------------------------------------------------------------- the plug-in student
class SpikingVGG4(SpikingStageModel):
    """``[B, C, H, W]`` -> ``[B, classes]``: encoder conv3x3-BN, then 4 stages of conv3x3-BN-LIF (stages 1-3
    after a 2x2 average pooling), global average pooling and a linear head; widths w, 2w, 4w, 8w."""

    def __init__(self, num_classes=10, width=8, in_chans=3, T=4, neuron_cfg=None, plain_bn_in_stage=None):
        super().__init__()
        self.T = T
        self.neuron_cfg = cfg = neuron_config(neuron_cfg)
        self.encoder = nn.Sequential(conv(in_chans, width), RateBatchNorm2d(width))
        self.stem = LIF(cfg)
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages = []
        for k, (cin, cout) in enumerate(zip([width] + widths[:-1], widths)):
            bn = Temporal(nn.BatchNorm2d(cout)) if k == plain_bn_in_stage else RateBatchNorm2d(cout)
            stages.append(nn.Sequential(*([Temporal(nn.AvgPool2d(2))] if k else []), conv(cin, cout), bn, LIF(cfg)))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(widths[-1], num_classes))
        self.feature_info = [{"num_chs": w, "reduction": 2 ** k, "kind": "map"} for k, w in enumerate(widths)]


def spiking_vgg4(num_classes=10, **kw):
    """A small 4-stage spiking VGG (plug-in example)."""
    return SpikingVGG4(num_classes, **kw)


def register() -> None:
    """What the plug-in adds: the ``hint`` method and the ``spiking_vgg4`` student."""
    register_method(HINT)
    register_model("student", ("width", "in_chans", "T", "neuron_cfg"), display="Spiking VGG-4", classes=10,
                   small={"width": 4}, source="tests/test_plugins.py (a plug-in example)")(spiking_vgg4)


if __name__ != "test_plugins":   # imported as a plug-in (--plugin tests/test_plugins.py)
    register()


@pytest.fixture(scope="module", autouse=True)
def plugin_registered():
    """Registered for this module's tests only, so the other test modules see the library's own registry."""
    from hybridkd_lib.method.methods import unregister_method
    from hybridkd_lib.models import unregister_model

    register()
    yield
    unregister_method("hint")
    unregister_model("spiking_vgg4")


# ----------------------------------------------------------------------------- tests
TINY = dict(dataset="digits", data_kw={"image_size": 8}, batch_size=32, max_steps_per_epoch=3, T=2, epochs=1,
            lr=0.05, progress=False, teacher="cifar_resnet18", teacher_kw={"width": 4})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.trainer import train

    out = tmp_path_factory.mktemp("plugin_teacher") / "ann"
    train(TrainConfig(method="ann", out=str(out), **TINY), log=lambda *_: None)
    return out


def test_the_registry_refuses_what_nothing_implements():
    with pytest.raises(ValueError, match="hybrids are implemented with RateBP's rate pass only"):
        Method("bptt_hybrid", trains="student", propagation="bptt", teacher=True, hybrids=True,
               terms=("ce", "kd", "hybrid_ce", "hybrid_kd"))
    with pytest.raises(ValueError, match="loss term 'kd' needs teacher=True"):
        Method("kd_alone", trains="student", propagation="rate", terms=("ce", "kd"))
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['hint'\]"):
        Method("hint2", trains="student", propagation="rate", teacher=True, terms=("ce", "hint"))
    with pytest.raises(ValueError, match="method 'ratebp' is already registered"):
        register_method(Method("ratebp", trains="student", propagation="bptt"))
    from hybridkd_lib.method import losses

    assert all(hasattr(Method, need) for term in losses.TERMS.values() for need in term.needs)


def test_a_plain_batchnorm_in_a_student_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"module 'stages\.2\.2\.module' is a plain BatchNorm2d"):
        SpikingVGG4(width=4, T=2, plain_bn_in_stage=2)
    student = SpikingVGG4(width=4, T=2)
    from hybridkd_lib.snn import ratebp
    from hybridkd_lib.snn.neurons import LIF as Lif

    ratebp.set_mode(student, "rate")
    assert all(m.mode == "rate" for m in student.rate_aware_modules())
    assert sum(isinstance(m, Lif) for m in student.rate_aware_modules()) == 5
    ratebp.set_mode(student, "bptt")


def _train(method, student, out, teacher_run, **kw):
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.trainer import train

    cfg = TrainConfig(method=method, student=student, student_kw={"width": 4}, out=str(out),
                      teacher_ckpt=str(teacher_run) if method != "ratebp" else None, **TINY, **kw)
    return train(cfg, log=lambda *_: None)


def test_the_plugin_method_trains_a_built_in_student(tmp_path, teacher_run):
    """``hint`` with ``spiking_resnet18``: its two terms, A_k trained and saved, the teacher untouched."""
    from hybridkd_lib.base import checkpoint
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner

    cfg = TrainConfig(method="hint", student="spiking_resnet18", student_kw={"width": 4},
                      teacher_ckpt=str(teacher_run), **TINY)
    learner = Learner(cfg, 10, (1, 8, 8)).train()
    loss, parts, logits = learner(torch.randn(4, 1, 8, 8), torch.arange(4))
    assert set(parts) == {"ce", "hint"} and float(parts["hint"]) > 0 and logits.shape == (4, 10)
    loss.backward()
    assert all(p.grad is not None for p in learner.aligns.parameters())
    assert all(p.grad is None for p in learner.teacher.parameters())

    res = _train("hint", "spiking_resnet18", tmp_path / "hint", teacher_run)
    assert res["method"] == "hint" and 0 <= res["top1"] <= 100 and res["teacher"] == "cifar_resnet18"
    saved = checkpoint.load(tmp_path / "hint" / "model.pt")
    assert saved["arch"] == "spiking_resnet18" and len(saved["aligns"]) > 0


@pytest.mark.parametrize("method", ["ratebp", "kd", "hybrid"])
def test_the_plugin_student_trains_with_built_in_methods(tmp_path, teacher_run, method):
    res = _train(method, "spiking_vgg4", tmp_path / method, teacher_run)
    assert res["student"] == "spiking_vgg4" and res["method"] == method and 0 <= res["top1"] <= 100
    assert len(res["hybrid_top1"]) == (3 if method == "hybrid" else 0)   # M_0..M_2 of a 4-stage student


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", *args], capture_output=True, text=True, cwd=REPO)


def _tiny_args(method, student, out, teacher_run):
    return ["--plugin", str(THIS_FILE), "--method", method, "--student", student, "--student-kw", '{"width": 4}',
            "--teacher-kw", '{"width": 4}', "--dataset", "digits", "--data-kw", '{"image_size": 8}', "--T", "2",
            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--no-progress", "--out", str(out),
            "--teacher-ckpt", str(teacher_run)]


@pytest.mark.parametrize("method, student", [("hint", "spiking_resnet18"), ("hybrid", "spiking_vgg4"),
                                             ("hint", "spiking_vgg4")])
def test_train_with_plugin_on_the_command_line(tmp_path, teacher_run, method, student):
    p = _cli("train", *_tiny_args(method, student, tmp_path / "run", teacher_run))
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (res["method"], res["student"]) == (method, student)


def test_without_the_plugin_its_names_are_unknown(tmp_path, teacher_run):
    args = _tiny_args("hint", "spiking_vgg4", tmp_path / "run", teacher_run)[2:]
    p = _cli("train", *args)
    assert p.returncode == 2 and "unknown method 'hint'; valid: ann, bptt, bptt_kd, ratebp, kd, hybrid" in p.stderr
    p = _cli("train", "--plugin", "no_such_plugin_module", *args)
    assert p.returncode == 2 and "plugin 'no_such_plugin_module': no such file or importable module" in p.stderr
    assert not (tmp_path / "run").exists()


def test_bench_with_plugin(tmp_path):
    """The bench's configurations (each a fresh process) know the plug-in's method and student."""
    out = tmp_path / "bench.json"
    p = _cli("bench", "--plugin", str(THIS_FILE), "--methods", "hint", "ratebp", "hybrid", "--student", "spiking_vgg4",
             "--student-kw", '{"width": 4}', "--teacher-kw", '{"width": 4}', "--T", "2", "--batch-size", "4",
             "--input-size", "16", "--steps", "1", "--warmup", "0", "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [(r["method"], r["student"]) for r in records] == [("hint", "spiking_vgg4"), ("ratebp", "spiking_vgg4"),
                                                             ("hybrid", "spiking_vgg4")]
    assert all(r["step_time_s"] > 0 and r["peak_mem_mb"] > 0 for r in records)
