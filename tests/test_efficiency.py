"""The Fig. 4 benchmark: every method runs, records carry the required fields."""
import json
import subprocess
import sys

import pytest
import torch

from hybridkd_lib.tools.efficiency import bench
from hybridkd_lib.method.methods import BENCH_METHODS
from hybridkd_lib.models import create_model


def test_bench_records_all_methods(tmp_path):
    out = bench(list(BENCH_METHODS), [1], student_kw={"width": 4}, teacher_kw={"width": 4},
                batch_size=2, input_size=16, steps=1, warmup=1, log=lambda *_: None)
    recs = out["records"]  # (T=2, every method, at full width: the efficiency run of the dry run)
    assert [(r["method"], r["T"]) for r in recs] == [(m, 1) for m in BENCH_METHODS]
    for r in recs:
        for key in ("method", "T", "step_time_s", "peak_mem_mb", "images_per_s", "device", "batch_size",
                    "git_commit", "conv_floor_s", "floor_ratio", "dense_calls", "lif_implementation", "precision"):
            assert key in r
        assert r["precision"] == "fp32"
        assert r["step_time_s"] > 0 and r["device"].startswith("cpu") and r["conv_floor_s"] > 0
        assert r["lif_implementation"] == "torch-reference" and r["dense_calls"] > 0
        # the floor entry is its products' time alone: no memory figure, ratio 1
        assert (r["peak_mem_mb"] is None) == (r["method"] == "conv_floor")
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] > 100
    memopt = next(r for r in recs if r["method"] == "bptt_memopt")["memopt"]   # spikingjelly's, level 1 on the CPU
    assert memopt["level"] == 1 and memopt["compress"] and memopt["checkpointed_modules"] > 0
    floor_rec = next(r for r in recs if r["method"] == "conv_floor")
    assert floor_rec["floor_ratio"] == 1.0 and floor_rec["step_time_s"] == floor_rec["conv_floor_s"]
    assert "platform" in out["machine"] and out["machine"]["lif_choice"]["implementation"] == "torch"


def test_bench_cli_writes_json_and_rejects_unknown_method(tmp_path):
    f = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "bench", "--T", "1", "--methods", "ratebp",
                        "--student-kw", '{"width": 4}', "--batch-size", "2", "--input-size", "16",
                        "--steps", "1", "--out", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(f.read_text())["records"][0]["method"] == "ratebp"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "bench", "--methods", "magic"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "unknown bench method(s) ['magic']; valid: forward_only" in p.stderr


def _rec(method, T, t, mem, conv_floor=None):
    return {"method": method, "T": T, "step_time_s": t, "peak_mem_mb": mem, "device": "cpu (x, 2 threads)",
            "batch_size": 32, "input_size": 32, "student": "spiking_resnet18", "teacher": "cifar_resnet18",
            "student_kw": {}, "source": "measured (test)", "conv_floor_s": conv_floor}


def test_bench_precision_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match=r"precision='bf16' needs a CUDA device \(device='cpu'\)"):
        bench(["bptt"], [1], precision="bf16", log=lambda *_: None)
    with pytest.raises(ValueError, match=r"precision='fp8' not allowed; valid: fp32, bf16, fp16"):
        bench(["bptt"], [1], precision="fp8", device="cuda", log=lambda *_: None)


