"""Export a trained spiking student to a NIR graph (the Neuromorphic Intermediate Representation, ``nir``).

What the graph holds, for the CIFAR spiking ResNets (ResNet-18, ResNet-19: conv3x3 stem, BasicBlocks):

- every convolution with the BatchNorm after it folded in (inference BN: running statistics), as ``nir.Conv2d``
  with a bias; a residual addition is two edges into the LIF after it (NIR sums a node's inputs); a 1x1
  shortcut is its own ``Conv2d``;
- the global average pool as ``nir.AvgPool2d`` over the whole map, each Linear layer as a 1x1 ``Conv2d`` on the
  pooled ``[C, 1, 1]`` map (so no ``Flatten`` with its batch-dimension ambiguity), the logits ``[classes, 1, 1]``
  at every timestep (the student's prediction: their mean over T);
- every LIF as ``nir.LIF`` in continuous time for a timestep ``dt``: the student's discrete update
  ``u_t = lambda * v_{t-1} + in_scale * x_t`` is NIR's ``tau dv/dt = (v_leak - v) + r I`` stepped by forward
  Euler with ``tau = dt / (1 - lambda)`` (= ``dt * tau_steps``), ``r = in_scale * tau / dt``, ``v_leak = 0``.

What NIR cannot express: its LIF resets to ``v_reset`` (a hard reset). The reference's students reset by
subtraction (``v = u - theta``, soft reset), so ``approximate_soft_reset=True`` (the default) exports the hard
reset to 0 instead and says so in the graph's metadata; ``check_in_snntorch`` measures what that changes. NIR
fires at ``v > theta`` where spikingjelly fires at ``u >= theta`` (equal only at exact ties). Max-pooling, products
of two activations (spiking attention) and the other students' blocks are refused, naming the layer.
"""
from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybridkd_lib.snn.layers import GlobalAvgPool, MatMul, SpikeMeanValue, Temporal, _RateBatchNorm
from hybridkd_lib.models.resnet import BasicBlock, SpikingResNet
from hybridkd_lib.snn.neurons import LIF
from hybridkd_lib.tools.defaults import APPROXIMATE_SOFT_RESET, DEFAULT_DT


class NIRExportError(ValueError):
    """The student holds something NIR cannot express; the message names the layer and the reason."""


_WHY = {SpikeMeanValue: "max-pooling of spikes: NIR 1.0 has no max-pooling node",
        MatMul: "a product of two activations (spiking self-attention): NIR has no such node"}


def _refuse(path: str, module: nn.Module, why: str | None = None):
    for sub_path, sub in module.named_modules(prefix=path):
        for cls, reason in _WHY.items():
            if isinstance(sub, cls):
                raise NIRExportError(f"cannot export layer {sub_path!r} ({type(sub).__name__}): {reason}")
    raise NIRExportError(f"cannot export layer {path!r} ({type(module).__name__}): "
                         f"{why or 'the exporter knows the CIFAR spiking ResNets (conv-BN, BasicBlock, LIF, average pool, Linear)'}")


