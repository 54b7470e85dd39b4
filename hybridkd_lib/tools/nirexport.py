"""Export a trained spiking student to a NIR graph (the Neuromorphic Intermediate Representation, ``nir``).

What the graph holds, for the CIFAR spiking ResNets (ResNet-18, ResNet-19: conv3x3 stem, BasicBlocks):

- every convolution with the BatchNorm after it folded in (inference BN: running statistics), as ``nir.Conv2d``
  with a bias; a residual addition is two edges into the LIF after it (NIR sums a node's inputs); a 1x1
  shortcut is its own ``Conv2d``;
- the global average pool as ``nir.AvgPool2d`` over the whole map, each Linear layer as a 1x1 ``Conv2d`` on the
  pooled ``[C, 1, 1]`` map (so no ``Flatten`` with its batch-dimension ambiguity), the logits ``[classes, 1, 1]``
  at every timestep (the student's prediction: their mean over T);
- every LIF in continuous time for a timestep ``dt``: the student's discrete charge
  ``u_t = lambda * v_{t-1} + in_scale * x_t`` is NIR's ``tau dv/dt = (v_leak - v) + r I`` stepped by forward
  Euler with ``tau = dt / (1 - lambda)`` (= ``dt * tau_steps``), ``r = in_scale * tau / dt``, ``v_leak = 0``.

The reset. A hard reset to 0 is NIR's ``LIF`` exactly. NIR's LIF cannot reset by subtraction
(``v = u - theta``, the reference's soft reset), so a soft-reset student takes ``soft_reset`` (``SOFT_RESETS``):

- ``"refuse"`` (the default, as spikingjelly's ``export_to_nir`` does): ``NIRExportError`` naming the other two;
- ``"exact"``: each LIF as three nodes, ``nir.LI`` (the pre-reset potential ``u``, no reset), ``nir.Threshold``
  (the spikes, named as the LIF) and ``nir.Scale`` on a recurrent edge back into the LI with
  ``-lambda * theta / in_scale``: with the reader's one-step delay on a recurrent edge,
  ``u_t = lambda * u_{t-1} + in_scale * x_t - lambda * theta * s_{t-1}``, the soft reset exactly. snnTorch 1.0,
  spikingjelly 2.0 and Norse 1.1 map none of the three nodes, so ``check_graph`` runs such a graph on nirtorch's
  executor (the one those readers share) with ``exact_reader_maps``: NIR's own equations for the three nodes;
- ``"approximate"``: NIR's LIF with its reset to 0, said in the graph's metadata; ``check_graph`` runs it in
  snnTorch and measures what the approximation changes.

The exact graph is the student in real arithmetic; in float32 its reset, summed in another order
(``lambda u - lambda theta s`` for ``lambda (u - theta s)``), and NIR's ``v > theta`` where spikingjelly fires at
``u >= theta`` can differ from the student only where a potential lands within rounding of theta. Max-pooling,
products of two activations (spiking attention) and the other students' blocks are refused, naming the layer.
Against spikingjelly's own ``export_to_nir`` (``tests/test_nirexport.py``): on a hard-reset student both write
the same convolutions and LIF constants; spikingjelly cannot trace these multi-step students or fold a BN, and
writes a Linear as ``Flatten`` + ``Affine`` where this exporter writes a 1x1 ``Conv2d``.
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
from hybridkd_lib.tools.defaults import DEFAULT_DT, SOFT_RESET, SOFT_RESETS


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
    def __init__(self, dt: float, soft_reset: str):
        self.nodes, self.edges, self.shapes = {}, [], {}
        self.dt, self.soft_reset = dt, soft_reset
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
        """The LIF ``name`` fed by ``inputs``; returns the node whose output is its spikes."""
        import nir

        if not isinstance(lif, LIF):
            _refuse(name, lif, "expected a LIF layer here")
        cfg, shape = lif.cfg, self.shapes[inputs[0]]
        if cfg.v_reset is not None and cfg.v_reset != 0.0:
            raise NIRExportError(f"cannot export layer {name!r} (LIF): hard reset to v_reset={cfg.v_reset} starts "
                                 f"from v = v_reset in spikingjelly and from 0 in NIR's readers")
        if cfg.v_reset is None and self.soft_reset == "refuse":
            raise NIRExportError(f"cannot export layer {name!r} (LIF): it resets by subtraction (soft reset), which "
                                 f"NIR's LIF cannot express (it resets to v_reset); pass soft_reset='exact' (command "
                                 f"line: --soft-reset exact) to write it as NIR's LI, Threshold and a recurrent Scale "
                                 f"(exact; snnTorch and spikingjelly cannot read it) or soft_reset='approximate' "
                                 f"(--soft-reset approximate) to write NIR's LIF with its reset to 0 instead (an "
                                 f"approximation)")
        tau = self.dt / (1.0 - cfg.decay)
        full = lambda v: np.full(shape, v, dtype=np.float32)
        leak = dict(tau=full(tau), r=full(cfg.in_scale * tau / self.dt), v_leak=full(0.0))   # the charge
        if cfg.v_reset is None and self.soft_reset == "exact":
            return self._soft_reset_lif(name, lif, inputs, leak, full)
        if cfg.v_reset is None and not self.approximations:
            self.approximations.append("soft reset (v = u - theta) exported as NIR's reset to 0")
        node = nir.LIF(**leak, v_threshold=full(lif.v_threshold), v_reset=full(0.0))
        return self.add(name, node, inputs, shape)

    def _soft_reset_lif(self, name, lif: LIF, inputs, leak: dict, full):
        """The soft-reset LIF exactly: ``{name}.membrane`` (LI with the charge ``leak``: ``u``), ``name``
        (Threshold, the spikes) and ``{name}.reset`` (Scale ``-lambda theta / in_scale``) on the recurrent edge
        back into the LI."""
        import nir

        cfg, shape = lif.cfg, self.shapes[inputs[0]]
        membrane = f"{name}.membrane"
        self.add(membrane, nir.LI(**leak), [*inputs, f"{name}.reset"], shape)
        self.add(name, nir.Threshold(threshold=full(lif.v_threshold)), [membrane], shape)
        self.add(f"{name}.reset", nir.Scale(scale=full(-cfg.decay * lif.v_threshold / cfg.in_scale)), [name], shape)
        return name

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


def check_soft_reset(soft_reset) -> str:
    """``soft_reset`` if it is one of ``SOFT_RESETS``, else a ``ValueError`` naming it and them."""
    if soft_reset not in SOFT_RESETS:
        raise ValueError(f"soft_reset={soft_reset!r} not allowed; choose one of {', '.join(SOFT_RESETS)}")
    return soft_reset


def to_nir(model: nn.Module, input_shape: tuple, dt: float = DEFAULT_DT, soft_reset: str = SOFT_RESET):
    """The NIR graph of a trained spiking ResNet (``input_shape``: one image, ``(C, H, W)``) for timestep ``dt``
    seconds, a soft reset written as ``soft_reset`` says (module docstring); its ``metadata`` records ``T``,
    ``dt``, ``soft_reset`` and every ``approximations`` entry. Raises ``NIRExportError`` naming the first layer
    NIR cannot express (a soft-reset LIF by default)."""
    import nir

    check_dt(dt)
    check_soft_reset(soft_reset)
    if not isinstance(model, SpikingResNet):
        _refuse("", model, f"{type(model).__name__} is not a CIFAR spiking ResNet")
    g = _Graph(float(dt), soft_reset)
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
    soft = any(m.cfg.v_reset is None for m in model.modules() if isinstance(m, LIF))
    metadata = {"T": int(model.T), "dt": g.dt, "approximations": "; ".join(g.approximations) or "none",
                "soft_reset": soft_reset if soft else "none (hard reset to 0)",
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


def export_run(run_dir: str | Path, to: str | Path, dt: float = DEFAULT_DT, soft_reset: str = SOFT_RESET):
    """``python -m hybridkd_lib export --run RUN_DIR --to model.nir [--soft-reset exact]``: the run's student as
    a NIR file; returns ``(path, graph)``. ``dt`` (``check_dt``), ``soft_reset`` (``check_soft_reset``) and ``to``
    (``check_target``: never a file the library needs) are checked before anything is read."""
    dt, soft_reset, to = check_dt(dt), check_soft_reset(soft_reset), check_target(to)
    return _export(run_dir, to, dt, soft_reset)


def _export(run_dir, to: Path, dt: float, soft_reset: str):
    model, result = load_student(run_dir)
    shape = tuple(_test_set(result)[0][0].shape[-3:])
    graph = to_nir(model, shape, dt, soft_reset)
    return write(graph, to), graph


def check_run(run_dir: str | Path, graph, batch_size: int = 128, device: str = "cpu") -> dict:
    """``check_graph`` of a run's student against ``graph`` (its export) on the run's whole test set."""
    model, result = load_student(run_dir)
    test_set = _test_set(result)
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor([int(test_set[i][1]) for i in range(len(test_set))])
    out = check_graph(model, graph, list(zip(images.split(batch_size), labels.split(batch_size))), device)
    return dict(out, run=str(run_dir), student=result["student"], run_method=result["method"], dataset=result["dataset"])


def export_and_check(run: str | Path, out: str | Path, device: str, soft_reset: str) -> dict:
    """The ``export`` notebook: ``out/model.nir`` of the run's student (a soft reset written as ``soft_reset``
    says), then ``out/result.json`` with ``check_run``'s figures (``kind: "nir_check"``)."""
    from hybridkd_lib.base.results import check_writable_folder, git_commit, write_json

    check_soft_reset(soft_reset)
    out = check_writable_folder(out)
    path, graph = _export(run, out / "model.nir", DEFAULT_DT, soft_reset)   # its own run folder
    result = dict(check_run(run, graph, device=device), kind="nir_check", nir_file=str(path),
                  nodes=len(graph.nodes), edges=len(graph.edges), dt=graph.metadata["dt"],
                  soft_reset=graph.metadata["soft_reset"], device=str(device), git_commit=git_commit())
    write_json(out / "result.json", result)
    return result


