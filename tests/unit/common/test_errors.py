from __future__ import annotations

from services.common.errors import MAX_MESSAGE_CHARS, NotFound, bounded


def test_a_short_message_is_kept_whole() -> None:
    assert NotFound("no document d-1").message == "no document d-1"


def test_a_message_echoing_a_huge_id_is_cut_in_the_middle_and_says_so() -> None:
    message = "no job " + "x" * 20_000 + " (end)"
    error = NotFound(message)
    assert error.message.startswith("no job xxx")
    assert error.message.endswith("xxx (end)")
    assert f"[{len(message) - MAX_MESSAGE_CHARS + 1} characters cut]" in error.message
    assert len(error.message) < MAX_MESSAGE_CHARS + 40
    assert str(error) == error.message


def test_the_cut_keeps_exactly_limit_minus_one_characters_of_the_original() -> None:
    message = "".join(chr(ord("a") + n % 26) for n in range(5_000))
    cut = bounded(message, limit=100)
    head, _, rest = cut.partition("…[")
    tail = rest.partition("]…")[2]
    assert len(head) + len(tail) == 99
    assert message.startswith(head) and message.endswith(tail)
