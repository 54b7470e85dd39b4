"""Spike statistics and operation counts (``spikecosts``) on networks small enough to count by hand."""
import pytest
import torch
from torch import nn

from hybridkd_lib.snn import spikecosts
from hybridkd_lib.snn.layers import GlobalAvgPool, MatMul, conv
from hybridkd_lib.models import create_model
from hybridkd_lib.models.stages import SpikingStageModel
from hybridkd_lib.snn.neurons import DEFAULT_NEURON, LIF


class Tiny(SpikingStageModel):
    """image [B, 1, 2, 2] -> 1x1 conv (weight 1) -> LIF -> 3x3 conv (pad 1) to 2 channels -> GAP -> Linear(2, 3)."""

    def __init__(self, T=2):
        super().__init__()
        self.T, self.neuron_cfg = T, DEFAULT_NEURON
        self.encoder = conv(1, 1, 1)
        self.stem = LIF()
        self.stages = nn.ModuleList([nn.Sequential(conv(1, 2, 3))])
        self.feature_info = [{"num_chs": 2, "reduction": 1, "kind": "map"}]
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(2, 3))
        with torch.no_grad():
            self.encoder.module.weight.fill_(1.0)


def test_counts_of_a_hand_sized_network():
    # LIF (lambda 0.2, threshold 1, soft reset), constant input c over T=2: c=1.5 fires twice
    # (u 1.5, then 0.2*0.5+1.5=1.6), c=0.9 once (0.9, then 0.18+0.9=1.08), c=0.5 never (0.5, 0.6)
    x = torch.tensor([[[[1.5, 0.9], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])   # image 2 is blank
    c = spikecosts.spike_costs(Tiny(T=2), [x])
    assert c["images"] == 2 and c["T"] == 2
    (stem,) = c["layers"]
    assert stem["name"] == "stem" and stem["neurons"] == 4
    assert stem["rate"] == pytest.approx(3 / 16)          # 3 spikes in 2 images x 4 neurons x 2 steps
    assert stem["rate_std"] == pytest.approx(3 / 16)      # the images' rates: 3/8 and 0
    ops = {o["name"]: o for o in c["ops"]}
    # the encoder runs once per image on the real image: 4 outputs x fan-in 1
    assert ops["encoder.module"] == {"name": "encoder.module", "kind": "conv2d", "input": "real",
                                     "synops": 0.0, "macs": 4.0}
    # every pixel of a 2x2 map reaches all 4 outputs of a padded 3x3 conv, 2 channels: 3 spikes x 4 x 2
    assert ops["stages.0.0.module"]["input"] == "spikes" and ops["stages.0.0.module"]["synops"] == 24 / 2
    # the head's input is an average (real): 3 outputs x fan-in 2, at each of 2 steps
    assert ops["head.1"]["input"] == "real" and ops["head.1"]["macs"] == 3 * 2 * 2
    assert c["synops_per_image"] == 12 and c["macs_per_image"] == 4 + 12
    # the ANN: one step, all dense: 4 + 2*4*9 + 3*2
    assert c["ann_macs_per_image"] == 4 + 72 + 6
    assert c["energy_uj_per_image"] == pytest.approx((0.9 * 12 + 4.6 * 16) * 1e-6)
    assert c["energy_vs_ann"] == pytest.approx((0.9 * 12 + 4.6 * 16) / (4.6 * 82))
    assert c["firing_rate"] == pytest.approx(3 / 16)


def test_fan_out_counts_strides_and_padding():
    # a 3x3 conv, stride 2, pad 1 on a 4x4 map has outputs centred at (0,0), (0,2), (2,0), (2,2):
    m = nn.Conv2d(1, 5, 3, stride=2, padding=1)
    corner, centre, edge = (torch.zeros(1, 1, 4, 4) for _ in range(3))
    corner[0, 0, 0, 0] = centre[0, 0, 1, 1] = edge[0, 0, 3, 3] = 1
    assert spikecosts._conv_acs(m, corner) == 1 * 5      # only the output at (0,0) reaches it
    assert spikecosts._conv_acs(m, centre) == 4 * 5      # all four
    assert spikecosts._conv_acs(m, edge) == 1 * 5        # (2,2) only
    grouped = nn.Conv2d(4, 8, 1, groups=2)               # an event feeds C_out / groups = 4 outputs
    assert spikecosts._conv_acs(grouped, torch.ones(1, 4, 1, 1)) == 4 * 4


def test_what_a_layer_input_is():
    assert spikecosts._events(torch.tensor([0.0, 1.0, 1.0])) == "spikes"
    assert spikecosts._events(torch.tensor([0.0, 2.0, 1.0])) == "counts"    # a SEW ADD of two spike maps
    assert spikecosts._events(torch.tensor([0.5, 1.0])) == "real"
    assert spikecosts._events(torch.tensor([-1.0, 1.0])) == "real"


def test_counts_and_products():
    lin = nn.Linear(3, 4)
    out = {}
    counter = spikecosts._Counter(nn.Sequential(lin))
    lin(torch.tensor([[2.0, 0.0, 1.0]]))        # spike counts: 3 events x 4 outputs
    counter.close()
    out = counter.ops["0"]
    assert out["input"] == "counts" and out["synops"] == 12 and out["macs"] == 0
    mm = MatMul()
    counter = spikecosts._Counter(nn.Sequential(mm))
    a = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])   # [1, 2, 3] spikes, 3 events
    b = torch.randn(1, 3, 4)                                   # real
    mm(a, b)                                                   # each event of a adds a row of b: 3 x 4
    mm(torch.randn(1, 2, 3), (torch.rand(1, 3, 4) > 0.5).float().fill_(1.0))  # 12 events of b, each adds 2
    counter.close()
    assert counter.ops["0"]["synops"] == 3 * 4 + 12 * 2


