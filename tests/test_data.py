"""data: every step of the preparation pipeline, its edge cases, and the cache.

Tiny synthetic corpora in ``tmp_path`` keep these fast; the tokenizer is the real GPT-2 one
(offline), and its own ``encode`` is the reference for what the pipeline writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata

import numpy as np
import pytest
import torch

from helpers import data, exercises, models
from helpers.settings import make_settings
from tests.notebook_code import notebook_definitions

NB02 = notebook_definitions("02_data_preparation.ipynb")  # the lesson code 02 writes in its cells

SHAKESPEARE = make_settings("smoke").data_dir / "raw" / "shakespeare"
SPEECH = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles,\n"
    "And by opposing end them? To die: to sleep;"
)  # 200+ characters: long enough to be de-duplicated


def write(folder, name, content):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# --- load ----------------------------------------------------------------------------------------


def test_load_reads_sorted_txt_files_with_their_hashes(tmp_path):
    write(tmp_path, "b.txt", "Second.")
    write(tmp_path, "a.txt", "First.")
    write(tmp_path, "notes.md", "not a document")
    corpus = data.load_corpus(tmp_path)
    assert [d.name for d in corpus.documents] == ["a", "b"]
    assert corpus.documents[0].text == "First."
    assert corpus.documents[0].source_sha256 == hashlib.sha256(b"First.").hexdigest()


def test_non_utf8_is_an_error_naming_file_offset_and_line(tmp_path):
    write(tmp_path, "good.txt", "fine")
    write(tmp_path, "bad.txt", b"line one\nca\xe9 au lait")  # Latin-1 e-acute at byte 11
    with pytest.raises(data.CorpusError) as info:
        data.load_corpus(tmp_path)
    message = str(info.value)
    assert "bad.txt" in message and "offset 11" in message and "line 2" in message and "0xe9" in message
    assert "errors='replace'" in message


def test_replace_mode_counts_replacements_but_not_genuine_replacement_characters(tmp_path):
    write(tmp_path, "bad.txt", b"a\xff b\xfe c \xef\xbf\xbd")  # two bad bytes, one real U+FFFD
    corpus = data.load_corpus(tmp_path, errors="replace")
    assert corpus.replacements == {"bad": 2}
    assert corpus.documents[0].text == "a\ufffd b\ufffd c \ufffd"


def test_unknown_errors_mode_is_rejected(tmp_path):
    write(tmp_path, "a.txt", "text")
    with pytest.raises(ValueError, match="strict"):
        data.load_corpus(tmp_path, errors="ignore")


def test_binary_file_is_an_error(tmp_path):
    write(tmp_path, "a.txt", "text")
    write(tmp_path, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(data.CorpusError, match=r"image\.txt looks binary: it has a NUL byte at offset 8"):
        data.load_corpus(tmp_path)


def test_utf16_file_is_reported_as_binary(tmp_path):
    write(tmp_path, "wide.txt", "Hamlet".encode("utf-16"))
    with pytest.raises(data.CorpusError, match="UTF-16"):
        data.load_corpus(tmp_path)


def test_empty_file_is_skipped_with_a_warning_and_listed(tmp_path):
    write(tmp_path, "a.txt", "Some text.")
    write(tmp_path, "empty.txt", "")
    write(tmp_path, "blank.txt", " \n\n\t\n")
    with pytest.warns(UserWarning, match="empty"):
        corpus = data.load_corpus(tmp_path)
    assert [d.name for d in corpus.documents] == ["a"]
    assert corpus.skipped_empty == ["blank", "empty"]


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(data.CorpusError, match="no .txt files"):
        data.load_corpus(tmp_path)
    write(tmp_path, "empty.txt", "")
    with pytest.warns(UserWarning), pytest.raises(data.CorpusError, match="every .txt file .* is empty"):
        data.load_corpus(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_corpus(tmp_path / "nowhere")


def test_byte_order_mark_is_dropped(tmp_path):
    write(tmp_path, "a.txt", "\ufeffHello".encode())
    assert data.load_corpus(tmp_path).documents[0].text == "Hello"


# --- normalize -----------------------------------------------------------------------------------


def test_line_endings_become_lf():
    assert data.normalize_text("one\r\ntwo\rthree\n") == "one\ntwo\nthree"


def test_nfc_composes_like_unicodedata():
    decomposed = "Cafe\u0301 na\u0131\u0308ve"
    assert data.normalize_text(decomposed) == unicodedata.normalize("NFC", decomposed)
    assert data.normalize_text(decomposed) != decomposed


def test_whitespace_is_canonical():
    text = "\n\nTo\tbe,\xa0or not   \nto be.  \n\n\n\n\n\nThat is\u200b the question.\n\n"
    assert data.normalize_text(text) == "To be, or not\nto be.\n\n\nThat is the question."


def test_two_blank_lines_are_kept_and_leading_spaces_too():
    text = "Sonnet I\n\n\n  Thy self thy foe,\n  to thy sweet self too cruel:"
    assert data.normalize_text(text) == text


def test_normalize_is_idempotent_on_the_real_corpus():
    for path in sorted(SHAKESPEARE.glob("*.txt"))[:6]:
        once = data.normalize_text(path.read_text(encoding="utf-8"))
        assert data.normalize_text(once) == once, path.name
        assert once.split() == path.read_text(encoding="utf-8").split(), path.name  # no word lost or changed


def test_gutenberg_header_and_footer_are_stripped():
    text = (
        "The Project Gutenberg EBook of Hamlet\nLicense blah\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n\nACT I.\nWho's there?\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nMore license text"
    )
    assert data.normalize_text(text) == "ACT I.\nWho's there?"
    old_style = "Preamble\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody.\nEnd of the Project Gutenberg EBook of X\n"
    assert data.strip_gutenberg_boilerplate(old_style).strip() == "Body."


def test_text_without_boilerplate_is_unchanged():
    text = "*** A line of stars that is not a marker ***\nBody."
    assert data.strip_gutenberg_boilerplate(text) == text


def test_a_one_megabyte_line_goes_through_every_step(tokenizer):
    line = "O Romeo, Romeo, wherefore art thou Romeo?  " * 25_000  # ~1.1 MB, no line break
    assert len(line) > 1_000_000
    normalized = data.normalize_text(line + "\r\n")
    assert normalized == line.rstrip()
    assert data.scrub_pii(normalized)[0] == normalized
    digits = ("x " + "1" * 1_000_000)  # a megabyte of digits: the patterns must stay linear
    assert data.scrub_pii(digits)[0] == digits
    (tokens,) = data.tokenize_texts([normalized], tokenizer, progress=False)
    expected = tokenizer(normalized)["input_ids"]
    assert len(tokens) == len(expected) and tokens.tolist() == expected  # compared whole, reported short


def test_tokenize_texts_ignores_truncation_an_earlier_call_left_on_the_tokenizer(tokenizer):
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 20
    tokenizer(["A film."], truncation=True, max_length=4)  # fast tokenizers keep this on their Rust backend
    before = tokenizer.backend_tokenizer.truncation
    (tokens,) = data.tokenize_texts([text], tokenizer, progress=False)
    assert len(tokens) == len(tokenizer(text)["input_ids"]) > 4
    tokenizer(["A film."], truncation=True, max_length=4)
    data.tokenize_texts([text], tokenizer, progress=False)
    assert tokenizer.backend_tokenizer.truncation == before  # restored, whatever it was


def test_trim_cuts_at_a_line_break():
    text = "first line\nsecond line\nthird line"
    assert data.trim_text(text, None) == text
    assert data.trim_text(text, 100) == text
    assert data.trim_text(text, 26) == "first line\nsecond line"
    assert data.trim_text("a" * 50, 10) == "a" * 10  # no line break: cut mid-line


# --- scrub ---------------------------------------------------------------------------------------

MUST_SCRUB = [
    ("Write to jane.doe@example.com today.", "<EMAIL>", "email"),
    ("cc: J.Smith+news@mail.co.uk", "<EMAIL>", "email"),
    ("Call +1 (555) 123-4567 now", "<PHONE>", "phone"),
    ("Call 555-123-4567 now", "<PHONE>", "phone"),
    ("Call (555) 123-4567 now", "<PHONE>", "phone"),
    ("Call 555.123.4567 now", "<PHONE>", "phone"),
    ("London: +44 20 7946 0958.", "<PHONE>", "phone"),
    ("London: 020 7946 0958.", "<PHONE>", "phone"),
    ("Paris: +33 1 23 45 67 89", "<PHONE>", "phone"),
    ("See https://example.com/path?q=1&r=2.", "<URL>", "url"),
    ("See http://example.org", "<URL>", "url"),
    ("See www.example.com/page, then", "<URL>", "url"),
    ("Server at 192.168.0.1 is down", "<IP>", "ip"),
    ("Gateway 10.0.0.255.", "<IP>", "ip"),
    ("Card 4111 1111 1111 1111 expires", "<CARD>", "card"),
    ("Card 4111-1111-1111-1111 expires", "<CARD>", "card"),
    ("Card 5555555555554444 expires", "<CARD>", "card"),
    ("Amex 378282246310005 expires", "<CARD>", "card"),
]

MUST_NOT_SCRUB = [
    "In 1599 the Globe opened.",
    "Shakespeare lived 1564-1616.",
    "Act 3, Scene 2",
    "SCENE II. Elsinore. A room in the Castle.",
    "Meet on 2024-01-15 at 10:30, or 23/04/1616.",
    "Upgrade to version 1.2.3 first.",
    "Card 4111 1111 1111 1112 fails the checksum.",
    "A 16-digit number 1234567812345678 that fails Luhn.",
    "pi is 3.14159 and e is 2.71828",
    "To be, or not to be: that is the question.",
    "O Romeo, Romeo! wherefore art thou Romeo?",
    "Ham. [Exit.] @@@@",
    "12,000 ducats, 3 times, page 12 line 7",
    "256.1.1.1 is not an address",
]


@pytest.mark.parametrize(("text", "placeholder", "kind"), MUST_SCRUB)
def test_personal_data_is_replaced_and_counted(text, placeholder, kind):
    scrubbed, counts = data.scrub_pii(text)
    assert placeholder in scrubbed
    assert counts[kind] == 1 and sum(counts.values()) == 1, counts
    assert not any(ch.isdigit() for ch in scrubbed) or kind == "url"  # no digit of the number survives
    assert data.scrub_pii(scrubbed) == (scrubbed, dict.fromkeys(data.PII_KINDS, 0))  # idempotent


def test_url_keeps_the_sentence_punctuation():
    assert data.scrub_pii("See https://example.com/a.")[0] == "See <URL>."


@pytest.mark.parametrize("text", MUST_NOT_SCRUB)
def test_ordinary_text_is_left_alone(text):
    scrubbed, counts = data.scrub_pii(text)
    assert scrubbed == text
    assert sum(counts.values()) == 0


def test_scrub_handles_several_kinds_in_one_text():
    text = "Mail a@b.org or call 555-123-4567.\nVisit https://x.io from 8.8.8.8.\nThe end."
    scrubbed, counts = data.scrub_pii(text)
    assert scrubbed == "Mail <EMAIL> or call <PHONE>.\nVisit <URL> from <IP>.\nThe end."
    assert counts == {"url": 1, "email": 1, "ip": 1, "card": 0, "phone": 1}


def test_luhn_agrees_with_published_test_numbers():
    for number in ("4242424242424242", "4000056655665556", "5555555555554444", "378282246310005", "6011111111111117"):
        assert data.luhn_valid(number), number
    for number in ("4242424242424241", "1234567812345678", "0", ""):
        assert data.luhn_valid(number) is (number == "0"), number


def test_the_real_corpus_has_nothing_to_scrub():
    for path in sorted(SHAKESPEARE.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        scrubbed, counts = data.scrub_pii(text)
        assert scrubbed == text and sum(counts.values()) == 0, (path.name, counts)


# --- de-duplicate --------------------------------------------------------------------------------


def doc(name, text):
    return data.Document(name, text, hashlib.sha256(text.encode()).hexdigest())


def test_long_repeated_paragraphs_are_removed_keeping_the_first():
    first = doc("first", f"HAMLET.\n\n{SPEECH}\n\nHam.\n\n[Exit.]")
    second = doc("second", f"Ham.\n\n{SPEECH}\n\n\n[Exit.]\n\nA new line.")
    (kept_first, kept_second), stats = data.deduplicate([first, second])
    assert kept_first == first  # nothing removed from the first occurrence
    assert NB02["split_paragraphs"](kept_second.text) == ["Ham.", "[Exit.]", "A new line."]  # short repeats stay
    assert stats.removed == 1 and stats.characters_removed == len(SPEECH)
    assert stats.removed_by_document == {"second": 1}
    assert stats.paragraphs == 4 + 4 and stats.checked == 2  # the speech, twice


def test_min_chars_is_inclusive_and_short_paragraphs_are_never_touched():
    paragraph = "x" * 50
    documents = [doc("a", paragraph), doc("b", f"intro\n\n{paragraph}")]
    assert data.deduplicate(documents, min_chars=50)[1].removed == 1
    assert data.deduplicate(documents, min_chars=51)[1].removed == 0
    with pytest.raises(ValueError):
        data.deduplicate(documents, min_chars=0)


def test_whole_duplicate_documents_are_emptied_and_listed():
    documents = [doc("a", "Short text."), doc("copy", "Short text."), doc("b", "Other.")]
    kept, stats = data.deduplicate(documents)
    assert [d.text for d in kept] == ["Short text.", "", "Other."]
    assert stats.duplicate_documents == ["copy"]


def test_split_paragraphs():
    assert NB02["split_paragraphs"]("a\nb\n\nc\n\n\nd") == ["a\nb", "c", "d"]


# --- split ---------------------------------------------------------------------------------------


def test_default_assignment_names_real_works_and_never_overlaps():
    names = sorted(p.stem for p in SHAKESPEARE.glob("*.txt"))
    splits = data.assign_splits(names)
    assert splits["test"] == ["hamlet"]
    assert set(splits["held_back"]) == {"sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim",
                                        "phoenix_and_the_turtle"}
    members = [name for split in data.SPLITS for name in splits[split]]
    assert sorted(members) == names  # every work in exactly one split


def test_unknown_name_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'hamlett'.*did you mean hamlet"):
        data.assign_splits(["hamlet", "macbeth"], test=["hamlett"], validation=[], held_back=[])


def test_a_name_in_two_splits_is_an_error():
    with pytest.raises(ValueError, match="both"):
        data.assign_splits(["a", "b", "c"], test=["a"], validation=["a"], held_back=[])


def test_nothing_left_for_training_is_an_error():
    with pytest.raises(ValueError, match="training"):
        data.assign_splits(["a", "b"], test=["a"], validation=["b"], held_back=[])


# --- tokenize and pack ---------------------------------------------------------------------------


def test_tokenize_matches_the_tokenizer_itself(tokenizer):
    texts = ["Hello world", "", "Wherefore art thou, Romeo?\n\nEnter FRIAR.", SPEECH]
    arrays = data.tokenize_texts(texts, tokenizer, batch_size=3, progress=False)
    assert arrays[0].tolist() == [15496, 995]
    assert all(a.dtype == np.uint16 for a in arrays)
    assert [a.tolist() for a in arrays] == [tokenizer(t)["input_ids"] for t in texts]


def test_literal_end_of_text_in_a_document_is_plain_text(tokenizer):
    (tokens,) = data.tokenize_texts(["a<|endoftext|>b"], tokenizer, progress=False)
    assert data.EOS_ID not in tokens.tolist()
    assert tokenizer.decode(tokens.tolist()) == "a<|endoftext|>b"
    assert tokenizer("<|endoftext|>")["input_ids"] == [data.EOS_ID]  # the tokenizer itself is left as it was


def test_a_slow_tokenizer_is_refused():
    class NotFast:
        pass

    with pytest.raises(TypeError, match="load_tokenizer"):
        data.tokenize_texts(["x"], NotFast(), progress=False)


def test_pack_unpack_round_trip_with_separators():
    documents = [np.array([5, 6, 7], np.uint16), np.array([], np.uint16), np.array([8], np.uint16),
                 np.array([9, 10], np.uint16)]
    stream, starts = data.pack_documents(documents)
    assert stream.dtype == np.uint16
    assert stream.tolist() == [5, 6, 7, data.EOS_ID, 8, data.EOS_ID, 9, 10, data.EOS_ID]
    assert starts.tolist() == [0, 4, 4, 6]
    assert [d.tolist() for d in NB02["unpack_documents"](stream)] == [[5, 6, 7], [8], [9, 10]]
    assert [d.tolist() for d in NB02["unpack_documents"](stream[:8])] == [[5, 6, 7], [8], [9, 10]]  # cut: partial last


def test_pack_refuses_a_document_holding_the_separator():
    with pytest.raises(ValueError, match="end-of-text"):
        data.pack_documents([np.array([1, data.EOS_ID, 2], np.uint16)])


def test_blocks_are_a_view_without_the_partial_tail():
    stream = np.arange(10, dtype=np.uint16)
    blocks = data.to_blocks(stream, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert np.shares_memory(blocks, stream)
    with pytest.raises(ValueError):
        data.to_blocks(stream, 1)


def test_dataset_shapes_and_dtype():
    stream = np.arange(100, dtype=np.uint16)
    dataset = data.BlockDataset(stream, block_size=8)
    assert len(dataset) == 12
    item = dataset[1]["input_ids"]
    assert item.dtype == torch.long and item.tolist() == list(range(8, 16))
    with pytest.raises(IndexError):
        dataset[12]


# --- prepare and its cache -----------------------------------------------------------------------

WORKS = {
    "hamlet": "HAMLET.\nWho's there?\n\n" + SPEECH,
    "macbeth": "MACBETH.\nIs this a dagger which I see before me?\r\n\r\n" + SPEECH,  # a repeat of hamlet's speech
    "sonnets": "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.",
    "tempest": "MIRANDA.\nO brave new world, that has such people in't!\nWrite to prospero@isle.org",
    "lear": "LEAR.\nNothing will come of nothing: speak again.",
}
ASSIGNMENT = dict(test=["hamlet"], validation=["macbeth"], held_back=["sonnets"])


@pytest.fixture
def corpus_dir(tmp_path):
    folder = tmp_path / "corpus"
    for name, text in WORKS.items():
        write(folder, f"{name}.txt", text)
    return folder


@pytest.fixture
def settings(tmp_path):
    return make_settings("smoke", artifacts_dir=tmp_path / "artifacts")


def run_prepare(settings, corpus_dir, tokenizer, **overrides):
    options = dict(ASSIGNMENT, progress=False, verbose=False) | overrides
    return data.prepare(settings, source_dir=corpus_dir, tokenizer=tokenizer, **options)


def test_prepare_writes_splits_whole_documents_and_a_manifest(settings, corpus_dir, tokenizer):
    prepared = run_prepare(settings, corpus_dir, tokenizer)
    assert not prepared.reused and prepared.folder == settings.artifacts_dir / "data"
    manifest = json.loads((prepared.folder / "manifest.json").read_text())
    assert manifest == prepared.manifest
    assert manifest["format_version"] == data.FORMAT_VERSION
    assert manifest["tokenizer"]["name"] == "gpt2" and manifest["tokenizer"]["vocab_size"] == 50257
    assert manifest["block_size"] == settings.block_size and manifest["settings"]["mode"] == "smoke"
    names = {split: [d["name"] for d in info["documents"]] for split, info in manifest["splits"].items()}
    assert names == {"train": ["lear", "tempest"], "validation": ["macbeth"], "test": ["hamlet"], "held_back": ["sonnets"]}
    for path in corpus_dir.glob("*.txt"):
        assert manifest["source"]["files"][path.stem] == hashlib.sha256(path.read_bytes()).hexdigest()
    for split, info in manifest["splits"].items():
        stream = prepared.tokens(split)
        assert stream.dtype == np.uint16
        assert len(stream) == manifest["stats"]["splits"][split]["tokens"] == sum(d["tokens"] + 1 for d in info["documents"])
        assert int((stream == data.EOS_ID).sum()) == len(info["documents"])  # one separator per document
    # The test split is exactly hamlet, cleaned and tokenized: no other document's tokens leak in.
    (hamlet,) = prepared.documents("test").values()
    assert hamlet.tolist() == tokenizer(WORKS["hamlet"])["input_ids"]
    # The repeated speech is removed from macbeth (validation), not from hamlet (test); the e-mail is scrubbed.
    (macbeth,) = prepared.documents("validation").values()
    assert tokenizer.decode(macbeth.tolist()) == "MACBETH.\nIs this a dagger which I see before me?"
    train_text = tokenizer.decode(prepared.tokens("train").tolist())
    assert "<EMAIL>" in train_text and "prospero@" not in train_text
    assert prepared.stats["scrubbed"]["email"] == 1 and prepared.stats["dedup"]["removed"] == 1


def test_prepared_dataset_yields_long_blocks(settings, corpus_dir, tokenizer):
    prepared = run_prepare(settings, corpus_dir, tokenizer, test=[], validation=[], held_back=[])
    dataset = prepared.dataset("train")
    assert len(dataset) == len(prepared.tokens("train")) // settings.block_size > 0
    assert dataset[0]["input_ids"].dtype == torch.long and dataset[0]["input_ids"].shape == (settings.block_size,)
    with pytest.raises(KeyError, match="no split"):
        prepared.tokens("dev")


def test_same_inputs_reuse_the_cache(settings, corpus_dir, tokenizer, capsys):
    first = run_prepare(settings, corpus_dir, tokenizer)
    mtime = (first.folder / "train.npy").stat().st_mtime_ns
    second = run_prepare(settings, corpus_dir, tokenizer, verbose=True)
    assert second.reused and second.manifest == first.manifest
    assert (first.folder / "train.npy").stat().st_mtime_ns == mtime  # not rewritten
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("file", "files"),
        ("block_size", "block_size"),
        ("mode", "max_chars_per_doc"),
        ("assignment", "split_assignment"),
        ("tokenizer", "tokenizer"),
    ],
)
def test_changed_inputs_rebuild(settings, corpus_dir, tokenizer, capsys, change, reason):
    first = run_prepare(settings, corpus_dir, tokenizer)
    overrides = {}
    if change == "file":
        write(corpus_dir, "lear.txt", WORKS["lear"] + "\nThou shalt not.")
    elif change == "block_size":
        settings = dataclasses.replace(settings, block_size=32)
    elif change == "mode":
        settings = make_settings("cpu", artifacts_dir=settings.artifacts_dir)
    elif change == "assignment":
        overrides = dict(validation=["lear"])
    else:
        other = models.load_tokenizer(models.resolve_model_source(make_settings("smoke")))
        other.add_tokens(["wherefore"])
        overrides = dict(tokenizer=other)
    second = run_prepare(settings, corpus_dir, overrides.pop("tokenizer", tokenizer), verbose=True, **overrides)
    assert not second.reused
    assert second.manifest["cache_key"] != first.manifest["cache_key"]
    assert reason in capsys.readouterr().out.splitlines()[-1]
    assert run_prepare(settings, corpus_dir, tokenizer if change != "tokenizer" else other, **overrides).reused


def test_a_corrupt_cache_is_rebuilt(settings, corpus_dir, tokenizer):
    first = run_prepare(settings, corpus_dir, tokenizer)
    for broken in ("{ half a manifest", "[]", json.dumps({"format_version": data.FORMAT_VERSION})):
        (first.folder / "manifest.json").write_text(broken)
        assert not run_prepare(settings, corpus_dir, tokenizer).reused
    (first.folder / "test.npy").unlink()
    assert not run_prepare(settings, corpus_dir, tokenizer).reused


def test_an_interrupted_prepare_leaves_the_old_cache_whole(settings, corpus_dir, tokenizer, monkeypatch):
    first = run_prepare(settings, corpus_dir, tokenizer)
    old_tokens = np.array(first.tokens("train"))
    write(corpus_dir, "lear.txt", "A changed text.")
    real_save, calls = np.save, []

    def save_then_fail(path, array):
        calls.append(path)
        real_save(path, array)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the learner pressed stop halfway through writing

    monkeypatch.setattr(data.np, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(settings, corpus_dir, tokenizer)
    monkeypatch.undo()
    assert [p.name for p in settings.artifacts_dir.iterdir()] == ["data"]  # no half-written folder left behind
    kept = data.load_prepared(settings.artifacts_dir / "data")
    assert kept.manifest["cache_key"] == first.manifest["cache_key"]
    assert np.array_equal(kept.tokens("train"), old_tokens)


def test_an_interrupted_first_prepare_leaves_nothing(settings, corpus_dir, tokenizer, monkeypatch):
    def fail(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        run_prepare(settings, corpus_dir, tokenizer)
    assert list(settings.artifacts_dir.iterdir()) == []


def test_smoke_mode_trims_documents(settings, tmp_path, tokenizer):
    folder = tmp_path / "long"
    write(folder, "long.txt", ("A line of verse, then another one.\n" * 2_000))
    prepared = data.prepare(settings, source_dir=folder, tokenizer=tokenizer, test=[], validation=[], held_back=[],
                            progress=False, verbose=False)
    stats = prepared.stats
    assert stats["corpus"]["trimmed_to"] == settings.max_chars_per_doc
    assert stats["splits"]["train"]["characters"] <= settings.max_chars_per_doc < stats["corpus"]["characters_raw"]


def test_data_card_reports_license_sizes_and_held_out_works(settings, corpus_dir, tokenizer):
    prepared = run_prepare(settings, corpus_dir, tokenizer)
    card = data.data_card(prepared)
    assert "public domain" in card and "hamlet" in card and "sonnets" in card
    tokens = prepared.stats["splits"]["train"]["tokens"]
    assert f"| {tokens:,} |" in card


def test_load_prepared_without_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        data.load_prepared(tmp_path)


# --- exercise checks -----------------------------------------------------------------------------


def test_luhn_check_accepts_a_right_answer_and_hints_otherwise(capsys):
    exercises.check_luhn(None)
    assert "⏳" in capsys.readouterr().out
    exercises.check_luhn(data.luhn_valid)
    assert "✅" in capsys.readouterr().out
    exercises.check_luhn(lambda number: True)
    assert "❌" in capsys.readouterr().out
    exercises.check_luhn(lambda number: 1 / 0)
    assert "raised ZeroDivisionError" in capsys.readouterr().out


def test_packing_check(capsys):
    exercises.check_packing(None)
    assert "⏳" in capsys.readouterr().out
    exercises.check_packing([[11, 12, 13, data.EOS_ID, 21], [22, data.EOS_ID, 31, 32, 33]])
    assert "✅" in capsys.readouterr().out
    exercises.check_packing([[11, 12, 13, 21, 22], [31, 32, 33, 34, 0]])
    assert "end-of-text" in capsys.readouterr().out
    exercises.check_packing("not blocks")
    assert "❌" in capsys.readouterr().out


def test_progress_bar_shows_unless_disabled(tokenizer, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "")
    data.tokenize_texts(["a", "b"], tokenizer)
    assert "tokenizing" in capsys.readouterr().err
    data.tokenize_texts(["a", "b"], tokenizer, progress=False)
    assert "tokenizing" not in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data.tokenize_texts(["a", "b"], tokenizer)
    assert "tokenizing" not in capsys.readouterr().err
