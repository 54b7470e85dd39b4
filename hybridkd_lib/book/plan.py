"""The reproduction plan: every table cell and figure of the seed, mapped to runs.

Profiles:
- ``smoke``: seconds per run (tests).
- ``quick``: scikit-learn digits on the CPU, the default of ``make book``; the
  same pipeline as the paper at a scale a 2-core machine runs in minutes.
- ``full``: the paper's settings (Table C) on CIFAR-10/100, ImageNet and
  CIFAR10-DVS, for GPU machines with the data. Table C is rendered from it.
- ``ablation``: the open choices of the hybrid loss and the 1/T gradient scale
  (``ABLATIONS``) on the quick scale, 3 seeds each (about 20 CPU-minutes; the
  "What the paper leaves open" page).
- ``fashion``: the supplementary's claims tested on Fashion-MNIST on the CPU
  (``_fashion_plan``): Table A's pairs at every T and the method comparison of
  Table B, each cell over the same ``FASHION_SEEDS`` (paired comparisons); its
  records are committed (``book/data/fashion/``, the "What the measurements say" page).

A run's parameter ``"@NAME"`` is a reference to run NAME's result folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from hybridkd_lib.method.methods import BENCH_METHODS, BUILT_IN, methods_where

PROFILES = ("smoke", "quick", "full", "ablation", "fashion")
# Table B: the RateBP methods on Spikingformer (RateBP alone, Vanilla KD, ours)
TABLE_B_METHODS = tuple(m for m in methods_where(trains="student", propagation="rate") if m in BUILT_IN)
NOTEBOOKS = ("train_teacher", "train_student", "efficiency", "cam", "export")


@dataclass
class Run:
    name: str
    notebook: str
    params: dict
    cells: list[str] = field(default_factory=list)  # book cells this run feeds
    nproc: int = 1   # training processes (GPUs) on one machine; batch_size in params is the global batch
    time_h: float = 1.0   # wall time a scheduler job of this run asks for (cluster launcher)

    @property
    def gpus(self) -> bool:
        """Whether the run trains or measures on GPUs (then it asks the scheduler for ``nproc`` of them)."""
        return str(self.params.get("device", "cpu")).startswith("cuda")

    @property
    def needs(self) -> list[str]:
        return [v[1:] for v in self.params.values() if isinstance(v, str) and v.startswith("@")]


def _check_profile(profile: str):
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")


# Scaled-down settings of the CPU profiles (say on each page what was scaled down).
# ``student_loss``: the CPU profiles train 10-12 epochs, not 300, so their RateBP students drop the
# reference's 1/T gradient scale (``LossConfig.ratebp_grad_scale``): with it, the same learning rate
# is a T-times smaller step and a ResNet-19 student at T=8 is far from converged after 10 epochs (the
# ``ablation`` profile measures it; the "What the paper leaves open" page). The full profile keeps it.
# ``student_epochs`` 12 and ``precise_bn``: at 10 epochs the slowest quick students (ResNet-19) still
# moved by about a point between their last epochs (the ablation profile, which keeps 10, shows it), and
# with the weights held fixed their test top-1 moves by up to 0.9 points from the BN running averages'
# sampling noise alone (a digits epoch is 21 batches; spiking thresholds turn small shifts into flipped
# spikes). So the students' BN statistics are recomputed from 8 fixed training batches before each
# evaluation (``trainer.recompute_bn_stats``).
# ``sf_lr``: Spikingformer's AdamW learning rate; its source's neurons (input decay, hard reset) fire
# less than the reference's, and 10 epochs at 1e-3 left its quick runs still climbing (final 83-94 %).
SCALE = {
    "smoke": dict(dataset="digits", data_kw={"image_size": 8}, width=4, sf_dim=32, teacher_epochs=1,
                  student_epochs=1, max_steps=2, Ts=(2,), seeds=(0,), bench_T=(1,), bench_batch=4,
                  bench_input=16, bench_steps=1, vit_epochs=1, student_loss={"ratebp_grad_scale": False}, sf_lr=3e-3, precise_bn=1,
                  vit=dict(img_size=8, patch_size=2, depth=4, embed_dim=32, num_heads=2)),
    "quick": dict(dataset="digits", data_kw={"image_size": 16}, width=16, sf_dim=64, teacher_epochs=15,
                  student_epochs=12, max_steps=None, Ts=(2, 4, 6, 8), seeds=(0,), bench_T=(1, 2, 4, 8),
                  bench_batch=32, bench_input=32, bench_steps=2,
                  vit_epochs=30, student_loss={"ratebp_grad_scale": False}, sf_lr=3e-3, precise_bn=8, vit=dict(img_size=16, patch_size=4, depth=4, embed_dim=96, num_heads=3)),
}


# The fashion profile: Fashion-MNIST at a scale whose whole plan runs in about 1.5 hours on 2 CPU cores (measured:
# 94 minutes, the "What the measurements say" page). Scaled down from the full profile: 16x16 images (bilinear, antialiased),
# fixed class-balanced subsets of 1,500 training and 2,000 test images (the same for every run), widths 8 (a step
# costs about 40 % less than at the quick profile's 16), 10 student epochs (at 5 epochs of 2,000 images a T=2
# student still moved 3 points over its last 3 epochs); the quick profile's student settings otherwise (no 1/T
# gradient scale, precise BN).
SCALE["fashion"] = dict(SCALE["quick"], dataset="fashion_mnist", data_kw={"image_size": 16, "n_train": 1500, "n_test": 2000},
                        width=8, teacher_epochs=15, student_epochs=10, vit_epochs=30, seeds=(0, 1, 2))
FASHION_SEEDS = SCALE["fashion"]["seeds"]


# NIR's LIF resets to a value; the reference's students reset by subtraction. So each NIR check exports the
# Table A student as trained, exactly (NIR's LI, Threshold and a recurrent Scale) and approximately (NIR's LIF with
# its reset to 0, what snnTorch reads), and a twin trained with NIR's hard reset to 0 (NIR's LIF, exact).
HARD_RESET = {"v_reset": 0.0}


def nir_runs(student: Run, device: str) -> list[Run]:
    """The export runs of a Table A student: its hard-reset twin (trained here), the student exported with its
    soft reset exact and approximated, and the twin exported, each checked beside its student (Spike costs)."""
    tag = student.name.rsplit("_T", 1)[0].split("hybrid_", 1)[1]
    twin = Run(f"{student.name}_hardreset", student.notebook, dict(student.params, neuron=HARD_RESET),
               ["Spike costs"], nproc=student.nproc, time_h=student.time_h)
    exports = ((student, "", "exact"), (student, "_approximate", "approximate"), (twin, "_hardreset", "exact"))
    return [twin] + [Run(f"nir_{tag}{suffix}", "export", dict(run=f"@{r.name}", device=device, soft_reset=soft),
                         ["Spike costs"], time_h=2) for r, suffix, soft in exports]


def _cpu_plan(profile: str) -> list[Run]:
    s = SCALE[profile]
    common = dict(dataset=s["dataset"], data_kw=s["data_kw"], device="cpu", batch_size=64,
                  max_steps_per_epoch=s["max_steps"], seed=0)
    w = {"width": s["width"]}
    cam_T = 4 if 4 in s["Ts"] else s["Ts"][0]  # Fig. A uses the T=4 R18<-R18 hybrid
    runs = [
        Run("teacher_r18", "train_teacher", dict(common, teacher="cifar_resnet18", teacher_kw=w,
                                                  epochs=s["teacher_epochs"], lr=0.05, weight_decay=5e-4,
                                                  optimizer="sgd"), ["Table A"]),
        Run("teacher_r34", "train_teacher", dict(common, teacher="cifar_resnet34", teacher_kw=w,
                                                  epochs=s["teacher_epochs"], lr=0.05, weight_decay=5e-4,
                                                  optimizer="sgd"), ["Table A"]),
        Run("teacher_vit", "train_teacher", dict(common, teacher="vit_small_patch16_224",
                                                  teacher_kw=s["vit"], epochs=s["vit_epochs"], lr=2e-3,
                                                  weight_decay=0.05, optimizer="adamw"), ["Table B"]),
    ]
    for T in s["Ts"]:
        for student, teacher, tw in (("spiking_resnet18", "cifar_resnet18", "teacher_r18"),
                                     ("spiking_resnet19", "cifar_resnet34", "teacher_r34")):
            tag = "r18_r18" if student.endswith("18") else "r19_r34"
            runs.append(Run(f"hybrid_{tag}_T{T}", "train_student", dict(
                common, method="hybrid", student=student, student_kw=w, teacher=teacher, teacher_ckpt=f"@{tw}",
                loss=dict(s["student_loss"]), precise_bn=s["precise_bn"], T=T, epochs=s["student_epochs"], lr=0.1, weight_decay=5e-4, optimizer="sgd"),
                [f"Table A {tag} T={T}"] + (["Fig. A"] if (tag == "r18_r18" and T == cam_T) else [])))
    for method in TABLE_B_METHODS:
        runs.append(Run(f"sf_{method}", "train_student", dict(
            common, method=method, student="spikingformer_4_256", student_kw={"dim": s["sf_dim"]},
            teacher="vit_small_patch16_224", teacher_kw=s["vit"],
            teacher_ckpt="@teacher_vit" if method in methods_where(teacher=True) else None, loss=dict(s["student_loss"]),
            precise_bn=s["precise_bn"], T=4, epochs=s["student_epochs"],
            lr=s["sf_lr"], weight_decay=0.05, optimizer="adamw"), [f"Table B {method}"]))
    runs.append(Run("cam", "cam", dict(run=f"@hybrid_r18_r18_T{cam_T}", n_images=4), ["Fig. A"]))
    for tag in ("r18_r18", "r19_r34"):   # NIR export of the T=4 students, checked in snnTorch (Spike costs page)
        base = next(r for r in runs if r.name == f"hybrid_{tag}_T{cam_T}")
        runs += nir_runs(base, "cpu")
    runs.append(Run("efficiency", "efficiency", dict(
        student="spiking_resnet18", teacher="cifar_resnet18", student_kw=w, teacher_kw=w,
        Ts=list(s["bench_T"]), methods=list(BENCH_METHODS),
        batch_size=s["bench_batch"], input_size=s["bench_input"], device="cpu", precision="fp32", steps=s["bench_steps"]),
        ["Fig. 4"]))
    return runs


def _fashion_plan() -> list[Run]:
    """The claims of the supplementary on Fashion-MNIST: Table A (R18 <- R18, R19 <- R34, our method, T = 2, 4,
    6, 8) and Table B's comparison (RateBP alone, Vanilla KD, ours at T = 4) on Spikingformer <- ViT and on
    R18 <- R18 (whose "ours" cell is Table A's T = 4 run), every student cell over ``FASHION_SEEDS``; teachers
    one seed each; Fig. A from the seed-0 R18 <- R18 T = 4 student. The runs are the CPU plan's at the fashion
    scale, renamed ``fashion_*`` (students ``*_s<seed>``)."""
    base = {r.name: r for r in _cpu_plan("fashion")}
    at = lambda ref: "@fashion_" + ref[1:] if isinstance(ref, str) and ref.startswith("@") else ref
    runs = [Run(f"fashion_{t}", "train_teacher", dict(base[t].params), ["fashion"])
            for t in ("teacher_r18", "teacher_r34", "teacher_vit")]

    def student(name: str, run: Run, seed: int, **changes) -> Run:
        prm = dict(run.params, seed=seed, **changes)
        return Run(f"fashion_{name}_s{seed}", "train_student", dict(prm, teacher_ckpt=at(prm.get("teacher_ckpt"))),
                   ["fashion"])

    r18 = base["hybrid_r18_r18_T4"]
    for seed in FASHION_SEEDS:
        for T in SCALE["fashion"]["Ts"]:
            for tag in ("r18_r18", "r19_r34"):
                runs.append(student(f"hybrid_{tag}_T{T}", base[f"hybrid_{tag}_T{T}"], seed))
        for method in TABLE_B_METHODS:
            if method != "hybrid":
                runs.append(student(f"{method}_r18_r18_T4", r18, seed, method=method,
                                    teacher_ckpt=r18.params["teacher_ckpt"] if method in methods_where(teacher=True)
                                    else None))
            runs.append(student(f"sf_{method}", base[f"sf_{method}"], seed))
    runs.append(Run("fashion_cam", "cam", dict(base["cam"].params, run=f"@fashion_hybrid_r18_r18_T4_s{FASHION_SEEDS[0]}"),
                    ["fashion", "Fig. A"]))
    return runs


# Wall time each kind of full-profile job asks the scheduler for (a request with headroom, not a
# measurement: the cluster launcher's --time overrides it; a run stopped at the limit resumes when resubmitted).
JOB_HOURS = {"cifar": 24, "cifar_snn": 48, "vit": 12, "spikingformer": 72, "imagenet": 96}

# Where the full profile expects the weights it starts from (see the Datasets page).
CHECKPOINTS = {"resnet34": "data/checkpoints/resnet34_timm.pth", "resnet50": "data/checkpoints/resnet50_timm.pth",
               "vit_imagenet": "data/checkpoints/vit_small_patch16_224_imagenet.pth"}
# The timm weights each checkpoint above is pinned to (a project choice: the supplementary names timm and the
# teachers' accuracies, not the weights): timm's default pretrained tags for these architectures (timm >= 0.9),
# what ``timm.create_model(arch, pretrained=True)`` loads. Table C's page checks the measured teacher top-1
# against the reported one (``TEACHER_TOLERANCE``, points).
TIMM_WEIGHTS = {"resnet34": "resnet34.a1_in1k", "resnet50": "resnet50.a1_in1k",
                "vit_imagenet": "vit_small_patch16_224.augreg_in21k_ft_in1k"}
TEACHER_TOLERANCE = 0.5
IMAGENET_NPROC = 8  # the RateBP code's ImageNet batch of 512 = 8 GPUs x 64 (the supplementary states no batch)


def _full_plan() -> list[Run]:
    """Table C settings. ImageNet teachers come from local timm checkpoints; the CIFAR ViT-S/16
    teachers of Table B are fine-tuned here at 224 from a local ImageNet ViT-S/16 checkpoint."""
    runs = [r for ds in ("cifar10", "cifar100") for r in _full_cifar_runs(ds)]
    runs += _full_imagenet_runs() + _full_dvs_runs()
    for r in runs:   # as the RateBP reference trains: in float32, the cosine schedule stepped once per epoch
        if r.notebook.startswith("train_"):
            r.params.update(precision="fp32", lr_step="epoch")
    runs.append(Run("cam", "cam", dict(run="@imagenet_hybrid_sew_resnet34_resnet34", n_images=4), ["Fig. A"]))
    for tag in ("r18_r18", "r19_r34"):
        runs += nir_runs(next(r for r in runs if r.name == f"cifar10_hybrid_{tag}_T4"), "cuda")
    runs.append(Run("efficiency", "efficiency", dict(
        student="spiking_resnet18", teacher="cifar_resnet18", student_kw={}, teacher_kw={}, Ts=[1, 2, 4, 8],
        methods=list(BENCH_METHODS), batch_size=128,
        input_size=32, device="cuda", precision="fp32", steps=20), ["Fig. 4"]))   # bf16: scripts/gpu_check.sh
    return runs


def _full_cifar_runs(ds: str) -> list[Run]:
    """One CIFAR dataset's runs of the full profile: Table A's ResNet teachers and hybrid students at every T,
    then Table B's ViT-S/16 teacher and Spikingformer students."""
    runs = []
    cifar = dict(batch_size=128, lr=0.1, weight_decay=5e-4, optimizer="sgd", epochs=300, device="cuda", seed=0)
    for arch in ("cifar_resnet18", "cifar_resnet34"):
        runs.append(Run(f"{ds}_teacher_{arch[6:]}", "train_teacher", dict(cifar, dataset=ds,
                                                                          teacher=arch), ["Table A"],
                        time_h=JOB_HOURS["cifar"]))
    for T in (2, 4, 6, 8):
        for student, teacher in (("spiking_resnet18", "cifar_resnet18"), ("spiking_resnet19", "cifar_resnet34")):
            tag = "r18_r18" if student.endswith("18") else "r19_r34"
            runs.append(Run(f"{ds}_hybrid_{tag}_T{T}", "train_student", dict(
                cifar, dataset=ds, method="hybrid", student=student, teacher=teacher,
                teacher_ckpt=f"@{ds}_teacher_{teacher[6:]}", T=T), [f"Table A {ds} {tag} T={T}", "Table C"],
                time_h=JOB_HOURS["cifar_snn"]))
    runs.append(Run(f"{ds}_teacher_vit", "train_teacher", dict(
        dataset=ds, teacher="vit_small_patch16_224", teacher_kw={"init_checkpoint": CHECKPOINTS["vit_imagenet"]},
        teacher_input_size=224, epochs=20, batch_size=128, lr=0.01, weight_decay=0.0, optimizer="sgd",
        device="cuda", seed=0), ["Table B"], time_h=JOB_HOURS["vit"]))
    for method in TABLE_B_METHODS:
        runs.append(Run(f"{ds}_sf_{method}", "train_student", dict(
            dataset=ds, method=method, student="spikingformer_4_256", teacher="vit_small_patch16_224",
            teacher_ckpt=f"@{ds}_teacher_vit" if method in methods_where(teacher=True) else None,
            teacher_input_size=224, T=4, epochs=400, batch_size=64, lr=5e-4, weight_decay=6e-2,
            optimizer="adamw", device="cuda", seed=0), [f"Table B {ds} {method}"], time_h=JOB_HOURS["spikingformer"]))
    return runs


def _full_imagenet_runs() -> list[Run]:
    """Table C's ImageNet hybrid students (8 GPUs each), their teachers read from local timm checkpoints."""
    imagenet = dict(dataset="imagenet", batch_size=512, lr=0.2, weight_decay=2e-5, optimizer="sgd", epochs=100,
                    T=4, device="cuda", seed=0, method="hybrid")
    return [Run(f"imagenet_hybrid_{student}_{teacher}", "train_student", dict(
                imagenet, student=student, teacher=teacher, teacher_ckpt=CHECKPOINTS[teacher]),
                ["Table C"] + (["Fig. A"] if student == "sew_resnet34" else []), nproc=IMAGENET_NPROC,
                time_h=JOB_HOURS["imagenet"])
            for student, teacher in (("sew_resnet34", "resnet34"), ("preact_resnet34", "resnet34"),
                                     ("preact_resnet34", "resnet50"))]


def _full_dvs_runs() -> list[Run]:
    """Table C's CIFAR10-DVS runs: the ResNet-19 teacher on event frames and its hybrid student."""
    return [Run("cifar10dvs_teacher_r19", "train_teacher", dict(
                dataset="cifar10dvs", teacher="cifar_resnet19", teacher_kw={"in_chans": 2}, T=10,
                batch_size=128, lr=0.1, weight_decay=5e-4, optimizer="sgd", epochs=300, device="cuda", seed=0),
                ["Table C"], time_h=JOB_HOURS["cifar"]),
            Run("cifar10dvs_hybrid_r19_r19", "train_student", dict(
                dataset="cifar10dvs", method="hybrid", student="spiking_resnet19", teacher="cifar_resnet19",
                teacher_ckpt="@cifar10dvs_teacher_r19", T=10, batch_size=128, lr=0.1, weight_decay=5e-4,
                optimizer="sgd", epochs=300, device="cuda", seed=0), ["Table C"], time_h=JOB_HOURS["cifar_snn"])]


# The ablation of the open choices: name -> (the quick run it varies, its loss options over that run's).
ABLATIONS = {
    "default": ("hybrid_r18_r18_T4", {}),
    "no_hybrid_kd": ("hybrid_r18_r18_T4", {"hybrid_kd": 0.0}),
    "no_hybrid_ce": ("hybrid_r18_r18_T4", {"hybrid_ce": 0.0}),
    "hybrid_mean": ("hybrid_r18_r18_T4", {"hybrid_reduction": "mean"}),
    "r19_T8_quick": ("hybrid_r19_r34_T8", {}),
    "r19_T8_reference_1/T": ("hybrid_r19_r34_T8", {"ratebp_grad_scale": True}),
}
ABLATION_SEEDS = (0, 1, 2)
ABLATION_EPOCHS = 10   # the students' epochs of the ablation (the committed result was run so)


def ablation_run_name(variant: str, seed: int) -> str:
    return f"ablation_{variant.replace('/', '')}_s{seed}"


def _ablation_plan() -> list[Run]:
    """Every ``ABLATIONS`` entry for every seed, on the quick scale, with the teachers it needs."""
    quick = {r.name: r for r in _cpu_plan("quick")}
    runs = [Run(quick[t].name, quick[t].notebook, dict(quick[t].params), ["ablation"])
            for t in ("teacher_r18", "teacher_r34")]
    for variant, (base_name, loss) in ABLATIONS.items():
        base = quick[base_name]
        for seed in ABLATION_SEEDS:
            runs.append(Run(ablation_run_name(variant, seed), "train_student",
                            dict(base.params, loss={**base.params.get("loss", {}), **loss}, seed=seed,
                                 epochs=ABLATION_EPOCHS, precise_bn=0),
                            [f"ablation {variant}"]))
    return runs


def plan(profile: str) -> list[Run]:
    """The runs of ``profile`` in dependency order (teachers before students)."""
    _check_profile(profile)
    runs = {"full": _full_plan, "ablation": _ablation_plan, "fashion": _fashion_plan}.get(
        profile, lambda: _cpu_plan(profile))()
    return order(runs)


def order(runs: list[Run]) -> list[Run]:
    by_name = {r.name: r for r in runs}
    done, out = set(), []

    def visit(r, stack=()):
        if r.name in done:
            return
        if r.name in stack:
            raise ValueError(f"dependency cycle through {r.name!r}")
        for n in r.needs:
            if n not in by_name:
                raise ValueError(f"run {r.name!r} needs unknown run {n!r}")
            visit(by_name[n], stack + (r.name,))
        done.add(r.name)
        out.append(r)

    for r in runs:
        visit(r)
    return out


def plan_setups(profile: str = "full") -> list[dict]:
    """The distinct training set-ups (method, networks, input, T) of the plan's training runs."""
    seen, out = set(), []
    for run in plan(profile):
        if not run.notebook.startswith("train"):
            continue
        p = run.params
        spec = dict(method=p.get("method", "ann"), dataset=p["dataset"], T=p.get("T", 4),
                    student=p.get("student", "spiking_resnet18"), teacher=p.get("teacher"),
                    student_kw=p.get("student_kw", {}), teacher_kw=p.get("teacher_kw", {}),
                    teacher_input_size=p.get("teacher_input_size"))
        key = json.dumps({k: v for k, v in spec.items() if k != "T" or spec["dataset"] == "cifar10dvs"},
                         sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(dict(spec, name=run.name))
    return out
