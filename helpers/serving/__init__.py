"""An OpenAI-compatible service for a released model: continuous batching, limits, auth and metrics.

Introduced in ``10_deployment.ipynb``. Run it with::

    python -m helpers.serving --model artifacts/models/release [--port 8000] [--api-key KEY] [--max-batch-size 16]
    python -m helpers.serving --model BASE_RELEASE --adapter ADAPTER_DIR   # a LoRA adapter merged at load (11)

(the key can also come from ``COURSE_API_KEY``), then talk to it with the official client::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.completions.create(model="release", prompt="To be", max_tokens=20)
    client.chat.completions.create(model="release", messages=[{"role": "user", "content": "Hi"}])

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /health`` (never needs the key) and
``GET /metrics`` (Prometheus). The package, one concern per module:

* :mod:`~helpers.serving.schema`: OpenAI's request and response shapes, errors that name the problem;
* :mod:`~helpers.serving.engine`: continuous batching over one model, with a KV cache per row;
* :mod:`~helpers.serving.metrics`: the counters, through ``prometheus_client``;
* :mod:`~helpers.serving.app`: the FastAPI routes, limits, auth, disconnects;
* :mod:`~helpers.serving.cli`: the command line, uvicorn, and :func:`start_background`.
"""

from helpers.serving.app import ServingLimits, create_app, load_for_serving
from helpers.serving.cli import BackgroundServer, free_port, main, make_server, start_background
from helpers.serving.engine import Engine, Result, SamplingParams

__all__ = ["BackgroundServer", "Engine", "Result", "SamplingParams", "ServingLimits", "create_app", "free_port",
           "load_for_serving", "main", "make_server", "start_background"]
