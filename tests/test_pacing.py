"""Pacing after a 429 (shared/retry.py `ResourcePacer`, shared/upstream.py): throttled callers take turns.

The pacer is a table over an injected clock; the upstream loop runs against the real simulator with a
clock and a sleep of the test's own (sleeping advances the clock), so nothing here waits for real; the
last test drives the real simulator's rate limit with real threads and counts calls, never times them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.openai_sim import FineTuningSimulator, RateLimit
from shared.errors import RetryableStatus
from shared.retry import MAX_PACING_SPACING, PACING_RELAX, PACING_TIGHTEN, ResourcePacer
from shared.settings import DEFAULT_RESOURCE, Settings
from shared.upstream import CallTrace, UpstreamClient
from tests.support.handlers import API_KEY

AUTH = {"api-key": API_KEY}
FAR = 1e9  # a deadline that never matters

# Each row: events on one pacer, in order, and the start each `turn` is given.
# ("turn", now) -> expected start; ("429", now, advised); ("ok",)
PACER_TABLE = [
    pytest.param([("turn", 5.0, 5.0), ("turn", 5.0, 5.0)], id="never throttled: everyone starts at once"),
    pytest.param(
        [("429", 10.0, 0.02), ("turn", 10.01, 10.02), ("turn", 10.01, 10.04), ("turn", 10.01, 10.06)],
        id="a 429 holds every caller until the advice, then one per advised wait",
    ),
    pytest.param(
        [("429", 10.0, 0.5), ("turn", 10.1, 10.5), ("turn", 10.1, 10.5 + MAX_PACING_SPACING)],
        id="a hold of seconds, then turns at most MAX_PACING_SPACING apart",
    ),
    pytest.param(
        [("429", 10.0, 0.02), ("turn", 12.0, 12.0), ("turn", 12.0, 12.02)],
        id="a caller who comes after the hold starts at once, the next one spacing later",
    ),
    pytest.param(
        [("429", 10.0, 0.02), ("429", 10.0, 0.01), ("turn", 10.0, 10.02), ("turn", 10.0, 10.02 + 0.02 * PACING_TIGHTEN)],
        id="a second 429 never shortens the hold and lengthens the spacing",
    ),
    pytest.param(
        [("429", 0.0, 0.02), ("ok",), ("turn", 1.0, 1.0), ("turn", 1.0, 1.0 + 0.02 * PACING_RELAX)],
        id="a call let through shortens the spacing",
    ),
    pytest.param(
        [("429", 0.0, 0.002), *[("ok",)] * 70, ("turn", 1.0, 1.0), ("turn", 1.0, 1.0)],
        id="under 1 ms of spacing the resource is no longer paced",
    ),
    pytest.param(
        [("429", 0.0, 30.0), ("turn", 1.0, 30.0), ("turn", 1.0, 30.0 + MAX_PACING_SPACING)],
        id="a long advice holds that long, but turns are at most MAX_PACING_SPACING apart",
    ),
    pytest.param([("429", 0.0, 0.0), ("turn", 0.0, 0.0), ("turn", 0.0, 0.0)], id="advice of 0: no pacing"),
]


@pytest.mark.parametrize("events", PACER_TABLE)
def test_pacer_table(events: list[tuple]) -> None:
    pacer = ResourcePacer()
    for event in events:
        if event[0] == "turn":
            _, now, expected = event
            assert pacer.turn(now, latest=FAR) == pytest.approx(expected)
        elif event[0] == "429":
            pacer.throttled(event[1], event[2], sent_at=event[1], turn=event[1], latest=event[1])  # the refused caller gives up
        else:
            pacer.let_through()


def test_refusals_of_calls_sent_before_the_hold_do_not_lengthen_the_spacing() -> None:
    pacer = ResourcePacer()
    for _ in range(10):  # a herd of callers sent at 0.0, all refused at 0.1
        pacer.throttled(0.1, 0.02, sent_at=0.0, turn=0.0, latest=0.0)
    assert pacer.spacing == pytest.approx(0.02)
    pacer.throttled(0.5, 0.02, sent_at=0.4, turn=0.4, latest=0.0)  # one sent at its turn and still refused: too close together
    assert pacer.spacing == pytest.approx(0.02 * PACING_TIGHTEN)


def test_the_refused_caller_retries_after_its_advice_or_after_those_who_took_turns_since() -> None:
    pacer = ResourcePacer()
    assert pacer.throttled(1000.123, 0.01, sent_at=1000.1, turn=1000.1, latest=FAR) == 0.01  # exactly the advice
    assert pacer.turn(1000.123, latest=FAR) == pytest.approx(1000.143)  # the next caller: a spacing later
    assert pacer.throttled(1000.123, 0.01, sent_at=1000.0, turn=1000.0, latest=FAR) == pytest.approx(0.03)  # behind both


def test_a_turn_past_the_latest_start_is_not_taken() -> None:
    pacer = ResourcePacer()
    pacer.throttled(0.0, 0.5, sent_at=0.0, turn=0.0, latest=0.0)
    assert pacer.turn(0.0, latest=0.3) == pytest.approx(0.5)  # too late for this caller: it gives up its turn
    assert pacer.turn(0.0, latest=FAR) == pytest.approx(0.5)  # so the next caller has it


# --- the upstream loop, on an injected clock -----------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def settings(simulator: FineTuningSimulator) -> Settings:
    return Settings.from_environ(
        {
            "AZURE_OPENAI_ENDPOINT": simulator.endpoint,
            "AZURE_OPENAI_AUTH": "entra",  # no Key Vault: the client alone is under test
            "UPSTREAM_MAX_RETRIES": "3",
            "UPSTREAM_DEADLINE_SECONDS": "20",
            "CANCEL_REQUESTS_QUEUE": "requests",
            "CANCEL_RESULTS_QUEUE": "results",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",  # read, never connected to
        }
    )


@pytest.fixture
def clients(settings: Settings) -> Iterator[Callable[[], tuple[UpstreamClient, FakeTime]]]:
    """Clients of one resource sharing one pacer (as ResourceClient makes them), on one fake clock."""
    fake = FakeTime()
    pacer = ResourcePacer()
    resource = settings.resources[DEFAULT_RESOURCE]
    yield lambda: (UpstreamClient(settings, resource, pacer=pacer, sleep=fake.sleep, clock=fake.clock), fake)


def test_a_429_holds_the_next_caller_of_the_resource_before_its_first_call(
    simulator: FineTuningSimulator, clients
) -> None:
    (first, fake), (second, _) = clients(), clients()
    simulator.fail_next(1, status=429, headers={"retry-after-ms": "400"})
    first_trace, second_trace = CallTrace(), CallTrace()
    first.cancel_job(simulator.create_job()["id"], AUTH, deadline=fake.now + 20, trace=first_trace)
    assert first_trace.attempts == 2 and fake.sleeps == [pytest.approx(0.4)]  # its retry waited for the advice
    fake.sleeps.clear()
    fake.now -= 0.4  # the second caller arrives when the 429 was answered
    reply = second.cancel_job(simulator.create_job()["id"], AUTH, deadline=fake.now + 20, trace=second_trace)
    assert reply.status == 200
    assert second_trace.attempts == 1  # it never met the 429 itself
    assert fake.sleeps == [pytest.approx(0.4 + MAX_PACING_SPACING)]  # its turn: the advice, then a spacing (capped)


def test_a_turn_past_the_deadline_answers_429_without_calling(simulator: FineTuningSimulator, clients) -> None:
    (client, fake) = clients()
    client.pacer.throttled(fake.now, 30.0, sent_at=fake.now, turn=fake.now, latest=fake.now)
    before = len(simulator.requests)
    with pytest.raises(RetryableStatus) as raised:
        client.cancel_job(simulator.create_job()["id"], AUTH, deadline=fake.now + 20, trace=CallTrace())
    assert raised.value.status == 429 and raised.value.retry_after == pytest.approx(30.0)
    assert len(simulator.requests) == before and fake.sleeps == []


@pytest.mark.parametrize(
    ("faults", "expected_attempts", "expected_status"),
    [
        (3, 4, 200),  # three 429s: the third retry succeeds
        (4, 4, 429),  # four: UPSTREAM_MAX_RETRIES=3 spent, 429 as the contract says
    ],
)
def test_waiting_for_a_turn_is_not_a_retry_but_each_429_is(
    simulator: FineTuningSimulator, clients, faults: int, expected_attempts: int, expected_status: int
) -> None:
    client, fake = clients()
    simulator.fail_next(faults, status=429, headers={"retry-after-ms": "50"})
    trace = CallTrace()
    try:
        status = client.cancel_job(simulator.create_job()["id"], AUTH, deadline=fake.now + 20, trace=trace).status
    except RetryableStatus as err:
        status = err.status
    assert (trace.attempts, status) == (expected_attempts, expected_status)


# --- end to end: the simulator's rate limit, real threads, calls counted ----------------------------


def test_callers_under_a_rate_limit_take_turns_instead_of_spending_their_retries(
    simulator: FineTuningSimulator, settings: Settings
) -> None:
    """16 callers at once against 40 requests/s (bucket of 4): every cancel gets through, few calls are refused.

    Without pacing, each refused caller retried after its own advice, all at once, and spent its 4 tries
    in a few hundred milliseconds: most of these cancels ended in 429 (the drain benchmark's 3.4 calls/message).
    """
    resource = settings.resources[DEFAULT_RESOURCE]
    pacer = ResourcePacer()
    client = UpstreamClient(settings, resource, pacer=pacer)
    jobs = [simulator.create_job()["id"] for _ in range(96)]
    simulator.rate_limit = RateLimit(40.0, burst=4)
    attempts: list[int] = []
    lock = threading.Lock()

    def cancel(job_id: str) -> int:
        trace = CallTrace()
        try:
            status = client.cancel_job(job_id, AUTH, deadline=time.monotonic() + 20, trace=trace).status
        finally:
            with lock:
                attempts.append(trace.attempts)
        return status

    with ThreadPoolExecutor(16) as callers:
        statuses = list(callers.map(cancel, jobs))
    simulator.rate_limit = None
    refused = simulator.counts.get(("POST", "cancel"), 0) - len(jobs)
    assert statuses == [200] * len(jobs)
    assert sum(attempts) == len(jobs) + refused  # every call the simulator saw was one of a cancel's attempts
    assert refused < len(jobs) // 2, f"{refused} refusals for {len(jobs)} cancels: callers are not taking turns"
