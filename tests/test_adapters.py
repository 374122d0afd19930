"""LoRA adapters beyond notebook 05: adapter versions in the registry and ``--adapter`` in the service.

The references nobody here wrote: ``peft``'s own ``PeftModel`` (and its ``merge_and_unload``)
for what base + adapter computes, and transformers' ``generate`` for what the service answers.
"""

from __future__ import annotations

import json
import socket

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from helpers import atomic, cards, lora, registry, serving
from helpers.registry import DamagedVersionError, UnknownVersionError
from helpers.serving import build_app, free_port

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # peft 0.21 on transformers 5
HASHES = {"new_data": "b" * 64}
METRICS = {"new_data_ppl": 50.0, "heldout_ppl": 40.0}
R, ALPHA = 4, 8


def save_base(folder, model, tokenizer):
    """A base release folder: ``model`` (conftest's random_gpt2: the full GPT-2 vocabulary, so the real
    tokenizer fits; the service and the registry load it) and the tokenizer."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_adapter(base_dir, folder, seed: int = 2):
    """A peft adapter on the base in ``base_dir`` whose B is random (as after training): it changes the logits."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora.lora_config(R, ALPHA))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, random_gpt2, tokenizer):
    """``(base release, adapter)`` folders, made once for the module."""
    top = tmp_path_factory.mktemp("adapters")
    base = save_base(top / "base-release", random_gpt2(), tokenizer)
    return base, save_adapter(base, top / "shakespeare-lora")


def peft_logits(base_dir, adapter_dir, ids):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- the registry


@pytest.fixture
def adapter_registry(tmp_path, folders):
    """A registry with the base as v1 and the adapter as v2, an adapter of v1."""
    root = tmp_path / "registry"
    base, adapter = folders
    registry.register(base, data_manifest_hashes=HASHES, training_config={}, metrics=METRICS, root=root)
    registry.register_adapter(adapter, base="v1", parent="v1", data_manifest_hashes=HASHES,
                              training_config={"r": R}, metrics=METRICS, root=root)
    return root


def test_an_adapter_version_round_trips_to_base_plus_adapter(adapter_registry, folders):
    base, adapter = folders
    entry = registry.get("v2", root=adapter_registry)
    v1 = registry.get("v1", root=adapter_registry)
    assert (entry.kind, entry.base, entry.base_sha256) == ("adapter", {"version": "v1"}, v1.weights_sha256)
    assert entry.weights_file == lora.ADAPTER_FILE and entry.base_dir == v1.model_dir
    assert not (entry.model_dir / "model.safetensors").exists()  # only the adapter is copied, not the base

    model, tokenizer = registry.load("v2", root=adapter_registry)
    assert type(model) is GPT2LMHeadModel  # merged: a plain model again
    with torch.no_grad():
        ours = model(IDS).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(IDS).logits
    reference = peft_logits(base, adapter, IDS)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the adapter does change the model
    assert tokenizer("To be").input_ids == AutoTokenizer.from_pretrained(base)("To be").input_ids


def test_listing_shows_the_kind_and_the_size(adapter_registry):
    rows = {row.version: row for row in registry.list_versions(root=adapter_registry)}
    assert (rows["v1"].kind, rows["v2"].kind) == ("full", "adapter of v1")
    on_disk = {v: sum(p.stat().st_size for p in (adapter_registry / "versions" / v).rglob("*") if p.is_file())
               for v in rows}
    assert {v: row.size for v, row in rows.items()} == on_disk
    assert rows["v2"].size < rows["v1"].size
    table = registry.format_table(list(rows.values()))
    assert "adapter of v1" in table and all(f"  {cards.size_text(row.size)}  " in table for row in rows.values())


def test_a_base_checksum_mismatch_is_refused_naming_both_checksums(adapter_registry):
    entry_file = adapter_registry / "versions" / "v2" / "entry.json"
    record = json.loads(entry_file.read_text())
    actual = record["base_sha256"]
    record["base_sha256"] = "0" * 64  # as if the adapter had been trained on other base weights
    entry_file.write_text(json.dumps(record))
    for call in (lambda: registry.get("v2", root=adapter_registry),
                 lambda: registry.load("v2", root=adapter_registry),
                 lambda: registry.promote("v2", root=adapter_registry)):
        with pytest.raises(DamagedVersionError, match="base checksum mismatch") as error:
            call()
        assert "0" * 64 in str(error.value) and actual in str(error.value)
    [row] = [row for row in registry.list_versions(root=adapter_registry) if row.version == "v2"]
    assert row.problem.startswith("base checksum mismatch")
    assert registry.get("v1", root=adapter_registry).kind == "full"  # the base is still fine


