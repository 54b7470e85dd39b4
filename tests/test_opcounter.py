"""Our spike costs against the field's counter: spikingjelly's ``SynOpCounter`` and ``MACCounter`` (its
``op_counter``, counting the real dispatched convolutions and matrix products) on every registered student.

Layer by layer: where the input is 0/1 spikes, our accumulates equal its synaptic operations; where it is real,
our MACs equal its MACs. They differ by design in one place, pinned here: a SEW ADD feeds the next convolution
non-negative integer spike counts, which spikingjelly counts as dense MACs (its spike test needs 0/1) and we count
as accumulates, an event of value c adding c times (``spikecosts._acs``)."""
import pytest
import torch

from hybridkd_lib.models import create_model, list_models, model_facts
from hybridkd_lib.snn.spikecosts import spike_costs

STUDENTS = [n for n in list_models() if model_facts(n).role == "student"]


def _field_counts(model, x):
    """spikingjelly's per-module synaptic operations and MACs for one forward of ``x``."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        model(x)
    per = lambda counter, key: sum(counter.records.get(key, {}).values())
    return syn, mac, per


def _dense_macs(model, x) -> dict[str, float]:
    """Output elements times fan-in of every convolution and linear layer in one forward of ``x``."""
    macs, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            fan_in = m.in_channels // m.groups * int(torch.tensor(m.kernel_size).prod())
        elif isinstance(m, torch.nn.Linear):
            fan_in = m.in_features
        else:
            continue
        def hook(mod, inputs, out, name=name, fan_in=fan_in):
            macs[name] = macs.get(name, 0) + out.numel() * fan_in
        handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return macs


@pytest.mark.parametrize("name", STUDENTS)
def test_our_counts_equal_spikingjellys_op_counter_on_every_student(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, T=2, **model_facts(name).small).eval()
    x = torch.rand(2, 3, 32, 32) * 3   # strong enough inputs that every stage spikes
    ours = spike_costs(model, [x])
    syn, mac, per = _field_counts(model, x)
    dense = _dense_macs(model, x)
    top, kinds = type(model).__name__, set()
    for op in ours["ops"]:
        key, images = f"{top}.{op['name']}", ours["images"]
        kinds.add(op["input"])
        if op["input"] == "spikes":
            assert op["synops"] * images == per(syn, key) and per(mac, key) == 0, op
        elif op["input"] == "real":
            assert op["macs"] * images == per(mac, key) and per(syn, key) == 0, op
        else:   # SEW's integer counts: accumulates here, dense MACs there
            assert per(syn, key) == 0 and per(mac, key) == dense[op["name"]] and op["synops"] > 0, op
    assert ("counts" in kinds) == (name == "sew_resnet34")
    counted = sum(o["synops"] for o in ours["ops"] if o["input"] == "spikes") * ours["images"]
    assert counted == syn.get_total() and counted > 0
