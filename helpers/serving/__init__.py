"""An OpenAI-compatible service for a released model: continuous batching, limits, auth, metrics, a chat page.

Introduced in ``10_deployment.ipynb``. Run it with::

    python -m helpers.serving --model artifacts/models/release [--port 8000] [--api-key KEY] [--max-batch-size 16]
    python -m helpers.serving --model BASE_RELEASE --adapter ADAPTER_DIR   # a LoRA adapter merged at load (11)
    python -m helpers.serving --model artifacts/models/sentiment           # a classifier: POST /v1/classify

(the key can also come from ``COURSE_API_KEY``), open http://127.0.0.1:8000/ for the chat page,
or talk to it with the official client::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.completions.create(model="release", prompt="To be", max_tokens=20)
    client.chat.completions.create(model="release", messages=[{"role": "user", "content": "Hi"}])

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (server-sent events with
``"stream": true``), ``POST /classify`` and ``/v1/classify`` (vLLM's shape) for a classifier,
``GET /`` (the chat page), ``GET /v1/models``, ``GET /health`` (never needs the key) and
``GET /metrics`` (Prometheus). A request reads top to bottom: ``app`` (route, body, auth) →
``completions`` (options → engine requests) → ``engine.Engine.open`` → ``async for`` over the
engine's stream → JSON or server-sent events. The package, one concern per module:

* :mod:`~helpers.serving.limits`: what a request may ask, validated once;
* :mod:`~helpers.serving.schema`: OpenAI's request and response shapes, errors that name the problem;
* :mod:`~helpers.serving.loading`: a release folder as a causal LM or a classifier;
* :mod:`~helpers.serving.engine`: continuous batching over one model, with a KV cache per row;
* :mod:`~helpers.serving.chat`: chat templates, and the token that ends a turn;
* :mod:`~helpers.serving.completions`: completion and chat requests through the engine;
* :mod:`~helpers.serving.classify`: sequence classification in one padded batch;
* :mod:`~helpers.serving.page`: the chat page and its Content-Security-Policy;
* :mod:`~helpers.serving.metrics`: the counters, through ``prometheus_client``;
* :mod:`~helpers.serving.app`: :func:`build_app`, :func:`create_app`, the routes, auth, disconnects;
* :mod:`~helpers.serving.cli`: the command line, uvicorn, and :func:`start_background`;
* :mod:`~helpers.serving.load_generator`: N concurrent streaming clients, timed (10 and ``bench/``).
"""

from helpers.serving.app import build_app, create_app
from helpers.serving.classify import Classifier
from helpers.serving.cli import BackgroundServer, free_port, main, make_server, start_background
from helpers.serving.engine import Engine, Result, SamplingParams
from helpers.serving.limits import ServingLimits
from helpers.serving.loading import load_for_serving

__all__ = ["BackgroundServer", "Classifier", "Engine", "Result", "SamplingParams", "ServingLimits", "build_app",
           "create_app", "free_port", "load_for_serving", "main", "make_server", "start_background"]
