"""Floor 3: the model registry, spiking students and ANN teachers on one stage protocol, and their builders."""
from hybridkd_lib.models.registry import (WEIGHT_OPTIONS, ModelFacts, check_model_kwargs, check_model_name,
                                          create_model, list_models, model_facts, register_model,
                                          unregister_model)
from hybridkd_lib.models.stages import SpikingStageModel, StageModel
from hybridkd_lib.models import zoo  # noqa: F401  (registers the models)
from hybridkd_lib.models.build import build_student, build_teacher, resolve_teacher_ckpt

__all__ = ["create_model", "list_models", "register_model", "check_model_name", "check_model_kwargs",
           "model_facts", "ModelFacts", "WEIGHT_OPTIONS", "unregister_model",
           "StageModel", "SpikingStageModel", "build_student", "build_teacher", "resolve_teacher_ckpt"]
