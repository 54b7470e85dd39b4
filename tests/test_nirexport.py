"""NIR export of spiking students, read back and run beside the student (snnTorch; nirtorch for an exact soft
reset), and compared with spikingjelly's own exporter."""
import re
import subprocess
import sys

import nir
import numpy as np
import pytest
import torch
from torch import nn

from hybridkd_lib.tools import nirexport
from hybridkd_lib.models import create_model


def _student(name, T=4, **kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, T=T, in_chans=1, width=4, **kw)
    for m in model.modules():   # trained-looking BN statistics, so that the folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.8, 1.6)
            m.bias.data.uniform_(-0.1, 0.3)
    return model.eval()


def test_a_soft_reset_student_is_refused_by_default_naming_both_options():
    model = _student("spiking_resnet18")
    with pytest.raises(nirexport.NIRExportError, match=r"layer 'stem' \(LIF\): it resets by subtraction \(soft "
                       r"reset\), which NIR's LIF cannot express .*soft_reset='exact' .*soft_reset='approximate'"):
        nirexport.to_nir(model, (1, 8, 8))
    with pytest.raises(ValueError, match=r"soft_reset='subtract' not allowed; choose one of refuse, exact, approximate"):
        nirexport.to_nir(model, (1, 8, 8), soft_reset="subtract")


@pytest.mark.parametrize("name, cfg, scale", [
    ("spiking_resnet18", {}, -0.2),   # lambda 0.2, theta 1, in_scale 1: -lambda theta / in_scale
    ("spiking_resnet19", {}, -0.2),
    ("spiking_resnet18", {"decay_input": True, "tau": 2.0, "v_threshold": 0.5}, -0.5),   # 0.5 * 0.5 / (1/2)
])
def test_an_exact_soft_reset_round_trips_through_a_file_and_runs_as_the_student(name, cfg, scale, tmp_path):
    model = _student(name, neuron_cfg=cfg)
    graph = nirexport.to_nir(model, (1, 8, 8), soft_reset="exact")
    back = nir.read(str(nirexport.write(graph, tmp_path / "m.nir")))
    assert sorted(back.nodes) == sorted(graph.nodes) and len(back.edges) == len(graph.edges)
    assert back.metadata["approximations"] == "none" and back.metadata["soft_reset"] == "exact"
    lifs = [n for n, m in model.named_modules() if isinstance(m, nirexport.LIF)]
    assert not any(isinstance(node, nir.LIF) for node in back.nodes.values())
    for n in lifs:   # LI -> Threshold (named as the LIF) -> Scale -> back into the LI
        assert isinstance(back.nodes[f"{n}.membrane"], nir.LI) and isinstance(back.nodes[n], nir.Threshold)
        assert {(f"{n}.membrane", n), (n, f"{n}.reset"), (f"{n}.reset", f"{n}.membrane")} <= set(back.edges)
    # the recurrent edge: lambda * theta less in the next step's potential per spike (the LI's gain is in_scale)
    assert np.allclose(back.nodes["stem.reset"].scale, scale)
    assert np.allclose(back.nodes["stem"].threshold, model.stem.v_threshold)
    x = torch.rand(24, 1, 8, 8) * 3
    out = nirexport.check_graph(model, back, x.split(12))
    assert out["framework"].startswith("nirtorch") and out["describes"] == "the student"
    assert out["prediction_agreement"] == 1.0 and out["spike_count_agreement"] == 1.0
    assert out["max_logit_difference"] < 1e-5 and out["dt"] == 1e-4
    # the check has teeth: the same graph without the subtracting edge is a different network
    broken = nir.read(str(tmp_path / "m.nir"))
    for n in lifs:
        broken.nodes[f"{n}.reset"].scale[...] = 0.0
    assert nirexport.check_graph(model, broken, x.split(12))["spike_count_agreement"] < 0.99


@pytest.mark.parametrize("name", ["spiking_resnet18", "spiking_resnet19"])
def test_an_approximate_soft_reset_runs_in_snntorch_as_the_hard_reset_student(name, tmp_path):
    model = _student(name)
    graph = nirexport.to_nir(model, (1, 8, 8), soft_reset="approximate")
    back = nir.read(str(nirexport.write(graph, tmp_path / "m.nir")))
    assert int(back.metadata["T"]) == 4 and "soft reset" in str(back.metadata["approximations"])
    lifs = [n for n, node in back.nodes.items() if isinstance(node, nir.LIF)]
    lif = back.nodes["stem"]   # lambda 0.2 at dt 1e-4: tau 1.25e-4; r * dt / tau = 1 (no input decay)
    assert lif.tau.flat[0] == pytest.approx(1.25e-4) and (lif.r * 1e-4 / lif.tau).flat[0] == pytest.approx(1.0)
    assert len(lifs) == sum(isinstance(m, nirexport.LIF) for m in model.modules())
    x = torch.rand(24, 1, 8, 8) * 3
    out = nirexport.check_graph(model, back, x.split(12))
    assert out["images"] == 24 and out["T"] == 4 and out["framework"].startswith("snntorch")
    # the graph is the student with hard resets, exactly
    assert out["describes"] == "the student with every reset to 0"
    assert out["exact_prediction_agreement"] == 1.0 and out["exact_spike_count_agreement"] == 1.0
    assert out["exact_max_logit_difference"] < 1e-4
    assert 0.0 < out["spike_count_agreement"] < 1.0   # the reset it approximates changes some spike counts


