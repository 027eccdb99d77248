import pytest

from services.gateway.condense import condense, is_elliptical


@pytest.mark.parametrize(
    ("question", "elliptical"),
    [
        ("And in Texas?", True),
        ("Texas?", True),
        ("what about the second one?", True),
        ("When was it published?", True),
        ("What is BM25?", False),
        ("How many background checks were done in Kentucky in November 2015?", False),
        ("부산은?", True),
        ("그럼 부산은 어때요?", True),
        ("그것의 장점은 무엇인가요?", True),
        ("BM25란 무엇인가요?", False),
        ("서울의 인구는 얼마인가요?", False),
    ],
)
def test_elliptical_questions_are_recognised(question: str, elliptical: bool) -> None:
    assert is_elliptical(question) is elliptical


def test_follow_up_carries_the_subject_of_the_conversation() -> None:
    first = "How many handgun checks were done in Kentucky?"
    assert condense("And in Texas?", [(first, first)]) == f"And in Texas? ({first})"


def test_chained_follow_ups_carry_the_last_standalone_question_not_a_growing_chain() -> None:
    first = "How many handgun checks were done in Kentucky?"
    second = ("And in Texas?", f"And in Texas? ({first})")
    assert condense("What about Ohio?", [(first, first), second]) == f"What about Ohio? ({first})"


def test_standalone_question_and_first_question_are_unchanged() -> None:
    first = "How many handgun checks were done in Kentucky?"
    assert condense("What is the population of Seoul?", [(first, first)]) == "What is the population of Seoul?"
    assert condense("And in Texas?", []) == "And in Texas?"


def test_korean_follow_up() -> None:
    first = "서울의 인구는 얼마인가요?"
    assert condense("그럼 부산은?", [(first, first)]) == f"그럼 부산은? ({first})"