def test_bench_claims_compute_every_target_ratio():
    from hybridkd_lib.book import report

    recs = [_rec("forward_only", 8, 2.0, 1400), _rec("bptt", 1, 1.0, 1300), _rec("bptt", 8, 8.0, 4000),
            _rec("bptt_kd", 8, 8.0, 4000), _rec("hybrid", 8, 3.6, 1200, conv_floor=2.4),
            _rec("ratebp", 1, 1.04, 1000), _rec("ratebp", 2, 1.2, 1100), _rec("ratebp", 8, 3.3, 1210, conv_floor=3.0)]
    claims = report.bench_claims(recs).set_index("claim")
    assert len(claims) == 8 and (claims["T"] == 8).all()
    assert claims.loc["hybrid / bptt_kd peak memory, largest T", "ratio"] == 0.3
    assert claims.loc["hybrid / bptt_kd step time, largest T", "ratio"] == 0.45
    assert claims.loc["ratebp / bptt peak memory, largest T", "ratio"] == 0.302
    floor = claims.loc["ratebp / floor step time, largest T"]
    assert floor["ratio"] == 1.1 and floor["met"] == "yes"          # 3.3 / (2.0 + 1.0)
    assert claims.loc["ratebp peak memory, largest T / T=2", "ratio"] == 1.1
    assert tuple(claims.loc["ratebp / its conv floor, largest T", ["ratio", "met"]]) == (1.1, "yes")   # 3.3 / 3.0
    assert tuple(claims.loc["hybrid / its conv floor, largest T", ["ratio", "met"]]) == (1.5, "no")    # 3.6 / 2.4
    assert tuple(claims.loc["ratebp / bptt step time, T=1", ["ratio", "met"]]) == (1.04, "yes")
    # another setting (a width-16 student) gets its ratios but no verdict
    small = report.bench_claims([dict(r, student_kw={"width": 16}) for r in recs])
    assert (small["met"] == "n/a (other setting)").all() and len(small) == 8
    # records from before the conv floor was measured have no conv-floor rows
    old = report.bench_claims([{k: v for k, v in r.items() if k != "conv_floor_s"} for r in recs])
    assert not old["claim"].str.contains("conv floor").any() and len(old) == 6
    # a run without bptt_kd simply has no hybrid rows
    partial = report.bench_claims([r for r in recs if r["method"] != "bptt_kd"])
    assert not partial["claim"].str.contains("bptt_kd").any() and len(partial) == 6


def test_bench_in_one_process_gives_the_same_records():
    """The GPU path of ``bench`` (all configurations in one process) on the CPU."""
    out = bench(["ratebp", "hybrid"], [2], student_kw={"width": 4}, teacher_kw={"width": 4}, batch_size=2,
                input_size=16, steps=1, warmup=0, log=lambda *_: None, fresh_process=False)
    assert [(r["method"], r["T"]) for r in out["records"]] == [("ratebp", 2), ("hybrid", 2)]
    assert all(r["step_time_s"] > 0 for r in out["records"])


def test_plan_setups_cover_every_network_of_the_full_plan_and_two_steps_run_at_full_size():
    from hybridkd_lib.book.plan import plan_setups
    from hybridkd_lib.tools.efficiency import two_step_check
    from hybridkd_lib.book.plan import plan

    setups = plan_setups("full")
    runs = [r.params for r in plan("full") if r.notebook.startswith("train")]
    assert {s["student"] for s in setups if s["method"] != "ann"} == {p["student"] for p in runs if "student" in p}
    assert {s["teacher"] for s in setups} == {p["teacher"] for p in runs}
    assert {s["dataset"] for s in setups} == {"cifar10", "cifar100", "imagenet", "cifar10dvs"}
    dvs = next(s for s in setups if s["dataset"] == "cifar10dvs" and s["method"] == "hybrid")
    rec = two_step_check(dict(dvs, T=2), "cpu", batch_size=2)
    assert rec["input"] == [2, 2, 2, 48, 48] and rec["finite"] and len(rec["step_times_s"]) == 2


