"""Hybrid distillation, the trainer's faults and bad input."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridkd_lib.base import checkpoint
from hybridkd_lib.snn import ratebp
from hybridkd_lib.method.hybrid import HybridDistiller
from hybridkd_lib.method.losses import LossConfig, StepOutputs
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.learner import Learner, make_optimizer
from hybridkd_lib.method.methods import METHODS, get_method
from hybridkd_lib.models import create_model
from hybridkd_lib.training.trainer import train

def total_loss(method: str, cfg: LossConfig, y, y_s, y_a=None, y_m=()):
    """Method ``method``'s loss and its parts from labels, SNN, teacher and hybrid logits."""
    return get_method(method).loss(StepOutputs(y, y_s, y_a, list(y_m)), cfg)


TINY = dict(dataset="digits", data_kw={"image_size": 8}, batch_size=32, max_steps_per_epoch=3,
            T=2, progress=False)


def _cfg(tmp, method, **kw):
    base = dict(TINY, method=method, out=str(tmp / method), student_kw={"width": 4},
                teacher="cifar_resnet18", teacher_kw={"width": 4}, epochs=2, lr=0.05)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    train(_cfg(tmp, "ann"), log=lambda *_: None)
    return tmp / "ann"


def _pair():
    torch.manual_seed(0)
    s = create_model("spiking_resnet18", width=8, T=2).train()
    t = create_model("cifar_resnet34", width=8)
    return s, t, HybridDistiller(s, t, (3, 16, 16))


def test_hybrids_pair_stages_and_shapes():
    s, t, d = _pair()
    assert d.num_hybrids == 3 and d.pairs == [0, 1, 2]
    y_s, y_m = d(torch.randn(2, 3, 16, 16))
    assert y_s.shape == (2, 10) and [m.shape for m in y_m] == [(2, 10)] * 3
    # ResNet-19 (3 stages) <- ResNet-34 (4 stages): paired by spatial size
    d19 = HybridDistiller(create_model("spiking_resnet19", width=8, T=2), t, (3, 16, 16))
    assert d19.pairs == [0, 1]


def test_teacher_frozen_and_gradients_reach_first_stage_through_every_hybrid():
    s, t, d = _pair()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    opt = torch.optim.SGD([p for p in s.parameters()] + list(d.aligns.parameters()), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    for k in range(d.num_hybrids):
        s.zero_grad()
        d.aligns.zero_grad()
        _, y_m = ratebp.rate_forward(s, x, fn=lambda _, xx: d(xx))
        y_m[k].pow(2).sum().backward()
        first = [p.grad for p in s.stages[0].parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in first), f"no gradient at stage 0 via M_{k}"
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.aligns[k].parameters())
        assert all(p.grad is None for p in t.parameters())
    for _ in range(3):
        d.train()
        y_s, y_m = ratebp.rate_forward(s, x, fn=lambda _, xx: d(xx))
        loss, _ = total_loss("hybrid", LossConfig(), y, y_s, d.teacher_logits(x), y_m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not t.training
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in t.parameters())


@pytest.mark.parametrize("off", ["ce", "kd", "hybrid_ce", "hybrid_kd"])
def test_each_loss_term_can_be_switched_off(off):
    y = torch.arange(4)
    y_s, y_a = torch.randn(4, 10), torch.randn(4, 10)
    y_m = [torch.randn(4, 10), torch.randn(4, 10)]
    _, all_parts = total_loss("hybrid", LossConfig(), y, y_s, y_a, y_m)
    loss, parts = total_loss("hybrid", LossConfig(**{off: 0.0}), y, y_s, y_a, y_m)
    assert set(all_parts) == {"ce", "kd", "hybrid_ce", "hybrid_kd"}
    assert off not in parts and set(parts) == set(all_parts) - {off}
    assert float(loss) == pytest.approx(float(sum(parts.values())), rel=1e-5)


