"""Pure prompt rendering shared by every backend that sends a prompt to a model.

The caller (gateway) owns the wording and sends templates; this module fills them in.
Substitution is a single pass over the *template* only: a placeholder is recognised where
the template has one, and the inserted values (documents, questions) are never scanned
again. So braces, "{question}" or "{0}" inside a document or a question come out literally,
which ``str.format`` (or chained ``str.replace``) would break or re-substitute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from services.generation.backends import GenerationInput, Passage

# Used when the request's passage_template is empty.
DEFAULT_PASSAGE_TEMPLATE = "[{n}] {title}\n{text}"
PASSAGE_SEPARATOR = "\n\n"

_WORD_RE = re.compile(r"\S+")


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``{name}`` of ``template`` whose name is in ``values``, in one pass.

    Other braces are kept as they are; the replacement values are inserted verbatim.
    """
    if not values:
        return template
    compiled = _compiled(template, tuple(values))
    if compiled is None:
        return template
    fmt, names = compiled
    # str.format reads only the format made from the template; the values go in as they are.
    return fmt.format(*[values[name] for name in names])


@lru_cache(maxsize=256)
def _compiled(template: str, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """``template`` as a positional format string (its own braces doubled) and the names of its
    placeholders in order; None without placeholders. A request's templates are the gateway's
    few, so each is compiled once, not for every passage."""
    parts = _placeholders(names).split(template)  # literal, name, literal, …, literal
    if len(parts) == 1:
        return None
    literals, used = parts[0::2], tuple(parts[1::2])
    fmt = "".join(
        literal.replace("{", "{{").replace("}", "}}") + (f"{{{i}}}" if i < len(used) else "")
        for i, literal in enumerate(literals)
    )
    return fmt, used


@lru_cache(maxsize=64)
def _placeholders(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("\\{(" + "|".join(re.escape(name) for name in names) + ")\\}")


# A document's own text must not open or close the prompt's data block (``<documents>``,
# ``<document …>``): its tags are made inert, visibly, and nothing else of the text changes.
_BLOCK_TAG = re.compile(r"<(\s*/?\s*documents?\b)", re.IGNORECASE)


def inert(text: str) -> str:
    """``text`` with every ``<document``/``</documents`` tag written as ``&lt;…``."""
    if "<" not in text:  # most texts: a scan in C instead of the expression
        return text
    return _BLOCK_TAG.sub(r"&lt;\1", text)


def render_passage(template: str, n: int, passage: Passage) -> str:
    """One passage: "{n}" its 1-based number, "{page}" empty when the format has no pages."""
    values = {
        "n": str(n),
        "title": inert(passage.title),
        "page": str(passage.page) if passage.page > 0 else "",
        "text": inert(passage.text),
    }
    return substitute(template or DEFAULT_PASSAGE_TEMPLATE, values)


def render_passages(passages: Sequence[Passage], passage_template: str) -> list[str]:
    """Every passage rendered, in order, numbered from 1."""
    return [render_passage(passage_template, n, passage) for n, passage in enumerate(passages, start=1)]


def render_context(passages: Sequence[Passage], passage_template: str) -> str:
    """Every passage rendered in order, numbered from 1, separated by a blank line."""
    return PASSAGE_SEPARATOR.join(render_passages(passages, passage_template))


def uses_context(user_template: str) -> bool:
    return bool(user_template) and "{context}" in user_template


def fill_user_turn(question: str, rendered: Sequence[str], user_template: str) -> str:
    """The final user turn from passages already rendered: ``user_template`` with "{context}"
    and "{question}" filled in; an empty ``user_template`` means the question alone (the
    contract of GenerateRequest)."""
    if not user_template:
        return question
    context = PASSAGE_SEPARATOR.join(rendered) if "{context}" in user_template else ""
    return substitute(user_template, {"context": context, "question": question})


def render_user_turn(question: str, passages: Sequence[Passage], user_template: str, passage_template: str) -> str:
    """The final user turn: ``user_template`` with "{context}" and "{question}" filled in."""
    rendered = render_passages(passages, passage_template) if uses_context(user_template) else []
    return fill_user_turn(question, rendered, user_template)


def count_words(text: str) -> int:
    """Whitespace-separated words: the token estimate of backends without a tokenizer."""
    return len(_WORD_RE.findall(text))


class Fitted(NamedTuple):
    """A prompt that fits: the input as trimmed, and its final user turn already rendered."""

    input: GenerationInput
    user_turn: str


def fit_to_budget(
    inp: GenerationInput,
    budget: int,
    count_tokens: Callable[[str], int],
    bound: Callable[[str], int] | None = None,
) -> Fitted:
    """``inp`` trimmed until its prompt fits ``budget`` tokens (as counted by ``count_tokens``).

    ``bound``, an upper bound of ``count_tokens`` from the length alone: when the whole prompt's
    bound fits, nothing is counted (counting passes over every character on the way to the
    first token; a large context window rarely needs it).

    What goes first, per the contract: the oldest history turns, then the lowest-ranked
    passages. History restarts at a user turn (chat formats require it). The system prompt
    and the question are never trimmed; if they alone exceed the budget the result is the
    input with no history and no passages (the backend decides whether that still fits).

    Each passage is rendered once: trimming drops passages from the end, so the numbers of
    those kept never change, and every candidate's context is a prefix of the same pieces.
    """
    pieces = render_passages(inp.passages, inp.passage_template) if uses_context(inp.user_template) else []

    def turn_of(candidate: GenerationInput) -> str:
        return fill_user_turn(candidate.question, pieces[: len(candidate.passages)], candidate.user_template)

    def size(candidate: GenerationInput, turn: str) -> int:
        return (
            count_tokens(candidate.system)
            + sum(count_tokens(content) for _, content in candidate.history)
            + count_tokens(turn)
        )

    current = inp
    turn = turn_of(current)
    if bound is not None:
        texts = [inp.system, *(content for _, content in inp.history), turn]
        if sum(bound(text) for text in texts) <= budget:
            return Fitted(current, turn)
    current_size = size(current, turn)  # each candidate rendered and counted once
    while current_size > budget and current.history:
        history = current.history[1:]
        while history and history[0][0] != "user":  # a conversation restarts with a user turn
            history = history[1:]
        current = replace(current, history=history)
        current_size = size(current, turn)
    while current_size > budget and current.passages:
        current = replace(current, passages=current.passages[:-1])
        turn = turn_of(current)
        current_size = size(current, turn)
    return Fitted(current, turn)


__all__ = [
    "DEFAULT_PASSAGE_TEMPLATE",
    "PASSAGE_SEPARATOR",
    "Fitted",
    "count_words",
    "fill_user_turn",
    "fit_to_budget",
    "render_context",
    "render_passage",
    "render_passages",
    "render_user_turn",
    "substitute",
    "uses_context",
]
