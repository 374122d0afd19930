"""serving, for real: ``python -m helpers.serving`` under uvicorn, on a release written by
``export_release``, driven by the official ``openai`` client (completions and chat, plain and streamed)."""

from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.serving import start_background

openai = pytest.importorskip("openai")

KEY = "live-test-key"
MESSAGES = [{"role": "user", "content": "Who is there?"}]


def greedy_reference(folder, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


@pytest.mark.slow
def test_official_openai_client_against_the_real_server(release_dir):
    server = start_background(release_dir, api_key=KEY, extra_args=["--device", "cpu"])  # key via COURSE_API_KEY
    url = server.url
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [release_dir.name]

        prompt = "To be, or not to be"
        expected, prompt_tokens = greedy_reference(release_dir, prompt, 10)
        completion = client.completions.create(model=release_dir.name, prompt=prompt, max_tokens=10, temperature=0)
        assert completion.choices[0].text == expected
        assert completion.usage.prompt_tokens == prompt_tokens
        chunks = list(client.completions.create(model=release_dir.name, prompt=prompt, max_tokens=10, temperature=0,
                                                stream=True))
        assert len(chunks) > 2
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model=release_dir.name, prompt=prompt, max_tokens=0)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="gpt-4", prompt=prompt, max_tokens=2)
        assert client.completions.create(model=release_dir.name, prompt="Hi", max_tokens=2).choices[0].text
    finally:
        returncode = server.stop()  # SIGTERM, what a process manager sends: uvicorn shuts down gracefully
    output = server.log()
    assert returncode == 0, output
    assert "Application shutdown complete" in output  # the lifespan's clean-up ran
    with pytest.raises(httpx.TransportError):  # nothing listens any more: no server left behind
        httpx.get(f"{url}/health", timeout=1)


@pytest.mark.slow
def test_official_openai_client_chats_through_the_release_template(release_dir):
    prompt = AutoTokenizer.from_pretrained(release_dir).apply_chat_template(MESSAGES, tokenize=False,
                                                                        add_generation_prompt=True)
    expected, prompt_tokens = greedy_reference(release_dir, prompt, 12)
    with start_background(release_dir, api_key=KEY, extra_args=["--device", "cpu"]) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=release_dir.name, messages=MESSAGES, max_tokens=12, temperature=0)
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == expected
        assert reply.usage.prompt_tokens == prompt_tokens
        chunks = list(client.chat.completions.create(model=release_dir.name, messages=MESSAGES, max_tokens=12,
                                                     temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            client.chat.completions.create(model=release_dir.name, messages=[{"role": "user", "content": " the" * 200}])