def _fold(conv: nn.Conv2d, bn: _RateBatchNorm | None):
    """Conv weight and bias with the inference BN after it folded in: ``W * s``, ``(b - mean) * s + beta``."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * s.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * s + bn.bias.detach().double()
    return w.float().numpy(), b.float().numpy()


class _Graph:
    def __init__(self, dt: float, approximate_soft_reset: bool):
        self.nodes, self.edges, self.shapes = {}, [], {}
        self.dt, self.approximate = dt, approximate_soft_reset
        self.approximations: list[str] = []

    def add(self, name, node, inputs, shape):
        self.nodes[name] = node
        self.edges += [(i, name) for i in inputs]
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def conv(self, name, conv_module, bn, src):
        import nir

        m = conv_module.module if isinstance(conv_module, Temporal) else conv_module
        if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or (bn is not None and not isinstance(bn, _RateBatchNorm)):
            _refuse(name, conv_module)
        w, b = _fold(m, bn)
        c, h, wd = self.shapes[src]
        node = nir.Conv2d(input_shape=(h, wd), weight=w, stride=tuple(m.stride), padding=tuple(m.padding),
                          dilation=tuple(m.dilation), groups=m.groups, bias=b)
        return self.add(name, node, [src], node.output_type["output"])

    def lif(self, name, lif: LIF, inputs):
        import nir

        if not isinstance(lif, LIF):
            _refuse(name, lif, "expected a LIF layer here")
        cfg, shape = lif.cfg, self.shapes[inputs[0]]
        if cfg.v_reset is None:
            if not self.approximate:
                raise NIRExportError(f"cannot export layer {name!r} (LIF): it resets by subtraction (soft reset) and "
                                     f"NIR's LIF resets to v_reset; pass approximate_soft_reset=True to export the "
                                     f"reset to 0 instead")
            if "soft reset" not in " ".join(self.approximations):
                self.approximations.append("soft reset (v = u - theta) exported as NIR's reset to 0")
        elif cfg.v_reset != 0.0:
            raise NIRExportError(f"cannot export layer {name!r} (LIF): hard reset to v_reset={cfg.v_reset} starts "
                                 f"from v = v_reset in spikingjelly and from 0 in NIR's readers")
        in_scale = cfg.in_scale
        tau = self.dt / (1.0 - cfg.decay)
        full = lambda v: np.full(shape, v, dtype=np.float32)
        node = nir.LIF(tau=full(tau), r=full(in_scale * tau / self.dt), v_leak=full(0.0),
                       v_threshold=full(lif.v_threshold), v_reset=full(0.0))
        return self.add(name, node, inputs, shape)

    def linear_as_conv(self, name, linear, src):
        import nir

        if not isinstance(linear, nn.Linear):
            _refuse(name, linear, "expected a Linear layer here")
        w = linear.weight.detach().float().numpy()[:, :, None, None]
        b = (linear.bias.detach().float().numpy() if linear.bias is not None else np.zeros(w.shape[0], np.float32))
        node = nir.Conv2d(input_shape=(1, 1), weight=w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, bias=b)
        return self.add(name, node, [src], node.output_type["output"])


def check_dt(dt) -> float:
    """``dt`` as a float: a finite number of seconds > 0 (``ValueError`` naming it otherwise: a NaN or infinite
    timestep would give every LIF a NaN time constant)."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt={dt!r} not allowed; the timestep is a finite number of seconds > 0")
    return float(dt)


