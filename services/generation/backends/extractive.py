"""The embedded generator: answers and summaries made of the documents' own sentences.

No model weights. An answer is the few sentences of the passages that best match the
question (BM25 over the candidate sentences, Korean through character bigrams), each
followed by the citation marker ``[n]`` of its passage; when no sentence shares a term with
the question it says so instead of inventing anything. A summary is the most central
sentences of the whole document (TF-IDF cosine to the document's centroid), in document
order.

Token accounting (an estimate, since there is no tokenizer): a token is a whitespace-
separated word with its following whitespace, so ``completion_tokens`` is the number of
token events streamed and ``prompt_tokens`` the number of words the backend read (system,
history, question, passage titles and texts; for a summary, the title and sections). A
Korean word (eojeol) counts as one.

The scoring is CPU work and runs in a worker thread; only the streaming of the computed
answer runs on the event loop.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass

from services.common.text import bounded_sentence_spans, detect_language, search_terms
from services.generation.backends import (
    DoneEvent,
    FinishReason,
    GenerationEvent,
    GenerationInput,
    GenerationParams,
    TokenEvent,
)
from services.generation.prompting import count_words

MODEL_NAME = "extractive"

NOT_FOUND = {
    "en": "I could not find an answer to that in the provided passages.",
    "ko": "제공된 문서에서 답을 찾을 수 없습니다.",
}
NO_PASSAGES = {
    "en": (
        "I can only answer from your documents, and no passages were provided. Upload documents and turn "
        "document search on, or configure a generative model backend (GENERATION_BACKEND)."
    ),
    "ko": (
        "추출형 모델은 문서의 내용으로만 답할 수 있는데, 전달된 문서 구절이 없습니다. 문서를 올리고 문서 검색을 "
        "켜거나, 생성형 모델 백엔드(GENERATION_BACKEND)를 설정하세요."
    ),
}

_TOKEN_RE = re.compile(r"\S+\s*")
_SPACE_RE = re.compile(r"\s+")
# Bracketed numeric references of the source ("[12]", "[3, 4]", "[5-7]"), dropped from quoted
# sentences so that they are not mistaken for this answer's citation markers.
_SOURCE_REF_RE = re.compile(r"\s*\[\d+(?:\s*[,–-]\s*\d+)*\]")
_TRAILING_PUNCT_RE = re.compile(r"[.!?。！？…]+[\"'”’)\]]*$")
_DIGITS_RE = re.compile(r"\d+")

# BM25 parameters for sentence scoring.
_K1 = 1.2
_B = 0.75
# Weight of the bonus for a passage that covers more of the question (context for its sentences).
_COVERAGE_WEIGHT = 0.3
# Sentences scoring below this fraction of the best one are not worth quoting.
_RELATIVE_FLOOR = 0.5
# Term-set Jaccard similarity above which two sentences are near-duplicates.
_DUPLICATE_JACCARD = 0.7
# Cosine similarity above which two summary sentences are near-duplicates.
_DUPLICATE_COSINE = 0.8
# Summary sentences outside this many characters are penalised (too short to say anything,
# or too long to be a sentence: tables and run-on extraction).
_SHORT_CHARS = 40
_LONG_CHARS = 300
_MAX_SUMMARY_SENTENCE_CHARS = 800
# Fragments shorter than this ("Copyright 2020.", "Figure 3.") are never summary sentences.
_MIN_SUMMARY_WORDS = 3
# Summary sentences scoring below this fraction of the best one are left out, even when the
# document has fewer sentences than the summary may hold.
_SUMMARY_FLOOR = 0.25
# A document with at least twice this many candidate sentences is summarised part by part.
_MIN_PART_SENTENCES = 20
# Summary selection considers this many of the best scored sentences.
_SUMMARY_POOL = 300


@dataclass(frozen=True)
class ExtractiveSettings:
    """``max_sentences`` and ``default_max_words`` bound an answer (``max_new_tokens`` 0 means the
    default); ``summary_sentences`` is the length of a summary; ``max_candidate_sentences`` caps
    the sentences a summary scores (a longer document is sampled evenly across its length)."""

    max_sentences: int = 4
    default_max_words: int = 120
    summary_sentences: int = 5
    max_candidate_sentences: int = 20_000


@dataclass(frozen=True)
class Composition:
    """A computed answer or summary before streaming."""

    text: str
    finish_reason: FinishReason
    used_chunk_ids: tuple[str, ...]


class ExtractiveGenerator:
    """The ``Generator`` that needs no model: see the module docstring."""

    name = MODEL_NAME

    def __init__(self, settings: ExtractiveSettings | None = None) -> None:
        self._settings = settings or ExtractiveSettings()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, inp: GenerationInput) -> AsyncGenerator[GenerationEvent, None]:
        composition = await asyncio.to_thread(compose_answer, inp, self._settings)
        prompt_tokens = (
            count_words(inp.system)
            + sum(count_words(content) for _, content in inp.history)
            + count_words(inp.question)
            + sum(count_words(p.title) + count_words(p.text) for p in inp.passages)
        )
        for event in _events(composition, prompt_tokens):
            yield event
            await asyncio.sleep(0)  # a long text must not hold the loop, and a cancellation lands here

    async def summarize(
        self, title: str, sections: Sequence[str], language: str, params: GenerationParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        composition = await asyncio.to_thread(summarize_document, title, sections, params, self._settings)
        prompt_tokens = count_words(title) + sum(count_words(section) for section in sections)
        for event in _events(composition, prompt_tokens):
            yield event
            await asyncio.sleep(0)


def _events(composition: Composition, prompt_tokens: int) -> list[GenerationEvent]:
    """The token events of ``composition`` then its done event."""
    tokens = split_tokens(composition.text)
    done = DoneEvent(
        prompt_tokens=prompt_tokens,
        completion_tokens=len(tokens),
        finish_reason=composition.finish_reason,
        used_chunk_ids=composition.used_chunk_ids,
        model=MODEL_NAME,
    )
    return [*(TokenEvent(token) for token in tokens), done]


def split_tokens(text: str) -> list[str]:
    """Words with their following whitespace; leading whitespace stays with the first word."""
    tokens = _TOKEN_RE.findall(text)
    if tokens and not text[0].isspace():
        return tokens
    lead = len(text) - len(text.lstrip())
    if not tokens:
        return [text] if text else []
    return [text[:lead] + tokens[0], *tokens[1:]]


# ---------------------------------------------------------------- shared text helpers


def _stem(term: str) -> str:
    """A light English plural folding so that "mutations" matches "mutation"."""
    if not term.isascii() or len(term) <= 3:
        return term
    if term.endswith("ies") and len(term) > 4:
        return term[:-3] + "y"
    if term.endswith(("sses", "xes", "ches", "shes")):
        return term[:-2]
    if term.endswith("s") and not term.endswith(("ss", "us", "is")):
        return term[:-1]
    return term


def _terms(text: str) -> list[str]:
    return [_stem(term) for term in search_terms(text)]


def _clean_sentence(text: str) -> str:
    return _SPACE_RE.sub(" ", _SOURCE_REF_RE.sub("", text)).strip()


def _language(language: str, text: str) -> str:
    code = language.strip().lower().split("-")[0].split("_")[0]
    if code in ("en", "ko"):
        return code
    return "ko" if detect_language(text) == "ko" else "en"


def _limit_words(text: str, max_words: int) -> tuple[str, bool]:
    """``text`` cut to ``max_words`` tokens (ending with "…" when cut); whether it was cut."""
    tokens = split_tokens(text)
    if len(tokens) <= max_words:
        return text, False
    kept = "".join(tokens[: max(max_words, 1)]).rstrip()
    return kept + "…", True


def _cut_at_stop(text: str, stop: Iterable[str]) -> str:
    """``text`` before the earliest occurrence of any stop sequence."""
    hits = [at for at in (text.find(s) for s in stop if s) if at >= 0]
    return text[: min(hits)].rstrip() if hits else text


# ---------------------------------------------------------------- answers


@dataclass
class _Sentence:
    passage: int  # 0-based index of the passage in the request
    position: int  # index of the sentence in its passage
    text: str
    terms: list[str]
    score: float = 0.0


def _with_marker(sentence: str, n: int) -> tuple[str, int]:
    """``sentence`` with ``[n]`` before its closing punctuation ("Water boils [2].") and where
    the marker ends in it."""
    match = _TRAILING_PUNCT_RE.search(sentence)
    head, tail = (sentence, "") if match is None else (sentence[: match.start()].rstrip(), match.group())
    marked = f"{head} [{n}]"
    return marked + tail, len(marked)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _score_sentences(question_terms: set[str], candidates: list[_Sentence], passage_terms: list[set[str]]) -> None:
    """BM25 of each sentence against the question, IDF over the candidate sentences, times
    small bonuses for the passage's coverage of the question and its retrieval rank."""
    n = len(candidates)
    df = Counter(term for c in candidates for term in set(c.terms) if term in question_terms)
    idf = {term: math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5)) for term in question_terms}
    total_idf = sum(idf.values()) or 1.0
    average_length = sum(len(c.terms) for c in candidates) / n
    coverage = [sum(idf[t] for t in question_terms & terms) / total_idf for terms in passage_terms]
    for c in candidates:
        counts = Counter(t for t in c.terms if t in question_terms)
        if not counts:
            continue
        norm = _K1 * (1 - _B + _B * len(c.terms) / average_length)
        bm25 = sum(idf[t] * tf * (_K1 + 1) / (tf + norm) for t, tf in counts.items())
        rank_bonus = 0.15 / (1 + c.passage)
        brevity = min(1.0, len(c.text.split()) / 5)  # "Results." says nothing on its own
        c.score = bm25 * (1 + _COVERAGE_WEIGHT * coverage[c.passage] + rank_bonus) * (0.5 + 0.5 * brevity)


