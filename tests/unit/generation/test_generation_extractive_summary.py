"""Extractive summaries: central sentences of the whole document, in order, in its language."""

from __future__ import annotations

import random
import time

from services.common.text import detect_language
from services.generation.backends import DoneEvent, GenerationParams, TokenEvent
from services.generation.backends.extractive import ExtractiveGenerator, ExtractiveSettings, summarize_document

SOLAR = [
    "Solar panels convert sunlight into electricity using photovoltaic cells.",
    "Copyright 2024 ACME Corp. All rights reserved.",
    "The efficiency of photovoltaic solar panels has risen steadily over two decades.",
    "Please consider the environment before printing this page.",
    "Most residential solar panels produce electricity for at least twenty-five years.",
    "Page 1 of 3.",
    "Batteries store the electricity that solar panels generate during the day.",
    "Contact us at info@example.com for more.",
    "Falling prices of photovoltaic cells made solar electricity cheaper than coal in many regions.",
    "Copyright 2024 ACME Corp. All rights reserved.",
    "Page 2 of 3.",
    "Grid operators balance solar electricity with other sources when clouds reduce sunlight.",
    "Copyright 2024 ACME Corp. All rights reserved.",
    "Page 3 of 3.",
]
BOILERPLATE = ("Copyright", "Please consider", "Page ", "Contact us")

TOPICS = {
    "volcano": ("volcano", "magma", "lava", "eruption", "crater", "ash"),
    "tides": ("tide", "ocean", "moon", "gravity", "coast", "current"),
    "bees": ("bee", "hive", "pollen", "honey", "queen", "flower"),
    "rail": ("railway", "locomotive", "track", "station", "freight", "signal"),
}
FILLER = (
    "during the long season scientists observed that nearby conditions often changed across several regions".split()
)


def topical_sentence(rng: random.Random, words: tuple[str, ...]) -> str:
    picked = rng.sample(words, 3) + rng.sample(FILLER, 6)
    rng.shuffle(picked)
    return " ".join(picked).capitalize() + "."


def summary(sections: list[str], *, title: str = "", sentences: int = 5, max_new_tokens: int = 0) -> str:
    settings = ExtractiveSettings(summary_sentences=sentences)
    return summarize_document(title, sections, GenerationParams(max_new_tokens=max_new_tokens), settings).text


def chosen_sentences(text: str, candidates: list[str]) -> list[str]:
    return [s for s in candidates if s in text]


def test_central_sentences_are_topical_not_boilerplate() -> None:
    sections = [" ".join(SOLAR[:5]), " ".join(SOLAR[5:10]), " ".join(SOLAR[10:])]
    text = summary(sections, title="Solar power", sentences=3)
    assert not any(marker in text for marker in BOILERPLATE), text
    picked = chosen_sentences(text, SOLAR)
    assert len(picked) == 3
    assert all("solar" in s.lower() or "photovoltaic" in s.lower() for s in picked)


def test_summary_keeps_document_order() -> None:
    text = summary([" ".join(SOLAR)], sentences=4)
    picked = chosen_sentences(text, SOLAR)
    assert len(picked) == 4
    positions = [text.index(s) for s in picked]
    assert positions == sorted(positions)
    assert [SOLAR.index(s) for s in picked] == sorted(SOLAR.index(s) for s in picked)


def test_summary_of_a_korean_document_is_korean() -> None:
    sections = [
        "태양광 발전은 햇빛을 전기로 바꾸는 기술이다. 태양광 패널의 효율은 지난 이십 년 동안 꾸준히 높아졌다.",
        "저작권 2024 에이크미. 모든 권리 보유. 가정용 태양광 패널은 이십오 년 이상 전기를 만든다.",
        "배터리는 낮에 태양광 패널이 만든 전기를 저장한다. 저작권 2024 에이크미. 모든 권리 보유.",
        "태양광 전기의 가격은 많은 지역에서 석탄보다 싸졌다. 저작권 2024 에이크미. 모든 권리 보유.",
    ]
    text = summary(sections, title="태양광 발전", sentences=3)
    assert detect_language(text) == "ko"
    assert "저작권" not in text
    assert text.count("태양광") >= 3
    assert all(sentence.rstrip(".") in "".join(sections) for sentence in text.split(". "))


