"""Language-aware text primitives shared by ingest, retrieval and generation.

* :func:`detect_language`: "ko" when Hangul dominates the letters, "en" for Latin script.
* :func:`search_terms`: normalised terms for keyword search and overlap scoring. Latin
  words are NFKC-folded and lower-cased; Korean is written without reliable word
  boundaries (particles attach to nouns), so each Hangul run becomes overlapping
  character bigrams, which match across inflections without a dictionary.
* :func:`sentence_spans`: sentence boundaries for English and Korean, as character spans.
"""

from __future__ import annotations

import codecs
import functools
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


def max_estimate_tokens(text: str) -> int:
    """An upper bound of :func:`estimate_tokens` from the length alone (for any text).

    With w word runs, h Hangul and s symbol characters in n characters, two word runs need a
    non-word character between them, so w ≤ h + s + spaces + 1 and w + h + s ≤ n. The estimate
    1.3w + 1.1h + 0.5s is therefore at most 1.3(n + 1)/2 + 1.1(n - 1)/2 = 1.2n + 0.1 ("a가a가…"),
    and the rounded estimate at most 1.2n + 1.1.
    """
    return len(text) * 6 // 5 + 2


def estimate_tokens(text: str) -> int:
    """A conservative estimate of subword tokens (Llama/GPT-style BPE) when no tokenizer is at hand.

    English averages ~1.3 tokens a word; Hangul syllables are about one token each in Llama 2's
    vocabulary (often more); punctuation and symbols count half. Errs high, so budgets built on
    it leave room rather than overflow.

    Words are runs of letters and digits (not Hangul, not ``_``); symbols are characters that
    are neither word characters, whitespace nor Hangul. Counted over bytes (the text mapped to
    one byte per character class), which gives exactly the counts of the regular expressions
    of :func:`_estimate_tokens_regex` in a fraction of the time: a prompt is counted on the way
    to the first token (13 KB of English: ~0.37 ms → ~0.03 ms, ASCII or with a few non-ASCII
    characters; Korean ~0.5 → ~0.4 ms).
    """
    if text.isascii():
        return _estimate_from_classes(text.encode("ascii"))
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) - len(text) <= len(text) >> 4:
        # A few non-ASCII characters: the encoder copies the ASCII in C and hands each run of
        # other characters to the error handler, which maps it to class bytes.
        return _estimate_from_classes(text.encode("ascii", _class_errors()))
    return _estimate_from_classes(text.translate(_char_classes()).encode("latin-1"))


# One byte per character class: ASCII characters stand for themselves (the byte tables below
# classify them), every other character becomes one of these.
_WORD_BYTE, _SPACE_BYTE, _SYMBOL_BYTE, _HANGUL_BYTE = "a", " ", "!", "\x80"
# Distinct non-ASCII characters whose class is remembered (a bound on the cache's memory).
_MAX_CACHED_CLASSES = 1 << 16


class _CharClasses(dict[int, str]):
    """``str.translate`` table: code point → its class byte, computed on first sight."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if _HANGUL_RE.match(char):
            cls = _HANGUL_BYTE
        elif _WORD_RE.match(char):
            cls = _WORD_BYTE
        elif _SYMBOL_RE.match(char):
            cls = _SYMBOL_BYTE
        else:
            cls = _SPACE_BYTE  # whitespace (and "_", neither word nor symbol)
        if len(self) >= _MAX_CACHED_CLASSES:
            self.clear()
            self.update({i: chr(i) for i in range(128)})
        self[code] = cls
        return cls


@functools.cache
def _char_classes() -> _CharClasses:
    classes = _CharClasses()
    classes.update({i: chr(i) for i in range(128)})
    return classes


@functools.cache
def _byte_tables() -> tuple[bytes, bytes]:
    """(word table: word byte → ``a``, any other → space; the bytes that are not symbols)."""
    ascii_chars = [chr(i) for i in range(128)]
    word = bytes(0x61 if _WORD_RE.match(c) else 0x20 for c in ascii_chars) + b" " * 128
    not_symbol = bytes(i for i, c in enumerate(ascii_chars) if not _SYMBOL_RE.match(c)) + bytes(range(0x80, 0x100))
    return word, not_symbol


@functools.cache
def _class_errors() -> str:
    """The name of the encoding error handler that writes non-ASCII runs as class bytes."""
    name = "ragchat-token-classes"
    codecs.register_error(name, _class_run)
    return name


def _class_run(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    run = error.object[error.start : error.end]
    return run.translate(_char_classes()).encode("latin-1"), error.end


def _estimate_from_classes(data: bytes) -> int:
    word_table, not_symbol = _byte_tables()
    marked = data.translate(word_table)
    words = marked.count(b" a") + marked.startswith(b"a")
    hangul = data.count(_HANGUL_BYTE.encode("latin-1"))
    symbols = len(data.translate(None, not_symbol))
    return int(words * 1.3 + hangul * 1.1 + symbols * 0.5) + 1


def _estimate_tokens_regex(text: str) -> int:
    """The definition of :func:`estimate_tokens`, by regular expressions (the reference of its tests)."""
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