def test_a_hard_reset_student_exports_without_approximation():
    model = _student("spiking_resnet18", neuron_cfg={"v_reset": 0.0})
    graph = nirexport.to_nir(model, (1, 8, 8))   # nothing to refuse: NIR's LIF is its neuron
    assert graph.metadata["approximations"] == "none" and graph.metadata["soft_reset"].startswith("none")
    out = nirexport.check_graph(model, graph, [torch.rand(8, 1, 8, 8) * 3])
    assert out["prediction_agreement"] == 1.0 and out["spike_count_agreement"] == 1.0


# ----------------------------------------------------------------------------- beside spikingjelly's export_to_nir
def _folded_conv(conv_module, bn) -> nn.Conv2d:
    m = conv_module.module if hasattr(conv_module, "module") else conv_module
    w, b = nirexport._fold(m, bn)
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=True)
    conv.weight.data, conv.bias.data = torch.from_numpy(w), torch.from_numpy(b)
    return conv


def _sj_lif(lif):
    from spikingjelly.activation_based import neuron

    return neuron.LIFNode(tau=lif.cfg.tau, decay_input=lif.cfg.decay_input, v_threshold=lif.v_threshold,
                          v_reset=lif.cfg.v_reset)


class _SJBlock(nn.Module):
    def __init__(self, b):
        super().__init__()
        self.conv1, self.act1 = _folded_conv(b.conv1, b.bn1), _sj_lif(b.act1)
        self.conv2, self.act2 = _folded_conv(b.conv2, b.bn2), _sj_lif(b.act2)
        self.shortcut = None if isinstance(b.shortcut, nn.Identity) else _folded_conv(b.shortcut[0], b.shortcut[1])

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))) + (x if self.shortcut is None else self.shortcut(x)))


class _SJStudent(nn.Module):
    """The student as a single-step spikingjelly network that ``export_to_nir`` traces: BN folded into each
    convolution (spikingjelly's exporter has no BN node), its LIFNode constants, average pool, Flatten, Linear."""

    def __init__(self, model, pooled_hw):
        super().__init__()
        self.encoder, self.stem = _folded_conv(model.encoder[0], model.encoder[1]), _sj_lif(model.stem)
        self.stages = nn.ModuleList([nn.ModuleList([_SJBlock(b) for b in stage]) for stage in model.stages])
        self.head = nn.Sequential(nn.AvgPool2d(pooled_hw), nn.Flatten(), *[
            _sj_lif(m) if isinstance(m, nirexport.LIF) else m for m in list(model.head)[1:]])

    def forward(self, x):
        x = self.stem(self.encoder(x))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(x)


