"""Data preparation: from a folder of text files to packed token blocks, cached on disk.

Introduced in ``02_data_preparation.ipynb``; 05 trains on what :func:`prepare` leaves in
``artifacts/data/``, 07 scores the test play and 11 brings in the held-back poems.

One function per step, each callable on its own:

    load_corpus → normalize_text → trim_text (smoke mode) → scrub_pii → deduplicate
    → assign_splits → tokenize_texts → pack_documents → (files + manifest) → BlockDataset

:func:`prepare` runs them all and caches the result; re-running it with the same inputs
reuses the cache, and any changed input (a file, the block size, the mode, the split
assignment, the tokenizer) rebuilds it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
import time
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.atomic import build_folder, clean_leftovers
from helpers.cards import SHAKESPEARE_SOURCE, data_card  # noqa: F401 (02 calls data.data_card; rendered in cards)
from helpers.models import load_tokenizer
from helpers.runtime import progress_bar
from helpers.settings import Settings, display_path, get_settings

FORMAT_VERSION = 1  # bump when the files or the manifest change shape
EOS_ID = 50256  # GPT-2's <|endoftext|>, written between documents
SPLITS = ("train", "validation", "test", "held_back")
DEFAULT_TEST = ("hamlet",)  # the held-out play (07 reports perplexity on it)
DEFAULT_VALIDATION = ("macbeth", "twelfth_night")  # a tragedy and a comedy, watched during training
DEFAULT_HELD_BACK = (  # the sonnets and poems: the "new data" that arrives in 11
    "sonnets",
    "rape_of_lucrece",
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
)
DEFAULT_MIN_DEDUP_CHARS = 200  # shorter paragraphs ("Ham.", "[Exit.]", refrains) repeat legitimately
PII_KINDS = ("url", "email", "ip", "card", "phone")
PLACEHOLDERS = {"url": "<URL>", "email": "<EMAIL>", "ip": "<IP>", "card": "<CARD>", "phone": "<PHONE>"}


class CorpusError(ValueError):
    """A corpus that cannot be used as it is: the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------
# 1. Load


@dataclass(frozen=True)
class Document:
    """One text file of the corpus: its name (the file stem), its text, the hash of its bytes."""

    name: str
    text: str
    source_sha256: str


@dataclass(frozen=True)
class Corpus:
    """What :func:`load_corpus` found: the documents, and what it had to skip or repair."""

    documents: list[Document]
    skipped_empty: list[str]  # files with no text: skipped with a warning
    replacements: dict[str, int]  # name -> undecodable bytes replaced by U+FFFD (errors="replace")