def test_hybrid_terms_summed_or_averaged_over_k():
    y = torch.arange(4)
    y_s, y_a = torch.randn(4, 10), torch.randn(4, 10)
    y_m = [torch.randn(4, 10), torch.randn(4, 10), torch.randn(4, 10)]
    _, summed = total_loss("hybrid", LossConfig(), y, y_s, y_a, y_m)
    _, mean = total_loss("hybrid", LossConfig(hybrid_reduction="mean"), y, y_s, y_a, y_m)
    for k in ("hybrid_ce", "hybrid_kd"):
        assert float(mean[k]) == pytest.approx(float(summed[k]) / 3, rel=1e-6)
    assert float(mean["ce"]) == float(summed["ce"])
    from hybridkd_lib.method.losses import check_loss_options
    with pytest.raises(ValueError, match="hybrid_reduction='avg' not allowed; valid: sum, mean"):
        check_loss_options({"hybrid_reduction": "avg"})


def test_method_terms():
    y, y_s, y_a = torch.arange(4), torch.randn(4, 10), torch.randn(4, 10)
    assert set(total_loss("ratebp", LossConfig(), y, y_s)[1]) == {"ce"}
    assert set(total_loss("kd", LossConfig(), y, y_s, y_a)[1]) == {"ce", "kd"}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_of_the_table_takes_one_step(name, tmp_path):
    """One training step of each method in ``methods.METHODS``: its loss has exactly the method's terms,
    the trained parameters change, and a frozen teacher does not."""

    spec = get_method(name)
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save(create_model("cifar_resnet18", num_classes=10, width=4, in_chans=1).state_dict(), teacher_file)
    cfg = TrainConfig(method=name, student="spiking_resnet18", student_kw={"width": 4}, teacher="cifar_resnet18",
                      teacher_kw={"width": 4}, teacher_ckpt=str(teacher_file) if spec.teacher else None, T=2)
    learner = Learner(cfg, 10, (1, 16, 16)).train()
    x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
    loss, parts, logits = learner(x, y)
    assert set(parts) == set(spec.terms) and logits.shape == (4, 10)
    assert (learner.distiller is not None) == spec.teacher and (len(learner.trainable()) > 0)
    before = [p.detach().clone() for p in learner.trainable()]
    frozen = [t.clone() for t in learner.teacher.state_dict().values()] if spec.teacher else []
    opt = make_optimizer(cfg, learner.trainable())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.trainable()))
    if spec.teacher:
        assert all(torch.equal(a, b) for a, b in zip(frozen, learner.teacher.state_dict().values()))


def _weights(run_dir):
    return checkpoint.load(Path(run_dir) / "model.pt")["model"]


def test_speed_tricks_off_give_the_same_weights(tmp_path, teacher_run):
    """The CPU memory tricks (speed.py: temporaries overwritten, freed pages returned, optimizer step in
    backward) change where memory lives, never a number: one switch turns them off."""
    from hybridkd_lib.training import speed

    cfg = _cfg(tmp_path / "probe", "hybrid", teacher_ckpt=str(teacher_run))
    learner = Learner(cfg, 10, (1, 8, 8))
    opt = make_optimizer(cfg, learner.trainable())
    with speed.disabled():
        off = speed.apply(learner, opt)
        assert off.in_backward is None and learner.between_passes is None
        assert not any(getattr(m, "writes_over_input", False) or getattr(m, "adds_over_input", False)
                       for m in learner.modules())
    on = speed.apply(learner, opt)
    assert on.in_backward is not None and learner.between_passes is not None
    assert sum(getattr(m, "writes_over_input", False) for m in learner.student.modules()) > 0
    assert sum(getattr(m, "adds_over_input", False) for m in learner.student.modules()) > 0
    assert not any(getattr(m, "writes_over_input", False) for m in learner.teacher.modules())
    on.remove()

    train(_cfg(tmp_path / "on", "hybrid", teacher_ckpt=str(teacher_run)), log=lambda *_: None)
    with speed.disabled():
        assert not speed.enabled()
        train(_cfg(tmp_path / "off", "hybrid", teacher_ckpt=str(teacher_run)), log=lambda *_: None)
    assert speed.enabled()
    on, off = _weights(tmp_path / "on" / "hybrid"), _weights(tmp_path / "off" / "hybrid")
    assert all(torch.equal(on[k], off[k]) for k in on)


