"""Notebook 02's byte-level BPE, written by hand in its cells, against the ``tokenizers`` library nobody here
wrote: encoding with GPT-2's shipped merges gives transformers' ids, and training merges by hand gives the
library's ``BpeTrainer`` merges in the same order (with the library's tie-break rule).
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from helpers.settings import get_settings
from tests.notebook_code import notebook_definitions

SETTINGS = get_settings()
NB = notebook_definitions(
    "02_data_preparation.ipynb",
    constants={"tokenizer_dir", "vocab", "merge_lines", "ranks", "byte_to_char", "PRETOKENIZE"},
    namespace={"settings": SETTINGS},
)
TEXTS = [
    "Hello world",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "I'll say it's 'Tis, you're, we've, I'd, I'm; DON'T SHOUT'S",
    "numbers 1599 3.14159 1,000,000 and 12abc34",
    "punctuation!!! ... ?!? --- (brackets) [more] {curly} <angle> @#$%^&*",
    "Café, naïve, Ærø, straße; 東京; Ελληνικά; emoji 🙂🎭",
    "Rosencrantz and Guildenstern; the slings and arrows of outrageous fortune",
]


@pytest.fixture(scope="module")
def reference():
    return AutoTokenizer.from_pretrained(SETTINGS.data_dir / "tokenizer" / "gpt2")


@pytest.mark.parametrize("text", TEXTS)
def test_hand_written_encode_gives_the_tokenizers_ids(text, reference):
    assert NB["encode"](text, NB["ranks"]) == reference(text)["input_ids"]


def test_hand_written_encode_agrees_on_the_openings_of_other_plays(reference):
    for name in ["macbeth", "tempest", "sonnets"]:
        text = (SETTINGS.data_dir / "raw" / "shakespeare" / f"{name}.txt").read_text(encoding="utf-8")[:20_000]
        assert NB["encode"](text, NB["ranks"]) == reference(text)["input_ids"], name


def test_the_byte_map_covers_every_byte_with_a_printable_character():
    byte_to_char = NB["byte_to_char"]
    assert sorted(byte_to_char) == list(range(256))
    assert len(set(byte_to_char.values())) == 256 and all(c.isprintable() for c in byte_to_char.values())
    assert all(byte_to_char[b] in NB["vocab"] for b in range(256))  # the vocabulary's first 256 tokens


def test_bpe_shows_each_merge_it_makes(capsys):
    parts = NB["bpe"]("ĠRosencrantz", NB["ranks"], show=True)
    assert parts == ["ĠRosen", "c", "rant", "z"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len("ĠRosencrantz") - len(parts)  # every merge joins two parts into one


def _library_merges(text: str, num_merges: int) -> list[tuple[str, str]]:
    alphabet = {NB["byte_to_char"][b] for b in text.encode("utf-8")}
    library = Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.train_from_iterator([text], trainers.BpeTrainer(vocab_size=len(alphabet) + num_merges, show_progress=False))
    return [tuple(pair) for pair in json.loads(library.to_str())["model"]["merges"]]


@pytest.mark.parametrize("num_merges", [1, 12, 60])
@pytest.mark.parametrize("text", [
    "the cat sat on the mat; the cat ate the rat, and that cat is fat",
    "aaaa aaa aa a aaaa bbbb abab baba",  # overlapping pairs: merged left to right
    "Something is rotten in the state of Denmark. The rest is silence.",
])
def test_merges_learned_by_hand_are_the_library_trainers(text, num_merges):
    ours = [pair for pair, _ in NB["learn_merges"](text, num_merges, tie_break="smallest ids")]
    assert ours == _library_merges(text, num_merges)


def test_first_seen_tie_break_learns_another_order_on_the_notebooks_speech():
    speech = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
              "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles,\n"
              "And by opposing end them? To die: to sleep;")
    first_seen = [pair for pair, _ in NB["learn_merges"](speech, 12, tie_break="first seen")]
    assert first_seen[:2] == _library_merges(speech, 12)[:2] and first_seen != _library_merges(speech, 12)


@pytest.mark.parametrize(("word", "pair"), [
    ("banana", ("a", "n")), ("aaaa", ("a", "a")), ("aaa", ("a", "a")), ("abab", ("b", "a")), ("xyz", ("a", "b")),
])
def test_merge_pair_is_one_step_of_the_library_bpe(word, pair):
    vocab = {c: i for i, c in enumerate(sorted(set(word) | set(pair)))}
    vocab[pair[0] + pair[1]] = len(vocab)
    library = models.BPE(vocab=vocab, merges=[pair])
    assert list(NB["merge_pair"](tuple(word), pair)) == [token.value for token in library.tokenize(word)]
