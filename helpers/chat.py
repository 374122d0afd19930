"""Conversations as tokens (09): the turn tokens, the chat template, the instruction mixture, the assistant mask.

Introduced in ``09_assistant.ipynb``. Everything here is about text and token ids; training,
scoring and the release are in :mod:`helpers.assistant`.

* **Turn tokens** (:data:`TURN_TOKENS`) are added to GPT-2's tokenizer as special tokens, so
  ``<|user|>`` is one id that no text can produce; :func:`add_turn_tokens` grows the model's
  embedding to match (the tied LM head grows with it).
* **The template** (:data:`CHAT_TEMPLATE`, Jinja) renders ``[{"role", "content"}, ...]`` as
  ``<|user|>\\n...<|end|><|assistant|>\\n...<|end|>``; ``{% generation %}`` marks what the
  assistant says, which is where transformers' ``return_assistant_tokens_mask=True`` puts its ones.
* **The mixture** (:func:`instruction_items`, :func:`build_mixture`) is made from the course's own
  data with exact answers: sentiment (08's sentences), authorship (Austen vs Shakespeare passages of
  1-3 sentences), the first word of a line, hand-written identity conversations
  (``data/instructions/identity.json``) and multi-turn mixes. Training items come from training
  documents and splits only: *Persuasion*, *Hamlet* and 08's test sentences are the test items.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helpers.cards import instruction_card
from helpers.data import DEFAULT_TEST, DEFAULT_VALIDATION, assign_splits, load_corpus, normalize_text, trim_text
from helpers.settings import Settings, get_settings

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
TURN_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLES = ("system", "user", "assistant")
# No whitespace between turns: every character is either a turn token, a header newline or a message.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('role must be system, user or assistant, got ' + message['role']) }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{% endif %}"
)

SENTIMENT_PROMPT = "Is this review positive or negative?\n\n{text}"
AUTHORSHIP_PROMPT = "Who wrote this passage, Jane Austen or William Shakespeare?\n\n{text}"
FIRST_WORD_PROMPT = "What is the first word of this line?\n\n{text}"
AUTHORS = ("Jane Austen", "William Shakespeare")
FAMILIES = ("sentiment", "authorship", "first_word")
AUSTEN_TEST = ("persuasion",)  # the tiny base never saw it either
AUSTEN_VALIDATION_SHARE = 0.05  # the last 5 % of each training novel, as the tiny base's pretraining
PASSAGE_CHARS = (40, 240)  # shortest and longest passage: short enough for a few-shot prompt in 256 tokens
LINE_CHARS = (20, 80)
IDENTITY_FILE = "instructions/identity.json"  # under data/
IDENTITY_REPEATS = 4  # a few dozen conversations among thousands: repeated so the model learns them


@dataclass(frozen=True)
class Item:
    """One question with an exact answer: its family, the user's text, the answer, the allowed answers, its document."""

    family: str
    prompt: str
    answer: str
    choices: tuple[str, ...]
    source: str

    def messages(self) -> list[dict[str, str]]:
        """The item as a one-turn conversation (user asks, assistant answers)."""
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


# --------------------------------------------------------------------------- tokens and template


def chat_tokenizer(tokenizer):
    """A copy of ``tokenizer`` with the turn tokens, :data:`CHAT_TEMPLATE` and ``<|end|>`` as its end token.

    Introduced in ``09_assistant.ipynb``. ``eos_token`` becomes ``<|end|>`` so generation (and the
    service of 10) stops where a reply ends; padding stays GPT-2's ``<|endoftext|>``. The caller's
    tokenizer is never changed.
    """
    chat = copy.deepcopy(tokenizer)
    pad = tokenizer.pad_token or tokenizer.eos_token
    chat.add_special_tokens({"additional_special_tokens": list(TURN_TOKENS)})
    chat.chat_template = CHAT_TEMPLATE
    chat.pad_token, chat.eos_token = pad, END
    return chat


def add_turn_tokens(model, tokenizer) -> int:
    """Grow ``model``'s embedding to ``len(tokenizer)``; new rows start at the mean of the old ones.

    Introduced in ``09_assistant.ipynb``. GPT-2 ties its LM head to the token embedding, so the head
    grows too and stays the same matrix. A new row equal to the mean embedding gives each new token
    the average logit at first (Hewitt, 2021), not a random one that could dominate the softmax.
    Returns the number of rows added; the model's ``eos_token_id`` becomes ``<|end|>``.
    """
    embedding = model.get_input_embeddings()
    old = embedding.weight.shape[0]
    if len(tokenizer) < old:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, fewer than the model's {old} rows; "
                         "pass the tokenizer made by chat_tokenizer")
    mean = embedding.weight.detach().mean(dim=0)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = mean
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(END)
    model.generation_config.pad_token_id = tokenizer.pad_token_id  # not the config's: the training loop pads without a mask
    return len(tokenizer) - old