def compose_answer(inp: GenerationInput, settings: ExtractiveSettings) -> Composition:
    """The answer to ``inp`` from its passages' sentences (pure; CPU-bound)."""
    language = _language(inp.language, inp.question)
    max_words = inp.params.max_new_tokens or settings.default_max_words
    if not inp.passages:
        return _finish(NO_PASSAGES[language], max_words, inp.params.stop)

    candidates: list[_Sentence] = []
    passage_terms: list[set[str]] = []
    for index, passage in enumerate(inp.passages):
        passage_terms.append(set(_terms(passage.title)))
        for position, (start, end) in enumerate(bounded_sentence_spans(passage.text)):
            text = _clean_sentence(passage.text[start:end])
            terms = _terms(text)
            if terms:
                candidates.append(_Sentence(index, position, text, terms))
                passage_terms[index].update(terms)
    question_terms = set(_terms(inp.question))
    if not candidates or not question_terms:
        return _finish(NOT_FOUND[language], max_words, inp.params.stop)
    _score_sentences(question_terms, candidates, passage_terms)
    ranked = sorted((c for c in candidates if c.score > 0), key=lambda c: (-c.score, c.passage, c.position))
    if not ranked:
        return _finish(NOT_FOUND[language], max_words, inp.params.stop)

    floor = ranked[0].score * _RELATIVE_FLOOR
    chosen: list[_Sentence] = []
    chosen_terms: list[set[str]] = []
    words_left = max_words
    for c in ranked:
        if c.score < floor or len(chosen) >= settings.max_sentences or words_left <= 0:
            break
        term_set = set(c.terms)
        if any(_jaccard(term_set, other) >= _DUPLICATE_JACCARD for other in chosen_terms):
            continue
        cost = len(c.text.split()) + 1  # the words and the citation marker
        if cost > words_left and chosen:
            continue  # a shorter, still relevant sentence may fit
        chosen.append(c)
        chosen_terms.append(term_set)
        words_left -= cost

    # Sensible order: passages by their best chosen sentence, sentences of one passage in
    # their original order (so that a passage's sentences read as they were written).
    passage_order: dict[int, int] = {}
    for c in chosen:
        passage_order.setdefault(c.passage, len(passage_order))
    chosen.sort(key=lambda c: (passage_order[c.passage], c.position))
    pieces: list[tuple[str, str, int]] = []
    for c in chosen:
        marked, marker_end = _with_marker(c.text, c.passage + 1)
        pieces.append((marked, inp.passages[c.passage].chunk_id, marker_end))
    return _finish_cited(pieces, max_words, inp.params.stop)


