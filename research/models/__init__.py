"""Models usable offline: packaged small models turned into local Hugging Face folders, loaded
for generation (:func:`load_model`; served with an OpenAI-compatible API by
:mod:`research.rollout.server`), and the tiny randomly initialised model the tests use. A
leaf of the package: nothing here imports the rollout, trainers or evaluation.

Heavy imports (torch, transformers) happen inside the functions, not at import time.
"""

from research.models.loading import load_model
from research.models.prepare import (
    REGISTRY,
    ChecksumError,
    ModelError,
    PackagedModel,
    model_dir,
    prepare_model,
)
from research.models.tiny import save_tiny_model, tiny_model

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "ModelError",
    "PackagedModel",
    "load_model",
    "model_dir",
    "prepare_model",
    "save_tiny_model",
    "tiny_model",
]