def decode_text(raw: bytes, name: str, errors: str = "strict") -> tuple[str, int]:
    """Decode ``raw`` as UTF-8 and return ``(text, replacements)``.

    Introduced in ``02_data_preparation.ipynb``. ``errors="strict"`` raises a
    :class:`CorpusError` naming ``name``, the byte offset and the line of the first bad byte;
    ``errors="replace"`` puts U+FFFD in place of each undecodable sequence and counts them.
    A leading byte-order mark is dropped. Bytes with NUL in them are binary, not text.
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors={errors!r}: use 'strict' (stop at a bad byte) or 'replace' (count and replace)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CorpusError(
            f"{name} looks binary: it has a NUL byte at offset {nul}. Keep only text files in the corpus "
            "folder (a UTF-16 file also has NULs: re-save it as UTF-8)"
        )
    try:
        text = raw.decode("utf-8")
        replaced = 0
    except UnicodeDecodeError as error:
        if errors == "strict":
            line = raw.count(b"\n", 0, error.start) + 1
            raise CorpusError(
                f"{name} is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} (line {line}) "
                "cannot be decoded. Re-save the file as UTF-8, or load with errors='replace' to replace and "
                "count such bytes"
            ) from None
        text = raw.decode("utf-8", errors="replace")
        # U+FFFD already in the file (bytes EF BF BD) is text, not a replacement: never counted.
        replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
    return text.removeprefix("\ufeff"), replaced


def load_corpus(folder: Path | str, errors: str = "strict", follow_links: bool = False) -> Corpus:
    """Read every ``*.txt`` file of ``folder`` (sorted by name) as one :class:`Document`.

    Introduced in ``02_data_preparation.ipynb``. Not UTF-8, binary, a missing folder or a
    folder without text is an error that says what to do. An empty (or whitespace-only) file
    is skipped with a warning and listed in ``Corpus.skipped_empty``: one empty file should
    not stop a pipeline, but it should never pass unnoticed.

    Only regular files are read: a FIFO, a device or a folder named ``*.txt`` is a
    :class:`CorpusError` naming it (a FIFO would otherwise wait for a writer for ever). A link
    is followed when it stays inside ``folder``; a link to a file elsewhere is refused unless
    ``follow_links=True``, and a broken link or a link loop is an error naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist; point load_corpus at a folder of .txt files")
    try:
        paths = sorted(folder.glob("*.txt"))
    except OSError as error:
        raise CorpusError(f"cannot list the corpus folder {folder} ({error.strerror}); check its permissions") from None
    if not paths:
        raise CorpusError(f"{folder} holds no .txt files; put one UTF-8 text file per document there")
    documents, skipped, replacements = [], [], {}
    for path in paths:
        raw = read_corpus_file(path, folder, follow_links)
        text, replaced = decode_text(raw, str(path), errors)
        if not text or text.isspace():
            warnings.warn(f"{path} is empty: skipped", stacklevel=2)
            skipped.append(path.stem)
            continue
        if replaced:
            replacements[path.stem] = replaced
        documents.append(Document(path.stem, text, hashlib.sha256(raw).hexdigest()))
    if not documents:
        raise CorpusError(f"every .txt file in {folder} is empty ({', '.join(skipped)}); there is nothing to train on")
    return Corpus(documents, skipped, replacements)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_corpus_file(path: Path, folder: Path, follow_links: bool = False) -> bytes:
    """The bytes of one corpus file, refusing what must not be read (see :func:`load_corpus`).

    Every refusal and every operating-system error is a :class:`CorpusError` that names the
    file and says what to do.
    """
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise CorpusError(f"{path} is a broken link (to {os.readlink(path)}, which does not exist); "
                          "remove it or point it at a text file") from None
    except (RuntimeError, OSError) as error:  # a link loop: RuntimeError before Python 3.13, OSError after
        raise CorpusError(f"{path} cannot be resolved ({error}); it is a link loop or unreadable: remove it") from None
    if not follow_links and not resolved.is_relative_to(folder.resolve()):
        raise CorpusError(f"{path} is a link to {resolved}, outside the corpus folder {folder}; copy the file in, "
                          "or pass follow_links=True to read links that leave the folder")
    if not resolved.is_file():  # a FIFO would wait for a writer for ever: checked before it is opened
        raise CorpusError(f"{path} is {_file_kind(resolved.stat().st_mode)}, not a regular file; only plain text "
                          "files are read: move it out of the corpus folder")
    try:
        return resolved.read_bytes()
    except OSError as error:
        raise CorpusError(f"cannot open or read {path} ({error.strerror}); make it readable (chmod u+r), check "
                          "the disk, or move it out of the corpus folder") from None


# ---------------------------------------------------------------------------------------------
# 2. Normalize

_SPACE_LIKE = "\t\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_INVISIBLE = "\u200b\ufeff"  # zero-width space, byte-order mark inside the text
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^(?:\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG|END OF (?:THE )?PROJECT GUTENBERG)[^\n]*$", re.M | re.I
)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop a Project Gutenberg header (up to ``*** START OF ...``) and footer (from ``*** END OF ...``).

    Introduced in ``02_data_preparation.ipynb``. Text without the markers comes back unchanged.
    """
    if "project gutenberg" not in text.lower():
        return text
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    return text


def normalize_text(text: str) -> str:
    """One canonical form for every document, so equal text is equal bytes.

    Introduced in ``02_data_preparation.ipynb``. In order: Unicode NFC; CRLF and CR to LF;
    tabs, no-break and other Unicode spaces to a plain space; zero-width spaces removed;
    Project Gutenberg header/footer stripped; trailing whitespace stripped on every line;
    3 or more blank lines collapsed to 2; blank lines at the start and end removed.
    Leading spaces stay (the sonnets indent their couplets).
    """
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for char in _SPACE_LIKE:
        if char in text:
            text = text.replace(char, " ")
    for char in _INVISIBLE:
        if char in text:
            text = text.replace(char, "")
    text = strip_gutenberg_boilerplate(text)
    text = "\n".join([line.rstrip() for line in text.split("\n")])
    while "\n\n\n\n" in text:  # str methods, not a regex: several times faster on megabytes of text
        text = text.replace("\n\n\n\n", "\n\n\n")
    return text.strip("\n")


def trim_text(text: str, max_chars: int | None) -> str:
    """The first ``max_chars`` characters of ``text``, cut at a line break (``None``: all of it).

    Introduced in ``02_data_preparation.ipynb``: smoke mode trims every document to
    ``settings.max_chars_per_doc`` so the whole pipeline stays fast.
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    if max_chars < 1:
        raise ValueError(f"max_chars must be a positive number of characters or None, got {max_chars}")
    cut = text.rfind("\n", 0, max_chars + 1)
    if cut < max_chars // 2:  # no line break in the second half: cut mid-line
        cut = max_chars
    return text[:cut].rstrip()


