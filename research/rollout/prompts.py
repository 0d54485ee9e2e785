"""Questions -> prompt token ids, with the protocol's templates."""

from __future__ import annotations

from research import protocol
from research.errors import ConfigError


def encode_prompt(tokenizer, question: str, template: str = "base", clean: bool = False,
                  example: str | None = None, search: bool = True) -> list[int]:
    """Token ids of the prompt for ``question``.

    ``base``: the original's plain-text template (no chat template, for base models).
    ``example`` (a name of :data:`research.protocol.EXAMPLES`; None: none) adds a worked example
    (small models need it to search): in the base form before the question, in the chat
    form as a previous user / assistant exchange.
    ``chat``: the instruction as the system message, rendered with the tokenizer's chat
    template and the assistant turn opened (for instruct models).
    ``search=False``: the closed-book control's prompt (no search tool).
    """
    prompt = protocol.build_prompt(question, template=template, clean=clean, example=example,
                                   search=search)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; this one "
                             "has none: use template 'base'")
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    return tokenizer.encode(prompt, add_special_tokens=False)
