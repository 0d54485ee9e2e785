"""A model and its tokenizer loaded for generation, from a packaged name or a local folder."""

from __future__ import annotations


def load_model(model: str, dtype: str = "float32"):
    """``(model, tokenizer)`` of ``model`` (prepared with
    :func:`research.models.prepare.prepare_model`), in eval mode, weights in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research.models.prepare import prepare_model

    path = prepare_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return loaded.eval(), tokenizer
