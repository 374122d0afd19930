"""Sequence classification for the service: a request's texts through the classifier in one padded batch.

Introduced in ``10_deployment.ipynb`` for 08's sentiment release. vLLM's ``/classify`` shape:
each input gets its most likely label and the softmax over all labels.
"""

from __future__ import annotations

import asyncio
import threading

import torch

from helpers.serving.limits import DEFAULT_LIMITS, ServingLimits
from helpers.serving.metrics import ServingMetrics, new_metrics
from helpers.serving.schema import APIError


class Classifier:
    """A sequence-classification model and its tokenizer, one batch at a time. Introduced in ``10_deployment.ipynb``.

    The model's own ``pad_token_id`` finds each row's last token (GPT-2's classifier reads the
    hidden state there); a model without one gets the tokenizer's end-of-text token, as 08 sets it.
    """

    def __init__(self, model, tokenizer, limits: ServingLimits = DEFAULT_LIMITS, metrics: ServingMetrics | None = None):
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self.metrics = metrics or new_metrics("model")
        self.context = int(getattr(model.config, "n_positions", None) or tokenizer.model_max_length)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
                else tokenizer.eos_token_id
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()  # one forward pass at a time

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text; a 400 naming the input that is longer than the model's context."""
        if len(texts) > self.limits.max_inputs:
            raise APIError(400, f"input holds {len(texts)} texts, more than this server's limit of "
                                f"{self.limits.max_inputs}", param="input", code="invalid_value")
        with self._lock:
            ids = [self.tokenizer(text).input_ids for text in texts]
        for index, row in enumerate(ids):
            if len(row) > self.context:
                raise APIError(400, f"input {index} has {len(row)} tokens; this model's maximum context length is "
                                    f"{self.context} tokens", param="input", code="context_length_exceeded")
        return ids

    def probabilities(self, ids: list[list[int]]) -> torch.Tensor:
        """(inputs, labels) softmax probabilities, every input in one right-padded forward pass."""
        width, pad = max(map(len, ids)), self.model.config.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=self.device)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return logits.float().softmax(-1).cpu()

    async def classify(self, texts: list[str]) -> tuple[list[dict], int]:
        """vLLM's ``data`` list for ``texts``, and the prompt tokens used (off the event loop's thread)."""
        ids = self.encode(texts)
        probs = await asyncio.to_thread(self.probabilities, ids)
        tokens = sum(map(len, ids))
        self.metrics.prompt_tokens.inc(tokens)
        data = [{"index": i, "label": self.labels[int(row.argmax())], "probs": row.tolist(),
                 "num_classes": len(self.labels)} for i, row in enumerate(probs)]
        return data, tokens
