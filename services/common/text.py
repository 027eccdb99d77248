"""Language-aware text primitives shared by ingest, retrieval and generation.

* :func:`detect_language`: "ko" when Hangul dominates the letters, "en" for Latin script.
* :func:`search_terms`: normalised terms for keyword search and overlap scoring. Latin
  words are NFKC-folded and lower-cased; Korean is written without reliable word
  boundaries (particles attach to nouns), so each Hangul run becomes overlapping
  character bigrams, which match across inflections without a dictionary.
* :func:`sentence_spans`: sentence boundaries for English and Korean, as character spans.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

_HANGUL = "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_HANGUL_RE = re.compile(f"[{_HANGUL}]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_TOKEN_RE = re.compile(f"[{_HANGUL}]+|[^\\W_{_HANGUL}]+(?:['’][^\\W_{_HANGUL}]+)*")

ENGLISH_STOPWORDS = frozenset(
    """a an and are as at be but by for from has have if in into is it its of on or so such that the
    their then there these they this to was were will with what which who whom whose when where why how
    do does did can could should would may might about than too very i you he she we me my your our""".split()
)

# Abbreviations after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc al fig figs eq eqs dr mr mrs ms prof no vs cf approx dept est inc ltd jr sr st".split()
)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?。！？…])[\"'”’)\]]*\s+|\n\s*\n|(?<=[다요죠까네])\.(?=\S)")


def normalize(text: str) -> str:
    """NFKC-fold (full-width forms, compatibility jamo) and collapse whitespace runs."""
    return re.sub(r"[ \t\u00a0]+", " ", unicodedata.normalize("NFKC", text))


def detect_language(text: str) -> str:
    """ "ko", "en" or "und" (undetermined: no letters), from the script of the letters."""
    sample = text[:20_000]
    letters = len(_LETTER_RE.findall(sample))
    if letters == 0:
        return "und"
    hangul = len(_HANGUL_RE.findall(sample))
    return "ko" if hangul / letters >= 0.3 else "en"


def _hangul_bigrams(run: str) -> Iterator[str]:
    if len(run) == 1:
        yield run
        return
    for i in range(len(run) - 1):
        yield run[i : i + 2]


def search_terms(text: str, *, drop_stopwords: bool = True) -> list[str]:
    """Terms of ``text`` in order: lower-cased words, Hangul runs as character bigrams."""
    terms: list[str] = []
    for match in _TOKEN_RE.finditer(unicodedata.normalize("NFKC", text).lower()):
        token = match.group()
        if _HANGUL_RE.match(token):
            terms.extend(_hangul_bigrams(token))
        elif not (drop_stopwords and token in ENGLISH_STOPWORDS):
            terms.append(token.replace("’", "'"))
    return terms


def _ends_with_abbreviation(text: str, end: int) -> bool:
    match = re.search(r"(\w+(?:\.\w+)*)\.\s*$", text[max(0, end - 20) : end])
    if not match:
        return False
    word = match.group(1).lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text``, whitespace trimmed."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        gap = match.group()
        if gap.startswith("."):  # Korean sentence ending with no space after the period
            end = next_start = match.start() + 1
        else:  # keep closing quotes and brackets with their sentence
            end, next_start = match.start() + len(gap.rstrip()), match.end()
        if "\n\n" not in gap and _ends_with_abbreviation(text, end):
            continue
        spans.append((start, end))
        start = next_start
    spans.append((start, len(text)))
    trimmed: list[tuple[int, int]] = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            trimmed.append((s, e))
    return trimmed


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


_WORD_RE = re.compile(f"[^\\W_{_HANGUL}]+")
_SYMBOL_RE = re.compile(f"[^\\w\\s{_HANGUL}]")


def estimate_tokens(text: str) -> int:
    """A conservative estimate of subword tokens (Llama/GPT-style BPE) when no tokenizer is at hand.

    English averages ~1.3 tokens a word; Hangul syllables are about one token each in Llama 2's
    vocabulary (often more); punctuation and symbols count half. Errs high, so budgets built on
    it leave room rather than overflow.
    """
    words = len(_WORD_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    symbols = len(_SYMBOL_RE.findall(text))
    return int(words * 1.3 + hangul * 1.1 + symbols * 0.5) + 1


def bounded_sentence_spans(text: str, max_words: int = 60) -> list[tuple[int, int]]:
    """Sentence spans, with any "sentence" longer than ``max_words`` split further.

    Tables, lists and slides have no sentence punctuation, so a whole page can read as one
    sentence. Such a span is split at its line breaks (a table row, a list item), and a line
    that is still too long into windows of ``max_words`` words.
    """
    spans: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        if len(text[start:end].split()) <= max_words:
            spans.append((start, end))
            continue
        offset = start
        for line in text[start:end].split("\n"):
            line_start, line_end = offset, offset + len(line)
            offset = line_end + 1
            words = list(re.finditer(r"\S+", line))
            for i in range(0, len(words), max_words):
                window = words[i : i + max_words]
                if window:
                    spans.append((line_start + window[0].start(), line_start + window[-1].end()))
    return spans
