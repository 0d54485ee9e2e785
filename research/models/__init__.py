"""Models usable offline: packaged small models turned into local Hugging Face folders, loaded
for generation (:func:`load_model`) or served with an OpenAI-compatible API
(:mod:`research.models.server`), and the tiny randomly initialised model the tests use.

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