# ---------------------------------------------------------------------------------------------
# 3. Scrub personal data

_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'()\[\]{}]+", re.I)
# The lookbehind lets a match start only at the beginning of a run of address characters,
# so a megabyte without "@" is scanned once, not once per character.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)", re.ASCII)
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?!\w|-\d)", re.ASCII)  # 13-19 digits, spaces or dashes
_PHONE = re.compile(
    r"""(?<![\w+])(?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}  # +44 20 7946 0958, +1 (555) 123-4567
      | \(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}                             # (555) 123-4567
      | \d{3}[.-]\d{3}[.-]\d{4}                                         # 555-123-4567, 555.123.4567
      | 0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}                                 # 020 7946 0958 (national, leading 0)
    )(?!\w|[.-]\d)""",
    re.X | re.ASCII,
)
_TRAILING_PUNCTUATION = ".,;:!?"



def _lines_containing(text: str, characters: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every line of ``text`` that holds one of ``characters``, in order."""
    spans = set()
    for character in characters:
        position = text.find(character)
        while position >= 0:
            start = text.rfind("\n", 0, position) + 1
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            spans.add((start, end))
            position = text.find(character, end)
    return sorted(spans)


def _substitute_in_lines(text: str, characters: str, substitutions: list) -> str:
    """Apply ``(pattern, replacement)`` pairs only to the lines that hold one of ``characters``."""
    pieces, last = [], 0
    for start, end in _lines_containing(text, characters):
        line = text[start:end]
        for pattern, replacement in substitutions:
            line = pattern.sub(replacement, line)
        pieces += [text[last:start], line]
        last = end
    return "".join(pieces) + text[last:] if pieces else text

def luhn_valid(number: str) -> bool:
    """True when the digits of ``number`` pass the Luhn checksum that payment cards carry.

    Introduced in ``02_data_preparation.ipynb``: a 16-digit number is only called a card
    when its checksum says so, which spares most ordinary long numbers.
    """
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data by placeholders and count them: ``(text, {kind: count})``.

    Introduced in ``02_data_preparation.ipynb``. URLs, e-mail addresses, IPv4 addresses,
    card numbers (13-19 digits passing the Luhn check) and phone numbers (international
    ``+...``, ``(area) ...``, ``555-123-4567`` or a national number starting with 0) become
    ``<URL>``, ``<EMAIL>``, ``<IP>``, ``<CARD>``, ``<PHONE>``. Years, dates, act and scene
    numbers and version strings such as ``1.2.3`` are left alone. Patterns are a first line
    of defence, not a guarantee: names and addresses in prose need a trained recognizer.
    """
    counts = dict.fromkeys(PII_KINDS, 0)

    def url(match: re.Match) -> str:
        found = match.group()
        kept = found.rstrip(_TRAILING_PUNCTUATION)
        counts["url"] += 1
        return PLACEHOLDERS["url"] + found[len(kept) :]

    def simple(kind: str):
        def replace(match: re.Match) -> str:
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        return replace

    def card(match: re.Match) -> str:
        if not luhn_valid(match.group()):
            return match.group()
        counts["card"] += 1
        return PLACEHOLDERS["card"]

    def phone(match: re.Match) -> str:
        if not 7 <= sum(c.isdigit() for c in match.group()) <= 15:  # E.164 numbers have at most 15 digits
            return match.group()
        counts["phone"] += 1
        return PLACEHOLDERS["phone"]

    # Every pattern stays within a line, so only lines holding a trigger character are searched
    # (found with str.find, far faster than a regex scan): most lines have no "@" and no digit.
    if "://" in text or "www." in text.lower():
        text = _URL.sub(url, text)
    text = _substitute_in_lines(text, "@", [(_EMAIL, simple("email"))])
    text = _substitute_in_lines(text, "0123456789", [(_IPV4, simple("ip")), (_CARD, card), (_PHONE, phone)])
    return text, counts


# ---------------------------------------------------------------------------------------------
# 4. De-duplicate



@dataclass(frozen=True)
class DedupStats:
    """What :func:`deduplicate` removed, and what it looked at."""

    min_chars: int
    paragraphs: int  # paragraphs seen in the whole corpus
    checked: int  # paragraphs long enough to be checked (>= min_chars)
    removed: int  # long paragraphs removed as exact repeats of an earlier one
    characters_removed: int
    duplicate_documents: list[str]  # documents identical to an earlier one (emptied)
    removed_by_document: dict[str, int]


def deduplicate(
    documents: Sequence[Document], min_chars: int = DEFAULT_MIN_DEDUP_CHARS
) -> tuple[list[Document], DedupStats]:
    """Remove exact repeats of paragraphs at least ``min_chars`` long, keeping the first occurrence.

    Introduced in ``02_data_preparation.ipynb``. "First" follows the order of ``documents``
    (:func:`prepare` passes test and validation documents first, so a repeat is removed from
    training, never from the texts we evaluate on). Shorter paragraphs are never touched:
    speaker names, ``[Exit.]`` and refrains repeat legitimately in a play. A document equal to
    an earlier one is emptied (and listed). Documents come back in the same order.
    """
    if min_chars < 1:
        raise ValueError(f"min_chars must be at least 1, got {min_chars}")
    seen_paragraphs: set[str] = set()
    seen_documents: set[str] = set()
    kept_documents, duplicate_documents, removed_by_document = [], [], {}
    paragraphs = checked = removed = characters_removed = 0
    for document in documents:
        # Split at blank lines with str.split (a regex is several times slower on megabytes):
        # joining the pieces with "\n\n" gives the text back exactly.
        pieces = document.text.split("\n\n")
        paragraphs += sum(1 for piece in pieces if piece.strip("\n"))
        if document.text in seen_documents:
            duplicate_documents.append(document.name)
            kept_documents.append(Document(document.name, "", document.source_sha256))
            continue
        seen_documents.add(document.text)
        kept = []
        for piece in pieces:
            if len(piece) >= min_chars:
                paragraph = piece.strip("\n")
                if len(paragraph) >= min_chars:
                    checked += 1
                    if paragraph in seen_paragraphs:
                        characters_removed += len(paragraph)
                        continue
                    seen_paragraphs.add(paragraph)
            kept.append(piece)
        dropped = len(pieces) - len(kept)
        if dropped:
            removed += dropped
            removed_by_document[document.name] = dropped
            kept_documents.append(Document(document.name, "\n\n".join(kept).strip("\n"), document.source_sha256))
        else:
            kept_documents.append(document)
    stats = DedupStats(
        min_chars, paragraphs, checked, removed, characters_removed, duplicate_documents, removed_by_document
    )
    return kept_documents, stats


# ---------------------------------------------------------------------------------------------
# 5. Split by document


def assign_splits(
    names: Sequence[str],
    test: Sequence[str] = DEFAULT_TEST,
    validation: Sequence[str] = DEFAULT_VALIDATION,
    held_back: Sequence[str] = DEFAULT_HELD_BACK,
) -> dict[str, list[str]]:
    """Put every document, whole, in exactly one split: ``{"train": [...], "validation": ..., ...}``.

    Introduced in ``02_data_preparation.ipynb``. ``test``, ``validation`` and ``held_back``
    name documents (file stems); ``train`` is everything else, in the order of ``names``.
    A name that is not in the corpus, or that is asked for in two splits, is an error:
    a typo must not silently move the test play into training.
    """
    if len(set(names)) != len(names):
        raise ValueError("document names must be unique; two files share a stem")
    requested = {"validation": list(validation), "test": list(test), "held_back": list(held_back)}
    owner: dict[str, str] = {}
    for split, members in requested.items():
        for name in members:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"{split} names {name!r}, which is not a document of the corpus{hint}")
            if name in owner:
                raise ValueError(f"{name!r} is asked for in both {owner[name]} and {split}; a document lives in one split")
            owner[name] = split
    train = [name for name in names if name not in owner]
    if not train:
        raise ValueError("every document is in validation, test or held_back: none is left for training")
    return {"train": train, **{split: requested[split] for split in SPLITS[1:]}}