def test_compiled_spike_pass_trains_the_weights_of_the_plain_equations(tmp_path, teacher_run, monkeypatch):
    """``compile_spike_pass=True`` in a hybrid run: every LIF's spike pass is the compiled kernel, and the run's
    weights are byte for byte those of the same run with the plain equations run eagerly in its place."""
    from hybridkd_lib.snn import neurons
    from hybridkd_lib.training import speed

    if speed.compiler_works("cpu") is not None:
        pytest.skip(f"no working compiler here: {speed.compiler_works('cpu')}")
    loops = []
    real = neurons.LIF.spike_forward_plain
    monkeypatch.setattr(neurons.LIF, "spike_forward_plain", lambda self, x, compiled=False: loops.append(self.spike_loop) or real(self, x, compiled))
    train(_cfg(tmp_path / "compiled", "hybrid", teacher_ckpt=str(teacher_run), compile_spike_pass=True),
          log=lambda *_: None)
    assert loops and set(loops) == {"compiled"}
    monkeypatch.setattr(neurons, "compiled_spike_equations", lambda: neurons.spike_equations)
    train(_cfg(tmp_path / "plain", "hybrid", teacher_ckpt=str(teacher_run), compile_spike_pass=True),
          log=lambda *_: None)
    compiled, plain = _weights(tmp_path / "compiled" / "hybrid"), _weights(tmp_path / "plain" / "hybrid")
    assert all(torch.equal(compiled[k], plain[k]) for k in compiled)


def test_precise_bn_recomputes_the_same_statistics_from_the_same_batches(teacher_run):
    """BN statistics from fixed batches: two recomputations with the weights unchanged agree exactly,
    and differ from the running averages they replace."""
    from hybridkd_lib.training.distributed import Distributed
    from hybridkd_lib.training.session import _fixed_batches
    from hybridkd_lib.training.trainer import recompute_bn_stats
    from hybridkd_lib.data import datasets

    cfg = _cfg(Path("/nonexistent"), "hybrid", teacher_ckpt=str(teacher_run), precise_bn=2)
    train_set, _ = datasets.get_datasets(cfg.dataset, None, **cfg.data_kw)
    learner = Learner(cfg, 10, tuple(train_set[0][0].shape[-3:]))
    batches = _fixed_batches(train_set, cfg, Distributed(), cfg.batch_size)
    assert len(batches) == 2
    bn = next(m for m in learner.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    before = bn.running_mean.clone()
    recompute_bn_stats(learner, batches, Distributed())
    first = bn.running_mean.clone()
    recompute_bn_stats(learner, batches, Distributed())
    assert torch.equal(first, bn.running_mean) and not torch.equal(first, before)
    assert bn.momentum == 0.1 and all(p.grad is None for p in learner.trainable())


def test_resume_gives_identical_weights(tmp_path, teacher_run):
    straight = _cfg(tmp_path / "a", "hybrid", teacher_ckpt=str(teacher_run), epochs=3)
    train(straight, log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill(epoch):
        if epoch == 0:
            raise Killed

    interrupted = _cfg(tmp_path / "b", "hybrid", teacher_ckpt=str(teacher_run), epochs=3)
    with pytest.raises(Killed):
        train(interrupted, on_epoch_end=kill, log=lambda *_: None)
    assert not (Path(interrupted.out) / "result.json").exists()
    logs = []
    train(interrupted, log=logs.append)
    assert any("resuming from" in l and "epoch_0000.pt" in l for l in logs)
    a, b = _weights(straight.out), _weights(interrupted.out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert sorted(p.name for p in (Path(interrupted.out) / "checkpoints").glob("*.pt")) == \
        ["epoch_0001.pt", "epoch_0002.pt"]  # the last two are kept


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    cfg = _cfg(tmp_path, "ratebp", epochs=2)
    train(cfg, log=lambda *_: None)
    ckpts = Path(cfg.out) / "checkpoints"
    newest = ckpts / "epoch_0001.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (Path(cfg.out) / "result.json").unlink()
    logs = []
    with pytest.warns(UserWarning, match="epoch_0001.pt is unreadable"):
        train(cfg, log=logs.append)
    assert any("epoch_0001.pt is unreadable" in l for l in logs)
    assert any("resuming from" in l and "epoch_0000.pt" in l for l in logs)
    assert (Path(cfg.out) / "result.json").exists()


def test_result_json_fields(tmp_path, teacher_run):
    cfg = _cfg(tmp_path, "hybrid", teacher_ckpt=str(teacher_run), epochs=1)
    res = train(cfg, log=lambda *_: None)
    on_disk = json.loads((Path(cfg.out) / "result.json").read_text())
    for key in ("method", "dataset", "student", "teacher", "T", "epochs", "seed", "top1", "teacher_top1",
                "hybrid_top1", "train_time_s", "peak_mem_mb", "device", "git_commit", "finished_at",
                "loss_config", "lr", "batch_size"):
        assert key in on_disk, key
    assert len(on_disk["hybrid_top1"]) == 3 and on_disk["top1"] == res["top1"]
    assert (Path(cfg.out) / "metrics.csv").read_text().startswith("epoch,")


def test_nan_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    from hybridkd_lib.method.methods import Method

    method_loss = Method.loss

    def nan_loss(*a, **k):
        loss, parts = method_loss(*a, **k)
        return loss * float("nan"), parts

    monkeypatch.setattr(Method, "loss", nan_loss)
    cfg = _cfg(tmp_path, "ratebp", epochs=1)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1, step 1"):
        train(cfg, log=lambda *_: None)
    assert not (Path(cfg.out) / "result.json").exists()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hybridkd_lib", "train", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--method", "sgd"], "unknown method 'sgd'; valid: ann, bptt, bptt_kd, ratebp, kd, hybrid"),
    (["--method", "ratebp", "--student", "resnet9"], "unknown student model 'resnet9'; valid:"),
    (["--method", "ratebp", "--dataset", "mnist"], "unknown dataset 'mnist'; valid names:"),
    (["--method", "ratebp", "--T", "0"], "T=0 not allowed; T must be an integer >= 1"),
    (["--method", "kd", "--teacher-ckpt", "nowhere.pt"], "unreadable teacher checkpoint 'nowhere.pt'"),
])
def test_bad_input_refused_before_training(tmp_path, args, message):
    out = tmp_path / "run"
    p = _cli(*args, "--out", str(out), "--epochs", "1", cwd=tmp_path)
    assert p.returncode != 0
    assert message in p.stderr
    assert not (out / "result.json").exists() and not (out / "checkpoints").exists()


