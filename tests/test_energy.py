"""Energy both ways: compute only (``spike_costs``: synaptic operations and MACs at Horowitz's 45 nm figures)
and memory-aware (spikingjelly's ``estimate_simple_energy``: its operation counts plus weight, bias and
neuron-state traffic), held to a hand computation from the estimator's documented constants."""
import pytest
import torch
from torch import nn

from hybridkd_lib.models import create_model, list_models, model_facts
from hybridkd_lib.snn import spikecosts
from hybridkd_lib.snn.neurons import LIF
from hybridkd_lib.snn.spikecosts import EnergyModel, ann_twin, memory_aware_costs, memory_aware_energy

PJ_PER_BYTE = 2.0
FLOAT_BYTES = 4


class _LinearLIF(nn.Module):
    """A spiking layer of 3 neurons on 4 inputs, ``[T, B, 4] -> [T, B, 3]``."""
    spiking, input_ndim = True, 2

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(4, 3, bias=False), LIF()

    def forward(self, x):
        return self.lif(self.fc(x))


def test_a_dense_layer_costs_its_macs_and_one_weight_read_each():
    layer, e = nn.Linear(4, 3, bias=True), EnergyModel()
    x = torch.tensor([[0.5, -1.0, 2.0, 3.0], [1.5, 0.25, -2.0, 1.0]])   # 2 images, real inputs
    est = memory_aware_energy(layer, x, e, PJ_PER_BYTE)
    macs, weight_bytes, bias_bytes = 12, 12 * FLOAT_BYTES, 3 * FLOAT_BYTES   # per image
    assert est["macs"] == macs and est["acs"] == 0 and est["memory_bytes"] == weight_bytes + bias_bytes
    assert est["compute_uj"] == pytest.approx(macs * e.pj_per_mac * 1e-6)
    assert est["memory_uj"] == pytest.approx((weight_bytes + bias_bytes) * PJ_PER_BYTE * 1e-6)
    assert est["total_uj"] == pytest.approx(est["compute_uj"] + est["memory_uj"])


def test_spikes_cost_their_fan_out_and_the_neurons_their_state_traffic():
    layer, e = nn.Linear(4, 3, bias=False), EnergyModel()
    spikes = torch.tensor([[1.0, 0.0, 1.0, 0.0]])   # 2 spikes, each reaching 3 neurons
    est = memory_aware_energy(layer, spikes, e, PJ_PER_BYTE)
    assert (est["macs"], est["acs"], est["memory_bytes"]) == (0, 6, 6 * FLOAT_BYTES)
    assert est["compute_uj"] == pytest.approx(6 * e.pj_per_ac * 1e-6)
    net, T = _LinearLIF(), 2
    x = torch.tensor([[[0.5, -1.0, 2.0, 3.0]], [[1.0, 1.0, 1.0, 1.0]]])   # [T, B=1, 4]
    est = memory_aware_energy(net, x, e, PJ_PER_BYTE)
    state_bytes = 3 * T * FLOAT_BYTES * 2   # each neuron's potential read and written once per step
    weight_bytes = 12 * T * FLOAT_BYTES      # real inputs: a MAC and a weight read per weight per step
    assert est["macs"] == 12 * T and est["memory_bytes"] == weight_bytes + state_bytes
    assert est["memory_uj"] == pytest.approx((weight_bytes + state_bytes) * PJ_PER_BYTE * 1e-6)
    assert est["acs"] > 0   # the neurons' own adds: spikingjelly counts them, spike_costs does not


def test_the_student_its_ann_and_its_teacher_with_one_estimator():
    torch.manual_seed(0)
    student = create_model("spiking_resnet18", num_classes=10, T=2, width=4).eval()
    teacher = create_model("cifar_resnet18", num_classes=10, width=8).eval()
    x = torch.rand(3, 3, 16, 16) * 2
    twin = ann_twin(student)
    assert twin.T == 1 and not any(isinstance(m, LIF) for m in twin.modules()) and student.T == 2
    assert memory_aware_energy(twin, x)["macs"] == spikecosts.ann_macs(student, x)   # the same network as an ANN
    c = memory_aware_costs(student, x, teacher, x, pj_per_byte=PJ_PER_BYTE)
    assert c["images"] == 3 and c["pj_per_byte"] == PJ_PER_BYTE
    for other in ("ann", "teacher"):
        assert c[f"vs_{other}"] == pytest.approx(c["student"]["total_uj"] / c[other]["total_uj"])
        assert c[f"compute_vs_{other}"] == pytest.approx(c["student"]["compute_uj"] / c[other]["compute_uj"])
    assert c["teacher"]["total_uj"] > c["ann"]["total_uj"]   # twice the width: about four times the weights
    with pytest.raises(ValueError, match=r"pj_per_byte=nan not allowed"):
        memory_aware_energy(student, x, pj_per_byte=float("nan"))


def test_every_run_records_both_estimates(tmp_path):
    """A teacher run records its memory-aware estimate; a student run both, beside each other, with ratios."""
    from hybridkd_lib import TrainConfig, train

    tiny = dict(dataset="digits", data_kw={"image_size": 8}, batch_size=32, max_steps_per_epoch=2, epochs=1,
                T=2, progress=False, teacher="cifar_resnet18", teacher_kw={"width": 4}, student_kw={"width": 4})
    teacher = train(TrainConfig(method="ann", out=str(tmp_path / "t"), **tiny), log=lambda *_: None)
    assert teacher["spike_costs"]["memory_aware"]["ann"]["total_uj"] > 0
    student = train(TrainConfig(method="kd", out=str(tmp_path / "s"), teacher_ckpt=str(tmp_path / "t" / "model.pt"),
                                **tiny), log=lambda *_: None)
    costs = student["spike_costs"]
    assert costs["energy_vs_teacher"] > 0   # compute only
    mem = costs["memory_aware"]
    assert mem["vs_teacher"] == pytest.approx(mem["student"]["total_uj"] / mem["teacher"]["total_uj"])
    assert mem["images"] == spikecosts.MEMORY_AWARE_IMAGES and mem["pj_per_byte"] == spikecosts.SRAM_PJ_PER_BYTE


@pytest.mark.parametrize("name", [n for n in list_models() if model_facts(n).role == "student"])
def test_the_same_network_as_an_ann_is_the_one_ann_macs_counts(name):
    """For every student, on static images and on a sequence of frames (one frame: the ANN's one step), the twin
    spikingjelly's estimator runs has the MACs ``ann_macs`` counts; a ViT teacher's attention products are seen."""
    torch.manual_seed(0)
    student = create_model(name, num_classes=10, T=2, **model_facts(name).small).eval()
    for x in (torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)):   # [B, C, H, W] and [T, B, C, H, W]
        c = memory_aware_costs(student, x)
        twin = memory_aware_energy(ann_twin(student), x[:1] if x.dim() == 5 else x)
        assert c["ann"]["macs"] == twin["macs"] == spikecosts.ann_macs(student, x), name


def test_a_vit_teachers_attention_products_are_counted():
    vit = create_model("vit_small_patch16_224", num_classes=10, **model_facts("vit_small_patch16_224").small).eval()
    x = torch.rand(2, 3, 32, 32)
    before = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    assert memory_aware_energy(vit, x)["macs"] == spikecosts.ann_macs(vit, x)
    assert [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")] == before   # restored afterwards
