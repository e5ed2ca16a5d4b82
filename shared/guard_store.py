"""The guard's memory, in blob storage so that every instance shares it: claims on jobs, and alerts seen.

A **claim** is one blob per (resource, job id), `claims/<resource>/<job id>`, created with
`If-None-Match: *`: of any number of instances racing, exactly one creates it and enqueues the cancel.
It holds when it was claimed and the id and pop receipt of the request message sent for it. The
job's request is **pending**, and nobody enqueues the job again, while the claim is younger than
`CLAIM_SECONDS` and its message is still on the request queue, waiting or being handled. The host
deletes a message only after its handler returned, that is after its record was written (or after
moving it to the poison queue); a failed run is released with a new visibility, hence a new pop
receipt (azure-webjobs-sdk `src/Microsoft.Azure.WebJobs.Extensions.Storage/Queues/QueueProcessor.cs`,
`CompleteProcessingMessageAsync` and `HandlePoisonMessageAsync`). So a claim whose message is gone is
stale, and the next claimant replaces it with `If-Match` on the ETag it read (again exactly one wins).

Whether the message is still there is asked with Update Message on the id and pop receipt the send
returned, with a visibility timeout of 0 (the message stays as visible as it was): 404
`MessageNotFound` means it is gone; 400 `PopReceiptMismatch` means the host has received it since and
still holds or retries it; success means it still waits, and the new pop receipt is kept.

An **alert** seen is one blob per alert, `alerts/<sha256 of its identity>`, created the same way:
only the delivery that creates it acts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from shared.results_queue import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    SEND_RETRIES,
    SEND_RETRY_BACKOFF_SECONDS,
    new_queue_client,
)
from shared.settings import AZURE_WEB_JOBS_STORAGE, StorageConnection

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

logger = logging.getLogger(__name__)

GUARD_CONTAINER = "ftcancel-guard"
CLAIM_SECONDS = 3600  # a request still pending after an hour is taken as lost: the job may be enqueued again


class GuardStoreError(Exception):
    """Blob storage or the request queue did not answer the guard; nothing was enqueued for the job."""


@dataclass(frozen=True)
class Claim:
    """This instance's claim on one job: the right, and the duty, to enqueue its one cancel request."""

    resource: str
    job_id: str
    rule: str
    claimed_at: float
    etag: str
    took_over: bool = False  # replaced a stale claim: the job's last request was handled, maybe after it was listed


@dataclass(frozen=True)
class _ClaimText:
    claimed_at: float
    rule: str | None
    message_id: str | None
    pop_receipt: str | None

    @classmethod
    def read(cls, data: bytes) -> _ClaimText:
        try:
            fields = json.loads(data)
            return cls(float(fields["claimed_at"]), fields.get("rule"), fields.get("message_id"), fields.get("pop_receipt"))
        except (ValueError, KeyError, TypeError):  # unreadable: as old as can be, so the next claimant replaces it
            return cls(0.0, None, None, None)

    def to_bytes(self) -> bytes:
        fields = {
            "claimed_at": self.claimed_at,
            "rule": self.rule,
            "message_id": self.message_id,
            "pop_receipt": self.pop_receipt,
        }
        return json.dumps(fields).encode("utf-8")


