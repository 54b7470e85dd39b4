"""HybridKD: ANN-guided distillation of spiking neural networks via hybrid block-wise replacement.

Layers (arrows point down): cli -> trainer -> hybrid -> ratebp -> neurons;
models/ (registry, students, teachers) -> layers, neurons; data, results, checkpoint.
"""
__version__ = "0.1.0"
