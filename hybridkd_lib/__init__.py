"""HybridKD: ANN-guided distillation of spiking neural networks via hybrid block-wise replacement.

Layers (arrows point down): cli -> trainer -> learner -> hybrid -> ratebp -> neurons;
trainer -> config (TrainConfig, validate), distributed, speed (memory tricks, one seam);
models/ (registry, students, teachers) -> layers, neurons; data, results, checkpoint.
"""
__version__ = "0.1.0"