class GuardStore:
    """Claims and alerts seen, in `GUARD_CONTAINER`; cancel requests sent to the request queue."""

    def __init__(
        self, container: ContainerClient, requests: QueueClient, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._container = container
        self._requests = requests
        self._clock = clock

    def claim(self, resource: str, job_id: str, rule: str) -> Claim | None:
        """Claim the job, or None when its request is still pending (or another instance claimed it first)."""
        name = f"claims/{resource}/{job_id}"
        now = self._clock()
        text = _ClaimText(now, rule, None, None).to_bytes()
        try:
            written = self._upload(name, text, overwrite=False)
        except ResourceExistsError:
            pass
        else:
            return Claim(resource, job_id, rule, now, written["etag"])
        blob = self._container.get_blob_client(name)
        try:
            download = blob.download_blob()
            held, etag = _ClaimText.read(download.readall()), download.properties.etag
        except ResourceNotFoundError:  # released meanwhile: try again next time rather than loop
            return None
        except AzureError as err:
            raise GuardStoreError(f"claim of {job_id} on {resource} could not be read ({type(err).__name__})") from err
        if self._still_pending(name, held, etag):
            return None
        try:
            written = self._upload(name, text, overwrite=True, etag=etag)
        except (ResourceModifiedError, ResourceNotFoundError):  # another instance took it first
            return None
        return Claim(resource, job_id, rule, now, written["etag"], took_over=True)

    def send_request(self, claim: Claim, correlation_id: str) -> None:
        """Send the claimed job's cancel request and keep its message's id in the claim.

        When the send fails, the claim is released (the next sweep tries again) and `GuardStoreError` raised.
        """
        content = json.dumps({"job_id": claim.job_id, "resource": claim.resource, "correlation_id": correlation_id})
        try:
            sent = self._send(content)
        except AzureError as err:
            self.release(claim)
            raise GuardStoreError(f"cancel request for {claim.job_id} not enqueued ({type(err).__name__})") from err
        name = f"claims/{claim.resource}/{claim.job_id}"
        text = _ClaimText(claim.claimed_at, claim.rule, sent.id, sent.pop_receipt).to_bytes()
        try:
            self._upload(name, text, overwrite=True, etag=claim.etag)
        except AzureError as err:  # the message is out; without its id the claim still holds for CLAIM_SECONDS
            logger.info("guard: claim of %s on %s keeps no message id (%s)", claim.job_id, claim.resource, err)

    def first_delivery(self, identity: str) -> bool:
        """Whether this is the first time an alert with this identity arrives (atomically, across instances)."""
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
        try:
            self._upload(f"alerts/{digest}", json.dumps({"seen_at": self._clock()}).encode(), overwrite=False)
        except ResourceExistsError:
            return False
        return True

    def _still_pending(self, name: str, held: _ClaimText, etag: str) -> bool:
        if self._clock() - held.claimed_at >= CLAIM_SECONDS:
            return False
        if held.message_id is None or held.pop_receipt is None:
            return True  # being sent right now by the instance that claimed it
        try:
            updated = self._requests.update_message(held.message_id, pop_receipt=held.pop_receipt, visibility_timeout=0)
        except ResourceNotFoundError:
            return False  # handled and deleted: its record was written
        except HttpResponseError as err:
            if err.status_code == 400:
                return True  # received by the host since: still being handled or retried
            raise GuardStoreError(f"the request queue answered {err.status_code}") from err
        except AzureError as err:
            raise GuardStoreError(f"the request queue did not answer ({type(err).__name__})") from err
        text = _ClaimText(held.claimed_at, held.rule, held.message_id, updated.pop_receipt).to_bytes()
        try:
            self._upload(name, text, overwrite=True, etag=etag)
        except (AzureError, GuardStoreError):  # another instance updated it: its receipt is as good as ours
            pass
        return True

    def release(self, claim: Claim) -> None:
        """Give up a claim without a request sent for it; the next claimant may take it at once."""
        try:
            self._container.delete_blob(
                f"claims/{claim.resource}/{claim.job_id}", etag=claim.etag, match_condition=MatchConditions.IfNotModified
            )
        except AzureError as err:  # it stays for CLAIM_SECONDS: the job waits an hour, it is never enqueued twice
            logger.warning("guard: claim of %s on %s not released (%s)", claim.job_id, claim.resource, err)

    def _upload(self, name: str, data: bytes, *, overwrite: bool, etag: str | None = None) -> Mapping[str, object]:
        """Upload one blob, creating the container the first time; `overwrite=False` is `If-None-Match: *`."""
        conditions = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        for attempt in (1, 2):
            try:
                return self._container.get_blob_client(name).upload_blob(data, overwrite=overwrite, **conditions)
            except ResourceNotFoundError as err:
                if attempt == 2 or etag is not None or getattr(err, "error_code", None) != "ContainerNotFound":
                    raise
                try:
                    self._container.create_container()
                except ResourceExistsError:
                    pass
            except (ResourceExistsError, ResourceModifiedError):
                raise
            except AzureError as err:
                raise GuardStoreError(f"blob storage did not take {name.split('/')[0]} ({type(err).__name__})") from err
        raise AssertionError("unreachable: the loop returns or raises")

    def _send(self, content: str):
        try:
            return self._requests.send_message(content)
        except ResourceNotFoundError:
            try:
                self._requests.create_queue()
            except ResourceExistsError:
                pass
            return self._requests.send_message(content)


def open_guard_store(
    connection: StorageConnection,
    requests_queue: str,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> GuardStore:
    """The guard's store on the app's storage account (AzureWebJobsStorage), and its request queue."""
    # Imported here, not with the module: a cancel never needs the blob SDK, and a cold start would pay ~70 ms for it.
    from azure.storage.blob import BlobServiceClient, LinearRetry

    requests = new_queue_client(connection, requests_queue, None)
    options = {
        "retry_policy": LinearRetry(backoff=SEND_RETRY_BACKOFF_SECONDS, random_jitter_range=0, retry_total=SEND_RETRIES),
        "connection_timeout": CONNECT_TIMEOUT_SECONDS,
        "read_timeout": READ_TIMEOUT_SECONDS,
    }
    if connection.connection_string is not None:
        service = BlobServiceClient.from_connection_string(connection.connection_string, **options)
    else:
        from azure.identity import DefaultAzureCredential

        prefix = AZURE_WEB_JOBS_STORAGE + "__"
        url = environ.get(prefix + "blobServiceUri", "").strip() or _blob_url(connection.queue_service_url or "")
        credential = DefaultAzureCredential(managed_identity_client_id=connection.client_id)
        service = BlobServiceClient(url, credential=credential, **options)
    return GuardStore(service.get_container_client(GUARD_CONTAINER), requests, clock=clock)


def _blob_url(queue_service_url: str) -> str:
    """`https://<account>.queue.core.windows.net` → `https://<account>.blob.core.windows.net`."""
    return queue_service_url.replace(".queue.", ".blob.", 1)