# ----------------------------------------------------------------------------- the conv floor
class _Tiny(torch.nn.Module):
    """conv (3 -> 4, 3x3, stride 2) -> relu -> linear (64 -> 5) on 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.fc = torch.nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(self.conv(x).relu().flatten(1))


def test_floor_lists_each_products_of_a_hand_sized_step():
    """A graph-free forward (a spike pass) then a forward with backward: the first needs no backward product,
    the second the conv's weight gradient only (its input is the image) and both of the linear layer's."""
    from hybridkd_lib.tools.floor import DenseCall, record

    net = _Tiny()
    x = torch.randn(6, 3, 8, 8)

    def step():
        with torch.no_grad():
            net(x.repeat(2, 1, 1, 1))             # [T*B] = 12
        net(x).sum().backward()

    conv = dict(kind="conv", channels_last=False, weight_shape=(4, 3, 3, 3), bias=False, stride=(2, 2),
                padding=(1, 1), dilation=(1, 1), groups=1)
    fc = dict(kind="linear", channels_last=False, weight_shape=(5, 64), bias=True)
    assert record(step, net) == [
        DenseCall(x_shape=(12, 3, 8, 8), **conv), DenseCall(x_shape=(12, 64), **fc),
        DenseCall(x_shape=(6, 3, 8, 8), weight_grad=True, **conv),
        DenseCall(x_shape=(6, 64), input_grad=True, weight_grad=True, **fc)]
    net.conv.weight.requires_grad_(False)         # a frozen layer (a teacher's) has no weight product
    net.to(memory_format=torch.channels_last)
    calls = record(lambda: net(x.contiguous(memory_format=torch.channels_last)).sum().backward(), net)
    assert calls[0].channels_last and not calls[0].weight_grad and not calls[0].input_grad


def test_floor_products_are_the_steps_products():
    """The timed products have autograd's shapes: forward output, input gradient, weight gradient."""
    from hybridkd_lib.tools import floor

    net = _Tiny()
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    calls = floor.record(lambda: net(x).sum().backward(), net)
    conv_ops, fc_ops = (floor._products(c, torch.device("cpu")) for c in calls)
    assert conv_ops[0]().shape == (6, 4, 4, 4)
    gi, gw, gb = conv_ops[1]()
    assert gi.shape == x.shape and gw.shape == net.conv.weight.shape and gb is None
    assert [op().shape for op in fc_ops] == [(6, 5), (6, 64), (5, 64)]
    assert floor.time_calls(calls, "cpu", repeats=2) > 0


@pytest.mark.parametrize("method", ["ratebp", "hybrid"])
def test_floor_of_a_ratebp_step(method):
    """A RateBP step's dense calls: the spike pass without backward, over [T*B] (the stem's conv on the static
    image and the head on the time-averaged features run over [B]), the rate pass over [B] with both products,
    and for the hybrids the frozen teacher's forward and its suffixes' input gradients."""
    from hybridkd_lib.tools import floor
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner

    T, B = 2, 4
    cfg = TrainConfig(method=method, student="spiking_resnet18", teacher="cifar_resnet18", T=T,
                      student_kw={"width": 8}, teacher_kw={"width": 8})
    learner = Learner(cfg, 10, (3, 16, 16)).train()
    x, y = torch.randn(B, 3, 16, 16), torch.randint(10, (B,))
    calls = floor.record(lambda: learner(x, y)[0].backward(), learner)
    student = [m for m in learner.student.modules() if isinstance(m, floor.DENSE)]
    spike = [c for c in calls if c.x_shape[0] == T * B]
    assert len(spike) == len(student) - 2 and not any(c.input_grad or c.weight_grad for c in spike)
    trained = [c for c in calls if c.weight_grad]
    assert all(c.x_shape[0] == B for c in trained)
    if method == "ratebp":
        assert len(calls) == 2 * len(student) and len(trained) == len(student)
    else:
        frozen = [c for c in calls if c.x_shape[0] == B and not c.weight_grad]
        assert any(c.input_grad for c in frozen) and any(not c.input_grad for c in frozen)   # suffixes, teacher


# ----------------------------------------------------------------------------- BPTT's LIF kernels
def test_lif_choice_on_the_cpu_checks_nothing_and_each_check_runs_in_its_own_process(tmp_path):
    from hybridkd_lib.snn import lif_backend

    assert lif_backend.choose("cpu", log=lambda *_: None) == {"implementation": "torch", "checked": {}}
    ref = lif_backend.check("torch", "cpu", tmp_path, shape=(3, 2, 4, 5, 5), repeats=2)
    assert ref["implementation"] == "torch-reference" and ref["time_s"] > 0
    saved = torch.load(ref["tensors"], weights_only=True)
    assert saved["spikes"].shape == (3, 2, 4, 5, 5) and saved["grad"].abs().max() > 0
    assert "error" in lif_backend.check("torch", "cpu", tmp_path, shape=(0, "x"), repeats=1)


