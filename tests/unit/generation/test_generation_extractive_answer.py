"""The extractive generator's answers: sentences of the passages, cited, honest when absent."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from services.common.text import search_terms
from services.generation.backends import (
    DoneEvent,
    GenerationEvent,
    GenerationInput,
    GenerationParams,
    Passage,
    TokenEvent,
)
from services.generation.backends.extractive import (
    NO_PASSAGES,
    NOT_FOUND,
    ExtractiveGenerator,
    ExtractiveSettings,
    compose_answer,
    split_tokens,
)

SCIFACT = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "scifact"
MARKER = re.compile(r"\[(\d+)\]")

BOILING = Passage(
    chunk_id="boil-1",
    doc_id="physics",
    title="Properties of water",
    page=2,
    text=(
        "Water covers most of the planet's surface. Pure water has no taste or smell. "
        "At sea level, water boils at 100 degrees Celsius. On a high mountain the air pressure is lower."
    ),
)
ICE = Passage(
    chunk_id="ice-1",
    doc_id="physics",
    title="Ice",
    page=5,
    text="Ice is frozen water. It floats because it is less dense than liquid water.",
)
HISTORY = Passage(
    chunk_id="hist-1",
    doc_id="history",
    title="Tea",
    page=1,
    text="Tea was first drunk in China. The British Empire spread it around the world.",
)

SEOUL = Passage(
    chunk_id="ko-1",
    doc_id="korea",
    title="대한민국 개요",
    page=1,
    text=(
        "대한민국은 동아시아의 한반도 남부에 있는 나라이다. 대한민국의 수도는 서울특별시이다. "
        "공용어는 한국어이며 문자는 한글을 쓴다."
    ),
)
KIMCHI = Passage(
    chunk_id="ko-2",
    doc_id="food",
    title="김치",
    page=0,
    text="김치는 배추를 소금에 절여 만든 음식이다. 겨울을 나기 위해 김장을 한다.",
)


async def collect(generator: ExtractiveGenerator, inp: GenerationInput) -> tuple[list[str], DoneEvent]:
    tokens: list[str] = []
    done: list[DoneEvent] = []
    events: list[GenerationEvent] = [event async for event in generator.generate(inp)]
    for event in events:
        if isinstance(event, TokenEvent):
            assert not done, "a token after the done event"
            tokens.append(event.text)
        else:
            done.append(event)
    assert len(done) == 1
    return tokens, done[0]


def cited(text: str, passages: tuple[Passage, ...]) -> list[str]:
    ids: list[str] = []
    for number in MARKER.findall(text):
        chunk_id = passages[int(number) - 1].chunk_id
        if chunk_id not in ids:
            ids.append(chunk_id)
    return ids


async def test_english_answer_quotes_the_answering_sentence_with_its_citation() -> None:
    passages = (HISTORY, ICE, BOILING)
    inp = GenerationInput(question="At what temperature does water boil?", passages=passages, language="en")
    tokens, done = await collect(ExtractiveGenerator(), inp)
    answer = "".join(tokens)
    assert "At sea level, water boils at 100 degrees Celsius [3]." in answer
    assert "Tea" not in answer
    assert done.used_chunk_ids[0] == "boil-1"
    assert set(done.used_chunk_ids) == set(cited(answer, passages))
    assert done.finish_reason == "stop"
    assert done.model == "extractive"


async def test_korean_answer_quotes_the_answering_sentence() -> None:
    passages = (KIMCHI, SEOUL)
    inp = GenerationInput(question="대한민국의 수도는 어디인가요?", passages=passages, language="ko")
    tokens, done = await collect(ExtractiveGenerator(), inp)
    answer = "".join(tokens)
    assert "대한민국의 수도는 서울특별시이다 [2]." in answer
    assert "김치" not in answer
    assert done.used_chunk_ids == ("ko-1",)


@pytest.mark.parametrize(
    ("question", "language", "expected"),
    [
        ("Who composed the Moonlight Sonata?", "en", NOT_FOUND["en"]),
        ("베토벤은 누구인가요?", "ko", NOT_FOUND["ko"]),
        ("베토벤은 누구인가요?", "", NOT_FOUND["ko"]),  # language detected from the question
    ],
)
async def test_not_found_is_said_in_the_question_language(question: str, language: str, expected: str) -> None:
    inp = GenerationInput(question=question, passages=(BOILING, SEOUL), language=language)
    tokens, done = await collect(ExtractiveGenerator(), inp)
    assert "".join(tokens) == expected
    assert done.used_chunk_ids == ()
    assert done.finish_reason == "stop"


@pytest.mark.parametrize("language", ["en", "ko"])
async def test_without_passages_it_says_it_needs_documents(language: str) -> None:
    inp = GenerationInput(question="What is the capital?", language=language)
    tokens, done = await collect(ExtractiveGenerator(), inp)
    assert "".join(tokens) == NO_PASSAGES[language]
    assert "GENERATION_BACKEND" in NO_PASSAGES[language]
    assert done.used_chunk_ids == ()


async def test_tokens_concatenate_to_the_answer_and_count_as_completion_tokens() -> None:
    passages = (BOILING, ICE)
    inp = GenerationInput(question="Why does ice float on water?", passages=passages, system="Be brief.")
    expected = compose_answer(inp, ExtractiveSettings())
    tokens, done = await collect(ExtractiveGenerator(), inp)
    assert "".join(tokens) == expected.text
    assert len(tokens) > 5
    assert all(token.strip() for token in tokens)
    assert all(not token[0].isspace() for token in tokens)
    assert done.completion_tokens == len(tokens)
    words = 2 + 6 + sum(len(p.title.split()) + len(p.text.split()) for p in passages)
    assert done.prompt_tokens == words


def test_split_tokens_keeps_all_whitespace() -> None:
    for text in ["a b  c\n", "  lead and\ttabs ", "하나 둘", "", "single"]:
        assert "".join(split_tokens(text)) == text
    assert split_tokens("a b  c") == ["a ", "b  ", "c"]


def test_citations_match_used_chunk_ids_across_passages() -> None:
    passages = (ICE, BOILING)
    inp = GenerationInput(question="water boils sea level; ice less dense floats", passages=passages)
    answer = compose_answer(inp, ExtractiveSettings())
    assert set(answer.used_chunk_ids) == {"ice-1", "boil-1"}
    assert set(cited(answer.text, passages)) == set(answer.used_chunk_ids)


def test_sentences_of_one_passage_keep_their_order_and_near_duplicates_are_dropped() -> None:
    first = Passage(
        "a",
        "d",
        "t",
        1,
        "Graphite slows the neutrons down. The core runs very hot at 700 degrees. "
        "The reactor uses molten salt as coolant.",
    )
    copy = Passage("b", "d", "t", 1, "The reactor uses molten salt as its coolant!")
    inp = GenerationInput(
        question="What coolant does the reactor use, and how hot does the core run?", passages=(copy, first)
    )
    answer = compose_answer(inp, ExtractiveSettings()).text
    # The near-copy in passage 1 is dropped; passage 2's sentences read in the text's order.
    assert answer == "The core runs very hot at 700 degrees [2]. The reactor uses molten salt as coolant [2]."


def test_max_new_tokens_bounds_the_answer() -> None:
    long_passage = Passage(
        "long", "d", "t", 1, "Water boils at one hundred degrees " + " ".join(["and water keeps boiling"] * 40) + "."
    )
    inp = GenerationInput(
        question="When does water boil?", passages=(long_passage,), params=GenerationParams(max_new_tokens=10)
    )
    answer = compose_answer(inp, ExtractiveSettings())
    assert len(split_tokens(answer.text)) == 10
    assert answer.text.endswith("…")
    assert answer.finish_reason == "length"
    assert answer.used_chunk_ids == ()  # the marker was cut off with the rest


def test_max_sentences_setting_is_respected() -> None:
    text = (
        "The comet orbit is elliptical. Its orbit takes the comet past Jupiter. The comet orbit period is 76 years. "
        "Astronomers predicted the comet orbit in 1705. The orbit of the comet is stable."
    )
    inp = GenerationInput(question="comet orbit facts", passages=(Passage("c", "d", "t", 1, text),))
    answer = compose_answer(inp, ExtractiveSettings(max_sentences=2))
    assert len(MARKER.findall(answer.text)) == 2


def test_stop_sequence_ends_the_answer() -> None:
    inp = GenerationInput(
        question="At what temperature does water boil at sea level?",
        passages=(BOILING,),
        params=GenerationParams(stop=("100",)),
    )
    answer = compose_answer(inp, ExtractiveSettings())
    assert answer.text == "At sea level, water boils at"
    assert answer.used_chunk_ids == ()


def test_braces_in_passages_and_question_do_not_break_anything() -> None:
    tricky = Passage("x", "d", "{title}", 1, "Use {question} and {context} as placeholders {0} in templates {.")
    inp = GenerationInput(
        question="How are {question} placeholders used in templates?",
        passages=(tricky,),
        user_template="{context}\n{question}",
        passage_template="[{n}] {text}",
    )
    answer = compose_answer(inp, ExtractiveSettings())
    assert answer.text == "Use {question} and {context} as placeholders {0} in templates { [1]."


def test_source_reference_numbers_are_not_confused_with_citations() -> None:
    passage = Passage("r", "d", "t", 1, "Aspirin reduces the risk of stroke [12, 14].")
    answer = compose_answer(
        GenerationInput(question="Does aspirin reduce stroke risk?", passages=(passage,)), ExtractiveSettings()
    )
    assert answer.text == "Aspirin reduces the risk of stroke [1]."


def _load_scifact() -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, list[str]]]:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact data not found at {SCIFACT}")
    corpus: dict[str, dict[str, str]] = {}
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            corpus[record["_id"]] = record
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as handle:
        queries = {record["_id"]: record["text"] for record in map(json.loads, handle)}
    qrels: dict[str, list[str]] = {}
    with (SCIFACT / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        for row in list(csv.reader(handle, delimiter="\t"))[1:]:
            qrels.setdefault(row[0], []).append(row[1])
    return corpus, queries, qrels


def test_scifact_answers_cite_the_relevant_abstract() -> None:
    """Each claim gets its relevant abstract in the middle of four hard distractors (the
    abstracts sharing the most terms with it); the answer must cite the relevant one."""
    corpus, queries, qrels = _load_scifact()
    corpus_terms = {doc_id: set(search_terms(doc["title"] + " " + doc["text"])) for doc_id, doc in corpus.items()}
    query_ids = list(qrels)[:40]
    cited_relevant = 0
    for query_id in query_ids:
        question = queries[query_id]
        relevant = qrels[query_id][0]
        terms = set(search_terms(question))
        distractors = sorted(
            (doc_id for doc_id in corpus if doc_id not in qrels[query_id]),
            key=lambda doc_id: (-len(terms & corpus_terms[doc_id]), doc_id),
        )[:4]
        order = [*distractors[:2], relevant, *distractors[2:]]
        passages = tuple(
            Passage(f"chunk-{doc_id}", doc_id, corpus[doc_id]["title"], 0, corpus[doc_id]["text"]) for doc_id in order
        )
        answer = compose_answer(GenerationInput(question=question, passages=passages), ExtractiveSettings())
        assert set(cited(answer.text, passages)) == set(answer.used_chunk_ids)
        cited_relevant += f"chunk-{relevant}" in answer.used_chunk_ids
    # Measured 0.76 over the first 150 claims with these hard distractors; a scorer that ignores the
    # question (quoting by rank) cites the relevant abstract far less often.
    assert cited_relevant / len(query_ids) >= 0.7


def test_scifact_single_claim_cites_its_abstract() -> None:
    corpus, queries, qrels = _load_scifact()
    query_id = "3"  # 1,000 genomes project ... rare variants with larger penetrance effects
    relevant = qrels[query_id][0]
    others = [doc_id for doc_id in list(corpus)[:3] if doc_id != relevant]
    order = [others[0], relevant, others[1]]
    passages = tuple(Passage(f"c-{d}", d, corpus[d]["title"], 0, corpus[d]["text"]) for d in order)
    answer = compose_answer(GenerationInput(question=queries[query_id], passages=passages), ExtractiveSettings())
    assert answer.used_chunk_ids[0] == f"c-{relevant}"
    assert "[2]" in answer.text
