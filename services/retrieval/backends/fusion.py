"""Language-aware weighted score fusion of the keyword (BM25) and dense (MiniLM cosine) legs.

Each leg's scores are min-max normalised over the candidates both legs proposed (a candidate the
keyword leg did not return counts as the keyword leg's floor, 0; the dense score of every
candidate is computed exactly), then mixed per passage::

    fused = w · dense + (1 − w) · keyword,   w = dense_weight · english(query) · english(passage)

``english`` is the share of a text's letters in Latin script, the only script MiniLM was
trained on. On Korean (or any other script) its ranking is close to random, so a Korean query or
passage gets w ≈ 0 and keeps its keyword rank: Korean retrieval is never worse than the keyword
leg alone, while English gets the full benefit of the dense leg. Scores and ties are
deterministic: equal fused scores fall back to the chunk key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LETTER_RE = re.compile(r"[^\W\d_]")
# Hangul syllables, CJK ideographs and kana: one character carries about as much as a short
# Latin word, so each counts as this many Latin letters.
_SYLLABIC_RE = re.compile(r"[\uac00-\ud7a3\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_SYLLABIC_WEIGHT = 3


def latin_share(text: str) -> float:
    """Share of ``text`` (first 4,000 characters) written in Latin script, by letters; 1.0 with no letters.

    Syllabic characters (Hangul, CJK, kana) count as three letters each.
    """
    sample = text[:4000]
    letters = len(_LETTER_RE.findall(sample))
    if letters == 0:
        return 1.0
    syllabic = len(_SYLLABIC_RE.findall(sample))
    return len(_LATIN_RE.findall(sample)) / (letters + (_SYLLABIC_WEIGHT - 1) * syllabic)


def _normalised(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low <= 1e-12:
        return dict.fromkeys(scores, 1.0)
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def fuse(
    keyword: Sequence[tuple[int, float]],
    dense: Mapping[int, float],
    passage_english: Mapping[int, float],
    *,
    query_english: float,
    dense_weight: float,
) -> list[tuple[int, float]]:
    """(key, fused score in [0, 1]) for every candidate of either leg, best first.

    ``keyword``: the keyword leg's (key, BM25 score), any order. ``dense``: the exact cosine of
    every candidate (keys missing here score the dense floor). ``passage_english``: each
    candidate's Latin share (missing: 1.0).
    """
    candidates = dict.fromkeys([key for key, _ in keyword] + list(dense))
    keyword_scores = _normalised(dict(keyword))
    dense_scores = _normalised({key: dense[key] for key in candidates if key in dense})
    fused: list[tuple[int, float]] = []
    for key in candidates:
        weight = dense_weight * query_english * passage_english.get(key, 1.0)
        score = weight * dense_scores.get(key, 0.0) + (1.0 - weight) * keyword_scores.get(key, 0.0)
        fused.append((key, score))
    fused.sort(key=lambda item: (-item[1], item[0]))
    return fused