def _finish(text: str, max_words: int, stop: Sequence[str]) -> Composition:
    return _finish_cited([(text, "", 0)], max_words, stop)


def _finish_cited(pieces: list[tuple[str, str, int]], max_words: int, stop: Sequence[str]) -> Composition:
    """Join ``(text, chunk_id, marker_end)`` pieces, apply the stop sequences and the word budget.

    The used chunk ids are those of the pieces whose citation marker (ending at
    ``marker_end`` within the piece) is still in the final text.
    """
    text = " ".join(piece for piece, _, _ in pieces)
    text = _cut_at_stop(text, stop)
    text, truncated = _limit_words(text, max_words)
    visible = len(text) - (1 if truncated else 0)
    used: list[str] = []
    offset = 0
    for piece, chunk_id, marker_end in pieces:
        if chunk_id and offset + marker_end <= visible and chunk_id not in used:
            used.append(chunk_id)
        offset += len(piece) + 1
    return Composition(text, "length" if truncated else "stop", tuple(used))


# ---------------------------------------------------------------- summaries


@dataclass
class _Candidate:
    index: int  # position in the document (sentence order)
    text: str
    vector: dict[str, float]
    score: float = 0.0


def _document_sentences(sections: Sequence[str]) -> list[str]:
    found: list[str] = []
    for section in sections:
        for start, end in bounded_sentence_spans(section):
            text = _clean_sentence(section[start:end])
            if text:
                found.append(text)
    return found


