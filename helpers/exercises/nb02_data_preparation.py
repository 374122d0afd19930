"""Exercise checks of ``02_data_preparation.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.data import EOS_ID, luhn_valid, pack_documents, to_blocks
from helpers.exercises.core import CORRECT, WRONG, _check, _not_done

# Published test card numbers (they pass the checksum) and near misses (they do not).
_LUHN_CASES = (
    "4111 1111 1111 1111", "4242424242424242", "5555-5555-5555-4444", "378282246310005", "6011111111111117",
    "4111 1111 1111 1112", "4242424242424241", "1234567812345678", "79927398710", "79927398713",
)
_PACK_DOCUMENTS = ([11, 12, 13], [21, 22], [31, 32, 33, 34])
_PACK_BLOCK_SIZE = 5


def check_luhn(fn: Callable[[str], bool] | None) -> None:
    """Exercise 1 of ``02_data_preparation.ipynb``: a Luhn checksum written by hand.

    ``fn(number)`` takes a string of digits (maybe with spaces or dashes) and returns a bool;
    it is compared with :func:`helpers.data.luhn_valid` on published test numbers.
    """
    if _not_done("write the function, then pass it to check_luhn", fn):
        return
    for number in _LUHN_CASES:
        expected = luhn_valid(number)
        try:
            got = fn(number)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"❌ your function raised {type(error).__name__}: {error} on {number!r}. "
                  "Hint: keep only the digits first, e.g. [int(c) for c in number if c.isdigit()]")
            return
        if bool(got) != expected:
            print(f"❌ {number!r}: you said {got}, the checksum says {expected}. Hint: double every second "
                  "digit counting from the right (the last digit is not doubled), subtract 9 from results "
                  "above 9, and the total must end in 0")
            return
    print(f"✅ correct: your checksum agrees with luhn_valid on all {len(_LUHN_CASES)} numbers")


def expected_blocks() -> list[list[int]]:
    """The answer to exercise 2: ``_PACK_DOCUMENTS`` packed with EOS, cut into blocks."""
    stream, _ = pack_documents([np.array(d, dtype=np.uint16) for d in _PACK_DOCUMENTS])
    return to_blocks(stream, _PACK_BLOCK_SIZE).tolist()


def check_packing(answer: list[list[int]] | None) -> None:
    """Exercise 2 of ``02_data_preparation.ipynb``: pack three tiny documents into blocks of 5 by hand.

    The documents are ``[11, 12, 13]``, ``[21, 22]`` and ``[31, 32, 33, 34]``; the answer is
    the list of full blocks, as lists of ints, with the end-of-text id written as ``50256``.
    """
    if answer is None:
        print("⏳ not done yet: write the blocks as a list of lists, then pass them to check_packing")
        return
    expected = expected_blocks()
    try:
        got = [[int(t) for t in block] for block in answer]
    except (TypeError, ValueError):
        print("❌ the answer should be a list of blocks, each a list of token ids, e.g. [[11, 12, 13, 50256, 21], ...]")
        return
    if got == expected:
        left = sum(len(d) + 1 for d in _PACK_DOCUMENTS) % _PACK_BLOCK_SIZE
        print(f"✅ correct: {len(expected)} full blocks, both running across a document boundary; the last {left} "
              "tokens do not fill a block and are left out")
    elif any(len(block) != _PACK_BLOCK_SIZE for block in got):
        print(f"❌ every block holds exactly {_PACK_BLOCK_SIZE} tokens; a last, partial block is left out")
    elif EOS_ID not in {t for block in got for t in block}:
        print(f"❌ where does one document end? Put the end-of-text id {EOS_ID} after each document")
    else:
        print("❌ not quite. Hint: write the stream first (document, EOS, document, EOS, ...), "
              f"then cut it every {_PACK_BLOCK_SIZE} tokens")




_SPEECH = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
           "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles")
_DEDUP_CASES = (  # (texts, min_chars): clean paragraphs, one blank line between them
    ([f"HAMLET.\n\n{_SPEECH}\n\nHam.\n\n[Exit.]", f"Famous lines.\n\n{_SPEECH}\n\nHam."], 100),
    ([f"{_SPEECH}\n\nExeunt.\n\n{_SPEECH}"], 100),  # a repeat inside one text
    ([f"{_SPEECH}\n\nExeunt.", f"{_SPEECH}\n\nExeunt."[::-1]], 100),  # reversed: not a repeat
    (["Exeunt.\n\nExeunt.", "Exeunt."], 5),  # long enough at min_chars = 5: removed
    (["Exeunt.\n\nExeunt.", "Exeunt.\n\nFlourish."], 200),  # too short to be checked: kept
)
MERGES_EXERCISE_TEXT = " Rosencrantz and Guildenstern are dead"
MERGES_EXERCISE_LIMIT = 1_000


def check_dedupe(fn: Callable | None) -> None:
    """Exercise 3 of ``02_data_preparation.ipynb``: paragraph de-duplication written by hand.

    ``fn(texts, min_chars)`` returns the texts with every paragraph of at least ``min_chars``
    characters that already occurred (earlier in the same text or in an earlier one) removed;
    compared with :func:`helpers.data.deduplicate` on small corpora.
    """
    from helpers.data import Document, deduplicate

    name = "paragraph de-duplication"
    if _not_done(name, fn):
        return
    hint = ("split each text at blank lines (text.split('\\n\\n')), keep a set of the long paragraphs seen so "
            "far, drop a long paragraph already in it, join the rest with '\\n\\n'.")
    for texts, min_chars in _DEDUP_CASES:
        documents = [Document(f"doc{i}", text, source_sha256="") for i, text in enumerate(texts)]
        expected = [d.text for d in deduplicate(documents, min_chars)[0]]
        try:
            got = list(fn(list(texts), min_chars))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if got != expected:
            print(f"{WRONG}: {name}: for {texts!r} with min_chars={min_chars}\n  expected {expected!r}\n  got      "
                  f"{got!r}\nHint: {hint}")
            return
    print(f"{CORRECT}: {name}: your function agrees with data.deduplicate on all {len(_DEDUP_CASES)} corpora")


def check_truncated_merges(answer) -> None:
    """Exercise 4 of ``02_data_preparation.ipynb``: how many tokens ``MERGES_EXERCISE_TEXT`` takes when
    only GPT-2's first ``MERGES_EXERCISE_LIMIT`` merges are allowed, counted by the ``tokenizers`` library."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from helpers.settings import REPO_ROOT

    folder = REPO_ROOT / "data" / "tokenizer" / "gpt2"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]  # line 0 is a version comment
    merges = [tuple(line.split()) for line in lines[:MERGES_EXERCISE_LIMIT]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    _check(
        f"tokens with the first {MERGES_EXERCISE_LIMIT:,} merges",
        answer,
        len(tokenizer.encode(MERGES_EXERCISE_TEXT).ids),
        f"keep the ranks below {MERGES_EXERCISE_LIMIT} ({{pair: r for pair, r in ranks.items() if r < "
        f"{MERGES_EXERCISE_LIMIT}}}) and encode the text with them; every pre-token is encoded on its own.",
        atol=0.5,
    )
