"""HybridKD: ANN-guided distillation of spiking neural networks via hybrid block-wise replacement.

Sub-packages, each importing only those on floors below it (``tests/test_package.py`` checks this)::

    floor 9  __main__        ``python -m hybridkd_lib``
    floor 8  cli             the command line: datasets, train, bench, export, reproduce
    floor 7  book/           the book's machinery: plan, reproduce, cluster, dry run, evidence, claims, report
    floor 6  tools/          bench and its convolution floor (Fig. 4), Grad-CAM (Fig. A), NIR export
    floor 5  training/       a run: config, learner, step, speed, session, trainer, run folder, launch, processes
    floor 4  method/         the paper: the methods' registry, the losses, the hybrids M_k and alignment A_k
    floor 3  models/         the model registry, students and teachers on one stage protocol, their builders
    floor 2  snn/            spiking neurons, layers, RateBP, the LIF backends, spike costs
    floor 1  data/           the dataset catalogue and readers
    floor 0  base/           the results store, checkpoints, plug-ins, child processes

The names users import are here too, loaded on first use (``--help`` imports no torch)::

    from hybridkd_lib import TrainConfig, train, launch, create_model, register_model, register_method
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it (imported on first use)
API = {
    "TrainConfig": "hybridkd_lib.training.config",
    "train": "hybridkd_lib.training.trainer",
    "launch": "hybridkd_lib.training.launch",
    "Learner": "hybridkd_lib.training.learner",
    "LossConfig": "hybridkd_lib.method.losses",
    "StepOutputs": "hybridkd_lib.method.losses",
    "Method": "hybridkd_lib.method.methods",
    "register_method": "hybridkd_lib.method.methods",
    "get_method": "hybridkd_lib.method.methods",
    "HybridDistiller": "hybridkd_lib.method.hybrid",
    "create_model": "hybridkd_lib.models",
    "register_model": "hybridkd_lib.models",
    "list_models": "hybridkd_lib.models",
    "LIF": "hybridkd_lib.snn.neurons",
    "NeuronConfig": "hybridkd_lib.snn.neurons",
    "register_dataset": "hybridkd_lib.data.catalog",
    "get_datasets": "hybridkd_lib.data.datasets",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'hybridkd_lib' has no attribute {name!r}")
    return getattr(importlib.import_module(API[name]), name)


def __dir__():
    return sorted(set(globals()) | set(API))
