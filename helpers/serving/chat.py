"""Chat requests as prompts: the model's chat template, and the token that ends the assistant's turn.

Introduced in ``10_deployment.ipynb``. The template comes with the release's tokenizer (09's
assistant stores one with ``<|user|>``, ``<|assistant|>`` and ``<|end|>``; 10's
``export_release`` adds a plain-text one), or from ``--chat-template``.
"""

from __future__ import annotations

import jinja2

from helpers.serving.schema import APIError

_MARK = "Q7zX9wK"  # an assistant message no template changes, to find what follows it


def end_of_turn_id(tokenizer) -> int | None:
    """The id of the special token the chat template writes after an assistant's message, if any.

    Introduced in ``10_deployment.ipynb``: the engine stops there, as it stops at end-of-text
    (a template ``...{{ content }}<|end|>`` gives ``<|end|>``'s id; a plain-text template, None).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except jinja2.TemplateError:
        return None
    after = rendered[rendered.find(_MARK) + len(_MARK):] if _MARK in rendered else ""
    special = [token for token in tokenizer.added_tokens_encoder if after.startswith(token)]
    return tokenizer.convert_tokens_to_ids(max(special, key=len)) if special else None


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """``messages`` through the tokenizer's chat template, ending where the assistant's answer starts.

    Introduced in ``10_deployment.ipynb``. A 400 when there is no template or it refuses the messages.
    """
    if not tokenizer.chat_template:
        raise APIError(400, "this model has no chat template, so messages cannot become a prompt; export it with "
                            "helpers.deployment.export_release (which stores one) or start the server with "
                            "--chat-template FILE", param="messages", code="no_chat_template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError as error:
        raise APIError(400, f"the model's chat template refused these messages: {error}", param="messages",
                       code="invalid_value") from None