# ---------------------------------------------------------------------------------------------
# 6. Tokenize


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"{type(tokenizer).__name__} has no fast (Rust) backend; load the tokenizer with "
            "helpers.models.load_tokenizer()"
        )
    if len(tokenizer) > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"a vocabulary of {len(tokenizer)} tokens does not fit the uint16 token files")
    return backend


@contextmanager
def _plain_encoding(backend) -> Iterator[None]:
    """Encode whole documents: no truncation or padding left on the backend by an earlier
    ``tokenizer(..., truncation=True)`` call, and a literal ``<|endoftext|>`` as plain text,
    never as the separator. The backend's settings are restored afterwards."""
    special, truncation, padding = backend.encode_special_tokens, backend.truncation, backend.padding
    backend.encode_special_tokens = True
    backend.no_truncation()
    backend.no_padding()
    try:
        yield
    finally:
        backend.encode_special_tokens = special
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


def tokenize_texts(texts: Sequence[str], tokenizer, batch_size: int = 16, progress: bool = True) -> list[np.ndarray]:
    """Token ids of each text as a ``uint16`` array, encoded in batches by the Rust tokenizer.

    Introduced in ``02_data_preparation.ipynb``. No special tokens are added, and the text
    ``<|endoftext|>`` inside a document is encoded as ordinary characters, so the only
    end-of-text ids in the packed files are the separators :func:`pack_documents` writes.
    Shows a progress bar (``TQDM_DISABLE=1`` or ``progress=False`` hides it).
    """
    backend = _backend(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips character offsets
    arrays: list[np.ndarray] = []
    with _plain_encoding(backend), progress_bar(total=len(texts), desc="tokenizing", unit="doc", progress=progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            arrays += [np.array(encoding.ids, dtype=np.uint16) for encoding in encode(batch, add_special_tokens=False)]
            bar.update(len(batch))
    return arrays


# ---------------------------------------------------------------------------------------------
# 7. Pack into blocks


def pack_documents(token_arrays: Sequence[np.ndarray], eos_id: int = EOS_ID) -> tuple[np.ndarray, np.ndarray]:
    """One token stream ``doc0 EOS doc1 EOS ...`` (``uint16``) and the start offset of each document.

    Introduced in ``02_data_preparation.ipynb``. The end-of-text id after every document tells
    the model that what follows is unrelated. An empty document adds nothing (no lone EOS);
    its start is where it would have been.
    """
    starts = np.zeros(len(token_arrays), dtype=np.int64)
    pieces, position = [], 0
    eos = np.array([eos_id], dtype=np.uint16)
    for index, tokens in enumerate(token_arrays):
        starts[index] = position
        if len(tokens) == 0:
            continue
        if np.any(tokens == eos_id):
            raise ValueError(
                f"document {index} already contains the end-of-text id {eos_id}; tokenize with tokenize_texts, "
                "which encodes a literal '<|endoftext|>' as plain text"
            )
        pieces += [np.asarray(tokens, dtype=np.uint16), eos]
        position += len(tokens) + 1
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
    return stream, starts


def to_blocks(stream: np.ndarray, block_size: int) -> np.ndarray:
    """View a token stream as ``(num_blocks, block_size)``; the last partial block is left out.

    Introduced in ``02_data_preparation.ipynb``. No copy: a view of the (memory-mapped) stream.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (a token and the one to predict), got {block_size}")
    num_blocks = len(stream) // block_size
    return stream[: num_blocks * block_size].reshape(num_blocks, block_size)


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length blocks of a token stream: item ``i`` is ``{"input_ids": LongTensor[block_size]}``.

    Introduced in ``02_data_preparation.ipynb``; 05 trains on it. The labels are the inputs
    (the model shifts them by one), so a block is all a causal language model needs.
    """

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.block_size = block_size
        self.blocks = to_blocks(tokens, block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.blocks[index].astype(np.int64))}


# ---------------------------------------------------------------------------------------------
# 8. The whole pipeline, cached


@dataclass(frozen=True)
class CleaningStats:
    """What :func:`clean_documents` did to the corpus."""

    characters_before: int
    characters_after: int
    trimmed_to: int | None
    scrubbed: dict[str, int]  # kind -> placeholders written
    dedup: DedupStats


def clean_documents(
    documents: Sequence[Document], max_chars_per_doc: int | None = None, min_dedup_chars: int = DEFAULT_MIN_DEDUP_CHARS
) -> tuple[list[Document], CleaningStats]:
    """Normalize, trim (smoke mode), scrub and de-duplicate, in that order.

    Introduced in ``02_data_preparation.ipynb``. Documents come back in the same order;
    de-duplication keeps the first occurrence in that order.
    """
    scrubbed = dict.fromkeys(PII_KINDS, 0)
    cleaned = []
    for document in documents:
        text = trim_text(normalize_text(document.text), max_chars_per_doc)
        text, counts = scrub_pii(text)
        for kind, count in counts.items():
            scrubbed[kind] += count
        cleaned.append(Document(document.name, text, document.source_sha256))
    cleaned, dedup = deduplicate(cleaned, min_dedup_chars)
    stats = CleaningStats(
        characters_before=sum(len(d.text) for d in documents),
        characters_after=sum(len(d.text) for d in cleaned),
        trimmed_to=max_chars_per_doc,
        scrubbed=scrubbed,
        dedup=dedup,
    )
    return cleaned, stats


def tokenizer_fingerprint(tokenizer) -> dict:
    """Name, vocabulary size and a hash of the full tokenizer definition (vocabulary, merges, rules).

    Introduced in ``02_data_preparation.ipynb``: part of the cache key, so another tokenizer
    never reuses token files it did not write.
    """
    definition = _backend(tokenizer).to_str()
    return {
        "name": Path(str(tokenizer.name_or_path)).name or str(tokenizer.name_or_path),
        "vocab_size": len(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "sha256": hashlib.sha256(definition.encode()).hexdigest(),
    }


class SplitLockedError(RuntimeError):
    """The test split was read while :func:`lock_test_split` held it shut."""


_locked_splits: set[str] = set()


def lock_test_split(locked: bool = True) -> None:
    """Shut (or, with ``locked=False``, open) the test split for every :class:`PreparedData` in this process.

    05, 06 and 11 shut it before they make any choice and open it in the one cell that scores it,
    at the end: a selection, a gate or a stopping rule that read the test split would stop the
    notebook with :class:`SplitLockedError` instead of quietly reporting an optimistic number.
    """
    (_locked_splits.add if locked else _locked_splits.discard)("test")


@dataclass(frozen=True)
class PreparedData:
    """What :func:`prepare` returns: where the files are, their manifest, and whether the cache served it."""

    folder: Path
    manifest: dict
    reused: bool
    seconds: float

    @property
    def paths(self) -> dict[str, Path]:
        return {split: self.folder / info["file"] for split, info in self.manifest["splits"].items()}

    @property
    def stats(self) -> dict:
        return self.manifest["stats"]

    def tokens(self, split: str) -> np.ndarray:
        """The split's packed token stream, memory-mapped (``uint16``)."""
        if split not in self.manifest["splits"]:
            raise KeyError(f"no split {split!r}; the splits are {', '.join(self.manifest['splits'])}")
        if split in _locked_splits:
            raise SplitLockedError(f"the {split} split is locked until the final report (lock_test_split(False) "
                                   "opens it): a choice must read validation data")
        return np.load(self.paths[split], mmap_mode="r")

    def documents(self, split: str) -> dict[str, np.ndarray]:
        """Each document of a split as its own token array (without its end-of-text separator).

        Introduced in ``11_iteration.ipynb``, which splits the held-back poems by document.
        """
        stream = self.tokens(split)
        return {d["name"]: stream[d["start"] : d["start"] + d["tokens"]] for d in self.manifest["splits"][split]["documents"]}

    def dataset(self, split: str) -> BlockDataset:
        """The split as a :class:`BlockDataset` of ``block_size`` blocks."""
        return BlockDataset(self.tokens(split), self.manifest["block_size"])


def load_prepared(folder: Path | str) -> PreparedData:
    """Open what :func:`prepare` wrote in ``folder`` without checking its inputs.

    Introduced in ``02_data_preparation.ipynb``. Later notebooks call :func:`prepare`, which
    also rebuilds a stale cache; this is for reading a copied folder as it is. Every file the
    manifest names must be a plain name inside ``folder`` (no ``../``, no absolute path, no
    link leading out): anything else is a ``ValueError``.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} does not exist; run helpers.data.prepare() (notebook 02) first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{folder} has format {found}, not {FORMAT_VERSION}; run prepare()")
    _check_cache_files(folder, manifest)
    return PreparedData(folder, manifest, reused=True, seconds=0.0)


def _check_cache_files(folder: Path, manifest: dict) -> None:
    """Each split's file is a plain name that resolves inside ``folder``."""
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(info, dict) for info in splits.values()):
        raise ValueError(f"{folder / 'manifest.json'} has no valid 'splits'; run prepare(force=True) to rebuild")
    for split, info in splits.items():
        name = info.get("file")
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise ValueError(f"{folder / 'manifest.json'}: split {split!r} names file {name!r}, which is not a file "
                             f"inside {folder}; run prepare(force=True) to rebuild the cache")
        if (folder / name).resolve().parent != folder.resolve():
            raise ValueError(f"{folder / name} leads outside {folder} (to {(folder / name).resolve()}); "
                             "run prepare(force=True) to rebuild the cache")


def _cached(folder: Path, key: str) -> PreparedData | None:
    try:
        prepared = load_prepared(folder)
        complete = all(path.is_file() for path in prepared.paths.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, unreadable, old: rebuild
        return None
    return prepared if complete and prepared.manifest.get("cache_key") == key else None


def _what_changed(folder: Path, inputs: dict) -> str:
    try:
        old = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except OSError:
        return "no cache yet"
    except ValueError:
        return "unreadable manifest"
    old_inputs = old.get("inputs", {}) if isinstance(old, dict) else {}
    changed = [key for key in inputs if old_inputs.get(key) != inputs[key]]
    return "changed: " + ", ".join(changed) if changed else "forced"


def _split_stats(documents: list[Document], stream: np.ndarray, block_size: int) -> dict:
    return {
        "documents": len(documents),
        "characters": sum(len(d.text) for d in documents),
        "words": sum(len(d.text.split()) for d in documents),
        "tokens": int(len(stream)),  # separators included
        "blocks": int(len(stream) // block_size),
    }


def prepare(
    settings: Settings | None = None,
    source_dir: Path | str | None = None,
    tokenizer=None,
    test: Sequence[str] = DEFAULT_TEST,
    validation: Sequence[str] = DEFAULT_VALIDATION,
    held_back: Sequence[str] = DEFAULT_HELD_BACK,
    min_dedup_chars: int = DEFAULT_MIN_DEDUP_CHARS,
    errors: str = "strict",
    force: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> PreparedData:
    """Run the whole pipeline into ``settings.artifacts_dir / "data"``, or reuse what is there.

    Introduced in ``02_data_preparation.ipynb``; 05, 07 and 11 call it too (fast when cached).
    ``source_dir`` defaults to ``data/raw/shakespeare`` and ``tokenizer`` to
    :func:`helpers.models.load_tokenizer`. The cache key covers the files' bytes, the
    tokenizer, the block size, the mode and its ``max_chars_per_doc``, the split assignment
    and the cleaning options; any change rebuilds (``force=True`` always does). The new
    folder is built beside the old one and swapped in only when complete
    (``helpers.atomic.build_folder``), so an interrupted run never leaves half a cache, and
    what a killed run left behind is removed by the next one.
    """
    started = time.perf_counter()
    settings = settings or get_settings()
    source_dir = Path(source_dir) if source_dir else settings.data_dir / "raw" / "shakespeare"
    target = settings.artifacts_dir / "data"
    tokenizer = load_tokenizer() if tokenizer is None else tokenizer
    corpus = load_corpus(source_dir, errors)
    splits = assign_splits([d.name for d in corpus.documents], test, validation, held_back)
    inputs = _cache_inputs(corpus, splits, tokenizer, settings, min_dedup_chars, errors)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    clean_leftovers(settings.artifacts_dir)  # puts back a cache whose swap was killed half-way
    cached = None if force else _cached(target, key)
    if cached is not None:
        seconds = time.perf_counter() - started
        if verbose:
            print(f"reusing the cached data in {display_path(target, settings)} "
                  f"(same inputs, key {key[:12]}; checked in {seconds:.2f} s)")
        return PreparedData(target, cached.manifest, reused=True, seconds=seconds)
    reason = _what_changed(target, inputs)

    # Evaluation texts first, so de-duplication removes a repeat from training, not from them.
    order = [name for split in ("test", "validation", "held_back", "train") for name in splits[split]]
    by_name = {d.name: d for d in corpus.documents}
    documents, cleaning = clean_documents([by_name[n] for n in order], settings.max_chars_per_doc, min_dedup_chars)
    arrays = dict(zip(order, tokenize_texts([d.text for d in documents], tokenizer, progress=progress)))
    with build_folder(target) as building:
        split_info, split_stats = _write_splits(building, splits, arrays, {d.name: d for d in documents},
                                                settings.block_size)
        manifest = _manifest(key, inputs, source_dir, settings, split_info,
                             _cache_stats(split_stats, corpus, cleaning))
        (building / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started
    if verbose:
        total = sum(s["tokens"] for s in split_stats.values())
        print(f"prepared {total:,} tokens into {display_path(target, settings)} in {seconds:.1f} s ({reason})")
    return PreparedData(target, manifest, reused=False, seconds=seconds)


def _manifest(key: str, inputs: dict, source_dir: Path, settings: Settings, split_info: dict, stats: dict) -> dict:
    """The cache's ``manifest.json``: what was made, from what, by which settings."""
    return {
        "format_version": FORMAT_VERSION,
        "cache_key": key,
        "made_by": "helpers.data.prepare (02_data_preparation.ipynb)",
        "source": {"folder": display_path(source_dir, settings), "files": inputs["files"]},
        "tokenizer": inputs["tokenizer"],
        "dtype": "uint16",
        "eos_id": EOS_ID,
        "block_size": settings.block_size,
        "settings": {"mode": settings.mode, "block_size": settings.block_size,
                     "max_chars_per_doc": settings.max_chars_per_doc},
        "splits": split_info,
        "stats": stats,
        "inputs": inputs,
    }


def _cache_inputs(corpus: Corpus, splits: dict[str, list[str]], tokenizer, settings: Settings,
                  min_dedup_chars: int, errors: str) -> dict:
    """Everything the cache depends on; its hash is the cache key."""
    return {
        "format_version": FORMAT_VERSION,
        "files": {d.name: d.source_sha256 for d in corpus.documents},
        "skipped_empty": corpus.skipped_empty,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block_size": settings.block_size,
        "mode": settings.mode,
        "max_chars_per_doc": settings.max_chars_per_doc,
        "split_assignment": {split: splits[split] for split in SPLITS[1:]},
        "min_dedup_chars": min_dedup_chars,
        "errors": errors,
    }


def _write_splits(
    folder: Path, splits: dict[str, list[str]], arrays: dict[str, np.ndarray], cleaned: dict[str, Document],
    block_size: int,
) -> tuple[dict, dict]:
    """Pack each split into ``<split>.npy`` in ``folder``; return its manifest entries and its statistics."""
    split_info, split_stats = {}, {}
    for split in SPLITS:
        names = splits[split]
        stream, starts = pack_documents([arrays[n] for n in names])
        np.save(folder / f"{split}.npy", stream)
        split_stats[split] = _split_stats([cleaned[n] for n in names], stream, block_size)
        split_info[split] = {
            "file": f"{split}.npy",
            "documents": [
                {"name": n, "start": int(s), "tokens": int(len(arrays[n])), "source_sha256": cleaned[n].source_sha256}
                for n, s in zip(names, starts)
            ],
        }
    return split_info, split_stats


def _cache_stats(split_stats: dict, corpus: Corpus, cleaning: CleaningStats) -> dict:
    return {
        "splits": split_stats,
        "corpus": {
            "documents": len(corpus.documents),
            "skipped_empty": corpus.skipped_empty,
            "replacements": corpus.replacements,
            "characters_raw": cleaning.characters_before,
            "characters_clean": cleaning.characters_after,
            "trimmed_to": cleaning.trimmed_to,
        },
        "scrubbed": cleaning.scrubbed,
        "dedup": asdict(cleaning.dedup),
    }