def _sj_run(graph, x, T):
    """``graph`` read by spikingjelly's ``import_from_nir``, run for T steps on ``x``: the mean logits."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net, state, total = import_from_nir(graph), None, 0
    with torch.no_grad():
        for _ in range(T):
            out, state = net(x, state)
            total = total + out.flatten(1)
    return total / T


def test_the_hard_reset_path_writes_what_spikingjelly_export_to_nir_writes():
    """Same convolutions, LIF constants and edges as spikingjelly's exporter on the same (hard-reset) student,
    and the same logits from both files in spikingjelly's reader; the differences are the ones named below."""
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    model = _student("spiking_resnet19", neuron_cfg={"v_reset": 0.0})
    ours = nirexport.to_nir(model, (1, 8, 8))
    with pytest.raises(Exception, match="symbolically traced variables cannot be used as inputs to control flow"):
        export_to_nir(model, torch.rand(1, 1, 8, 8))   # difference 1: it cannot trace our multi-step student
    theirs = export_to_nir(_SJStudent(model, (2, 2)).eval(), torch.rand(1, 1, 8, 8))
    body = [n for n in ours.nodes if n not in ("input", "output") and not n.startswith("head")]
    for n in body:   # node names: ours keep the dots of the module path, nirtorch's have underscores
        a, b = ours.nodes[n], theirs.nodes[n.replace(".", "_")]
        assert type(a) is type(b), n
        for field in ("weight", "bias", "stride", "padding", "tau", "r", "v_leak", "v_threshold", "v_reset"):
            if hasattr(a, field):   # difference 2: float32 constants here, float64 there
                np.testing.assert_allclose(np.asarray(getattr(a, field), np.float64),
                                           np.asarray(getattr(b, field), np.float64), rtol=1e-6, err_msg=f"{n}.{field}")
    underscored = {n.replace(".", "_") for n in body}
    assert ({(s.replace(".", "_"), t.replace(".", "_")) for s, t in ours.edges if s in body and t in body}
            == {e for e in theirs.edges if set(e) <= underscored})
    # difference 3, the head: pool -> 1x1 Conv2d -> LIF [C, 1, 1] here; pool -> Flatten -> Affine -> LIF [C] there
    assert [type(ours.nodes[f"head.{k}"]).__name__ for k in range(4)] == ["AvgPool2d", "Conv2d", "LIF", "Conv2d"]
    assert [type(theirs.nodes[f"head_{k}"]).__name__ for k in range(5)] == ["AvgPool2d", "Flatten", "Affine", "LIF",
                                                                            "Affine"]
    for k, kk in ((1, 2), (3, 4)):   # the Linear layers: their weights and biases
        np.testing.assert_array_equal(ours.nodes[f"head.{k}"].weight[:, :, 0, 0], theirs.nodes[f"head_{kk}"].weight)
        np.testing.assert_array_equal(ours.nodes[f"head.{k}"].bias, theirs.nodes[f"head_{kk}"].bias)
    for field in ("tau", "r", "v_leak", "v_threshold", "v_reset"):   # the head's LIF: [C, 1, 1] here, [C] there
        np.testing.assert_allclose(getattr(ours.nodes["head.2"], field).reshape(-1),
                                   getattr(theirs.nodes["head_3"], field), rtol=1e-6)
    x = torch.rand(16, 1, 8, 8) * 3
    logits = _sj_run(ours, x, model.T)
    assert torch.equal(logits, _sj_run(theirs, x, model.T))
    with torch.no_grad():
        assert (logits - model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name, kw, layer, why", [
    ("sew_resnet34", {}, "stem.1", "max-pooling"),
    ("preact_resnet34", {}, "encoder.2", "max-pooling"),
])
def test_what_nir_cannot_express_is_refused_naming_the_layer(name, kw, layer, why):
    with pytest.raises(nirexport.NIRExportError, match=rf"layer '{layer}' .*{why}"):
        nirexport.to_nir(_student(name, **kw), (1, 32, 32))


def test_other_refusals_name_the_reason():
    sf = create_model("spikingformer_4_256", num_classes=10, T=2, dim=32)
    with pytest.raises(nirexport.NIRExportError, match=r"layer 'stem.blocks.2.1' \(SpikeMeanValue\): max-pooling"):
        nirexport.to_nir(sf, (3, 32, 32))
    with pytest.raises(nirexport.NIRExportError, match="v_reset=0.5"):
        nirexport.to_nir(_student("spiking_resnet18", neuron_cfg={"v_reset": 0.5}), (1, 8, 8))
    with pytest.raises(ValueError, match="dt=0"):
        nirexport.to_nir(_student("spiking_resnet18"), (1, 8, 8), dt=0)


def test_export_command_writes_the_file_and_checks_it(tmp_path):
    run = tmp_path / "run"
    tiny = ["--student-kw", '{"width": 4}', "--data-kw", '{"image_size": 8}', "--T", "2", "--batch-size", "32",
            "--max-steps-per-epoch", "2", "--no-progress"]
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "train", "--method", "ratebp", "--epochs", "1",
                        "--out", str(run), *tiny], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    export = [sys.executable, "-m", "hybridkd_lib", "export", "--run", str(run), "--to", str(tmp_path / "out" / "s.nir")]
    p = subprocess.run(export, capture_output=True, text=True)   # the default refuses the soft reset
    assert p.returncode == 2 and "--soft-reset exact" in p.stderr and not (tmp_path / "out" / "s.nir").exists()
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([*export, "--soft-reset", "exact", "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "soft reset: exact" in p.stdout
    check = p.stdout.splitlines()[-2:]   # dt, both top-1s, the agreement
    assert check[0].startswith("nirtorch ") and " on 450 images, T=2, dt=0.0001 s: top-1 " in check[0]
    top1 = re.search(r"top-1 ([\d.]+) % \(student\) / ([\d.]+) % \(graph\)", check[0])
    assert top1 and top1[1] == top1[2], check[0]
    assert "same prediction 100.00 %, equal spike counts 100.00 %" in check[0]
    assert check[1] == "against the network the graph describes (the student): 100.00 % and 100.00 %"
    assert nir.read(str(tmp_path / "out" / "s.nir")).metadata["T"] == 2
    p = subprocess.run([*export, "--soft-reset", "approximate", "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "snntorch " in p.stdout and "approximations: soft reset (v = u - theta) exported as NIR's reset to 0" in p.stdout
    assert ("against the network the graph describes (the student with every reset to 0): 100.00 % and 100.00 %"
            in p.stdout)
    assert not list((tmp_path / "out").glob(".*tmp"))
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "export", "--run", str(tmp_path / "none"), "--to",
                        str(tmp_path / "x.nir")], capture_output=True, text=True)
    assert p.returncode == 2 and "has no result.json and model.pt" in p.stderr