def summary(out: dict) -> str:
    """``check_graph``'s figures in two lines: dt, the reader, both test top-1s and the agreements."""
    top1 = (f"top-1 {out['student_top1']:.2f} % (student) / {out['reader_top1']:.2f} % (graph)"
            if "student_top1" in out else "no labels")
    return (f"{out['framework']} on {out['images']} images, T={out['T']}, dt={out['dt']:g} s: {top1}; same "
            f"prediction {100 * out['prediction_agreement']:.2f} %, equal spike counts "
            f"{100 * out['spike_count_agreement']:.2f} %\nagainst the network the graph describes "
            f"({out['describes']}): {100 * out['exact_prediction_agreement']:.2f} % and "
            f"{100 * out['exact_spike_count_agreement']:.2f} %")


# ----------------------------------------------------------------------------- the check in a reader
def hard_reset_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every LIF resets to 0: what an ``"approximate"`` export describes."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, LIF):
            m.node.v_reset = 0.0
    return twin


def _approximated(graph) -> bool:
    return str(graph.metadata.get("approximations", "none")) != "none"


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


@dataclass
class _Reader:
    """An imported graph: ``net`` (a nirtorch ``GraphModule``: ``(output, state)`` per step), the module types
    that spike, the reader's name and ``restart`` (clears the state a reader keeps inside its modules)."""
    net: nn.Module
    spike_types: tuple
    name: str
    restart: object = None


