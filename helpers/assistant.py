"""Instruction tuning's model side (09): the runs, likelihood scoring of answers, the assistant release.

Introduced in ``09_assistant.ipynb``; the text side (template, mixture, mask) is :mod:`helpers.chat`.

* :func:`chat_model` loads the base model with the turn tokens added; :func:`mixture_blocks`
  turns conversations into token blocks and label blocks (assistant-only or every token), which
  05's :func:`helpers.training.train` takes as they are.
* Scoring is exact: 09's cells generate greedy replies (up to ``<|end|>``) and score them with
  08's :func:`helpers.classification.accuracy_interval`; :func:`answer_logprobs` gives likelihood
  scoring (lm-evaluation-harness's multiple choice: the allowed answer with the highest summed
  log-probability is the model's answer).
* :func:`ensure_assistant_release` is what notebook 10 calls: ``artifacts/models/assistant/``,
  a ``save_pretrained`` folder with the tokenizer and its chat template, rebuilt when missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from helpers.chat import (
    Item,
    Mixture,
    add_turn_tokens,
    build_mixture,
    chat_tokenizer,
    encode_chat,
    instruction_items,
    pack_conversations,
)
from helpers.classification import right_padded  # 08's padding, reused
from helpers.deployment import export_release, manifest_mode, read_manifest
from helpers.models import load_model, load_tokenizer, resolve_model_source
from helpers.runtime import cache_keyword, eval_mode
from helpers.settings import Settings, display_path, get_settings
from helpers.training import TrainConfig, TrainResult, train

ASSISTANT_DIR = "models/assistant"  # under artifacts/
LOSSES = ("assistant", "all")  # assistant-only loss, or loss on every token of the conversation
MAX_REPLY_TOKENS = 8  # every exact answer here is a few tokens; a reply longer than that is wrong anyway


def assistant_dir(settings: Settings | None = None) -> Path:
    """Where 09's assistant release lives: ``artifacts/models/assistant`` (10 serves it)."""
    return (settings or get_settings()).artifacts_dir / ASSISTANT_DIR


def chat_model(settings: Settings | None = None):
    """``(model, chat_tokenizer, base_location)``: the course's base model with the turn tokens added (09).

    Its dropout is the ``sft_dropout`` setting (chosen on 09's validation replies), in every
    dropout layer and in the config a release saves.
    """
    settings = settings or get_settings()
    source = resolve_model_source(settings)
    model, _ = load_model(source)
    tokenizer = chat_tokenizer(load_tokenizer(source))
    add_turn_tokens(model, tokenizer)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = settings.sft_dropout
    model.config.update(dict.fromkeys(("embd_pdrop", "attn_pdrop", "resid_pdrop"), settings.sft_dropout))
    return model, tokenizer, source.location


