"""What one request may ask of the service: the limits, checked once, where they are made.

Introduced in ``10_deployment.ipynb``. The engine, the routes and the command line all read
one :class:`ServingLimits`; its ``__post_init__`` is the only place a limit is validated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of the service, and how much waiting it tolerates.

    Introduced in ``10_deployment.ipynb``. The prompt may use at most the model's context
    (``config.n_positions``) minus the request's ``max_tokens``. A bad value is a ``ValueError``
    naming the field.
    """

    max_tokens_cap: int = 256  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    max_body_bytes: int = 64 * 1024  # checked before the body is parsed
    generation_timeout_s: float = 30.0  # from arrival (queue included) to the last token: then 504
    max_batch_size: int = 16  # requests decoded together; 1 = one at a time
    max_queued: int = 64  # requests waiting for a place in the batch; more get 503 with Retry-After
    retry_after_s: int = 1  # what a 503 tells the client to wait
    header_timeout_s: float = 10.0  # a connection whose request headers take longer is closed (slow loris)
    body_timeout_s: float = 10.0  # a body that takes longer to arrive gets 408
    max_inputs: int = 64  # prompts (times n) or classify inputs in one request

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "max_queued" else 1
            if field.type == "float" and not value > 0:
                raise ValueError(f"ServingLimits.{field.name} must be > 0, got {value}")
            if field.type == "int" and (not isinstance(value, int) or value < low):
                raise ValueError(f"ServingLimits.{field.name} must be >= {low} (a whole number), got {value!r}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("ServingLimits.default_max_tokens must not exceed max_tokens_cap")


DEFAULT_LIMITS = ServingLimits()  # frozen: safe to share as a default argument