def test_lif_pick_takes_the_fastest_candidate_that_agrees(tmp_path):
    from hybridkd_lib.snn import lif_backend

    g = torch.Generator().manual_seed(0)
    spikes, grad = (torch.rand(4, 5, generator=g) > 0.5).float(), torch.randn(4, 5, generator=g)

    def result(name, time_s, spikes=spikes, grad=grad, bound=None):
        f = tmp_path / f"{name}.pt"
        torch.save({"spikes": spikes, "grad": grad}, f)
        return {"implementation": bound or name, "time_s": time_s, "tensors": str(f)}

    ref = result("torch", 1.0)
    flipped = spikes.clone()
    flipped[0, 0] = 1 - flipped[0, 0]
    assert lif_backend.pick({"cuda": result("cuda", 0.1), "triton": result("triton", 0.2)}, ref) == "cuda"
    assert lif_backend.pick({"cuda": result("cuda", 0.1, spikes=flipped), "triton": result("triton", 0.2)}, ref) \
        == "triton"                                                        # different spikes: not taken
    assert lif_backend.pick({"cuda": result("cuda", 0.1, grad=grad + 1e-3)}, ref) == "torch"
    assert lif_backend.pick({"cuda": result("cuda", 0.1, bound="torch")}, ref) == "torch"   # fell back
    assert lif_backend.pick({"cuda": {"error": "no nvcc"}}, ref) == "torch"


# ----------------------------------------------------------------------------- the compiled spike pass
def test_bench_compile_runs_the_compiled_spike_pass_and_reports_its_build_apart(tmp_path):
    from hybridkd_lib.training import speed

    if speed.compiler_works("cpu") is not None:
        pytest.skip(f"no working compiler here: {speed.compiler_works('cpu')}")
    f = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "bench", "--T", "2", "--methods", "ratebp",
                        "--student-kw", '{"width": 4}', "--batch-size", "2", "--input-size", "16",
                        "--steps", "1", "--warmup", "0", "--compile", "--out", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rec = json.loads(f.read_text())["records"][0]
    assert rec["spike_loop"] == "compiled" and rec["compile_s"] >= 0 and rec["step_times_s"]
    assert "compile s" in p.stdout and "x floor" in p.stdout


def test_without_a_working_compiler_the_fused_loop_runs_and_it_is_said_once(monkeypatch):
    from hybridkd_lib.snn import neurons
    from hybridkd_lib.training import speed

    def broken():
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(neurons, "compiled_spike_equations", broken)
    monkeypatch.setattr(speed, "_COMPILER_PROBLEM", {})
    monkeypatch.setattr(speed, "_COMPILER_PROBLEM_SAID", set())
    m = create_model("spiking_resnet18", width=4, T=2)
    said = []
    assert speed.use_compiled_spike_pass(m, "cpu", log=said.append) is False
    assert speed.use_compiled_spike_pass(m, "cpu", log=said.append) is False
    assert said == ["compiled spike pass unavailable on cpu (RuntimeError: InvalidCxxCompiler: no working C++ "
                    "compiler found); the fused loop runs"]
    assert {lif.spike_loop for lif in m.modules() if isinstance(lif, neurons.LIF)} == {"fused"}


def test_fig4_names_the_kernels_each_run_used():
    from hybridkd_lib.book import report

    assert report.bench_kernels({"lif_implementation": "triton", "spike_loop": "compiled", "compile_s": 41.2}) == \
        "LIF kernels `triton`, spike pass `compiled` (build 41.2 s)"
    assert report.bench_kernels({}) == "LIF kernels `not recorded`, spike pass `fused`"   # a record from before
    table = report.bench_table([dict(_rec("conv_floor", 8, 3.0, None), floor_ratio=1.0),
                                dict(_rec("ratebp", 8, 3.3, 1210), floor_ratio=1.1)])
    assert table.loc[("measured (test)", "conv_floor"), ("peak_mem_mb", 8)] == report.MISSING
    assert table.loc[("measured (test)", "ratebp"), ("floor_ratio", 8)] == 1.1


