"""Documents and questions for the reliability runs, from SciFact (read from ../shared/data, never copied).

Each document is a Markdown file of a few SciFact abstracts, each a paragraph under its title,
with a marker word unique to the document in its first heading (so the bytes are unique per
upload, and since the heading becomes the document's title, which the keyword index keeps with
every chunk, a keyword search for the marker finds every chunk of that document and no other).
Each question is a SciFact claim whose relevant abstract is in one of the documents, so answers
are grounded and cite it.
"""

from __future__ import annotations

import csv
import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SCIFACT = DATA / "scifact"
PDFS = DATA / "pdfs"


@dataclass(frozen=True)
class Abstract:
    corpus_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Claim:
    query: str
    corpus_id: str  # an abstract that supports or refutes it


@dataclass(frozen=True)
class Corpus:
    abstracts: dict[str, Abstract]
    claims: list[Claim]


def require_data() -> None:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"shared data missing: {SCIFACT}")


@functools.cache
def scifact() -> Corpus:
    """Test claims with a relevant abstract (one claim per abstract), and those abstracts only."""
    with (SCIFACT / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        relevant: dict[str, str] = {}
        for row in csv.DictReader(handle, delimiter="\t"):
            relevant.setdefault(row["query-id"], row["corpus-id"])
    wanted = set(relevant.values())
    abstracts: dict[str, Abstract] = {}
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if item["_id"] in wanted:
                abstracts[item["_id"]] = Abstract(item["_id"], item["title"], item["text"])
    claims: dict[str, Claim] = {}  # one claim per abstract
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            corpus_id = relevant.get(item["_id"])
            if corpus_id in abstracts:
                claims.setdefault(corpus_id, Claim(item["text"], corpus_id))
    return Corpus(abstracts, list(claims.values()))


@dataclass(frozen=True)
class SampleDocument:
    filename: str
    data: bytes
    marker: str
    claims: tuple[Claim, ...]


def documents(seed: int, count: int, *, per_document: int = 6, prefix: str = "doc") -> list[SampleDocument]:
    """``count`` documents of ``per_document`` abstracts each, chosen with ``seed``; markers unique per call."""
    corpus = scifact()
    rng = random.Random(seed)
    claims = rng.sample(corpus.claims, min(len(corpus.claims), count * per_document))
    made: list[SampleDocument] = []
    for n in range(count):
        group = claims[n * per_document : (n + 1) * per_document]
        if not group:
            break
        marker = f"zqmark{seed}x{n}x{rng.randrange(16**6):06x}"
        paragraphs = [f"# {prefix} {n} {marker}", f"Reference code {marker}."]
        for claim in group:
            abstract = corpus.abstracts[claim.corpus_id]
            paragraphs.append(f"## {abstract.title}\n\n{abstract.text}")
        made.append(SampleDocument(f"{prefix}-{n}.md", "\n\n".join(paragraphs).encode("utf-8"), marker, tuple(group)))
    return made