def to_nir(model: nn.Module, input_shape: tuple, dt: float = DEFAULT_DT,
           approximate_soft_reset: bool = APPROXIMATE_SOFT_RESET):
    """The NIR graph of a trained spiking ResNet (``input_shape``: one image, ``(C, H, W)``) for timestep ``dt``
    seconds; its ``metadata`` records ``T``, ``dt`` and every ``approximations`` entry. Raises ``NIRExportError``
    naming the first layer NIR cannot express."""
    import nir

    check_dt(dt)
    if not isinstance(model, SpikingResNet):
        _refuse("", model, f"{type(model).__name__} is not a CIFAR spiking ResNet")
    g = _Graph(float(dt), approximate_soft_reset)
    g.add("input", nir.Input(input_type=np.array(input_shape)), [], input_shape)
    enc = list(model.encoder)
    if len(enc) != 2:
        _refuse("encoder", model.encoder, "expected conv + BN")
    src = g.lif("stem", model.stem, [g.conv("encoder", enc[0], enc[1], "input")])
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            p = f"stages.{i}.{j}"
            if type(block) is not BasicBlock:
                _refuse(p, block)
            h = g.lif(f"{p}.act1", block.act1, [g.conv(f"{p}.conv1", block.conv1, block.bn1, src)])
            main = g.conv(f"{p}.conv2", block.conv2, block.bn2, h)
            short = src if isinstance(block.shortcut, nn.Identity) else g.conv(
                f"{p}.shortcut", block.shortcut[0], block.shortcut[1], src)
            src = g.lif(f"{p}.act2", block.act2, [main, short])
    head = list(model.head)
    if not isinstance(head[0], GlobalAvgPool):
        _refuse("head.0", head[0], "expected the global average pool")
    c, h, w = g.shapes[src]
    src = g.add("head.0", nir.AvgPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]),
                                        padding=np.array([0, 0])), [src], (c, 1, 1))
    for k, layer in enumerate(head[1:], start=1):
        src = (g.lif(f"head.{k}", layer, [src]) if isinstance(layer, LIF)
               else g.linear_as_conv(f"head.{k}", layer, src))
    g.add("output", nir.Output(output_type=np.array(g.shapes[src])), [src], g.shapes[src])
    metadata = {"T": int(model.T), "dt": g.dt, "approximations": "; ".join(g.approximations) or "none",
                "exported_by": "hybridkd_lib.tools.nirexport", "student": type(model).__name__}
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def write(graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` (NIR's HDF5 file) the way checkpoints are written (``atomic_write``: a temp
    file beside it, fsynced, renamed). The HDF5 file is built in memory first: HDF5 that meets a full disk
    mid-file can crash the process, a plain write of its bytes cannot; a failed write leaves no temp file and
    ``path`` as it was, and is an ``OSError`` naming ``path`` and the free space there."""
    import nir

    from hybridkd_lib.base.results import atomic_write

    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()), binary=True)


def check_target(to: str | Path) -> Path:
    """``to`` as an export target, or a ``ValueError`` naming it where writing there would destroy something:
    a file the library needs (a run's model, result, settings, checkpoints: ``runfolder.library_file``), a
    folder, or an existing file that is not a NIR (HDF5) file."""
    from hybridkd_lib.training.runfolder import library_file

    to = Path(to)
    if to.is_dir():
        raise ValueError(f"cannot export to {to}: it is a folder; name the .nir file to write in it")
    for p in dict.fromkeys((to, to.resolve())):
        what = library_file(p)
        if what:
            raise ValueError(f"cannot export to {to}: it is {what}, which the library needs; choose another file")
    if to.exists():
        with open(to, "rb") as f:
            if f.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                raise ValueError(f"cannot export to {to}: it exists and is not a NIR (HDF5) file; choose another "
                                 f"file or delete it first")
    return to


def load_student(run_dir: str | Path):
    """A finished run's trained student (eval mode) and its result dict (``model.pt`` read with
    ``weights_only=True``; a damaged one is an ``UnreadableFile`` naming it and the way back)."""
    from hybridkd_lib.base import checkpoint
    from hybridkd_lib.models import create_model
    from hybridkd_lib.base.results import UnreadableFile, read_result

    run_dir = Path(run_dir)
    result = read_result(run_dir)
    if result is None or not (run_dir / "model.pt").is_file():
        raise FileNotFoundError(f"run {str(run_dir)!r} has no result.json and model.pt (not finished?)")
    if not result.get("student"):
        raise ValueError(f"run {str(run_dir)!r} trained a teacher ({result.get('teacher')!r}), not a spiking student")
    try:
        state = checkpoint.load_model_file(run_dir / "model.pt")
    except UnreadableFile as exc:
        raise UnreadableFile(f"{exc}: run that run's `train` command again to restore it from its last "
                             f"checkpoint") from None
    model = create_model(state["arch"], num_classes=state["num_classes"], **state["model_kw"])
    model.load_state_dict(state["model"])
    return model.eval(), result


def _test_set(result: dict):
    from hybridkd_lib.data import datasets

    if datasets.is_sequence(result["dataset"]):
        raise NIRExportError(f"dataset {result['dataset']!r} is a frame sequence; the exporter takes students of "
                             f"static images (the image repeated at every timestep)")
    return datasets.get_datasets(result["dataset"], result.get("data_root"), **result.get("data_kw", {}))[1]


def export_run(run_dir: str | Path, to: str | Path, dt: float = DEFAULT_DT,
               approximate_soft_reset: bool = APPROXIMATE_SOFT_RESET):
    """``python -m hybridkd_lib export --run RUN_DIR --to model.nir``: the run's student as a NIR file;
    returns ``(path, graph)``. ``dt`` (``check_dt``) and ``to`` (``check_target``: never a file the library
    needs) are checked before anything is read."""
    dt, to = check_dt(dt), check_target(to)
    return _export(run_dir, to, dt, approximate_soft_reset)


def _export(run_dir, to: Path, dt: float, approximate_soft_reset: bool):
    model, result = load_student(run_dir)
    shape = tuple(_test_set(result)[0][0].shape[-3:])
    graph = to_nir(model, shape, dt, approximate_soft_reset)
    return write(graph, to), graph


def check_run(run_dir: str | Path, graph=None, batch_size: int = 128, device: str = "cpu") -> dict:
    """``check_in_snntorch`` of a run's student (exported here unless ``graph`` is given) on its whole test set."""
    model, result = load_student(run_dir)
    test_set = _test_set(result)
    graph = graph if graph is not None else to_nir(model, tuple(test_set[0][0].shape[-3:]))
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor([int(test_set[i][1]) for i in range(len(test_set))])
    out = check_in_snntorch(model, graph, list(zip(images.split(batch_size), labels.split(batch_size))), device)
    return dict(out, run=str(run_dir), student=result["student"], run_method=result["method"], dataset=result["dataset"])


def export_and_check(run: str | Path, out: str | Path, device: str = "cpu") -> dict:
    """The ``export`` notebook: ``out/model.nir`` of the run's student, then ``out/result.json`` with
    ``check_run``'s agreement figures (``kind: "nir_check"``)."""
    from hybridkd_lib.base.results import check_writable_folder, git_commit, write_json

    out = check_writable_folder(out)
    path, graph = _export(run, out / "model.nir", DEFAULT_DT, APPROXIMATE_SOFT_RESET)   # its own run folder
    result = dict(check_run(run, graph, device=device), kind="nir_check", nir_file=str(path),
                  nodes=len(graph.nodes), edges=len(graph.edges), dt=graph.metadata["dt"], device=str(device),
                  git_commit=git_commit())
    write_json(out / "result.json", result)
    return result


# ----------------------------------------------------------------------------- the check in a second framework
def hard_reset_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every LIF resets to 0: the network the exported graph describes."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, LIF):
            m.node.v_reset = 0.0
    return twin


def _our_run(model, x):
    """Logits ``[B, classes]`` and every LIF's spike counts over T (``{name: [B, ...]}``) of ``model`` on ``x``."""
    counts, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, LIF):
            handles.append(m.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, o.sum(0))))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, counts


def _snntorch_run(net, x, T):
    """The imported graph run for T steps on the static batch ``x``: mean logits and each LIF's spike counts."""
    import snntorch
    from snntorch import utils

    counts, handles = {}, []
    for name, m in net.named_modules():
        if isinstance(m, snntorch.SpikingNeuron):
            def hook(m, i, o, name=name):
                s = o[0] if isinstance(o, tuple) else o
                counts[name] = counts.get(name, 0) + s
            handles.append(m.register_forward_hook(hook))
    utils.reset(net)
    total = 0
    try:
        with torch.no_grad():
            for _ in range(T):
                out = net(x)
                total = total + (out[0] if isinstance(out, tuple) else out)
    finally:
        for h in handles:
            h.remove()
    return total.flatten(1) / T, counts


@dataclass
class _Agreement:
    """The imported graph against one reference network (the student, or its hard-reset twin), summed over
    batches: images with the same top-1, equal neuron x image spike counts over T (every LIF layer, and the last
    one alone) out of how many, and the largest logit difference."""
    same: float = 0.0
    counts: float = 0.0
    cells: float = 0.0
    last: float = 0.0
    last_cells: float = 0.0
    max_logit_difference: float = 0.0

    def add(self, logits, counts: dict, theirs, their_counts: dict, lif_names: list[str]) -> None:
        """One batch: the reference's ``logits`` and spike ``counts`` against the graph's."""
        self.same += float((logits.argmax(-1) == theirs.argmax(-1)).sum())
        self.max_logit_difference = max(self.max_logit_difference, float((logits - theirs).abs().max()))
        for k, name in enumerate(lif_names):
            ours = counts[name]
            equal = float((ours == their_counts[name.replace(".", "_")].reshape(ours.shape)).sum())
            self.counts += equal
            self.cells += ours.numel()
            if k == len(lif_names) - 1:
                self.last += equal
                self.last_cells += ours.numel()

    def figures(self, images: int, prefix: str) -> dict:
        """The agreement figures over ``images`` images, each named with ``prefix``."""
        return {prefix + "prediction_agreement": self.same / images,
                prefix + "spike_count_agreement": self.counts / self.cells,
                prefix + "last_lif_spike_count_agreement": self.last / self.last_cells,
                prefix + "max_logit_difference": self.max_logit_difference}


@dataclass
class _TestTop1:
    """Correct test predictions of the student and of the graph in snnTorch, out of ``labelled`` images."""
    student: float = 0.0
    snntorch: float = 0.0
    labelled: int = 0

    def add(self, logits, theirs, y) -> None:
        """One labelled batch: the student's ``logits`` and the graph's ``theirs`` against the labels ``y``."""
        self.student += float((logits.argmax(-1) == y).sum())
        self.snntorch += float((theirs.argmax(-1) == y).sum())
        self.labelled += len(y)

    def figures(self) -> dict:
        """Test top-1 (%) of the student and of the graph in snnTorch; none where no batch was labelled."""
        if not self.labelled:
            return {}
        return {"student_top1": 100.0 * self.student / self.labelled,
                "snntorch_top1": 100.0 * self.snntorch / self.labelled}


def _import_into_snntorch(graph, device: torch.device):
    """``graph`` as an snnTorch network (``snntorch.import_from_nir``) in eval mode on ``device``."""
    import contextlib
    import io

    import snntorch.import_nir as sn_import

    with contextlib.redirect_stdout(io.StringIO()):   # snnTorch prints a line per rescaled neuron
        net = sn_import.import_from_nir(graph)
    return net.eval().to(device)


def check_in_snntorch(model: nn.Module, graph, batches, device: str | torch.device = "cpu") -> dict:
    """Import ``graph`` into snnTorch (``snntorch.import_from_nir``) and run it beside the student on ``batches``
    (static inputs ``[B, C, H, W]``, or ``(inputs, labels)`` pairs: then also both test top-1s, ``student_top1`` and
    ``snntorch_top1``) for the student's T steps.

    Returns, over all images: ``prediction_agreement`` (fraction with the same top-1 as the student),
    ``spike_count_agreement`` (fraction of neuron x image spike counts over T that are equal, every LIF layer) and
    ``last_lif_spike_count_agreement``, ``max_logit_difference``; and the same three against the student with
    every reset made hard (``hard_reset_copy``, what the graph describes: the export's own exactness) under
    ``exact_*``."""
    device = torch.device(device)
    net = _import_into_snntorch(graph, device)
    model = model.eval().to(device)
    references = {"": model, "exact_": hard_reset_copy(model)}
    lif_names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    agreement, top1, images = {prefix: _Agreement() for prefix in references}, _TestTop1(), 0
    for item in batches:
        x, y = item if isinstance(item, (tuple, list)) else (item, None)
        x = x.to(device)
        theirs, their_counts = _snntorch_run(net, x, model.T)
        if sorted(their_counts) != sorted(n.replace(".", "_") for n in lif_names):
            raise RuntimeError(f"snnTorch built the neuron layers {sorted(their_counts)} from the graph; the student "
                               f"has {lif_names}")
        for prefix, ref in references.items():
            logits, counts = _our_run(ref, x)
            agreement[prefix].add(logits, counts, theirs, their_counts, lif_names)
            if y is not None and prefix == "":
                top1.add(logits, theirs, y.to(device))
        images += x.shape[0]
    out = {"images": int(images), "T": model.T, "framework": f"snntorch {_version('snntorch')}",
           "nir": _version("nir"), "approximations": graph.metadata.get("approximations", "none")}
    for prefix, tally in agreement.items():
        out.update(tally.figures(images, prefix))
    return {**out, **top1.figures()}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
