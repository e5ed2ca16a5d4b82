"""Why a cancel did not succeed: the exceptions the cancel service turns into records.

    CancelError                 anything that stops a cancel
    ├── CredentialUnavailable   no credential to call Azure OpenAI with
    │   ├── ApiKeyUnavailable       Key Vault could not give us the api-key
    │   └── TokenUnavailable        the app's identity could not get an Entra ID token
    └── UpstreamError           the call to Azure OpenAI failed
        ├── NoResponse          no HTTP response came back
        │   ├── ConnectFailed       could not connect, or the connection broke
        │   └── TimedOut            no complete answer within the time allowed
        └── ResponseError       a response came back, but not one we can use
            ├── RetryableStatus     408, 429 or 5xx, still so after every retry
            ├── KeyRefused          401/403, still so after a fresh api-key or token
            └── UnreadableBody      not JSON, malformed, too large, or a redirect

Every exception carries what the record needs: the wait to advise (`retry_after`) where a
retry may succeed, and for responses the status and upstream's request id.
"""

from __future__ import annotations


class CancelError(Exception):
    """Anything that stops a cancel from succeeding."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class CredentialUnavailable(CancelError):
    """No credential to call Azure OpenAI with: no api-key, or no token."""

    retryable = True

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.transient = transient


class ApiKeyUnavailable(CredentialUnavailable):
    """Key Vault is unreachable, throttled, missing the secret or refusing access."""


class TokenUnavailable(CredentialUnavailable):
    """The app's identity could not get an Entra ID token for Azure OpenAI."""


class UpstreamError(CancelError):
    """The call to Azure OpenAI failed."""


class NoResponse(UpstreamError):
    """No HTTP response came back."""

    retryable = True


class ConnectFailed(NoResponse):
    """Could not connect to the endpoint, or the connection broke before an answer."""


class TimedOut(NoResponse):
    """No complete answer within the time allowed."""


class ResponseError(UpstreamError):
    """A response came back, but not one the cancel can use."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.request_id = request_id


class RetryableStatus(ResponseError):
    """408, 429 or 5xx, and still so after every retry the budget allowed."""

    retryable = True


class KeyRefused(ResponseError):
    """401 or 403, still so after a fresh api-key or token, or a resource that refuses api-keys."""


class UnreadableBody(ResponseError):
    """The body is not JSON, not the JSON expected, too large, or the answer is a redirect."""
