"""Registry, stage protocol, shapes and that every student learns with both modes."""
import copy
import pytest
import torch

from hybridkd_lib.snn import ratebp
from hybridkd_lib.models import create_model, list_models, model_facts

# small variants of the same architectures: the registry's facts
SMALL = {name: model_facts(name).small for name in list_models()}


def test_the_readme_model_table_is_the_registrys():
    """Every registered model is a row of the README's table with its role, parameter count at its
    default classes, and the source the registry names."""
    from hybridkd_lib.base.results import REPO_ROOT

    rows = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[1] in ("student", "teacher"):
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == list_models()
    for name, (_, role, params, _, source) in rows.items():
        facts = model_facts(name)
        assert role == facts.role and source.replace("`", "") == facts.source.replace("`", ""), name
        assert params == f"{facts.param_count() / 1e6:.2f} M ({facts.classes})", (name, params)


def test_registry_lists_required_models():
    assert set(SMALL) <= set(list_models())
    assert set(list_models("student")) == {"spiking_resnet18", "spiking_resnet19", "sew_resnet34",
                                          "preact_resnet34", "spikingformer_4_256"}


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet9'; valid: .*spiking_resnet18"):
        create_model("resnet9")


def test_pretrained_without_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="local checkpoint.*no model hub"):
        create_model("resnet34", pretrained=True)


def test_teacher_checkpoint_roundtrip(tmp_path):
    a = create_model("resnet34", num_classes=5)
    torch.save(a.net.state_dict(), tmp_path / "r34.pt")
    b = create_model("resnet34", num_classes=5, checkpoint_path=str(tmp_path / "r34.pt"))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a.eval()(x), b.eval()(x))


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _full_size(name, num_classes):
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes)


# Numbers of the sources, computed from their definitions (layer shapes, bias flags):
# RateBP reference model/resnet.py (resnet18, resnet19: bias-free convs), model/sew_resnet.py and
# model/preact_resnet.py (torchvision's ResNet-34 layout, every conv with bias: 21,797,672 + 8,512);
# Spikingformer cifar10/model.py at embed_dims=256, depths=4 (4,156,202 with the two LayerNorms per
# block its forward never calls, 4 x 1,024; the Spikingformer paper reports 4.15 M).
SOURCE_PARAMS = {"spiking_resnet18": (10, 11_173_962), "spiking_resnet19": (10, 12_697_994),
                 "sew_resnet34": (1000, 21_806_184), "preact_resnet34": (1000, 21_806_184),
                 "spikingformer_4_256": (10, 4_156_202 - 4 * 1_024)}


@pytest.mark.parametrize("name", sorted(SOURCE_PARAMS))
def test_student_parameter_count_is_its_sources(name):
    num_classes, want = SOURCE_PARAMS[name]
    assert _params(_full_size(name, num_classes)) == want


def _layer_types(module):
    """Layer types in definition order (``Temporal`` wrappers read through; a LIF is one layer)."""
    from hybridkd_lib.snn.layers import Temporal
    from hybridkd_lib.snn.neurons import LIF
    if isinstance(module, Temporal):
        return [type(module.module).__name__]
    if isinstance(module, LIF):
        return ["LIF"]
    children = list(module.children())
    if not children:
        return [] if isinstance(module, torch.nn.Identity) else [type(module).__name__.replace("RateBatchNorm",
                                                                                            "BatchNorm")]
    return [t for c in children for t in _layer_types(c)]


def test_sew_resnet34_block_is_the_sources():
    """sew_resnet.py: conv(bias)-BN-LIF x 2, downsample conv1x1(bias)-BN-LIF, ADD; Kaiming fan_out init."""
    m = _full_size("sew_resnet34", 1000)
    first = m.stages[1][0]
    assert _layer_types(first) == ["Conv2d", "BatchNorm2d", "LIF", "Conv2d", "BatchNorm2d", "LIF",
                                   "Conv2d", "BatchNorm2d", "LIF"]
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 36 and all(c.bias is not None for c in convs)
    assert _layer_types(m.head) == ["GlobalAvgPool", "Linear"]
    torch.manual_seed(0)
    small = create_model("sew_resnet34", num_classes=10, width=64)
    w = small.stages[3][0].conv1.module.weight   # 512 x 256 x 3 x 3, fan_out = 512 * 9
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 0.002


def test_preact_resnet34_is_the_sources():
    """preact_resnet.py: stem conv(bias)-BN-maxpool (no LIF); block LIF-conv-BN-LIF-conv-BN with a
    real-valued shortcut (conv1x1-BN); layer4 -> average pool -> fc, no LIF before pooling."""
    m = _full_size("preact_resnet34", 1000)
    assert _layer_types(m.encoder) == ["Conv2d", "BatchNorm2d", "MaxPool2d"] and _layer_types(m.stem) == []
    assert _layer_types(m.stages[1][0]) == ["LIF", "Conv2d", "BatchNorm2d", "LIF", "Conv2d", "BatchNorm2d",
                                            "Conv2d", "BatchNorm2d"]
    assert _layer_types(m.head) == ["GlobalAvgPool", "Linear"]
    assert all(c.bias is not None for c in m.modules() if isinstance(c, torch.nn.Conv2d))