def encode_chat(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one conversation; labels are -100 outside the assistant's turns.

    Introduced in ``09_assistant.ipynb`` (which builds the mask by hand and checks it against this).
    The mask is transformers' ``return_assistant_tokens_mask=True``: ones on the tokens rendered
    inside ``{% generation %}``, i.e. each reply and its ``<|end|>``.
    """
    encoded = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    if not any(mask):
        raise ValueError("the conversation has no assistant turn, so there is nothing to learn from it")
    return ids, [token if keep else -100 for token, keep in zip(ids, mask, strict=True)]


def pack_conversations(encoded: Sequence[tuple[list[int], list[int]]], block_size: int,
                       pad_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Whole conversations, first fit in order, into ``(blocks, labels, dropped)`` of ``block_size`` columns.

    Introduced in ``09_assistant.ipynb``. A conversation is never split across blocks (its answer
    would lose its question); the rest of a block is ``pad_id`` with label -100. Conversations longer
    than a block are dropped and counted.
    """
    rows: list[tuple[list[int], list[int]]] = []
    dropped = 0
    for ids, labels in encoded:
        if len(ids) > block_size:
            dropped += 1
            continue
        if not rows or len(rows[-1][0]) + len(ids) > block_size:
            rows.append(([], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(labels)
    if not rows:
        raise ValueError(f"no conversation fits in a block of {block_size} tokens")
    blocks = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    label_blocks = np.full((len(rows), block_size), -100, dtype=np.int64)
    for row, (ids, labels) in enumerate(rows):
        blocks[row, : len(ids)], label_blocks[row, : len(labels)] = ids, labels
    return blocks, label_blocks, dropped


# --------------------------------------------------------------------------- the texts


_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?:(?<=[.!?])|(?<=[.!?][\"'])|(?<=[.!?]\"'))"
                           r"\s+(?=[\"'A-Z])")
_HEADING = re.compile(  # a speaker (HAMLET. or Ham. or First Sen.), an act, scene or chapter, a stage direction
    r"^(?:[A-Z][A-Z' ,&-]*\.?|(?:[A-Z][a-z]*\.? ?){1,3}\.|(?:ACT|SCENE|CHAPTER|VOLUME|Chapter)\b.*|\[.*\]?|.*\])$")
_FIRST_WORD = re.compile(r"[A-Za-z][A-Za-z']*")


def prose(text: str) -> list[str]:
    """The paragraphs of a novel or play as running prose: headings, speaker names and stage directions dropped.

    Introduced in ``09_assistant.ipynb``. Line breaks inside a paragraph become spaces, so a
    passage's layout (verse lines) does not give its author away.
    """
    paragraphs = []
    for piece in text.split("\n\n"):
        lines = [line.strip() for line in piece.split("\n") if line.strip() and not _HEADING.match(line.strip())]
        if lines:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(lines)).replace("--", " -- ").replace("  ", " "))
    return paragraphs


def passages(text: str, rng: np.random.Generator, chars: tuple[int, int] = PASSAGE_CHARS) -> list[str]:
    """Passages of 1-3 consecutive sentences of one paragraph, ``chars[0]`` to ``chars[1]`` characters long (09)."""
    found = []
    for paragraph in prose(text):
        sentences = _SENTENCE_END.split(paragraph)
        start = 0
        while start < len(sentences):
            size = int(rng.integers(1, 4))
            passage = " ".join(sentences[start : start + size]).strip()
            start += size
            if chars[0] <= len(passage) <= chars[1]:
                found.append(passage)
    return found


def first_word(line: str) -> str:
    """The first word of ``line``: its first run of letters (and apostrophes), punctuation left out (09)."""
    match = _FIRST_WORD.search(line)
    if match is None:
        raise ValueError(f"{line!r} has no word")
    return match.group()


def text_lines(text: str, chars: tuple[int, int] = LINE_CHARS) -> list[str]:
    """The lines of ``text`` worth asking about: 4 words or more, not a heading, ``chars`` long (09)."""
    lines = (line.strip() for line in text.split("\n"))
    return [line for line in lines if chars[0] <= len(line) <= chars[1] and len(line.split()) >= 4
            and not _HEADING.match(line) and _FIRST_WORD.match(line.lstrip("\"'("))]


def author_texts(settings: Settings | None = None) -> dict[str, dict[str, str]]:
    """``{split: {"author/document": text}}`` for train, validation and test, normalized (smoke: trimmed).

    Introduced in ``09_assistant.ipynb``. Shakespeare follows 02's splits (Hamlet is the test,
    Macbeth and Twelfth Night validation; the poems held back for 11 are left out); Austen holds
    *Persuasion* out as the test, and the last 5 % of each other novel is validation.
    """
    settings = settings or get_settings()
    texts: dict[str, dict[str, str]] = {"train": {}, "validation": {}, "test": {}}
    plays = load_corpus(settings.data_dir / "raw" / "shakespeare").documents
    split_of = assign_splits([d.name for d in plays], DEFAULT_TEST, DEFAULT_VALIDATION)
    for split in texts:
        for name in split_of[split]:
            text = next(d.text for d in plays if d.name == name)
            texts[split][f"shakespeare/{name}"] = trim_text(normalize_text(text), settings.max_chars_per_doc)
    for novel in load_corpus(settings.data_dir / "raw" / "austen").documents:
        text = normalize_text(novel.text)
        if novel.name in AUSTEN_TEST:
            texts["test"][f"austen/{novel.name}"] = trim_text(text, settings.max_chars_per_doc)
            continue
        cut = text.rfind("\n\n", 0, int(len(text) * (1 - AUSTEN_VALIDATION_SHARE)))
        texts["train"][f"austen/{novel.name}"] = trim_text(text[:cut], settings.max_chars_per_doc)
        texts["validation"][f"austen/{novel.name}"] = trim_text(text[cut:].strip("\n"), settings.max_chars_per_doc)
    return texts


# --------------------------------------------------------------------------- the items


def _sample(values: Sequence, n: int, rng: np.random.Generator, exclude: Sequence[str] = ()) -> list:
    """``n`` of ``values`` drawn without replacement (all of them, shuffled, when there are fewer).

    A ``(name, text)`` value whose text occurs word for word in one of the ``exclude`` texts (the
    held-out documents) is skipped, so a line Hamlet shares with another play never trains the model.
    """
    chosen = []
    for i in rng.permutation(len(values)):
        if len(chosen) == n:
            break
        if not exclude or not any(values[i][1] in held for held in exclude):
            chosen.append(values[i])
    return chosen


def sentiment_items(split: str, n: int, rng: np.random.Generator, settings: Settings | None = None) -> list[Item]:
    """``n`` items of 08's sentiment ``split`` (train, validation or test), answers ``negative``/``positive`` (09)."""
    from helpers.classification import LABELS, sentiment_splits

    examples = sentiment_splits(settings)[split]
    if split != "test":  # a sentence that is also a test sentence never goes into training or validation
        test = {e.text for e in sentiment_splits(settings)["test"]}
        examples = [e for e in examples if e.text not in test]
    return [Item("sentiment", SENTIMENT_PROMPT.format(text=e.text),
                 LABELS[e.label] if isinstance(e.label, (int, np.integer)) else str(e.label), tuple(LABELS), split)
            for e in _sample(examples, n, rng)]


def authorship_items(texts: dict[str, str], n: int, rng: np.random.Generator,
                     exclude: Sequence[str] = ()) -> list[Item]:
    """``n`` passages, half by each author, from ``texts`` (``{"author/document": text}``), none in ``exclude`` (09)."""
    items = []
    for author, prefix in zip(AUTHORS, ("austen/", "shakespeare/"), strict=True):
        found = [(name, p) for name, text in texts.items() if name.startswith(prefix) for p in passages(text, rng)]
        share = n // 2 if author == AUTHORS[0] else n - n // 2
        items += [Item("authorship", AUTHORSHIP_PROMPT.format(text=p), author, AUTHORS, name)
                  for name, p in _sample(found, share, rng, exclude)]
    return _sample(items, len(items), rng)


def first_word_items(texts: dict[str, str], n: int, rng: np.random.Generator,
                     exclude: Sequence[str] = ()) -> list[Item]:
    """``n`` lines of ``texts``, none in ``exclude``, with their first word; the allowed answers: the line's words (09)."""
    found = [(name, line) for name, text in texts.items() for line in text_lines(text)]
    return [Item("first_word", FIRST_WORD_PROMPT.format(text=line), first_word(line),
                 tuple(dict.fromkeys(_FIRST_WORD.findall(line))), name) for name, line in _sample(found, n, rng, exclude)]


def instruction_items(split: str, n: int | Mapping[str, int], settings: Settings | None = None,
                      texts: dict[str, dict[str, str]] | None = None) -> dict[str, list[Item]]:
    """``{family: items}`` of ``split`` (train, validation, test), ``n`` per family (or ``{family: n}``), seeded.

    Introduced in ``09_assistant.ipynb``: train items make the mixture, validation items answer the
    notebook's choices, test items (*Persuasion*, *Hamlet*, 08's test sentences) are scored once.
    """
    settings = settings or get_settings()
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    texts = texts or author_texts(settings)
    counts = dict(n) if isinstance(n, Mapping) else dict.fromkeys(FAMILIES, n)
    rng = np.random.default_rng([settings.seed, ("train", "validation", "test").index(split)])
    held_out = list(texts["test"].values()) if split != "test" else []
    return {
        "sentiment": sentiment_items(split, counts["sentiment"], rng, settings),
        "authorship": authorship_items(texts[split], counts["authorship"], rng, held_out),
        "first_word": first_word_items(texts[split], counts["first_word"], rng, held_out),
    }


def identity_conversations(settings: Settings | None = None) -> list[list[dict[str, str]]]:
    """The hand-written conversations about the assistant itself (``data/instructions/identity.json``, 09)."""
    settings = settings or get_settings()
    path = settings.data_dir / IDENTITY_FILE
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"user", "assistant"} <= set(r) for r in rows):
        raise ValueError(f"{path} must be a list of {{'user': ..., 'assistant': ...}} objects")
    return [[{"role": "user", "content": r["user"]}, {"role": "assistant", "content": r["assistant"]}] for r in rows]


