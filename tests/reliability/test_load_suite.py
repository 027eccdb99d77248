"""Concurrent users uploading and chatting against the whole suite (processes, loopback).

Planned capacity: ``USERS`` users at once, each making one call after another with a short
think time (0-200 ms): chat turns in conversations of three (follow-ups condensed), a search now
and then, and a document cycle (upload, watch it to READY, ask about it, delete it) so the amount
of data stays level while the load runs. Every loop is bounded in count and in time.

Checks: zero errors at that load; every call the gateway logs (chat, search, upload, delete) is
in the call log exactly once (rows counted per user and kind against the calls made); the RSS
of each service, sampled every half second, ends within ``RSS_BOUND`` of its level after a
warm-up of the same load (flat); latency percentiles of the first token, the whole turn and upload → READY are
reported. The fast part runs ~30 s; ``make soak`` runs minutes with more users.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from ragchat.v1 import common_pb2

from tests.reliability.reliability_corpus import SampleDocument, documents, require_data
from tests.reliability.reliability_report import report
from tests.reliability.reliability_suite import SERVICES, RssSampler, gateway_tables, running_suite
from tests.reliability.reliability_workload import OK, Actor, Ledger, summary_ms

pytestmark = pytest.mark.e2e

SEED = 99
# Flat memory: the level at the end (the highest RSS over the last fifth of the measured phase) may
# exceed the level after the warm-up (the highest over its first fifth) by this share plus this many
# MiB. Peaks, not single samples: retrieval's RSS swings by ~100 MB with each embedding batch.
RSS_BOUND = (0.15, 20.0)
# Call-log kinds of the gateway, by the ledger's kind of call.
LOGGED = {"chat": "chat", "search": "search", "upload": "upload", "delete": "delete_document"}


@dataclass(frozen=True)
class Plan:
    users: int
    seconds: float  # measured, after the warm-up
    max_iterations: int
    warm_up_seconds: float = 10.0  # of the same load, first: every code path and buffer in use


async def warm_up(actor: Actor, docs: list[SampleDocument], rng: random.Random) -> list[str]:
    """Upload the user's documents and wait for them; a first question. The claims they answer."""
    claims: list[str] = []
    for document in docs:
        ack = await actor.upload(document)
        assert ack is not None, actor.ledger.errors()[-1:]
        event = await actor.until_terminal(ack, within=120)
        assert event is not None and event.stage == common_pb2.INGEST_STAGE_DONE, event
        claims += [claim.query for claim in document.claims]
    await actor.ask(rng.choice(claims))
    return claims


async def steady(actor: Actor, claims: list[str], rng: random.Random, plan: Plan, until: float) -> None:
    conversation = ""
    for iteration in range(plan.max_iterations):
        if time.monotonic() >= until:
            return
        if iteration % 3 == 0:
            conversation = ""
        turn = await actor.ask(rng.choice(claims), conversation)
        conversation = turn.conversation_id if turn is not None else ""
        if iteration % 5 == 4:
            await actor.search(rng.choice(claims))
        if iteration % 12 == 11:
            # A new document each cycle (its own marker): the amount of data stays level, never the bytes.
            [document] = documents(rng.randrange(10**9), 1, per_document=6, prefix=f"{actor.user}-c{iteration}")
            ack = await actor.upload(document)
            if ack is not None:
                await actor.until_terminal(ack, within=120)
                await actor.ask(document.claims[0].query)
                await actor.delete(ack.doc_id)
        await asyncio.sleep(rng.uniform(0.0, 0.2))


async def run_load(tmp_path: Path, plan: Plan, name: str) -> None:
    require_data()
    rng = random.Random(SEED)
    ledger = Ledger()
    users = [f"load{n:02d}" for n in range(plan.users)]
    async with running_suite(tmp_path / "home") as running:
        actors = [Actor(running.gateway, user, ledger, deadline=60) for user in users]
        sampler = RssSampler(running)
        sampler.start()
        try:
            docs = [documents(SEED * 1000 + n, 2, per_document=6, prefix=user) for n, user in enumerate(users)]
            rngs = [random.Random(rng.random()) for _ in users]
            claims = await asyncio.gather(
                *(warm_up(actor, d, r) for actor, d, r in zip(actors, docs, rngs, strict=True))
            )
            ends = time.monotonic() + plan.warm_up_seconds + plan.seconds
            load = asyncio.gather(
                *(steady(actor, c, r, plan, ends) for actor, c, r in zip(actors, claims, rngs, strict=True))
            )
            await asyncio.sleep(plan.warm_up_seconds)
            warmed = sampler.elapsed()
            warm_calls = len(ledger.outcomes)
            await load
            steady_seconds = sampler.elapsed() - warmed
            await asyncio.sleep(1.0)  # the last call records are written after their answers
        finally:
            await sampler.stop()
            for actor in actors:
                await actor.close()

        rows = Counter((call.owner, call.kind) for call in gateway_tables(running.home).calls if call.owner in users)
    made = Counter((o.user, LOGGED[o.kind]) for o in ledger.outcomes if o.kind in LOGGED)
    fifth = steady_seconds / 5
    rss = {
        service: {
            "start_mb": round(series.start, 1),
            "after_warm_up_mb": round(series.peak_between(warmed, warmed + fifth), 1),
            "peak_mb": round(series.peak, 1),
            "end_mb": round(series.peak_between(warmed + steady_seconds - fifth, warmed + steady_seconds), 1),
        }
        for service, series in sampler.series.items()
    }
    steady_calls = len(ledger.outcomes) - warm_calls
    summary = {
        "users": plan.users,
        "steady_seconds": round(steady_seconds, 1),
        "calls": dict(ledger.codes()),
        "calls_by_kind": dict(Counter(o.kind for o in ledger.outcomes)),
        "steady_calls_per_second": round(steady_calls / steady_seconds, 1),
        "turns": len(ledger.completed),
        "first_token": summary_ms(ledger.first_token),
        "whole_turn": summary_ms(ledger.whole_turn),
        "upload_to_ready": summary_ms(ledger.upload_to_ready),
        "rss": rss,
        "rss_every_5_s": {service: series.every(5.0) for service, series in sampler.series.items()},
        "call_log_rows": sum(rows.values()),
        "logged_calls_made": sum(made.values()),
    }
    report(name, summary)

    assert set(ledger.codes()) == {OK}, ledger.errors()[:5]
    assert dict(rows) == dict(made), "every logged call is in the call log exactly once"
    for service in SERVICES:
        level, end = rss[service]["after_warm_up_mb"], rss[service]["end_mb"]
        assert end <= level * (1 + RSS_BOUND[0]) + RSS_BOUND[1], f"{service}: RSS {level} MB → {end} MB"


@pytest.mark.timeout(300)
async def test_eight_users_upload_and_chat_for_half_a_minute(tmp_path: Path) -> None:
    await run_load(tmp_path, Plan(users=8, seconds=30, max_iterations=400, warm_up_seconds=15), "load")


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_sixteen_users_for_ten_minutes(tmp_path: Path) -> None:
    await run_load(tmp_path, Plan(users=16, seconds=600, max_iterations=20000), "load_soak")