def _tfidf(term_lists: list[list[str]]) -> list[dict[str, float]]:
    n = len(term_lists)
    df = Counter(term for terms in term_lists for term in set(terms))
    idf = {term: math.log((1 + n) / (1 + count)) + 1 for term, count in df.items()}
    vectors: list[dict[str, float]] = []
    for terms in term_lists:
        weights = {t: (1 + math.log(tf)) * idf[t] for t, tf in Counter(terms).items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        vectors.append({t: w / norm for t, w in weights.items()})
    return vectors


def _centroid(vectors: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for vector in vectors:
        for t, w in vector.items():
            total[t] = total.get(t, 0.0) + w
    norm = math.sqrt(sum(w * w for w in total.values())) or 1.0
    return {t: w / norm for t, w in total.items()}


def _dot(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(t, 0.0) for t, w in a.items())


def _length_factor(text: str) -> float:
    chars = len(text)
    if chars < _SHORT_CHARS:
        return chars / _SHORT_CHARS
    if chars > _LONG_CHARS:
        return _LONG_CHARS / chars
    return 1.0


def summarize_document(
    title: str, sections: Sequence[str], params: GenerationParams, settings: ExtractiveSettings
) -> Composition:
    """The ``summary_sentences`` most central sentences of the whole document, in its order.

    Centrality is the cosine of a sentence's TF-IDF vector to the centroid of the document
    (and, for long documents, to the centroid of its own part: a long document is cut into
    ``summary_sentences`` consecutive parts and each part gives its most central sentence,
    so that the summary covers the whole document, not its start), plus a little similarity
    to the title. Very short and very long sentences are penalised, sentences that repeat
    across the document (running headers, footers, boilerplate) are left out, and
    near-duplicates are skipped (MMR).
    """
    every = _document_sentences(sections)
    if len(every) > settings.max_candidate_sentences:
        step = len(every) / settings.max_candidate_sentences
        every = [every[int(i * step)] for i in range(settings.max_candidate_sentences)]
    repeats = Counter(_DIGITS_RE.sub("#", s.lower()) for s in every)
    seen: set[str] = set()
    kept: list[tuple[int, str, list[str]]] = []
    for index, text in enumerate(every):
        key = _DIGITS_RE.sub("#", text.lower())
        if key in seen or (repeats[key] >= 3 and len(every) > 10) or len(text) > _MAX_SUMMARY_SENTENCE_CHARS:
            continue
        seen.add(key)
        terms = _terms(text)
        if len(text.split()) >= _MIN_SUMMARY_WORDS and terms:
            kept.append((index, text, terms))
    limit = settings.summary_sentences
    # With nothing but numbers, symbols or boilerplate, the opening sentences are all there is.
    chosen_texts = _central_sentences(title, kept, limit) if kept else every[:limit]
    text = " ".join(chosen_texts)
    max_words = params.max_new_tokens
    truncated = False
    if max_words > 0:
        text, truncated = _limit_words(text, max_words)
    text = _cut_at_stop(text, params.stop)
    return Composition(text, "length" if truncated else "stop", ())


def _central_sentences(title: str, kept: list[tuple[int, str, list[str]]], limit: int) -> list[str]:
    """Pick ``limit`` sentences: in a long document, first the most central sentence of each of
    ``limit`` consecutive parts (so that every part is represented), then the rest by MMR."""
    vectors = _tfidf([terms for _, _, terms in kept])
    candidates = [_Candidate(index, text, vector) for (index, text, _), vector in zip(kept, vectors, strict=True)]
    centroid = _centroid(vectors)
    title_vector = _centroid([dict.fromkeys(_terms(title), 1.0)]) if title.strip() else {}
    parts = min(limit, len(candidates) // _MIN_PART_SENTENCES)
    if parts <= 1:  # a short document is one part: the document's centroid alone
        parts = 0
    part_of = [i * parts // len(candidates) for i in range(len(candidates))] if parts else []
    part_centroids = [
        _centroid(c.vector for c, p in zip(candidates, part_of, strict=True) if p == part) for part in range(parts)
    ]
    for i, c in enumerate(candidates):
        centrality = _dot(c.vector, centroid)
        if part_of:
            centrality = 0.5 * centrality + 0.5 * _dot(c.vector, part_centroids[part_of[i]])
        if title_vector:
            centrality += 0.2 * _dot(c.vector, title_vector)
        c.score = centrality * _length_factor(c.text)

    chosen: list[_Candidate] = []

    def redundancy(c: _Candidate) -> float:
        return max((_dot(c.vector, other.vector) for other in chosen), default=0.0)

    if part_of:
        for part in range(parts):
            in_part = [c for c, p in zip(candidates, part_of, strict=True) if p == part]
            fresh = [c for c in in_part if redundancy(c) < _DUPLICATE_COSINE]
            if fresh:
                chosen.append(max(fresh, key=lambda c: c.score))
    taken = {id(c) for c in chosen}
    floor = _SUMMARY_FLOOR * max(c.score for c in candidates)
    pool = sorted((c for c in candidates if id(c) not in taken and c.score >= floor), key=lambda c: -c.score)
    pool = pool[:_SUMMARY_POOL]
    while pool and len(chosen) < limit:
        best_value, best_at = -1.0, -1
        for at, c in enumerate(pool):
            overlap = redundancy(c)
            if overlap >= _DUPLICATE_COSINE:
                continue
            value = c.score * (1 - overlap)
            if value > best_value:
                best_value, best_at = value, at
        if best_at < 0:
            break
        chosen.append(pool.pop(best_at))
    chosen.sort(key=lambda c: c.index)
    return [c.text for c in chosen]