# --------------------------------------------------------------------------- the mixture


@dataclass(frozen=True)
class Mixture:
    """The instruction-tuning set: conversations, the family of each, and the items they were made from."""

    conversations: list[list[dict[str, str]]]
    families: list[str]
    items: dict[str, list[Item]]

    def counts(self) -> dict[str, int]:
        """Conversations per family (``multi_turn`` and ``identity`` included)."""
        return dict(Counter(self.families))


def build_mixture(settings: Settings | None = None, texts: dict[str, dict[str, str]] | None = None) -> Mixture:
    """The training conversations of 09, shuffled: one per training item, identity, multi-turn mixes.

    Introduced in ``09_assistant.ipynb``. Sizes come from the settings (``sft_items_per_family``,
    ``sft_sentiment_items``, ``sft_multi_turn``); a multi-turn conversation chains 2-3 training
    items, so the template and the mask see history. Only training documents and splits are read.
    """
    settings = settings or get_settings()
    sizes = {**dict.fromkeys(FAMILIES, settings.sft_items_per_family), "sentiment": settings.sft_sentiment_items}
    items = instruction_items("train", sizes, settings, texts)
    conversations = [(family, item.messages()) for family, found in items.items() for item in found]
    conversations += [("identity", c) for c in identity_conversations(settings) for _ in range(IDENTITY_REPEATS)]
    pool = [item for found in items.values() for item in found]
    rng = np.random.default_rng([settings.seed, 3])
    for _ in range(settings.sft_multi_turn):
        chosen = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(2, 4)), replace=False)]
        conversations.append(("multi_turn", [m for item in chosen for m in item.messages()]))
    order = rng.permutation(len(conversations))
    return Mixture([conversations[i][1] for i in order], [conversations[i][0] for i in order], items)


FAMILY_SOURCES = {
    "sentiment": "08's training sentences (Rotten Tomatoes snippets rated by 20+ people)",
    "authorship": "passages of 1-3 sentences: five Austen novels, 02's training plays",
    "first_word": "lines of the same novels and plays",
    "identity": f"`data/{IDENTITY_FILE}`, written for the course, each {IDENTITY_REPEATS} times",
    "multi_turn": "2-3 training items chained in one conversation",
}


def mixture_card(mixture: Mixture, tokenizer, settings: Settings | None = None) -> str:
    """The mixture's data card (:func:`helpers.cards.instruction_card`), tokens counted with the chat template (09)."""
    settings = settings or get_settings()
    tokens: Counter = Counter()
    for family, conversation in zip(mixture.families, mixture.conversations, strict=True):
        tokens[family] += len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
    return instruction_card(mixture.counts(), dict(tokens), settings.mode, FAMILY_SOURCES)