def test_a_base_folder_changed_after_registration_fails_its_checksum(tmp_path, folders, monkeypatch, random_gpt2, tokenizer):
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path)  # the base folder must lie inside the repository
    base = save_base(tmp_path / "models" / "base", random_gpt2(), tokenizer)
    adapter = save_adapter(base, tmp_path / "adapter")
    root = tmp_path / "registry"
    entry = registry.register_adapter(adapter, base=base, data_manifest_hashes=HASHES, training_config={},
                                      metrics=METRICS, root=root)
    assert entry.base == {"folder": "models/base"} and entry.base_dir == base
    before = atomic.sha256_file(base / "model.safetensors")
    assert entry.base_sha256 == before
    assert torch.allclose(registry.load(entry.version, root=root)[0](IDS).logits, peft_logits(base, adapter, IDS),
                          atol=1e-5)

    random_gpt2(seed=1).save_pretrained(base)  # new random weights, same shape
    after = atomic.sha256_file(base / "model.safetensors")
    with pytest.raises(DamagedVersionError, match="base checksum mismatch") as error:
        registry.load(entry.version, root=root)
    assert before in str(error.value) and after in str(error.value)


def test_promote_and_rollback_with_an_adapter_version(adapter_registry):
    registry.promote("v1", root=adapter_registry)
    assert registry.promote("v2", root=adapter_registry).kind == "adapter"
    assert registry.current(root=adapter_registry).version == "v2"
    assert registry.rollback(root=adapter_registry).version == "v1"
    registry.promote("v2", root=adapter_registry)
    assert registry.history(root=adapter_registry) == ["v1", "v2", "v1", "v2"]
    assert [row.is_current for row in registry.list_versions(root=adapter_registry)] == [False, True]


def test_registering_an_adapter_wrongly_is_a_clear_error_and_writes_nothing(tmp_path, folders):
    base, adapter = folders
    root = tmp_path / "registry"

    def register(folder, base_ref):
        return registry.register_adapter(folder, base=base_ref, data_manifest_hashes=HASHES, training_config={},
                                         metrics=METRICS, root=root)

    with pytest.raises(ValueError, match="not a LoRA adapter.*full model"):
        register(base, "v1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register(tmp_path / "missing", "v1")
    with pytest.raises(UnknownVersionError, match="base 'v1' is not registered"):
        register(adapter, "v1")
    with pytest.raises(ValueError, match="outside the repository"):
        register(adapter, base)  # a Path outside the repository: an entry may not name machine paths
    assert registry.list_versions(root=root) == []
    registry.register(base, data_manifest_hashes=HASHES, training_config={}, metrics=METRICS, root=root)
    register(adapter, "v1")
    with pytest.raises(DamagedVersionError, match="its base v2 is an adapter version"):
        register(adapter, "v2")
    assert [row.version for row in registry.list_versions(root=root)] == ["v1", "v2"]


# --------------------------------------------------------------------------- the service


def test_the_service_serves_base_plus_adapter_and_names_it(folders):
    base, adapter = folders
    with TestClient(build_app(base, adapter_dir=adapter, device="cpu")) as client:
        models = client.get("/v1/models").json()["data"]
        prompt = "To be, or not to be"
        response = client.post("/v1/completions", json={"model": adapter.name, "prompt": prompt, "max_tokens": 8,
                                                         "temperature": 0})
    assert [(m["id"], m["parent"]) for m in models] == [(adapter.name, base.name)]
    assert response.status_code == 200, response.text

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = merged.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert response.json()["choices"][0]["text"] == tokenizer.decode(expected[0, ids.shape[1]:])


def one_line(capsys, argv: list[str]) -> str:
    assert serving.main([*argv, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_bad_adapter_folder_is_one_clear_line(tmp_path, folders, capsys, random_gpt2, tokenizer):
    base, adapter = folders
    assert "adapter folder" in one_line(capsys, ["--model", str(base), "--adapter", str(tmp_path / "nope")])
    err = one_line(capsys, ["--model", str(base), "--adapter", str(base)])
    assert "is not a LoRA adapter" in err and "full model" in err
    wider = save_adapter(save_base(tmp_path / "wider-base", random_gpt2(n_embd=64), tokenizer), tmp_path / "wider-adapter")
    assert "made for another base shape" in one_line(capsys, ["--model", str(base), "--adapter", str(wider)])
    deeper = save_adapter(save_base(tmp_path / "deeper-base", random_gpt2(n_layer=3), tokenizer), tmp_path / "deeper-adapter")
    assert "made for another base shape" in one_line(capsys, ["--model", str(base), "--adapter", str(deeper)])


def test_help_mentions_the_adapter(capsys):
    with pytest.raises(SystemExit):
        serving.main(["--help"])
    assert "--adapter" in capsys.readouterr().out


def test_the_port_is_checked_before_the_adapter_is_loaded(folders, capsys):
    base, adapter = folders
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serving.main(["--model", str(base), "--adapter", str(adapter), "--port",
                             str(taken.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_sizes_read_as_bytes_kilobytes_and_megabytes():
    assert [cards.size_text(n) for n in (812, 97_300, 14_500_000, 2_000_000_000)] == [
        "812 B", "97.3 KB", "14.5 MB", "2.0 GB"]
