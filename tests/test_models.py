"""Registry, stage protocol, shapes and that every student learns with both modes."""
import pytest
import torch

from hybridkd_lib import ratebp
from hybridkd_lib.models import create_model, list_models

# small variants of the same architectures (the registry's width/size options)
SMALL = {
    "spiking_resnet18": dict(width=8), "spiking_resnet19": dict(width=16),
    "sew_resnet34": dict(width=8), "preact_resnet34": dict(width=8),
    "spikingformer_4_256": dict(dim=64),
    "cifar_resnet18": dict(width=8), "cifar_resnet34": dict(width=8), "cifar_resnet19": dict(width=16),
    "resnet34": {}, "resnet50": {},
    "vit_small_patch16_224": dict(img_size=32, patch_size=4, depth=4, embed_dim=64, num_heads=2),
}


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


def test_spikingformer_parameter_count():
    n = sum(p.numel() for p in create_model("spikingformer_4_256", num_classes=10).parameters())
    assert abs(n - 4.15e6) / 4.15e6 < 0.03


@pytest.mark.parametrize("name", list_models("teacher"))
def test_teacher_stage_protocol(name):
    m = create_model(name, num_classes=7, **SMALL[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert len(feats) == m.num_stages == len(m.feature_info)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, 7)
        for k in range(1, m.num_stages):
            torch.testing.assert_close(m.forward_from(k, feats[k - 1]), out)


def _student_input(name, B=4):
    return torch.randn(B, 3, 32, 32)


@pytest.mark.parametrize("name", list_models("student"))
@pytest.mark.parametrize("T", [1, 4])
def test_student_shapes(name, T):
    m = create_model(name, num_classes=10, T=T, **SMALL[name])
    x = _student_input(name)
    feats = m.forward_features(x)
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
    """The recording spike pass (which overwrites its temporaries in place on the CPU)
    computes the same network as spikingjelly's multi-step forward, in either layout."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=4, **SMALL[name]).train()
    x = torch.randn(6, 3, 32, 32)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = m(x)
    got = ratebp.spike_pass(m, x)
    ratebp.set_mode(m, "bptt")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "ddp", "timm_train"])
def test_timm_teacher_loads_every_checkpoint_format(tmp_path, fmt):
    """safetensors, a DDP ``module.``-prefixed ``state_dict``, timm train.py's dict (EMA preferred)."""
    from hybridkd_lib.tinydata import write_timm_checkpoint

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
    from hybridkd_lib.tinydata import write_timm_checkpoint

    kw = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
    path = write_timm_checkpoint("vit_small_patch16_224", tmp_path / "vit.pth", "timm_train", **kw)
    m = create_model("vit_small_patch16_224", num_classes=10, init_checkpoint=str(path), **kw)
    src = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(m.net.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])
    assert m.net.head.weight.shape == (10, 32)
