"""What the service counts, in Prometheus' format through ``prometheus_client``.

Introduced in ``10_deployment.ipynb``. Each app gets its own registry, so several apps (tests,
a notebook) can live in one process without their numbers mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ServingMetrics:
    """The service's counters, gauges and histograms, all in ``registry``."""

    registry: CollectorRegistry
    requests: Counter  # by endpoint and HTTP status
    errors: Counter  # by endpoint and OpenAI error type
    latency: Histogram  # request to last byte, by endpoint
    prompt_tokens: Counter
    generated_tokens: Counter
    abandoned_tokens: Counter  # generated for a request after its client had gone
    cancelled: Counter  # requests whose client left before the answer was complete
    queue_depth: Gauge  # requests waiting for a place in the batch
    batch_size: Gauge  # requests in the running batch
    time_to_first_token: Histogram


def new_metrics(model_id: str) -> ServingMetrics:
    """A fresh registry with the service's metrics. Introduced in ``10_deployment.ipynb``."""
    registry = CollectorRegistry()
    Info("course_model", "The model this process serves.", registry=registry).info({"model": model_id})
    return ServingMetrics(
        registry=registry,
        requests=Counter("course_requests", "HTTP requests answered, by endpoint and status code.",
                         ["endpoint", "status"], registry=registry),
        errors=Counter("course_errors", "Error responses, by endpoint and OpenAI error type.", ["endpoint", "type"],
                       registry=registry),
        latency=Histogram("course_request_duration_seconds", "Time from request to the last byte of the answer.",
                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry),
        prompt_tokens=Counter("course_prompt_tokens", "Prompt tokens of admitted requests.", registry=registry),
        generated_tokens=Counter("course_generated_tokens", "Tokens generated.", registry=registry),
        abandoned_tokens=Counter("course_abandoned_tokens", "Tokens generated after the client had gone.",
                                 registry=registry),
        cancelled=Counter("course_cancelled_requests", "Requests whose client left before the answer was complete.",
                          registry=registry),
        queue_depth=Gauge("course_queue_depth", "Requests waiting for a place in the batch.", registry=registry),
        batch_size=Gauge("course_batch_size", "Requests in the running batch.", registry=registry),
        time_to_first_token=Histogram("course_time_to_first_token_seconds",
                                      "Time from arrival to the first generated token.", buckets=LATENCY_BUCKETS,
                                      registry=registry),
    )