def test_garbage_teacher_checkpoint_refused(tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    p = _cli("--method", "hybrid", "--teacher-ckpt", str(bad), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode != 0 and f"unreadable teacher checkpoint {str(bad)!r}" in p.stderr
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_step_in_backward_equals_optimizer_step(optimizer):
    """Updating each parameter inside backward gives the very parameters and optimizer state of
    ``zero_grad(); backward(); step()``, frees every gradient, and stops after ``remove()``."""
    from hybridkd_lib.training.speed import StepInBackward

    cfg = TrainConfig(method="ratebp", student="spiking_resnet18", student_kw={"width": 4}, T=2,
                      optimizer=optimizer, lr=0.05, weight_decay=0.01)
    torch.manual_seed(0)
    a = Learner(cfg, 10, (3, 16, 16)).train()
    b = Learner(cfg, 10, (3, 16, 16)).train()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = make_optimizer(cfg, a.trainable()), make_optimizer(cfg, b.trainable())
    fused = StepInBackward(opt_b)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(10, (4,))
    for _ in range(3):
        opt_a.zero_grad(set_to_none=True)
        a.step_loss(x, y)[0].backward()
        opt_a.step()
        b.step_loss(x, y)[0].backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6, msg=name)
        assert pb.grad is None
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            torch.testing.assert_close(sb[i][k], sa[i][k], rtol=0, atol=1e-6)
    fused.remove()
    before = [p.detach().clone() for p in b.parameters()]
    b.step_loss(x, y)[0].backward()
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before))


