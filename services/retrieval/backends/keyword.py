"""The keyword leg: BM25 in tantivy, an index derived from the SQLite chunks and kept in step with them.

Why tantivy. At 100k chunks of one owner (the retrieval benchmark's corpus, its 200 SciFact
queries, top 100 candidates, the same run on the shared 2-core machine), the keyword leg alone:

=========================================  ==========  ==========  ==========================
engine                                     p50 (ms)    p99 (ms)    incremental add / delete
=========================================  ==========  ==========  ==========================
SQLite FTS5 ``bm25()`` (the previous leg)  35.4        78.1        yes
bm25s 0.3.16 (numpy sparse, owner mask)    2.9         7.4         no: re-index everything
tantivy 0.25.0 (this module)               0.9         1.6         yes (segments, merged in
                                                                   the background)
=========================================  ==========  ==========  ==========================

In instructions (callgrind, 30 queries, fixed costs subtracted): FTS5 374 M per query, tantivy
13 M (the Python around it included). FTS5 computes ``bm25()`` for every row that matches any
term before ``ORDER BY rank LIMIT``; tantivy scores the owner's postings in Rust into a top-k
heap. ``bench/bench_retrieval.py`` repeats the FTS5 / tantivy comparison in every run.

Terms. Text is tokenised in Python with :func:`services.common.text.search_terms` (English words
lower-cased with stopwords dropped, Hangul runs as character bigrams); tantivy's analyzer then
splits what is left at non-alphanumerics, folds diacritics and stems English (Snowball), as
FTS5's ``porter unicode61 remove_diacritics 2`` did. Queries are built from term objects
(never parsed), so nothing a user types is read as query syntax.

Ranking. BM25F (k1 1.2, b 0.75) over the chunk's title terms (document title and chunk
heading) and body terms, the title weighted ``title_weight`` by field replication (Robertson,
Zaragoza and Taylor, "Simple BM25 extension to multiple weighted fields", 2004): one ``text``
field holds the title terms ``title_weight`` times, then the body terms, so a title term counts
as that many body terms, in term frequency and in length. FTS5 weighted the title the same
BM25F way, by 0.5; tantivy has no fractional field weights. Measured on SciFact as the suite
ingests it (12,750 chunks, 300 queries, nDCG@10 keyword / hybrid): FTS5 title weight 0.5 (the
previous leg) 0.683 / 0.730, FTS5 weight 0 and 1: 0.675 and 0.689 (keyword); this module,
weight 1: 0.683 / 0.727 (paired difference to FTS5 −0.000 ± 0.004 / −0.003 ± 0.003); a
separate ``title`` field boosted 0.5 and summed with the body's BM25 instead: 0.671 / 0.716
(it saturates a matching term twice). The owner and, optionally, the documents are required
filters of the same query (score 0), so tantivy ranks only that owner's chunks: a user with
three chunks among millions still gets their top-k.

Consistency. SQLite is the source of truth; this index holds a searchable copy. Each write is
applied here after its SQLite commit, under the local index's write lock, in generation order.
A tantivy commit is atomic (a searcher sees all of a document's chunks or none) and is deferred
to the next search (which therefore sees every write acknowledged before it), the committer
thread (within ``commit_seconds``) or the close. After each commit ``keyword.json`` records the
SQLite generation the index reflects and the SQLite file it belongs to. Replaying a write is
idempotent (delete the document's chunks, add them again), so a crash anywhere only makes the
next open replay the documents written, and the deletions made, after that generation; a
missing, unreadable or foreign manifest rebuilds the index from SQLite.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tantivy

from services.common.errors import FailedPrecondition
from services.common.text import search_terms

log = logging.getLogger(__name__)

# Bump when the schema or the analyzer changes: an index of another format is rebuilt.
KEYWORD_FORMAT = 2
MANIFEST_NAME = "keyword.json"
TOKENIZER_NAME = "ragchat_terms"
# Longest token indexed, in bytes (tantivy refuses terms over 64 KB; nobody searches for such).
MAX_TOKEN_BYTES = 100
WRITER_HEAP_BYTES = 32_000_000
# Longest time an applied write waits for a commit when no search asks for one.
DEFAULT_COMMIT_SECONDS = 1.0


@dataclass(frozen=True)
class KeywordChunk:
    """One chunk as the keyword index holds it: its keys and its term strings."""

    chunk_key: int
    owner_key: int
    doc_key: int
    title_terms: str
    body_terms: str


@dataclass(frozen=True)
class Manifest:
    """What the index on disk reflects: the SQLite ``generation`` of the file ``index_id``."""

    index_id: str
    generation: int


def term_string(text: str) -> str:
    """The space-separated search terms of ``text``, as given to the index's analyzer."""
    return " ".join(search_terms(text))


