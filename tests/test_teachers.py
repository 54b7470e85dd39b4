"""The ImageNet teachers of the full profile: pinned to timm weight names, and their measured top-1 checked
against the reported one on the Table C page."""
import json

from hybridkd_lib.book import report
from hybridkd_lib.book.plan import CHECKPOINTS, TEACHER_TOLERANCE, TIMM_WEIGHTS, plan


def test_every_checkpoint_of_the_full_profile_is_pinned_to_a_timm_weight_name():
    assert set(TIMM_WEIGHTS) == set(CHECKPOINTS)
    assert TIMM_WEIGHTS["resnet34"] == "resnet34.a1_in1k" and TIMM_WEIGHTS["resnet50"] == "resnet50.a1_in1k"
    from timm.models import get_pretrained_cfg   # timm's default tag is what the pin names
    for arch in ("resnet34", "resnet50"):
        assert f"{arch}.{get_pretrained_cfg(arch).tag}" == TIMM_WEIGHTS[arch]


def test_the_measured_teacher_top1_is_checked_against_the_reported_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDKD_RESULTS", str(tmp_path))
    check = report.teacher_check().set_index("teacher")
    assert (check[f"within {TEACHER_TOLERANCE} points"] == report.NOT_RUN).all()   # nothing run yet
    assert check.loc["ResNet-34", "top-1 (%) reported"] == 76.32 and check.loc["ResNet-50", "timm weights"] \
        == "resnet50.a1_in1k"
    runs = {}   # the first ImageNet student run of each teacher measures it
    for r in plan("full"):
        if r.params.get("dataset") == "imagenet":
            runs.setdefault(r.params["teacher"], r.name)
    for teacher, top1 in (("resnet34", 76.1), ("resnet50", 78.0)):   # one close, one 2.1 points off
        (tmp_path / "full" / runs[teacher]).mkdir(parents=True)
        (tmp_path / "full" / runs[teacher] / "result.json").write_text(json.dumps({"teacher_top1": top1}))
    check = report.teacher_check().set_index("teacher")
    assert check.loc["ResNet-34", "top-1 (%) measured (full)"] == 76.1
    assert list(check[f"within {TEACHER_TOLERANCE} points"]) == ["agrees", "differs"]
