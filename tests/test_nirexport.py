"""NIR export of spiking students, read back and run in snnTorch beside the student."""
import subprocess
import sys

import nir
import pytest
import torch

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


@pytest.mark.parametrize("name", ["spiking_resnet18", "spiking_resnet19"])
def test_round_trip_through_a_file_runs_the_same_network_in_snntorch(name, tmp_path):
    model = _student(name)
    graph = nirexport.to_nir(model, (1, 8, 8))
    path = nirexport.write(graph, tmp_path / "m.nir")
    back = nir.read(str(path))
    assert sorted(back.nodes) == sorted(graph.nodes) and len(back.edges) == len(graph.edges)
    assert int(back.metadata["T"]) == 4 and "soft reset" in str(back.metadata["approximations"])
    lifs = [n for n, node in back.nodes.items() if isinstance(node, nir.LIF)]
    lif = back.nodes["stem"]   # lambda 0.2 at dt 1e-4: tau 1.25e-4; r * dt / tau = 1 (no input decay)
    assert lif.tau.flat[0] == pytest.approx(1.25e-4) and (lif.r * 1e-4 / lif.tau).flat[0] == pytest.approx(1.0)
    assert len(lifs) == sum(isinstance(m, nirexport.LIF) for m in model.modules())
    x = torch.rand(24, 1, 8, 8) * 3
    out = nirexport.check_in_snntorch(model, back, x.split(12))
    assert out["images"] == 24 and out["T"] == 4
    # the graph is the student with hard resets, exactly
    assert out["exact_prediction_agreement"] == 1.0 and out["exact_spike_count_agreement"] == 1.0
    assert out["exact_max_logit_difference"] < 1e-4
    # the soft reset it approximates fires the same or more (the residual above threshold is kept)
    assert 0.0 < out["spike_count_agreement"] <= 1.0


def test_a_hard_reset_student_exports_without_approximation():
    model = _student("spiking_resnet18", neuron_cfg={"v_reset": 0.0})
    graph = nirexport.to_nir(model, (1, 8, 8), approximate_soft_reset=False)
    assert graph.metadata["approximations"] == "none"
    out = nirexport.check_in_snntorch(model, graph, [torch.rand(8, 1, 8, 8) * 3])
    assert out["prediction_agreement"] == 1.0 and out["spike_count_agreement"] == 1.0


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
    with pytest.raises(nirexport.NIRExportError, match=r"layer 'stem' \(LIF\): it resets by subtraction"):
        nirexport.to_nir(_student("spiking_resnet18"), (1, 8, 8), approximate_soft_reset=False)
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
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "export", "--run", str(run), "--to",
                        str(tmp_path / "out" / "s.nir"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "snnTorch on the 450 test images" in p.stdout
    assert "against the hard-reset student the graph describes: 100.00 % and 100.00 %" in p.stdout
    assert nir.read(str(tmp_path / "out" / "s.nir")).metadata["T"] == 2
    assert not list((tmp_path / "out").glob(".*tmp"))
    p = subprocess.run([sys.executable, "-m", "hybridkd_lib", "export", "--run", str(tmp_path / "none"), "--to",
                        str(tmp_path / "x.nir")], capture_output=True, text=True)
    assert p.returncode == 2 and "has no result.json and model.pt" in p.stderr