def test_clip_grad_norm_clips_every_gradient_and_keeps_the_update_after_backward():
    """``clip_grad_norm`` (timm's meaning: the global L2 norm of the trained gradients) on the CPU: the
    step-in-backward trick is not installed (the log says so) and the update sees the clipped gradients."""
    from hybridkd_lib.training.step import TrainingStep

    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    cfg = TrainConfig(method="ratebp", student_kw={"width": 4}, T=2, clip_grad_norm=0.01)
    torch.manual_seed(0)
    learner = Learner(cfg, 10, (1, 8, 8)).train()
    said = []
    clipped = TrainingStep(learner, make_optimizer(cfg, learner.trainable()), torch.device("cpu"),
                           clip_grad_norm=cfg.clip_grad_norm, log=said.append)
    assert clipped.tricks.in_backward is None and len(said) == 1 and "step-in-backward" in said[0]
    before = [p.detach().clone() for p in learner.trainable()]
    clipped(x, y)
    grads = [p.grad for p in learner.trainable() if p.grad is not None]
    assert len(grads) == len(before) and float(torch.nn.utils.get_total_norm(grads)) <= 0.01 * (1 + 1e-4)
    # the SGD update (lr 0.1, no momentum state yet) moved each weight by lr * (its clipped gradient + decay)
    moved = [(p.detach() - b) for p, b in zip(learner.trainable(), before)]
    assert all(torch.isfinite(m).all() for m in moved) and any(m.abs().sum() > 0 for m in moved)
    plain = TrainingStep(Learner(cfg, 10, (1, 8, 8)).train(), make_optimizer(cfg, learner.trainable()),
                         torch.device("cpu"), log=said.append)
    assert plain.tricks.in_backward is not None and len(said) == 1   # no clipping: the trick, nothing said
    plain.close()
    with pytest.raises(ValueError, match="clip_grad_norm=0 not allowed; clip_grad_norm must be > 0"):
        from hybridkd_lib.training.config import validate
        validate(TrainConfig(method="ratebp", clip_grad_norm=0))


@pytest.mark.parametrize("kw, message", [
    ({"precision": "fp64"}, "precision='fp64' not allowed; valid: fp32, bf16, fp16"),
    ({"precision": "bf16"}, "precision='bf16' needs a CUDA device (device='cpu'); the CPU computes in fp32"),
    ({"lr_step": "batch"}, "lr_step='batch' not allowed; valid: step, epoch"),
])
def test_precision_and_schedule_stepping_are_checked_settings(tmp_path, kw, message):
    from hybridkd_lib.training.config import validate

    with pytest.raises(ValueError, match=re.escape(message)):
        validate(_cfg(tmp_path, "ratebp", **kw))


@pytest.mark.parametrize("lr_step", ["step", "epoch"])
def test_the_cosine_schedule_steps_per_step_or_per_epoch_and_the_run_records_it(tmp_path, lr_step):
    """``lr_step="epoch"`` (the RateBP reference's ``CosineAnnealingLR(T_max=epochs)``, stepped once per epoch):
    the rate is constant within an epoch; ``"step"``: it decays over every step of the run."""
    cfg = _cfg(tmp_path, "ratebp", epochs=3, lr_step=lr_step)
    res = train(cfg, log=lambda *_: None)
    assert res["lr_step"] == lr_step and res["precision"] == "fp32"
    _, state = checkpoint.load_latest(Path(cfg.out) / "checkpoints", log=lambda *_: None)
    steps = 3 * TINY["max_steps_per_epoch"]
    assert state["scheduler"]["T_max"] == (steps if lr_step == "step" else 3)
    assert state["scheduler"]["last_epoch"] == (steps if lr_step == "step" else 3)
    # at each epoch's end both schedules stand at the same point of the cosine
    assert [round(r["lr"], 6) for r in res["history"]] == [round(0.05 * (1 + math.cos(math.pi * e / 3)) / 2, 6)
                                                           for e in (1, 2, 3)]


def test_every_training_run_of_the_full_profile_trains_in_fp32_stepping_per_epoch():
    from hybridkd_lib.book.plan import plan

    runs = [r for r in plan("full") if r.notebook.startswith("train_")]
    assert runs and all((r.params["precision"], r.params["lr_step"]) == ("fp32", "epoch") for r in runs)


def test_a_cuda_run_recorded_before_precision_existed_counts_as_bf16(tmp_path):
    """CUDA steps ran under bf16 autocast before ``precision`` was a setting: an older CUDA run's settings get
    ``bf16``, a CPU run's the default ``fp32``, so neither is relabelled."""
    from hybridkd_lib.training.runfolder import _with_later_fields, run_settings

    now = run_settings(_cfg(tmp_path, "ratebp"))
    old = {k: v for k, v in now.items() if k not in ("precision", "lr_step")}
    assert _with_later_fields(dict(old, device="cuda"), now, _cfg(tmp_path, "ratebp"))["precision"] == "bf16"
    assert _with_later_fields(old, now, _cfg(tmp_path, "ratebp"))["precision"] == "fp32"
    assert _with_later_fields(old, now, _cfg(tmp_path, "ratebp"))["lr_step"] == "step"