def test_every_student_is_counted_and_its_ann_equals_the_teacher():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2
    for name, kw in (("spiking_resnet18", {"width": 4}), ("spiking_resnet19", {"width": 4}),
                     ("sew_resnet34", {"width": 4}), ("preact_resnet34", {"width": 4}),
                     ("spikingformer_4_256", {"dim": 32})):
        model = create_model(name, num_classes=10, T=2, **kw)
        if name == "sew_resnet34":   # every BN output 3 above its input: both spike maps of an ADD fire together
            for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
                torch.nn.init.constant_(bn.bias, 3.0)
        c = spikecosts.spike_costs(model, [x])
        assert c["ann_macs_per_image"] > c["macs_per_image"] > 0, name
        assert 0 <= c["firing_rate"] <= 1 and all(0 <= r["rate"] <= 1 for r in c["layers"]), name
        kinds = {o["name"]: o["input"] for o in c["ops"]}
        assert next(iter(kinds.values())) == "real", name          # the first conv sees the image
        if name == "sew_resnet34":   # ADD of spike maps: integer counts reach the next block
            assert "counts" in kinds.values()
        if name == "spikingformer_4_256":   # the attention products are counted, on spikes
            assert kinds["stages.0.attn.kv_product"] == "spikes"
    # the same architecture as an ANN (the CIFAR teacher) has the student's one-step MACs
    student = create_model("spiking_resnet18", num_classes=10, T=4, width=4)
    teacher = create_model("cifar_resnet18", num_classes=10, width=4)
    assert spikecosts.ann_macs(student, x) == spikecosts.ann_macs(teacher, x)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="pj_per_ac=-1"):
        spikecosts.EnergyModel(pj_per_ac=-1)
    with pytest.raises(ValueError, match="is an ANN"):
        spikecosts.spike_costs(create_model("cifar_resnet18", num_classes=10, width=4), [torch.rand(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="no images"):
        spikecosts.spike_costs(Tiny(), [])


def test_a_vit_teacher_counts_its_attention_products():
    # ViT at 16x16, patch 4: 16 tokens + class token = 17, dim 96, 3 heads, 4 blocks
    vit = create_model("vit_small_patch16_224", num_classes=10, in_chans=1, img_size=16, patch_size=4, depth=4,
                       embed_dim=96, num_heads=3)
    N, D = 17, 96
    linear = 4 * (N * D * 3 * D + N * D * D + 2 * N * D * 4 * D) + 16 * D * 16 + 10 * D   # qkv, proj, MLP; patches; head
    attention = 4 * (2 * N * N * D)   # q k^T and (.) v over every head
    assert spikecosts.ann_macs(vit, torch.rand(2, 1, 16, 16)) == linear + attention