def _graph_run(reader: _Reader, x, T: int):
    """The imported graph run from rest for T steps on the static batch ``x`` ``[B, C, H, W]`` (the state passed
    back each step): mean logits ``[B, classes]`` and each spiking module's spike counts (``{name: [B, ...]}``)."""
    if reader.restart is not None:
        reader.restart()
    net, counts, handles = reader.net, {}, []
    for name, m in net.named_modules():
        if isinstance(m, reader.spike_types):
            def hook(m, i, o, name=name):
                s = o[0] if isinstance(o, tuple) else o
                counts[name] = counts.get(name, 0) + s
            handles.append(m.register_forward_hook(hook))
    total, state = 0, None
    try:
        with torch.no_grad():
            for _ in range(T):
                out = net(x) if state is None else net(x, state)
                out, state = out if isinstance(out, tuple) else (out, None)
                total = total + out
    finally:
        for h in handles:
            h.remove()
    return total.flatten(1) / T, counts


class _LeakyIntegrator(nn.Module):
    """NIR's ``LI`` (``tau dv/dt = (v_leak - v) + r I``, output ``v``) by forward Euler at ``dt`` from ``v = 0``:
    ``v + (dt/tau) (v_leak - v) + (dt/tau) r I``, the input's gain computed once (``= in_scale`` for a student's
    ``r``). ``forward(x, state)``: the input and the last step's ``v`` (``[B, ...]``, None at rest) to ``(v, v)``."""

    def __init__(self, node, dt: float):
        super().__init__()
        rate = dt / np.asarray(node.tau, dtype=np.float64)
        for name, value in (("rate", rate), ("gain", rate * node.r), ("v_leak", node.v_leak)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value, dtype=np.float32)))

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = v + self.rate * (self.v_leak - v) + self.gain * x
        return v, v


class _Threshold(nn.Module):
    """NIR's ``Threshold``: ``H(I - threshold)``, a spike where the input is above the threshold."""

    def __init__(self, node):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(np.asarray(node.threshold, dtype=np.float32)))

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


class _Scale(nn.Module):
    """NIR's ``Scale``: the input times ``scale``, element by element."""

    def __init__(self, node):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(node.scale, dtype=np.float32)))

    def forward(self, x):
        return x * self.scale


