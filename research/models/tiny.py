"""A tiny randomly initialised Qwen2-architecture model with a real tokenizer, for tests.

The weights are random (a few million parameters, forward + backward of 8 x 256 tokens well
under a second on CPU) but the tokenizer, its special tokens and chat template are real: they
come from a prepared packaged model (``smollm2-135m`` by default, only the 93 MB package) or
any local Hugging Face folder, so token ids, masks and templates behave as in real runs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TOKENIZER = "smollm2-135m"


@dataclass(frozen=True)
class TinyShape:
    """Sizes of the tiny model (vocabulary size comes from the tokenizer)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 8192


def load_tokenizer(source: str | os.PathLike = DEFAULT_TOKENIZER, cache=None):
    """The tokenizer of a packaged model (prepared on first use) or of a local folder."""
    from transformers import AutoTokenizer

    from research.models.prepare import prepare_model

    return AutoTokenizer.from_pretrained(prepare_model(source, cache=cache))


def tiny_model(
    tokenizer_source: str | os.PathLike = DEFAULT_TOKENIZER,
    seed: int = 0,
    shape: TinyShape | None = None,
    cache: str | os.PathLike | None = None,
):
    """``(model, tokenizer)``: a random ``Qwen2ForCausalLM`` sized for ``tokenizer_source``.

    The same ``seed`` gives the same weights; torch's global random state is left untouched.
    Embeddings are tied, as in the small Qwen2.5 models.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer(tokenizer_source, cache=cache)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **asdict(shape or TinyShape()),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_tiny_model(
    out: str | os.PathLike,
    tokenizer_source: str | os.PathLike = DEFAULT_TOKENIZER,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
) -> Path:
    """Save the tiny model and its tokenizer as a Hugging Face folder; returns its path."""
    model, tokenizer = tiny_model(tokenizer_source, seed=seed, cache=cache)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
