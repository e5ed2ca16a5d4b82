"""The storage queues as ftcancel uses them: where they are, how to sign in, and what went wrong.

`--account NAME` signs in with Entra ID through `DefaultAzureCredential` (az login, azd, VS Code,
a service principal in the environment, a managed identity, ...; `AZURE_TOKEN_CREDENTIALS`
narrows the chain). `--connection-string` or `AZURE_STORAGE_CONNECTION_STRING` uses the string's
key or SAS; `UseDevelopmentStorage=true` is Azurite. Every storage failure leaves this module as
a one-line `CliError` that names the account, the queue, and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import ExponentialRetry, QueueClient, QueueMessage

from opscli.errors import EXIT_USAGE, CliError, network_reason

SERVICE_URL = "https://{account}.queue.core.windows.net"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
MAX_MESSAGES_PER_CALL = 32  # the storage service's limit for one peek or receive
CONNECTION_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Access:
    """A way of using a queue, and the least-privilege data role that allows it."""

    doing: str
    role: str


SEND = Access("sending messages to", "Storage Queue Data Message Sender")
PEEK = Access("peeking at", "Storage Queue Data Reader")
TAKE = Access("receiving and deleting messages of", "Storage Queue Data Message Processor")
COUNT = Access("reading the message count of", "Storage Queue Data Reader")
PUT_BACK = Access("making messages visible again on", "Storage Queue Data Contributor")


@dataclass(frozen=True)
class StorageAccount:
    """A storage account's queue service and the way to sign in to it."""

    name: str
    endpoint: str  # the queue service URL, for messages
    connection_string: str | None = None
    credential: TokenCredential | None = None

    @classmethod
    def signed_in(cls, *, account: str | None, queue_url: str | None) -> StorageAccount:
        """Entra sign-in to `https://<account>.queue.core.windows.net`, or to `queue_url` (other clouds)."""
        from azure.identity import DefaultAzureCredential  # imported on use: slow, and not needed for Azurite

        endpoint = (queue_url or SERVICE_URL.format(account=account)).rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise CliError(f"--queue-url must be an https URL, not '{endpoint}'", exit_code=EXIT_USAGE)
        name = account or parts.hostname.split(".")[0]
        try:
            credential = DefaultAzureCredential()
        except ValueError as err:  # a bad AZURE_TOKEN_CREDENTIALS value, say
            raise CliError(f"cannot sign in: {err}", exit_code=EXIT_USAGE) from err
        return cls(name=name, endpoint=endpoint, credential=SignIn(credential, account=name))

    @classmethod
    def from_connection_string(cls, connection_string: str) -> StorageAccount:
        try:
            probe = QueueClient.from_connection_string(connection_string, "probe")
        except ValueError as err:
            # The message never quotes the string: it may hold a key.
            raise CliError(f"the storage connection string is malformed ({err})", exit_code=EXIT_USAGE) from err
        endpoint = probe.url.rsplit("/", 1)[0]
        return cls(name=probe.account_name or urlsplit(endpoint).hostname or "?", endpoint=endpoint,
                   connection_string=connection_string)

    @property
    def uses_sign_in(self) -> bool:
        return self.credential is not None

    def queue(self, name: str) -> StorageQueue:
        # A command should fail within seconds, not the SDK's default minute: backoff ~1, 3, 5 s, one connect retry.
        retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1,
                                 retry_connect=1)
        if self.connection_string is not None:
            client = QueueClient.from_connection_string(
                self.connection_string, name, retry_policy=retry, connection_timeout=CONNECTION_TIMEOUT_SECONDS
            )
        else:
            client = QueueClient(self.endpoint, name, credential=self.credential, retry_policy=retry,
                                 connection_timeout=CONNECTION_TIMEOUT_SECONDS)
        return StorageQueue(client, self)


class SignIn:
    """A credential whose refusal ends the command at once, as a CliError.

    Storage's retry policy retries every AzureError, a refused sign-in included (four sign-ins,
    ~40 s when a managed-identity endpoint is down); a CliError is not an AzureError, so it is not.
    """

    def __init__(self, credential: TokenCredential, *, account: str) -> None:
        self._credential = credential
        self._account = account

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            return self._credential.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as err:
            raise sign_in_refused(self._account) from err

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        try:
            return self._credential.get_token_info(*scopes, options=options)  # type: ignore[attr-defined]
        except ClientAuthenticationError as err:
            raise sign_in_refused(self._account) from err

    def close(self) -> None:
        self._credential.close()  # type: ignore[attr-defined]


def sign_in_refused(account: str) -> CliError:
    return CliError(
        f"sign-in refused for storage account '{account}': run `az login` (or sign in any other way "
        "DefaultAzureCredential accepts) or pass --connection-string"
    )