def exact_reader_maps(dt: float) -> dict:
    """nirtorch node maps for the three nodes of an ``"exact"`` soft reset (LI, Threshold, Scale), which snnTorch
    1.0, spikingjelly 2.0 and Norse 1.1 do not map: NIR's equations, stepped at ``dt``."""
    import nir

    return {nir.LI: lambda node: _LeakyIntegrator(node, dt), nir.Threshold: _Threshold, nir.Scale: _Scale}


def _import_graph(graph, device: torch.device) -> _Reader:
    """``graph`` as a network in eval mode on ``device``: snnTorch (``snntorch.import_from_nir``), or nirtorch's
    executor with ``exact_reader_maps`` for a graph holding NIR ``LI`` nodes (an ``"exact"`` soft reset)."""
    import contextlib

    import nir

    if any(isinstance(node, nir.LI) for node in graph.nodes.values()):
        import nirtorch

        net = nirtorch.nir_to_torch(graph, exact_reader_maps(float(graph.metadata["dt"])))
        return _Reader(net.eval().to(device), (_Threshold,), f"nirtorch {_version('nirtorch')} (exact_reader_maps)")
    import snntorch
    import snntorch.import_nir as sn_import
    from snntorch import utils

    with contextlib.redirect_stdout(io.StringIO()):   # snnTorch prints a line per rescaled neuron
        net = sn_import.import_from_nir(graph).eval().to(device)
    return _Reader(net, (snntorch.SpikingNeuron,), f"snntorch {_version('snntorch')}", lambda: utils.reset(net))


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
    """Correct test predictions of the student and of the graph in its reader, out of ``labelled`` images."""
    student: float = 0.0
    reader: float = 0.0
    labelled: int = 0

    def add(self, logits, theirs, y) -> None:
        """One labelled batch: the student's ``logits`` and the graph's ``theirs`` against the labels ``y``."""
        self.student += float((logits.argmax(-1) == y).sum())
        self.reader += float((theirs.argmax(-1) == y).sum())
        self.labelled += len(y)

    def figures(self) -> dict:
        """Test top-1 (%) of the student and of the graph in its reader; none where no batch was labelled."""
        if not self.labelled:
            return {}
        return {"student_top1": 100.0 * self.student / self.labelled,
                "reader_top1": 100.0 * self.reader / self.labelled}


def check_graph(model: nn.Module, graph, batches, device: str | torch.device = "cpu") -> dict:
    """Import ``graph`` into its reader (``_import_graph``: snnTorch, or nirtorch for an ``"exact"`` soft reset)
    and run it beside the student on ``batches`` (static inputs ``[B, C, H, W]``, or ``(inputs, labels)`` pairs:
    then also both test top-1s, ``student_top1`` and ``reader_top1``) for the student's T steps.

    Returns, over all images, ``dt``, ``framework`` (the reader), ``prediction_agreement`` (fraction with the
    same top-1 as the student), ``spike_count_agreement`` (fraction of neuron x image spike counts over T that are
    equal, every LIF layer), ``last_lif_spike_count_agreement``, ``max_logit_difference``; and the same against
    the network the graph describes (``describes``: the student, or its ``hard_reset_copy`` where the export
    approximated a soft reset) under ``exact_*``: the export's own exactness."""
    device = torch.device(device)
    reader = _import_graph(graph, device)
    model = model.eval().to(device)
    approximated = _approximated(graph)
    references = {"": model, "exact_": hard_reset_copy(model) if approximated else model}
    lif_names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    agreement, top1, images = {prefix: _Agreement() for prefix in references}, _TestTop1(), 0
    for item in batches:
        x, y = item if isinstance(item, (tuple, list)) else (item, None)
        x = x.to(device)
        theirs, their_counts = _graph_run(reader, x, model.T)
        if sorted(their_counts) != sorted(n.replace(".", "_") for n in lif_names):
            raise RuntimeError(f"{reader.name} built the neuron layers {sorted(their_counts)} from the graph; the "
                               f"student has {lif_names}")
        ours = _our_run(model, x)
        for prefix, ref in references.items():
            logits, counts = ours if ref is model else _our_run(ref, x)
            agreement[prefix].add(logits, counts, theirs, their_counts, lif_names)
        if y is not None:
            top1.add(ours[0], theirs, y.to(device))
        images += x.shape[0]
    out = {"images": int(images), "T": model.T, "dt": float(graph.metadata["dt"]), "framework": reader.name,
           "nir": _version("nir"), "approximations": str(graph.metadata.get("approximations", "none")),
           "describes": "the student with every reset to 0" if approximated else "the student"}
    for prefix, tally in agreement.items():
        out.update(tally.figures(images, prefix))
    return {**out, **top1.figures()}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
