"""The whole data pipeline (``helpers.data.prepare``) against the bare tokenizer, in tokens per second.

Both sides work on the full Shakespeare corpus (``cpu``-mode sizes: whole documents). The
baseline is the Rust tokenizer alone, one ``encode_batch_fast`` call over the already
cleaned texts: the least work that can produce these tokens. The candidate is ``prepare``
from the raw files with the cache disabled (``force=True`` into a fresh temporary folder):
loading, hashing, cleaning, scrubbing, de-duplication, splitting, tokenizing, packing and
writing the files. The tokenizer is loaded once, outside both timings.

Measurements alternate between the two sides and the best of each is kept. Both are timed in
CPU seconds of this process (``time.process_time``): on a shared two-core machine other jobs
take time slices at random, which moves wall-clock time by tens of percent but not the work
done. Wall-clock times are printed beside them; on an idle machine the two agree.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import Comparison
from helpers.data import clean_documents, load_corpus, prepare
from helpers.models import load_tokenizer, resolve_model_source
from helpers.settings import make_settings

REPEATS = 5


def _seconds(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def run() -> list[Comparison]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings("cpu", artifacts_dir=Path(tmp))
        tokenizer = load_tokenizer(resolve_model_source(settings))
        corpus = load_corpus(settings.data_dir / "raw" / "shakespeare")
        texts = [d.text for d in clean_documents(corpus.documents, settings.max_chars_per_doc)[0]]
        backend = tokenizer.backend_tokenizer

        def bare():
            return backend.encode_batch_fast(texts, add_special_tokens=False)

        def pipeline():
            return prepare(settings, tokenizer=tokenizer, force=True, progress=False, verbose=False)

        tokens = sum(len(encoding.ids) for encoding in bare())
        prepared = pipeline()  # warm-up; also checks both sides produce the same tokens
        documents = [d for info in prepared.manifest["splits"].values() for d in info["documents"]]
        assert sum(d["tokens"] for d in documents) == tokens, "pipeline and bare tokenizer disagree on the tokens"
        bare_times, pipeline_times = [], []
        for _ in range(REPEATS):
            bare_times.append(_seconds(bare))
            pipeline_times.append(_seconds(pipeline))
    bare_cpu, bare_wall = (min(t[i] for t in bare_times) for i in (0, 1))
    pipeline_cpu, pipeline_wall = (min(t[i] for t in pipeline_times) for i in (0, 1))
    print(f"  {tokens:,} tokens; best CPU s: bare {bare_cpu:.2f}, prepare {pipeline_cpu:.2f}; "
          f"best wall s: bare {bare_wall:.2f}, prepare {pipeline_wall:.2f}")
    return [
        Comparison(
            name="prepare() end to end vs bare tokenizer",
            unit="tokens/CPU-s",
            baseline_label="bare encode_batch_fast",
            baseline=tokens / bare_cpu,
            candidate_label="prepare (no cache)",
            candidate=tokens / pipeline_cpu,
            target=">= 0.8",
        )
    ]
