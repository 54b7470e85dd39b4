"""The defaults of the bench (``efficiency.bench``) and of the NIR export (``nirexport.export_run``), written once.

Torch-free, so the command line shows them in ``--help`` without importing torch; the functions they configure
take them as their signature defaults.
"""
# efficiency.bench: Fig. 4's networks, T values and synthetic batch
BENCH_STUDENT = "spiking_resnet18"
BENCH_TEACHER = "cifar_resnet18"
BENCH_TS = (1, 2, 4, 8)
BENCH_BATCH_SIZE = 32
BENCH_INPUT_SIZE = 32
BENCH_DEVICE = "cpu"
BENCH_STEPS = 3    # timed steps (and as many again, each after one timing of the conv floor)
BENCH_WARMUP = 1
BENCH_PRECISION = "fp32"   # a CUDA step's compute precision (training.config.PRECISIONS); the CPU computes in fp32
CHILD_TIMEOUT_S = 3600.0   # one bench configuration in its own process (a full-width T=8 CPU step: minutes)

# nirexport: seconds per timestep; snnTorch's NIR import assumes 1e-4 (Norse's default dt is 1e-3)
DEFAULT_DT = 1e-4
# a soft reset (v = u - theta), which NIR's LIF cannot express: "refuse" it (the default, as spikingjelly's
# exporter does), write it "exact" (a leaky integrator, a threshold and a recurrent edge subtracting lambda * theta),
# or "approximate" it by NIR's LIF with its reset to 0 (what snnTorch and spikingjelly read)
SOFT_RESETS = ("refuse", "exact", "approximate")
SOFT_RESET = "refuse"
