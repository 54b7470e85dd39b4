"""Grad-CAM (pytorch-grad-cam) of the ANN, the SNN and the hybrids M_k of one trained run (Fig. A).

Every model is wrapped as a module taking ``[B, C, H, W]`` and returning logits;
the SNN runs over T in inference form (spikingjelly's surrogate still gives
gradients there) and its temporal activations ``[T, B, C, H, W]`` are averaged
over T by the ``reshape_transform``. All maps are taken where the seed takes them,
at the output layer: the output of each model's last stage (``CAM_LAYER``), the
feature map its head pools. Every ``M_k`` ends with the teacher's last stage, so the
ANN and every M_k share that layer; the SNN's is its own last stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybridkd_lib.base import checkpoint
from hybridkd_lib.data import datasets
from hybridkd_lib.method.methods import methods_where
from hybridkd_lib.base.results import read_result
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.learner import Learner


def load_hybrid_run(run_dir: str | Path):
    """Rebuild a ``hybrid`` run's Learner (student, frozen teacher, alignment modules) and its data."""
    run_dir = Path(run_dir)
    result = read_result(run_dir)
    if result is None:
        raise FileNotFoundError(f"run {str(run_dir)!r} has no result.json (not run yet?)")
    if result.get("method") not in methods_where(hybrids=True):
        raise ValueError(f"run {str(run_dir)!r} has method {result.get('method')!r}; Grad-CAM of hybrids "
                         f"needs a run of a method with hybrids ({', '.join(methods_where(hybrids=True))})")
    cfg = TrainConfig.from_dict(result)
    train_set, test_set = datasets.get_datasets(cfg.dataset, cfg.data_root, **cfg.data_kw)
    num_classes = datasets.dataset_info(cfg.dataset).num_classes
    learner = Learner(cfg, num_classes, tuple(test_set[0][0].shape[-3:]))
    state = checkpoint.load(run_dir / "model.pt")
    learner.model.load_state_dict(state["model"])
    learner.aligns.load_state_dict(state["aligns"])
    return learner.eval(), test_set, result


class _Logits(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self, x):
        return self.fn(x)


def _mean_over_time(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 5:    # [T, B, C, H, W]
        t = t.mean(0)
    if t.dim() == 3:    # tokens [B, D, N] (channels first) -> [B, D, s, s]
        side = int(round(t.shape[-1] ** 0.5))
        t = t.reshape(*t.shape[:2], side, side)
    return t


CAM_LAYER = "the output of the last stage (the feature map the head pools)"


def cam_models(learner: Learner) -> dict[str, tuple[nn.Module, nn.Module]]:
    """name -> (model taking [B, C, H, W], target layer), for ANN, SNN and every M_k; the target
    is the model's output layer (``CAM_LAYER``)."""
    d = learner.distiller
    s, t = d.student, d.teacher
    out = {"ANN": (_Logits(lambda x: t(d._teacher_input(x)), t), t.stages[-1]),
           "SNN": (_Logits(s, s), s.stages[-1])}
    for k in range(d.num_hybrids):
        # M_k runs the teacher from stage pairs[k] + 1 on; when that is past the last stage, the
        # alignment module's output is what the head pools
        target = t.stages[-1] if d.pairs[k] < t.num_stages - 1 else d.aligns[k]
        out[f"M_{k}"] = (_Logits(lambda x, k=k: d.hybrid_logits(x, k), s, t, d.aligns), target)
    return out


def compute_cams(learner: Learner, images: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] per model, for the true labels."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = {}
    images = images.detach().clone().requires_grad_(True)  # the teacher is frozen: the graph starts here
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    for name, (model, layer) in cam_models(learner).items():
        with GradCAM(model=model, target_layers=[layer], reshape_transform=_mean_over_time) as cam:
            maps[name] = cam(input_tensor=images, targets=targets)
    return maps


def cam_figure(images: torch.Tensor, maps: dict[str, np.ndarray], title: str = ""):
    """Rows: images; columns: input, then each model's map over the input."""
    import matplotlib.pyplot as plt

    names = list(maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        img = images[i].float()
        img = img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
        axes[i, 0].imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None)
        for j, name in enumerate(names, start=1):
            axes[i, j].imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None)
            axes[i, j].imshow(maps[name][i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for j, label in enumerate(["input"] + names):
            if i == 0:
                axes[0, j].set_title(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def cam_similarity(maps: dict[str, np.ndarray], reference: str = "ANN") -> dict[str, float]:
    """Mean Pearson correlation of each model's maps with the reference's, over the images."""
    ref = maps[reference].reshape(len(maps[reference]), -1)
    out = {}
    for name, m in maps.items():
        m = m.reshape(len(m), -1)
        cs = [np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else np.nan for a, b in zip(ref, m)]
        out[name] = float(np.nanmean(cs)) if not np.all(np.isnan(cs)) else float("nan")
    return out


def check_cam_run(run: str | Path, n_images: int) -> dict:
    """The run's result if Grad-CAM can draw it (a finished ``hybrid`` run), else a clear error."""
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images={n_images!r}: must be an integer >= 1")
    res = read_result(run)
    if res is None:
        raise ValueError(f"run={str(run)!r}: no result.json there; allowed: a finished run directory of a method "
                         f"with hybrids ({', '.join(methods_where(hybrids=True))})")
    if res.get("method") not in methods_where(hybrids=True):
        raise ValueError(f"run={str(run)!r} has method {res.get('method')!r}; allowed: a run of a method with hybrids "
                         f"({', '.join(methods_where(hybrids=True))})")
    return res


def run_cam(run: str | Path, n_images: int, out: str | Path, seed: int = 0):
    """Fig. A for one trained run: Grad-CAM of the ANN, the SNN and every M_k on ``n_images`` test images
    (chosen by ``seed``); writes ``cam.png``, ``cam.npz`` and ``result.json`` into ``out`` (atomically,
    the result last) and returns ``(result, figure)``."""
    from datetime import datetime, timezone

    from hybridkd_lib.base.results import atomic_write, git_commit, write_json

    check_cam_run(run, n_images)
    learner, test_set, res = load_hybrid_run(run)
    idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed))[:n_images].tolist()
    images = torch.stack([test_set[i][0] for i in idx])
    labels = torch.tensor([int(test_set[i][1]) for i in idx])
    maps = compute_cams(learner, images, labels)
    fig = cam_figure(images, maps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "cam.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"), binary=True)
    atomic_write(out / "cam.npz", lambda f: np.savez_compressed(f, images=images.numpy(), labels=labels.numpy(),
                                                               indices=np.array(idx), **maps), binary=True)
    result = {"kind": "cam", "run": str(run), "device": "cpu", "git_commit": git_commit(), "indices": idx,
              "layer": CAM_LAYER, "similarity_to_ANN": cam_similarity(maps), "models": list(maps),
              "source_result": {k: res.get(k) for k in ("dataset", "student", "teacher", "T", "epochs", "seed", "top1",
                                                        "teacher_top1", "hybrid_top1", "device", "git_commit")},
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(out / "result.json", result)
    return result, fig
