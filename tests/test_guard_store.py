"""The guard's memory across instances, on a real Azurite (blob and queue services).

Each "instance" is a store of its own, with its own clients and connections, as two app instances
would have. Races start together from a barrier; nothing here waits for time to pass (claims are
aged by the store's clock).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from devstack.storage import Azurite
from shared.guard_store import CLAIM_SECONDS, GUARD_CONTAINER, GuardStore, GuardStoreError, open_guard_store
from shared.results_queue import development_storage_connection_string
from shared.settings import StorageConnection


@pytest.fixture
def connection(azurite: Azurite) -> str:
    """AzureWebJobsStorage as an account with both services has it (the session Azurite serves blob and queue)."""
    return azurite.connection_string


@pytest.fixture
def requests_queue_name() -> str:
    return f"guard-requests-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def instance(connection: str, requests_queue_name: str) -> Callable[..., GuardStore]:
    """A new app instance's store: its own blob and queue clients."""

    def open_instance(*, clock: Callable[[], float] = time.time) -> GuardStore:
        return open_guard_store(StorageConnection(connection_string=connection), requests_queue_name, clock=clock)

    return open_instance


def requests_on(connection: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(connection, name)


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once, each on its own thread, from one barrier."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as err:  # noqa: BLE001 - handed back to the test, which fails on it
            results[index] = err

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def new_job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex}"


def test_of_two_instances_racing_for_a_job_exactly_one_claims_it(instance):
    first, second = instance(), instance()
    for _ in range(10):
        job_id = new_job_id()
        claims = race(lambda: first.claim("default", job_id, "guard:max-age-waiting"),
                      lambda: second.claim("default", job_id, "guard:max-age-waiting"))
        assert sum(claim is not None for claim in claims) == 1


def test_a_job_whose_request_waits_on_the_queue_is_not_claimed_again(instance, connection, requests_queue_name):
    first, second = instance(), instance()
    job_id = new_job_id()
    claim = first.claim("sweden", job_id, "guard:max-age-running")
    first.send_request(claim, "guard:max-age-running")
    assert second.claim("sweden", job_id, "guard:max-age-running") is None
    assert first.claim("sweden", job_id, "guard:max-age-running") is None
    # The message is still there, whole and visible, for the queue trigger.
    [message] = requests_on(connection, requests_queue_name).receive_messages(max_messages=32)
    assert message.content == (
        f'{{"job_id": "{job_id}", "resource": "sweden", "correlation_id": "guard:max-age-running"}}'
    )


def test_a_request_being_handled_is_still_pending(instance, connection, requests_queue_name):
    first, second = instance(), instance()
    job_id = new_job_id()
    first.send_request(first.claim("default", job_id, "guard:cancel-active"), "guard:cancel-active")
    [message] = requests_on(connection, requests_queue_name).receive_messages(visibility_timeout=60)  # the host
    assert second.claim("default", job_id, "guard:cancel-active") is None


def test_once_the_request_is_handled_and_deleted_the_job_may_be_claimed_again(instance, connection, requests_queue_name):
    """The host deletes a message once its function succeeded (azure-webjobs-sdk QueueProcessor.cs,
    `CompleteProcessingMessageAsync`): from then on the claim no longer holds."""
    first, second = instance(), instance()
    job_id = new_job_id()
    first.send_request(first.claim("default", job_id, "guard:budget-alert"), "guard:budget-alert")
    queue = requests_on(connection, requests_queue_name)
    [message] = queue.receive_messages(visibility_timeout=60)
    queue.delete_message(message)  # what the host does once the handler has written the record
    claims = race(lambda: first.claim("default", job_id, "guard:budget-alert"),
                  lambda: second.claim("default", job_id, "guard:budget-alert"))
    assert sum(claim is not None for claim in claims) == 1


def test_after_an_hour_a_claim_is_taken_over_by_exactly_one_instance(instance, connection, requests_queue_name):
    job_id = new_job_id()
    now = [1_000_000.0]
    first = instance(clock=lambda: now[0])
    first.send_request(first.claim("default", job_id, "guard:max-age-paused"), "guard:max-age-paused")
    later = now[0] + CLAIM_SECONDS - 1
    assert instance(clock=lambda: later).claim("default", job_id, "guard:max-age-paused") is None
    much_later = now[0] + CLAIM_SECONDS
    a, b = instance(clock=lambda: much_later), instance(clock=lambda: much_later)
    claims = race(lambda: a.claim("default", job_id, "guard:max-age-paused"),
                  lambda: b.claim("default", job_id, "guard:max-age-paused"))
    assert sum(claim is not None for claim in claims) == 1


def test_a_claim_whose_send_fails_is_released(connection, azurite, requests_queue_name):
    stores = open_guard_store(StorageConnection(connection_string=connection), requests_queue_name)
    nothing_listens = development_storage_connection_string("http://127.0.0.1:9", blob_origin=azurite.blob_origin)
    unreachable = QueueClient.from_connection_string(nothing_listens, "nowhere", retry_total=0, connection_timeout=1)
    container = BlobServiceClient.from_connection_string(connection).get_container_client(GUARD_CONTAINER)
    broken = GuardStore(container, unreachable)
    job_id = new_job_id()
    claim = broken.claim("default", job_id, "guard:max-age-waiting")
    with pytest.raises(GuardStoreError, match="not enqueued"):
        broken.send_request(claim, "guard:max-age-waiting")
    assert stores.claim("default", job_id, "guard:max-age-waiting") is not None


def test_an_alert_is_acted_on_by_the_first_delivery_only(instance):
    first, second = instance(), instance()
    identity = f"/subscriptions/x/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    assert race(lambda: first.first_delivery(identity), lambda: second.first_delivery(identity)).count(True) == 1
    assert first.first_delivery(identity) is False and second.first_delivery(identity + "-other") is True