def test_spikingformer_is_the_sources():
    """cifar10/model.py: tokenizer block0 conv-BN, block1/2 LIF-conv-BN, block3/4 LIF-maxpool-conv-BN
    (no relative-position branch); attention and MLP as the source orders them; 8x8 tokens."""
    from hybridkd_lib.models.spikingformer import SPIKINGFORMER_NEURON
    m = _full_size("spikingformer_4_256", 10)
    assert _layer_types(m.encoder) == ["Conv2d", "BatchNorm2d"]
    assert _layer_types(m.stem.blocks) == ["LIF", "Conv2d", "BatchNorm2d"] * 2 + ["LIF", "MaxPool2d", "Conv2d",
                                                                          "BatchNorm2d"] * 2
    attn, mlp = m.stages[0].attn, m.stages[0].mlp
    assert _layer_types(attn) == (["LIF"] + ["Conv1d", "BatchNorm1d", "LIF"] * 3 + ["LIF", "Conv1d", "BatchNorm1d"]
                                  + ["MatMul", "MatMul"])   # K^T V and its product with Q, parameter-free
    assert sum(p.numel() for p in attn.kv_product.parameters()) == 0
    assert [c.module.bias is not None for c in (attn.q[0], attn.k[0], attn.v[0], attn.proj[0])] == [False] * 3 + [True]
    assert attn.scale == 0.125 and attn.lif_attn.v_threshold == 0.5 and attn.lif_q.v_threshold == 1.0
    assert _layer_types(mlp) == ["LIF", "Conv1d", "BatchNorm1d", "LIF", "Conv1d", "BatchNorm1d"]
    assert [c.module.bias is not None for c in (mlp.fc1[0], mlp.fc2[0])] == [True, True]
    assert m.neuron_cfg == SPIKINGFORMER_NEURON
    assert (SPIKINGFORMER_NEURON.tau, SPIKINGFORMER_NEURON.v_reset, SPIKINGFORMER_NEURON.decay_input) == (2.0, 0.0, True)
    small = create_model("spikingformer_4_256", num_classes=10, T=2, dim=64)
    assert small.forward_intermediates(torch.randn(2, 3, 32, 32))[0].shape == (2, 2, 64, 64)  # [T, B, D, 8*8]


def test_reference_neuron_constants_and_the_neuron_parameter():
    """RateBP reference: decay 0.2 (tau 1.25), threshold 1, soft detached reset, sigmoid alpha 4."""
    from hybridkd_lib.snn.neurons import DEFAULT_NEURON, NeuronConfig
    assert (DEFAULT_NEURON.decay, DEFAULT_NEURON.v_threshold, DEFAULT_NEURON.v_reset, DEFAULT_NEURON.detach_reset,
            DEFAULT_NEURON.surrogate_alpha, DEFAULT_NEURON.decay_input) == (pytest.approx(0.2), 1.0, None, True, 4.0,
                                                                            False)
    m = create_model("spiking_resnet18", width=8, neuron_cfg={"tau": 2})
    assert m.neuron_cfg.tau == 2.0 and m.stem.cfg.tau == 2.0 and m.stem.node.tau == 2.0
    with pytest.raises(ValueError, match=r"unknown neuron setting\(s\) \['taus'\]; valid: tau, v_threshold"):
        NeuronConfig.with_overrides(DEFAULT_NEURON, {"taus": 2})
    with pytest.raises(ValueError, match="tau=1.0 not allowed"):
        NeuronConfig(tau=1)


