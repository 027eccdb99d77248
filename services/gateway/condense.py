"""Condensing a follow-up question into a standalone one, without a model.

An elliptical follow-up ("And in Texas?", "what about the second one?", "그럼 부산은?") carries
the subject of the conversation: the most recent question that stood on its own. The condensed
question keeps the user's words and appends that subject in parentheses, so a person can read
it and keyword retrieval gets the missing terms. A question that stands on its own is kept as is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.common.text import search_terms

_WH_WORDS = frozenset(
    "what which who whom whose when where why how much many is are was were do does did can could "
    "tell me about please also and or but so then".split()
)
_WH_QUESTION_EN = frozenset("what which who whom whose when where why how".split())
_ANAPHORA_EN = frozenset(
    "it its it's they them their theirs this that these those he him his she her hers there former latter "
    "one ones same".split()
)
_LEADS_EN = ("and ", "and?", "what about", "how about", "also", "but ", "so ", "then ", "same for", "why?", "how?")
_ANAPHORA_KO = (
    "그것",
    "그거",
    "그게",
    "그건",
    "이것",
    "이거",
    "이게",
    "이건",
    "저것",
    "그들",
    "그녀",
    "거기",
    "그곳",
    "그때",
    "그분",
    "해당",
)
_LEADS_KO = ("그럼", "그러면", "그리고", "그렇다면", "또", "그런데", "그래서", "왜", "어떻게")
_KO_WH = frozenset("무엇 뭐 뭔가 뭔데 어떻게 언제 어디 누구 누가 왜 얼마 몇".split())


def _content_terms(question: str) -> list[str]:
    return [t for t in search_terms(question) if t not in _WH_WORDS and t not in _KO_WH]


def is_elliptical(question: str) -> bool:
    """Whether ``question`` leans on an earlier turn for its subject."""
    lowered = question.strip().lower()
    words = set(re.findall(r"[\w']+", lowered))
    if lowered.startswith(_LEADS_EN) or lowered.startswith(_LEADS_KO):
        return True
    if words & _ANAPHORA_EN:
        return True
    if any(word.startswith(_ANAPHORA_KO) for word in lowered.split()):
        return True
    content = _content_terms(question)
    if not content:
        return True
    asks = bool(words & _WH_QUESTION_EN) or any(word.startswith(tuple(_KO_WH)) for word in lowered.split())
    hangul = bool(re.search("[\uac00-\ud7a3]", lowered))
    # A bare fragment with no question word: "Texas?", "the 2019 figures?", "부산은?" (a Hangul word gives
    # several bigrams). "What is BM25?" asks a whole question and stands on its own.
    return not asks and len(content) <= (4 if hangul else 2)


def condense(question: str, earlier: Sequence[tuple[str, str]]) -> str:
    """The standalone form of ``question`` given the earlier turns' (question, condensed) pairs."""
    question = question.strip()
    if not earlier or not is_elliptical(question):
        return question
    subject = ""
    for asked, condensed in reversed(earlier):
        if asked.strip() == condensed.strip() and not is_elliptical(asked):
            subject = asked.strip()
            break
    if not subject:
        subject = earlier[-1][0].strip()
    if not subject or subject == question:
        return question
    return f"{question} ({subject})"
