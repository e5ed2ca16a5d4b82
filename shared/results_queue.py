"""The results queue: every record is sent by the app itself, with the storage SDK.

Not through a queue output binding, for two reasons read in Microsoft's source and issues:

- the host writes a `func.Out[str]` that looks like JSON as `JToken.ToString()` of it: indented, and
  with ISO times re-formatted by Newtonsoft (azure-functions-host `src/WebJobs.Script/Binding/FunctionBinding.cs`,
  `ReadAsEnumerable` and `BindAsyncCollectorAsync`; `Utility.IsJson` decides what "looks like JSON");
- an output binding sends every message with the service's default time-to-live of 7 days and has no
  setting to change it (azure-functions-host#4176, azure-sdk-for-net#32846), so unread records would vanish.

`QueueClient.send_message(text, time_to_live=...)` sends the text byte for byte, with `RESULTS_TTL_SECONDS`.
"""

from __future__ import annotations

import logging

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import LinearRetry, QueueClient

from shared.built_once import BuiltOnce
from shared.http_session import ca_bundle, new_session, route_for
from shared.settings import ResultsQueueSettings, SettingsError, StorageConnection, load_results_queue_settings

logger = logging.getLogger(__name__)

SEND_RETRIES = 3  # the SDK's own retries of one send, a second apart: a blip, not an outage
SEND_RETRY_BACKOFF_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10
POOL_SIZE = 32  # as many connections as the worker's thread pool has invocations (PYTHON_THREADPOOL_THREAD_COUNT)
# Azurite's development account, as `UseDevelopmentStorage=true` means it (its key is public and fixed).
DEVELOPMENT_ACCOUNT = "devstoreaccount1"
DEVELOPMENT_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEVELOPMENT_BLOB_PORT = 10000
DEVELOPMENT_QUEUE_PORT = 10001


class RecordNotWritten(Exception):
    """The results queue did not take a record, after the SDK's retries."""

    def __init__(self, message: str, *, queue: str) -> None:
        super().__init__(message)
        self.message = message
        self.queue = queue


class ResultsQueue:
    """Sends record texts to `CANCEL_RESULTS_QUEUE`; creates the queue when it is missing, as the binding did."""

    def __init__(self, settings: ResultsQueueSettings, *, credential: object | None = None) -> None:
        self.name = settings.name
        self._time_to_live = settings.time_to_live
        self._connection = settings.storage
        # Created on first use: no network at import or start-up.
        self._client = BuiltOnce(lambda connection: new_queue_client(connection, self.name, credential))

    def send(self, text: str) -> None:
        """Send one record's text as it is; raise `RecordNotWritten` when the queue will not take it."""
        client = self._client.get(self._connection)
        try:
            try:
                client.send_message(text, time_to_live=self._time_to_live)
            except ResourceNotFoundError:
                try:
                    client.create_queue()
                except ResourceExistsError:  # another invocation created it meanwhile
                    pass
                client.send_message(text, time_to_live=self._time_to_live)
        except AzureError as err:
            status = getattr(err, "status_code", None)
            reason = f"the queue service answered {status}" if status else f"no answer ({type(err).__name__})"
            raise RecordNotWritten(
                f"the record could not be written to results queue '{self.name}': {reason}", queue=self.name
            ) from err


def new_queue_client(connection: StorageConnection, queue: str, credential: object | None) -> QueueClient:
    """A client of one queue on the app's storage account, with our retries and timeouts.

    The timeouts go to the transport itself: with a transport given, the storage SDK passes the client's
    `connection_timeout` / `read_timeout` on to no one (azure-storage-queue `_shared/base_client.py`
    `StorageAccountHostsMixin._create_pipeline` builds a `RequestsTransport(**kwargs)` only when none is given),
    and the transport's own default is 300 s each.
    """
    session = new_session(pool_size=POOL_SIZE)
    options = {
        "transport": RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            connection_verify=ca_bundle(),
        ),
        "retry_policy": LinearRetry(backoff=SEND_RETRY_BACKOFF_SECONDS, random_jitter_range=0, retry_total=SEND_RETRIES),
    }
    if connection.connection_string is not None:
        client = QueueClient.from_connection_string(
            expand_development_storage(connection.connection_string), queue, **options
        )
    else:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            # The host's own identity-based connection: AzureWebJobsStorage__clientId picks a user-assigned identity.
            credential = DefaultAzureCredential(managed_identity_client_id=connection.client_id)
        client = QueueClient(connection.queue_service_url, queue, credential=credential, **options)
    route_for(session, client.url)
    return client


def expand_development_storage(connection_string: str) -> str:
    """`UseDevelopmentStorage=true` as the storage tools read it: Azurite's account, blob on :10000, queue on :10001."""
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if parts.get("UseDevelopmentStorage", "").strip().lower() != "true":
        return connection_string
    origin = parts.get("DevelopmentStorageProxyUri", "http://127.0.0.1").rstrip("/")
    return development_storage_connection_string(
        f"{origin}:{DEVELOPMENT_QUEUE_PORT}", blob_origin=f"{origin}:{DEVELOPMENT_BLOB_PORT}"
    )


def development_storage_connection_string(queue_origin: str, *, blob_origin: str | None = None) -> str:
    """A connection string for Azurite's development account: its queue service at `queue_origin`, and its
    blob service (the guard's memory) at `blob_origin` when given."""
    blob = f"BlobEndpoint={blob_origin.rstrip('/')}/{DEVELOPMENT_ACCOUNT};" if blob_origin else ""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEVELOPMENT_ACCOUNT};AccountKey={DEVELOPMENT_ACCOUNT_KEY};"
        f"{blob}QueueEndpoint={queue_origin.rstrip('/')}/{DEVELOPMENT_ACCOUNT};"
    )


_queue = BuiltOnce(ResultsQueue)


def results_queue() -> ResultsQueue:
    """The process's results queue; `RecordNotWritten` when its settings are bad.

    Its settings are read apart from the others, so that a record saying the app is misconfigured still gets written.
    """
    try:
        settings = load_results_queue_settings()
    except SettingsError as err:
        raise RecordNotWritten(f"the record could not be written: {err}", queue="") from err
    return _queue.get(settings)