@pytest.mark.parametrize("name", list_models("student"))
def test_rate_pass_value_gap_under_both_values(name):
    """The reference construction ("rate") departs from the spiking network's value after max-pooling
    of spikes (SEW-ResNet-34's stem, Spikingformer's tokenizer); "spike_mean" gives the spike pass's
    time-averaged value everywhere."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=4, **SMALL[name]).train()
    x = torch.randn(4, 3, 64, 64) if name.endswith("34") else torch.randn(4, 3, 32, 32)
    gaps = {value: ratebp.rate_pass_gap(m, x, value) for value in ("rate", "spike_mean")}
    print(f"{name}: max gap rate {gaps['rate']}, spike_mean {gaps['spike_mean']}")
    assert max(gaps["spike_mean"].values()) < 1e-4
    if name in ("sew_resnet34", "spikingformer_4_256"):   # max-pooling of spikes
        assert max(gaps["rate"].values()) > 1e-2
    else:
        assert max(gaps["rate"].values()) < 1e-4
    for value in ("rate", "spike_mean"):   # the rate path's gradient reaches every parameter under both
        ratebp.rate_forward(m, x, value=value).sum().backward()
        assert all(p.grad is not None for p in m.parameters())
        m.zero_grad(set_to_none=True)


def _student_input(name, B=4):
    return torch.randn(B, 3, 32, 32)


@pytest.mark.parametrize("name", list_models("student"))
@pytest.mark.parametrize("T", [1, 4])
def test_student_shapes(name, T):
    m = create_model(name, num_classes=10, T=T, **SMALL[name])
    x = _student_input(name)
    feats = m.forward_intermediates(x)
    assert len(feats) == len(m.feature_info)
    for f, info in zip(feats, m.feature_info):
        assert f.shape[0] == T and f.shape[1] == 4 and f.shape[2] == info["num_chs"]
    assert m(x).shape == (4, 10)
    assert ratebp.rate_forward(m, x).shape == (4, 10)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (4, 10)


def test_dvs_sequence_input():
    m = create_model("spiking_resnet19", num_classes=10, in_chans=2, width=16)
    x = torch.rand(5, 3, 2, 48, 48)  # [T, B, 2, H, W] frames
    assert m(x).shape == (3, 10)
    logits = ratebp.rate_forward(m, x)
    assert logits.shape == (3, 10) and logits.requires_grad


@pytest.mark.parametrize("name", list_models("student"))
@pytest.mark.parametrize("method", ["ratebp", "bptt"])
def test_student_learns_a_fixed_batch(name, method):
    torch.manual_seed(0)
    m = create_model(name, num_classes=4, T=4, **SMALL[name]).train()
    x, y = _student_input(name, 8), torch.arange(8) % 4
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = ratebp.rate_forward(m, x) if method == "ratebp" else m(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


@pytest.mark.parametrize("name", list_models("student"))
@pytest.mark.parametrize("channels_last", [False, True])
def test_spike_pass_equals_spikingjelly_forward(name, channels_last):
    """The recording spike pass computes the same network as spikingjelly's multi-step forward, in
    either layout; writing over the blocks' temporaries (ratebp.set_spike_pass) changes no bit of it."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=4, **SMALL[name]).train()
    x = torch.randn(6, 3, 32, 32)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = m(x)
    state = copy.deepcopy(m.state_dict())
    got = ratebp.spike_pass(m, x)
    ratebp.set_mode(m, "bptt")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    m.load_state_dict(state)   # the spike pass updated the BN running statistics once
    switched = ratebp.set_spike_pass(m, in_place=True)
    assert switched > 0 if "resnet" in name else switched == 0
    in_place = ratebp.spike_pass(m, x)
    ratebp.set_mode(m, "bptt")
    assert torch.equal(in_place, got)


def test_residual_add_writes_over_its_temporary_only_in_the_spike_pass():
    """``layers.residual_add``: over ``h`` only in a training-mode forward without autograd of a block whose
    ``adds_over_input`` is set (ratebp.set_spike_pass); in eval, with autograd, or unset, a new tensor."""
    from hybridkd_lib.snn.layers import residual_add
    from hybridkd_lib.models.resnet import BasicBlock
    from hybridkd_lib.snn.neurons import DEFAULT_NEURON

    block = BasicBlock(4, 4, 1, True, DEFAULT_NEURON)
    h, s = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    want = h + s
    for adds, training, grad, over in ((False, True, False, False), (True, False, False, False),
                                       (True, True, True, False), (True, True, False, True)):
        block.adds_over_input = adds
        block.train(training)
        hh = h.clone()
        with torch.set_grad_enabled(grad):
            out = residual_add(block, hh, s)
        assert torch.equal(out, want) and (out.data_ptr() == hh.data_ptr()) == over, (adds, training, grad)


@pytest.mark.parametrize("fmt", ["safetensors", "ddp", "timm_train"])
def test_timm_teacher_loads_every_checkpoint_format(tmp_path, fmt):
    """safetensors, a DDP ``module.``-prefixed ``state_dict``, timm train.py's dict (EMA preferred)."""
    from hybridkd_lib.book.tinydata import write_timm_checkpoint

    path = write_timm_checkpoint("resnet34", tmp_path / f"r34.{'safetensors' if fmt == 'safetensors' else 'pth'}",
                                 fmt, seed=3)
    ref = write_timm_checkpoint("resnet34", tmp_path / "ref.safetensors", "safetensors", seed=3)
    from safetensors.torch import load_file
    want = load_file(str(ref))
    model = create_model("resnet34", num_classes=1000, checkpoint_path=str(path))
    got = model.net.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match=r"fc.weight has shape \[1000, 512\] in the checkpoint, the model expects "
                                         r"\[10, 512\]"):
        create_model("resnet34", num_classes=10, checkpoint_path=str(path))


def test_vit_fine_tune_starts_from_an_imagenet_checkpoint_with_a_new_head(tmp_path):
    from hybridkd_lib.book.tinydata import write_timm_checkpoint

    kw = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
    path = write_timm_checkpoint("vit_small_patch16_224", tmp_path / "vit.pth", "timm_train", **kw)
    m = create_model("vit_small_patch16_224", num_classes=10, init_checkpoint=str(path), **kw)
    src = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(m.net.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])
    assert m.net.head.weight.shape == (10, 32)