def query_terms(query: str) -> list[str]:
    """The distinct search terms of ``query``, in order of first appearance."""
    return list(dict.fromkeys(search_terms(query)))


def analyzer() -> tantivy.TextAnalyzer:
    """Split at non-alphanumerics, drop over-long tokens, lower-case, fold diacritics, stem English."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("key", stored=True)
    builder.add_integer_field("owner", indexed=True)
    builder.add_integer_field("doc", indexed=True)
    builder.add_text_field("text", tokenizer_name=TOKENIZER_NAME, index_option="freq")
    return builder.build()


class KeywordIndex:
    """A tantivy index in ``folder``: one writer, any number of concurrent searches; thread-safe.

    Writes are applied to the writer at once and committed (made visible, durable and recorded
    in the manifest) by the first of: a search (so a search sees every write acknowledged before
    it), the committer thread ``commit_seconds`` later, :meth:`commit`, or :meth:`close`. A commit
    costs ~10 fsyncs (10-25 ms here); one per document made indexing a 5,000-abstract corpus 20×
    slower, and nothing is lost by deferring it: SQLite has every acknowledged write, and the
    open replays whatever the last commit missed.
    """

    def __init__(self, folder: Path, *, title_weight: float, commit_seconds: float = DEFAULT_COMMIT_SECONDS) -> None:
        if title_weight < 0 or not float(title_weight).is_integer():
            raise ValueError(
                f"title_weight must be a whole number of at least 0 (field replication), got {title_weight}"
            )
        self._folder = folder
        self._title_weight = int(title_weight)
        self._commit_seconds = commit_seconds
        self._schema = _schema()
        self._analyzer = analyzer()
        self._index: tantivy.Index | None = None
        self._writer: tantivy.IndexWriter | None = None
        self._lock_file: IO[bytes] | None = None
        self._index_id: str | None = None
        # Guards the writer and the fields below; never held while waiting for anything else.
        self._lock = threading.Lock()
        self._manifest: Manifest | None = None
        self._applied: int | None = None
        self._pending = False
        self._stop = threading.Event()
        self._committer: threading.Thread | None = None

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def manifest(self) -> Manifest | None:
        """What the last commit reflects (durable); None until the index has been built."""
        return self._manifest

    @property
    def applied(self) -> int | None:
        """The SQLite generation the writer holds (visible once committed); None: nothing yet (rebuild)."""
        return self._applied

    # Lifecycle

    def open(self, index_id: str) -> Manifest | None:
        """Open (or create) the index; its manifest, or None when it must be rebuilt (it is then empty).

        ``index_id`` names the SQLite file this index must belong to.
        """
        self._folder.parent.mkdir(parents=True, exist_ok=True)
        lock_file = (self._folder.parent / f"{self._folder.name}.lock").open("ab")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            lock_file.close()
            raise FailedPrecondition(
                f"the keyword index at {self._folder} is in use by another process (or another open index in"
                " this one); stop it, or give this service its own DATA_DIR"
            ) from error
        try:
            index, writer, manifest = self._open_index(index_id)
        except BaseException:
            lock_file.close()
            raise
        with self._lock:
            self._index, self._writer, self._lock_file, self._index_id = index, writer, lock_file, index_id
            self._manifest, self._pending = manifest, False
            self._applied = manifest.generation if manifest is not None else None
        self._stop.clear()
        self._committer = threading.Thread(target=self._commit_periodically, name="keyword-commit", daemon=True)
        self._committer.start()
        return manifest

    def _open_index(self, index_id: str) -> tuple[tantivy.Index, tantivy.IndexWriter, Manifest | None]:
        manifest = self._read_manifest()
        if manifest is not None and manifest.index_id != index_id:
            log.warning(
                "keyword index belongs to another index file; rebuilding",
                extra={"folder": str(self._folder), "found": manifest.index_id, "expected": index_id},
            )
            manifest = None
        if manifest is not None:
            try:
                index, writer = self._load()
            except ValueError as error:
                log.warning(
                    "keyword index unreadable; rebuilding", extra={"folder": str(self._folder), "error": str(error)}
                )
            else:
                return index, writer, manifest
        # Unknown state (never built, never finished, another format or file, unreadable): start from nothing.
        if self._folder.exists():
            shutil.rmtree(self._folder)
        index, writer = self._load()
        return index, writer, None

    def _load(self) -> tuple[tantivy.Index, tantivy.IndexWriter]:
        """The index in the folder (created if absent), its writer, and every segment opened once."""
        self._folder.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(self._schema, path=str(self._folder), reuse=True)
        index.register_tokenizer(TOKENIZER_NAME, self._analyzer)
        index.config_reader(reload_policy="manual")
        writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        try:
            index.reload()
            probe = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "owner", 0, index_option="basic")),
                    (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", "a", index_option="freq")),
                ]
            )
            index.searcher().search(probe, 1, count=True)
        except BaseException:
            writer.wait_merging_threads()
            raise
        return index, writer

    def close(self) -> None:
        """Commit what is pending, stop the committer, release the writer (and the lock) once merges are done."""
        self._stop.set()
        if self._committer is not None:
            self._committer.join()
            self._committer = None
        with self._lock:
            try:
                if self._writer is not None:
                    self._commit_locked()
            finally:
                writer, self._writer, self._index = self._writer, None, None
                lock_file, self._lock_file = self._lock_file, None
                try:
                    if writer is not None:
                        writer.wait_merging_threads()
                finally:
                    if lock_file is not None:
                        lock_file.close()

    def abandon(self) -> None:
        """Drop the writer without committing, as a crash would (tests)."""
        self._stop.set()
        if self._committer is not None:
            self._committer.join()
            self._committer = None
        with self._lock:
            writer, self._writer, self._index = self._writer, None, None
            if writer is not None:
                writer.rollback()
                writer.wait_merging_threads()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # Writes (the caller applies them in generation order)

    def reset(self) -> None:
        """Forget everything (before a rebuild): the manifest first, so a crash meanwhile rebuilds again."""
        with self._lock:
            writer = self._require_writer()
            self._remove_manifest()
            self._manifest, self._applied = None, None
            writer.delete_all_documents()
            self._pending = True

    def apply(self, deleted: Iterable[int], chunks: Iterable[KeywordChunk], generation: int) -> int:
        """Delete the chunks of the ``deleted`` documents, then add ``chunks``: the writes up to ``generation``.

        Visible after the next commit. On failure every uncommitted change is dropped (the
        caller replays from :attr:`applied`, now the last commit's generation). Returns the number of chunks added.
        """
        with self._lock:
            writer = self._require_writer()
            added = 0
            try:
                for doc_key in deleted:
                    writer.delete_documents_by_term("doc", doc_key)
                    self._pending = True
                for chunk in chunks:
                    writer.add_document(
                        tantivy.Document.from_dict(
                            {
                                "key": chunk.chunk_key,
                                "owner": chunk.owner_key,
                                "doc": chunk.doc_key,
                                "text": self._text(chunk),
                            },
                            self._schema,
                        )
                    )
                    self._pending = True
                    added += 1
            except BaseException:
                if self._pending:
                    writer.rollback()
                    self._pending = False
                self._applied = self._manifest.generation if self._manifest is not None else None
                raise
            self._applied = generation
            return added

    def commit(self) -> None:
        """Make the applied writes visible and durable, and record their generation."""
        with self._lock:
            self._require_writer()
            self._commit_locked()

    def _commit_locked(self) -> None:
        writer, index = self._require_writer(), self._require_index()
        if self._applied is None:
            return  # nothing built yet: a manifest now would claim an index that is not there
        if self._pending:
            writer.commit()
            self._pending = False
            index.reload()
        if self._manifest is None or self._manifest.generation != self._applied:
            manifest = Manifest(index_id=self._index_id_for_manifest(), generation=self._applied)
            self._write_manifest(manifest)
            self._manifest = manifest

    def _commit_periodically(self) -> None:
        while not self._stop.wait(self._commit_seconds):
            if not self._pending:
                continue
            try:
                self.commit()
            except Exception:
                log.exception("keyword index commit failed; retrying", extra={"folder": str(self._folder)})

    # Search

    def tokens(self, terms: Sequence[str]) -> list[str]:
        """The index tokens of query terms (analysed as the indexed text was), distinct, in order."""
        return list(dict.fromkeys(self._analyzer.analyze(" ".join(terms))))

    def search(
        self, owner_key: int, terms: Sequence[str], doc_keys: Sequence[int] | None, limit: int
    ) -> list[tuple[int, float]]:
        """(chunk key, BM25 score > 0) of the owner's best ``limit`` chunks, best first (ties: by key).

        ``doc_keys`` None means every document of the owner; an empty sequence matches nothing.
        """
        tokens = self.tokens(terms)
        if not tokens or limit < 1 or (doc_keys is not None and not doc_keys):
            return []
        searcher = self._searcher()
        schema, query = self._schema, tantivy.Query
        scored = [
            (tantivy.Occur.Should, query.term_query(schema, "text", token, index_option="freq")) for token in tokens
        ]
        clauses = [
            (
                tantivy.Occur.Must,
                query.const_score_query(query.term_query(schema, "owner", owner_key, index_option="basic"), 0.0),
            ),
            (tantivy.Occur.Must, query.boolean_query(scored)),
        ]
        if doc_keys is not None:
            documents = query.term_set_query(schema, "doc", list(doc_keys))
            clauses.append((tantivy.Occur.Must, query.const_score_query(documents, 0.0)))
        hits = searcher.search(query.boolean_query(clauses), limit, count=False).hits
        ranked = [(_key(searcher.doc(address)), float(score)) for score, address in hits]
        ranked.sort(key=lambda item: (-item[1], item[0]))
        return ranked

    def count(self, field: str, value: int) -> int:
        """How many chunks have ``value`` in ``field`` ("owner" or "doc"), every applied write included."""
        matching = tantivy.Query.term_query(self._schema, field, value, index_option="basic")
        result: Any = self._searcher().search(matching, 1, count=True)
        return int(result.count or 0)

    def _searcher(self) -> tantivy.Searcher:
        """A searcher that sees every applied write (committing them first if needed)."""
        if self._pending:
            with self._lock:
                if self._pending and self._writer is not None:
                    try:
                        self._commit_locked()
                    except Exception:
                        log.exception("keyword index commit failed; searching its last commit")
        return self._require_index().searcher()

    # Internals

    def _text(self, chunk: KeywordChunk) -> str:
        """The indexed text: the title terms ``title_weight`` times, then the body terms."""
        return " ".join([*([chunk.title_terms] * self._title_weight if chunk.title_terms else ()), chunk.body_terms])

    def _index_id_for_manifest(self) -> str:
        if self._index_id is None:
            raise FailedPrecondition("the keyword index is not open")
        return self._index_id

    def _require_writer(self) -> tantivy.IndexWriter:
        if self._writer is None:
            raise FailedPrecondition("the keyword index is not open")
        return self._writer

    def _require_index(self) -> tantivy.Index:
        index = self._index
        if index is None:
            raise FailedPrecondition("the keyword index is not open")
        return index

    @property
    def _manifest_path(self) -> Path:
        return self._folder / MANIFEST_NAME

    def _read_manifest(self) -> Manifest | None:
        try:
            data: Any = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning(
                "keyword index manifest unreadable", extra={"path": str(self._manifest_path), "error": str(error)}
            )
            return None
        if not isinstance(data, dict) or data.get("format") != KEYWORD_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            log.warning("keyword index of another format", extra={"found": found, "expected": KEYWORD_FORMAT})
            return None
        index_id, generation = data.get("index_id"), data.get("generation")
        if not isinstance(index_id, str) or not isinstance(generation, int):
            log.warning("keyword index manifest incomplete", extra={"path": str(self._manifest_path)})
            return None
        return Manifest(index_id=index_id, generation=generation)

    def _write_manifest(self, manifest: Manifest) -> None:
        staged = self._manifest_path.with_suffix(".json.tmp")
        staged.write_text(
            json.dumps({"format": KEYWORD_FORMAT, "index_id": manifest.index_id, "generation": manifest.generation}),
            encoding="utf-8",
        )
        os.replace(staged, self._manifest_path)

    def _remove_manifest(self) -> None:
        self._manifest_path.unlink(missing_ok=True)


def _key(document: tantivy.Document) -> int:
    key = document.get_first("key")
    if not isinstance(key, int):
        raise RuntimeError(f"a keyword index document has no chunk key: {document.to_dict()!r}")
    return key


def committed_counts(folder: Path, field: str, values: Iterable[int]) -> dict[int, int]:
    """Chunks per ``field`` value ("owner" or "doc" key) in the last commit of the keyword index in ``folder``.

    For checks from any process: reads without the writer's lock. A running index commits
    within ``commit_seconds`` of a write.
    """
    index = tantivy.Index.open(str(folder))
    searcher = index.searcher()
    schema = index.schema
    counts: dict[int, int] = {}
    for value in values:
        result: Any = searcher.search(
            tantivy.Query.term_query(schema, field, value, index_option="basic"), 1, count=True
        )
        counts[value] = int(result.count or 0)
    return counts