def test_compile_is_installed_only_where_a_step_has_a_spike_pass():
    """BPTT and RateBP at T=1 (BPTT's single pass) run no spike pass: nothing is compiled for them."""
    from hybridkd_lib.training import speed
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner

    for method, T, compiled in (("bptt", 4, False), ("ratebp", 1, False), ("ratebp", 2, True)):
        learner = Learner(TrainConfig(method=method, T=T, student_kw={"width": 4}), 10, (3, 16, 16))
        speed.apply(learner, compile_spike_pass=True, log=lambda *_: None)
        loops = {m.spike_loop for m in learner.student.modules() if hasattr(m, "spike_loop")}
        assert loops == ({"compiled"} if compiled and speed.compiler_works("cpu") is None else {"fused"}), method


def test_lif_checks_run_each_candidate_and_say_why_one_is_not_taken():
    """``choose``'s CUDA path, run on the CPU: spikingjelly ignores the variable there and binds its one
    implementation, so every candidate is refused as a fallback and torch is kept."""
    from hybridkd_lib.snn import lif_backend

    said = []
    choice = lif_backend.check_and_pick(torch.device("cpu"), (3, 2, 4, 5, 5), ("cuda", "triton"), log=said.append)
    assert choice["implementation"] == "torch" and choice["checked"]["torch"].endswith(" s")
    for name in ("cuda", "triton"):
        assert choice["checked"][name] == "not taken: spikingjelly bound 'torch-reference' instead"
    assert said == [f"BPTT's LIF on cpu: torch (torch: {choice['checked']['torch']}; cuda: not taken: spikingjelly "
                    f"bound 'torch-reference' instead; triton: not taken: spikingjelly bound 'torch-reference' instead)"]


def test_fig4_names_each_records_precision_and_never_mixes_two():
    """A CUDA file of bf16 records and one of fp32 records stay two runs, each labelled; an older CUDA record
    (before ``precision`` existed) counts as the bf16 it ran under; the CPU's is fp32."""
    from hybridkd_lib.book import report

    cuda = dict(_rec("ratebp", 8, 1.0, 10.0), device="cuda (H100)")
    recs = [dict(cuda, precision="fp32"), dict(cuda, precision="bf16", step_time_s=0.5)]
    table = report.bench_table(recs)
    assert table.loc[("measured (test)", "ratebp"), ("step_time_s", 8)] == 1.0
    assert table.loc[("measured (test), bf16", "ratebp"), ("step_time_s", 8)] == 0.5
    assert [report.record_precision(r) for r in (cuda, _rec("bptt", 1, 1.0, 1.0))] == ["bf16", "fp32"]
    assert "cuda (H100), fp32, batch 32" in report._label(recs[0])


def test_bptt_under_memopt_is_bptt():
    """spikingjelly's memopt (checkpointing with spike compression) recomputes blocks in backward: the loss and
    every gradient are BPTT's."""
    from hybridkd_lib.models import create_model
    from hybridkd_lib.tools.efficiency import _apply_memopt

    torch.manual_seed(0)
    student = create_model("spiking_resnet18", num_classes=10, T=2, width=4).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(10, (4,))
    loss = torch.nn.functional.cross_entropy(student(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    applied = _apply_memopt(student, x, torch.device("cpu"))
    assert applied["checkpointed_modules"] > 0 and applied["targets"] == ["BasicBlock"]
    again = torch.nn.functional.cross_entropy(student(x), y)
    again.backward()
    assert again.item() == pytest.approx(loss.item(), abs=1e-6)
    for p, g in zip(student.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