def storage_account(*, account: str | None, queue_url: str | None, connection_string: str | None) -> StorageAccount:
    """The account the options name; AZURE_STORAGE_CONNECTION_STRING when they name none."""
    if account or queue_url:
        return StorageAccount.signed_in(account=account, queue_url=queue_url)
    connection_string = connection_string or os.environ.get(CONNECTION_STRING_ENV)
    if connection_string:
        return StorageAccount.from_connection_string(connection_string)
    raise CliError(
        "which storage account? pass --account NAME (Entra sign-in) or --connection-string "
        f"(UseDevelopmentStorage=true for Azurite), or set {CONNECTION_STRING_ENV}",
        exit_code=EXIT_USAGE,
    )


class StorageQueue:
    """One queue; each call raises CliError when storage cannot be used."""

    def __init__(self, client: QueueClient, account: StorageAccount) -> None:
        self.client = client
        self.account = account

    @property
    def name(self) -> str:
        return self.client.queue_name

    def send(self, content: str) -> None:
        try:
            self.client.send_message(content)
        except AzureError as err:
            raise self.failure(err, SEND) from err

    def peek(self, limit: int) -> list[QueueMessage]:
        try:
            return list(self.client.peek_messages(max_messages=min(limit, MAX_MESSAGES_PER_CALL)))
        except AzureError as err:
            raise self.failure(err, PEEK) from err

    def receive(self, limit: int, *, visibility_timeout: int) -> list[QueueMessage]:
        """Receive (and hide) up to `limit` messages; an answer that failed is reported at once, not retried.

        The service hides the messages before it writes the answer (Azurite `src/queue/handlers/
        MessagesHandler.ts`, `dequeue`: `metadataStore.getMessages` sets their next-visible time, then
        the XML is built), so a receive that failed may have hidden the messages it was returning. A
        retry would then answer an empty page, and an empty queue is what the command would report.
        A request that never reached the service (`ServiceRequestError`) is still retried.
        """
        count = min(limit, MAX_MESSAGES_PER_CALL)
        try:
            return list(self.client.receive_messages(
                messages_per_page=count, max_messages=count, visibility_timeout=visibility_timeout,
                retry_status=0, retry_read=0,
            ))
        except AzureError as err:
            raise self.failure(err, TAKE) from err

    def message_count(self) -> int:
        """The queue's approximate message count: visible and hidden (received, not yet deleted) messages."""
        try:
            return self.client.get_queue_properties().approximate_message_count or 0
        except AzureError as err:
            raise self.failure(err, COUNT) from err

    def delete(self, message: QueueMessage) -> bool:
        """Delete a received message; False when it is gone or was received again by someone else."""
        try:
            self.client.delete_message(message.id, message.pop_receipt)
        except HttpResponseError as err:
            if _message_moved_on(err):
                return False
            raise self.failure(err, TAKE) from err
        except AzureError as err:
            raise self.failure(err, TAKE) from err
        return True

    def make_visible(self, messages: Sequence[QueueMessage]) -> int:
        """Put received messages back at once (visibility 0); returns how many could not be put back."""
        for position, message in enumerate(messages):
            try:
                self.client.update_message(message.id, message.pop_receipt, visibility_timeout=0)
            except HttpResponseError as err:
                if _message_moved_on(err):
                    continue
                if err.status_code == 403:
                    return len(messages) - position  # no role to update messages: the rest will not do better
                raise self.failure(err, PUT_BACK) from err
            except AzureError as err:
                raise self.failure(err, PUT_BACK) from err
        return 0

    def failure(self, err: AzureError, access: Access) -> CliError:
        """The one-line explanation of a storage failure."""
        account = f"storage account '{self.account.name}'"
        code = getattr(err, "error_code", None) or ""
        if isinstance(err, ResourceNotFoundError) and code == "QueueNotFound":
            return CliError(
                f"queue '{self.name}' does not exist in {account} ({self.account.endpoint}); create it or check --queue"
            )
        if isinstance(err, HttpResponseError) and err.status_code == 403:
            if self.account.uses_sign_in:
                return CliError(
                    f"{account} refused {access.doing} queue '{self.name}' to your identity ({code or 403}): "
                    f"it needs the '{access.role}' role on the queue or the account"
                )
            return CliError(f"{account} refused the connection string's key or SAS ({code or 403})")
        if isinstance(err, ServiceRequestError):
            return CliError(f"{account} not found or unreachable at {self.account.endpoint}: {network_reason(err)}")
        if isinstance(err, ServiceResponseError):
            return CliError(f"{account} at {self.account.endpoint} stopped answering: {network_reason(err)}")
        if isinstance(err, HttpResponseError):
            first_line = (str(err.message or err).strip().splitlines() or [""])[0]
            answer = f"{err.status_code} {code}" if code else str(err.status_code)
            return CliError(f"{account} answered {answer} on queue '{self.name}': {first_line}")
        return CliError(f"{account}: {network_reason(err)}")


def _message_moved_on(err: HttpResponseError) -> bool:
    """The message was deleted meanwhile, or its hold expired and it was received again (new pop receipt)."""
    code = getattr(err, "error_code", None)
    return err.status_code in (400, 404) and code in ("MessageNotFound", "PopReceiptMismatch")