def test_long_document_is_summarised_from_all_its_parts() -> None:
    """The first topic fills 70% of the document; the summary must not come from it alone."""
    rng = random.Random(7)
    sections: list[str] = []
    part_of: dict[str, str] = {}
    for topic, words in TOPICS.items():  # consecutive parts: 140, 20, 20 and 20 sections
        for _ in range(140 if topic == "volcano" else 20):
            section_sentences = [topical_sentence(rng, words) for _ in range(6)]
            for s in section_sentences:
                part_of[s] = topic
            sections.append(" ".join(section_sentences))
    text = summary(sections, sentences=5)
    picked = chosen_sentences(text, list(part_of))
    assert len(picked) == 5
    topics = [part_of[s] for s in picked]
    assert topics[0] == "volcano"
    assert topics[-1] in ("bees", "rail"), picked  # the last part is represented


def test_repeated_running_header_is_left_out_even_when_on_topic() -> None:
    header = "Solar panels make solar electricity from sunlight with photovoltaic cells."
    pages = [f"{header} {sentence}" for sentence in SOLAR if not sentence.startswith(BOILERPLATE)]
    text = summary(pages, title="Solar panels", sentences=3)
    assert header not in text
    assert len(chosen_sentences(text, SOLAR)) == 3


def test_summary_sentences_and_max_new_tokens_bound_the_length() -> None:
    assert len(chosen_sentences(summary([" ".join(SOLAR)], sentences=2), SOLAR)) == 2
    bounded = summarize_document(
        "", [" ".join(SOLAR)], GenerationParams(max_new_tokens=7), ExtractiveSettings(summary_sentences=5)
    )
    assert len(bounded.text.split()) == 7
    assert bounded.finish_reason == "length"


async def test_summarize_streams_tokens_then_done() -> None:
    generator = ExtractiveGenerator(ExtractiveSettings(summary_sentences=3))
    events = [e async for e in generator.summarize("Solar", [" ".join(SOLAR)], "en", GenerationParams())]
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    expected = summarize_document(
        "Solar", [" ".join(SOLAR)], GenerationParams(), ExtractiveSettings(summary_sentences=3)
    )
    assert "".join(tokens) == expected.text
    assert done.completion_tokens == len(tokens)
    assert done.prompt_tokens == 1 + len(" ".join(SOLAR).split())
    assert done.model == "extractive"
    assert done.finish_reason == "stop"


def test_thousand_page_document_is_summarised_quickly() -> None:
    rng = random.Random(3)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(4000)]
    pages = []
    for number in range(1, 1001):
        body = " ".join(" ".join(rng.choices(vocabulary, k=rng.randint(8, 25))).capitalize() + "." for _ in range(25))
        pages.append(f"{body}\n\nPage {number} of 1000. Copyright ACME Corp. All rights reserved.")
    started = time.perf_counter()
    result = summarize_document("Big", pages, GenerationParams(), ExtractiveSettings(summary_sentences=5))
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert result.text
    assert "Copyright" not in result.text
    assert "Page" not in result.text


def test_a_document_of_one_part_is_summarised() -> None:
    # Regression (seen on SciFact during `make eval`): 20-39 usable sentences make exactly one
    # part, which used to fail with "zip() argument 2 is shorter than argument 1".
    from services.generation.backends import GenerationParams
    from services.generation.backends.extractive import ExtractiveSettings, summarize_document

    sentences = [f"Coronary plaque disruption number {i} causes thrombosis in patients." for i in range(25)]
    result = summarize_document("Coronary plaque", [" ".join(sentences)], GenerationParams(), ExtractiveSettings())
    assert result.text
    assert result.text.split(". ")[0] in " ".join(sentences)