def mixture_blocks(conversations: Sequence[list[dict]], tokenizer, block_size: int,
                   loss: str = "assistant") -> tuple[np.ndarray, np.ndarray, int]:
    """``(blocks, labels, dropped)`` of ``conversations`` packed whole into blocks (09).

    ``loss="assistant"``: labels are the reply tokens only (-100 elsewhere); ``"all"``: every token
    of the conversation is a label (only the padding is -100).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    encoded = [encode_chat(tokenizer, c) for c in conversations]
    if loss == "all":
        encoded = [(ids, list(ids)) for ids, _ in encoded]
    return pack_conversations(encoded, block_size, tokenizer.pad_token_id)


def sft_config(settings: Settings | None = None, **overrides) -> TrainConfig:
    """05's :class:`~helpers.training.TrainConfig` with 09's steps and learning rate (``sft_steps``, ``sft_lr``)."""
    s = settings or get_settings()
    values = dict(num_steps=s.sft_steps, lr=s.sft_lr, warmup_steps=max(1, s.sft_steps // 10),
                  eval_interval=max(1, s.sft_steps // 5), checkpoint_interval=s.sft_steps, eval_batches=4)
    return TrainConfig.from_settings(s, **{**values, **overrides})


def train_assistant(settings: Settings | None = None, mixture: Mixture | None = None, loss: str = "assistant",
                    progress: bool = True) -> tuple[TrainResult, object, str]:
    """One instruction-tuning run of 09 with 05's loop: ``(result, chat tokenizer, base location)``.

    Validation loss is always on the replies of validation conversations, so both losses are
    watched on the same thing.
    """
    settings = settings or get_settings()
    mixture = mixture or build_mixture(settings)
    model, tokenizer, base = chat_model(settings)
    blocks, labels, _ = mixture_blocks(mixture.conversations, tokenizer, settings.block_size, loss)
    valid = [i.messages() for found in instruction_items("validation", settings.sft_eval_items, settings).values()
             for i in found]
    valid_blocks, valid_labels, _ = mixture_blocks(valid, tokenizer, settings.block_size, "assistant")
    result = train(model, blocks, valid_blocks, sft_config(settings), progress=progress, train_labels=labels,
                   valid_labels=valid_labels)
    return result, tokenizer, base


# --------------------------------------------------------------------------- exact scoring


def chat_prompt(tokenizer, item: Item) -> str:
    """The item's question as the assistant sees it: rendered by the chat template, up to ``<|assistant|>\\n`` (09)."""
    return tokenizer.apply_chat_template(item.messages()[:1], tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def answer_logprobs(model, tokenizer, contexts: Sequence[str], candidates: Sequence[Sequence[str]],
                    batch_size: int = 16) -> list[list[float]]:
    """``log p(candidate | context)`` summed over the candidate's tokens, for every candidate of every context (09).

    lm-evaluation-harness's multiple choice: context and candidate are tokenized apart and joined;
    a context too long for the model loses its oldest tokens. Each context runs through the model
    once and its key/value cache is shared by its candidates (a first-word item has a candidate per
    word of its line), and only the candidate positions go through the LM head (the 50,257-way
    matrix is most of the cost). ``batch_size`` counts contexts.
    """
    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", 1024)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    body, head, scores = model.base_model, model.get_output_embeddings(), []
    keyword = cache_keyword(body)
    with eval_mode(model):
        for start in range(0, len(contexts), batch_size):
            options = [[tokenizer(o).input_ids for o in opts] for opts in candidates[start : start + batch_size]]
            context_ids = [tokenizer(c).input_ids[-(limit - max(map(len, opts))):]
                           for c, opts in zip(contexts[start : start + batch_size], options, strict=True)]
            ids, mask = right_padded(context_ids, pad)
            cache, lengths = DynamicCache(config=model.config), mask.sum(1)
            last = body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                        **{keyword: cache}).last_hidden_state[torch.arange(len(options)), lengths - 1]
            owner = torch.tensor([c for c, opts in enumerate(options) for _ in opts])  # each option's context
            owner_on_device = owner.to(device)
            cache.reorder_cache(owner_on_device)  # a copy of its context's keys and values per option
            last = last[owner_on_device]
            option_ids, option_mask = right_padded([o for opts in options for o in opts], pad)
            hidden = body(input_ids=option_ids.to(device), attention_mask=torch.cat([mask[owner], option_mask], 1).to(device),
                          position_ids=(lengths[owner][:, None] + torch.arange(option_ids.shape[1])).to(device),
                          **{keyword: cache}).last_hidden_state
            # An option's first token is predicted by its context's last position, its token j by its own j - 1.
            scored = option_mask.bool()
            predictors = torch.cat([last[:, None], hidden[:, :-1]], 1)[scored.to(device)]
            token_scores = torch.log_softmax(head(predictors).float(), -1).gather(
                1, option_ids[scored].to(device)[:, None])[:, 0].cpu()
            row_of = torch.arange(len(owner))[:, None].expand_as(scored)[scored]
            scores += torch.zeros(len(owner)).index_add_(0, row_of, token_scores).tolist()
    flat = iter(scores)
    return [[next(flat) for _ in opts] for opts in candidates]


# --------------------------------------------------------------------------- the release


def export_assistant(model, tokenizer, settings: Settings | None = None, base: str = "",
                     eval_report: dict | None = None) -> Path:
    """Write the assistant release (``helpers.deployment.export_release``) with its chat template (09)."""
    settings = settings or get_settings()
    info = {"base_model": display_path(base, settings) if base and Path(base).exists() else base,
            "mode": settings.mode, "data": "09's instruction mixture (helpers.chat.build_mixture)",
            "procedure": f"full fine-tuning, assistant-only loss, {settings.sft_steps} steps at lr {settings.sft_lr}"}
    return export_release(model, tokenizer, assistant_dir(settings), eval_report=eval_report, training_info=info,
                          generation={"do_sample": False, "max_new_tokens": 32})


def ensure_assistant_release(settings: Settings | None = None, progress: bool = True) -> Path:
    """The assistant release folder, trained and exported first when missing or made in another mode.

    Introduced in ``09_assistant.ipynb``; notebook 10 serves what it returns. The rebuild is 09's own
    pipeline: the mixture, one assistant-only run with 05's loop, :func:`export_assistant`.
    """
    settings = settings or get_settings()
    folder = assistant_dir(settings)
    manifest = read_manifest(folder)
    if manifest_mode(manifest) == settings.mode:
        return folder
    why = "it does not exist yet" if manifest is None else "it was made in another mode"
    print(f"instruction-tuning first, because {display_path(folder, settings)} is needed and {why} (09's pipeline)")
    result, tokenizer, base = train_assistant(settings, progress=progress)
    return export_assistant(result.model, tokenizer, settings, base)
