"""Local simulator of the Azure OpenAI fine-tuning API (2024-10-21) with scriptable faults.

Serves `/openai/fine_tuning/jobs[/{id}[/cancel]]` over plain HTTP on loopback, answers like
Azure (gateway 401/404 bodies, `apim-request-id`/`x-request-id`/`x-ms-region` headers,
FineTuningJob and ErrorResponse bodies valid for `devstack/fine_tuning_schema.json`, and for the
upstream spec where the tests can find it) and can fail on purpose: scripted faults
for the next N matching requests (`fail_next`) or random ones for chaos runs
(`set_fault_rate`). For benchmarks it can answer slowly, a fixed part plus a long-tailed random part
(`Latency`), and throttle the resource with 429 and `retry-after-ms` once a token bucket of requests
runs dry (`RateLimit`). Run standalone with `python -m devstack.openai_sim --port N --api-key K`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl, unquote

from devstack._http import AppHandler, BackgroundServer, EmulatorServer, QuietHandler, serve_until_signalled

DEFAULT_API_VERSION = "2024-10-21"
# api-versions that serve fine_tuning/jobs on Azure; anything else answers 404 like the gateway.
SUPPORTED_API_VERSIONS = frozenset(
    {
        "2023-12-01-preview",
        "2024-02-15-preview",
        "2024-03-01-preview",
        "2024-04-01-preview",
        "2024-05-01-preview",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    }
)
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
# The states Azure OpenAI has today: the 2024-10-21 spec's six and those the v1 API added.
JOB_STATES = (
    "created", "pending", "queued", "validating_files", "running", "pausing", "paused", "resuming",
    "succeeded", "cancelled", "failed",
)
CANCELLABLE_STATES = frozenset(JOB_STATES) - {"succeeded", "cancelled", "failed"}
TERMINAL_STATES = frozenset({"succeeded", "cancelled", "failed"})
FAULT_KINDS = ("429", "429ms", "500", "503", "timeout", "drop")

# Azure's gateway answers these two with numeric-string codes that are not in the spec's ErrorCode enum.
UNAUTHORIZED_BODY = {
    "error": {
        "code": "401",
        "message": (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
            "key for an active subscription and use a correct regional API endpoint for your resource."
        ),
    }
}
RESOURCE_NOT_FOUND_BODY = {"error": {"code": "404", "message": "Resource not found"}}
_UNAUTHORIZED_BYTES = json.dumps(UNAUTHORIZED_BODY, separators=(",", ":")).encode()
_NOT_FOUND_BYTES = json.dumps(RESOURCE_NOT_FOUND_BODY, separators=(",", ":")).encode()

_ERROR_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("invalidPayload", "The request data is invalid for this operation."),
    403: ("forbidden", "The operation is forbidden for the current user/api key."),
    404: ("notFound", "The resource is not found."),
    408: ("serviceUnavailable", "The operation timed out."),
    409: ("conflict", "The requested operation conflicts with the current resource state."),
    429: ("tooManyRequests", "Too many requests. Please retry later."),
    500: ("internalFailure", "Internal error. Please retry."),
    502: ("serviceUnavailable", "Bad gateway. Please retry."),
    503: ("serviceUnavailable", "The service is currently not available."),
    504: ("serviceUnavailable", "The gateway timed out. Please retry."),
}
_HTML_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>simulated gateway</center></body></html>"
)


V1_PREFIX = "/openai/v1/"
KEYS_DISABLED_MESSAGE = "Key based authentication is disabled for this resource."
TOKEN_REFUSED_MESSAGE = (
    "The principal lacks the required data action Microsoft.CognitiveServices/accounts/OpenAI/fine-tunes/write."
)


def error_body(status: int) -> dict[str, Any]:
    """Return the ErrorResponse (or gateway body, for 401) Azure sends for a status."""
    if status == 401:
        return UNAUTHORIZED_BODY
    code, message = _ERROR_BY_STATUS.get(status, ("invalidPayload" if status < 500 else "internalFailure", "Error."))
    return {"error": {"code": code, "message": message}}


def _error(code: str, message: str, **extra: str) -> dict[str, Any]:
    """Build an ErrorResponse body."""
    return {"error": {"code": code, "message": message, **extra}}


class RequestRecord(NamedTuple):
    """One request as the simulator saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    time: float
    status: int  # 0: connection dropped without an answer


class _Response(NamedTuple):
    """A response ready to send; status 0 means close the connection unanswered."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]
    content_type: str


_DROP = _Response(0, b"", [], "")


@dataclass(frozen=True)
class Fault:
    """A deliberate misbehaviour applied to one request."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: Any = None
    delay: float | None = None
    drop: bool = False
    non_json: bool = False
    method: str | None = None
    path_suffix: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request."""
        return (self.method is None or self.method == method) and (
            self.path_suffix is None or path.endswith(self.path_suffix)
        )


@dataclass(frozen=True)
class Latency:
    """How long an answer takes, in seconds: `fixed` plus a lognormal part, so that the median is `median`.

    The lognormal part (median `median - fixed`, shape `sigma`) gives the long tail a real service has.
    """

    fixed: float = 0.0
    median: float = 0.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.fixed <= self.median or self.sigma < 0:
            raise ValueError("latency needs 0 <= fixed <= median and sigma >= 0")

    @property
    def mean(self) -> float:
        """The expected answer time: fixed plus the lognormal part's mean."""
        return self.fixed + (self.median - self.fixed) * math.exp(self.sigma**2 / 2)

    def draw(self, rand: random.Random) -> float:
        """One answer's time."""
        spread = self.median - self.fixed
        return self.fixed + (rand.lognormvariate(math.log(spread), self.sigma) if spread > 0 else 0.0)


class RateLimit:
    """A per-resource request limit: a token bucket of `burst` tokens refilled at `rate` a second.

    A request that finds no token is refused with 429 and told, in `retry-after-ms`, when the next
    token is due; refused requests take no token, so every client told the same wait races again.
    """

    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or (burst is not None and burst < 1):
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)  # a second's worth, like a per-second limit
        self._clock = clock
        self._tokens = self.burst
        self._refilled = clock()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take a token: None when the request may pass, else the seconds until a token is due."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) / self.rate


def throttled_response_headers(wait: float) -> dict[str, str]:
    """Azure OpenAI's 429 advice: `retry-after-ms`, and `retry-after` in whole seconds (at least 1)."""
    milliseconds = max(1, math.ceil(wait * 1000))
    return {"retry-after-ms": str(milliseconds), "retry-after": str(max(1, math.ceil(wait)))}


THROTTLED_MESSAGE = "Requests to the fine-tuning API have exceeded the rate limit of your resource. Please retry later."


def _random_fault(kind: str, timeout_delay: float) -> Fault:
    """Build the fault for one of FAULT_KINDS."""
    if kind == "429":
        return Fault(status=429, headers={"retry-after": "1"})
    if kind == "429ms":
        return Fault(status=429, headers={"retry-after-ms": "20", "retry-after": "1"})
    if kind == "timeout":
        return Fault(delay=timeout_delay)
    if kind == "drop":
        return Fault(drop=True)
    return Fault(status=int(kind))


def _new_id(prefix: str) -> str:
    """Return an Azure-style id: prefix plus 32 hex digits."""
    return prefix + uuid.uuid4().hex


def _apply_status(job: dict[str, Any], status: str, now: int) -> None:
    """Set a job's status and the fields Azure derives from it (absent rather than null: the spec has no nulls)."""
    if status not in JOB_STATES:
        raise ValueError(f"unknown fine-tuning status {status!r}; expected one of {', '.join(JOB_STATES)}")
    for field in ("estimated_finish", "finished_at", "fine_tuned_model", "trained_tokens", "error"):
        job.pop(field, None)
    job["status"] = status
    if status == "running":
        job["estimated_finish"] = now + 3600
    elif status in TERMINAL_STATES:
        job["finished_at"] = now
    if status == "succeeded":
        job["fine_tuned_model"] = f"{job['model']}.ft-{uuid.uuid4().hex}"
        job["trained_tokens"] = 2342
        job["result_files"] = [_new_id("file-")]
    elif status == "failed":
        job["error"] = {
            "code": "invalidTrainingFile",
            "message": "The training file could not be processed.",
            "param": "training_file",
        }


def _new_job(
    *,
    job_id: str,
    model: str,
    training_file: str,
    status: str,
    validation_file: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Build a FineTuningJob as Azure shows it."""
    now = int(time.time())
    job: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": job_id,
        "created_at": now,
        "model": model,
        "training_file": training_file,
        "hyperparameters": dict(hyperparameters or {"n_epochs": -1, "batch_size": -1, "learning_rate_multiplier": 1}),
        "result_files": [],
        "seed": seed if seed is not None else random.randrange(2**31),
    }
    if validation_file:
        job["validation_file"] = validation_file
    if suffix:
        job["suffix"] = suffix
    _apply_status(job, status, now)
    return job


class FineTuningSimulator:
    """Azure OpenAI fine-tuning jobs API on 127.0.0.1, with seeding helpers, faults and a request log."""

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "Sweden Central",
        api_versions: Iterable[str] = SUPPORTED_API_VERSIONS,
        record_requests: bool = True,
        cancel_delay: float = 0.0,
        key_access_disabled: bool = False,
        token_verifier: Callable[[str], bool] | None = None,
        latency: Latency | None = None,
        rate_limit: RateLimit | None = None,
        seed: int | None = None,
    ) -> None:
        self.api_key = api_key
        # A resource with key access disabled refuses every api-key, as Azure does, and takes bearer
        # tokens that `token_verifier` accepts (the identity emulator's, for the Cognitive Services audience).
        self.key_access_disabled = key_access_disabled
        self.token_verifier = token_verifier
        # Seconds an accepted cancel takes to show: meanwhile the job keeps its old status, as on Azure.
        self.cancel_delay = cancel_delay
        self.region = region
        self.api_versions = frozenset(api_versions)
        self.record_requests = record_requests
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._cancels_due: dict[str, float] = {}  # job id -> monotonic time its cancel takes effect
        self._faults: list[list[Any]] = []  # [Fault, remaining] in FIFO order
        self._fault_rate = 0.0
        self._fault_random = random.Random()
        self._fault_kinds: tuple[str, ...] = FAULT_KINDS
        self._timeout_delay = 2.0
        self._requests: list[RequestRecord] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        # Benchmark knobs: each answer's time, and the resource's request limit (None: off).
        self.latency = latency
        self.rate_limit = rate_limit
        self._latency_random = random.Random(seed)
        self._server = EmulatorServer((host, port), AppHandler, app=self.handle)
        self._runner = BackgroundServer(self._server, "openai-sim")
        self.host = host

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Return the bound port."""
        return self._runner.port

    @property
    def endpoint(self) -> str:
        """Return the AZURE_OPENAI_ENDPOINT value for this simulator."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving in a background thread."""
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop serving and close all connections."""
        self._runner.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- seeding ---------------------------------------------------------------------------

    def create_job(
        self,
        *,
        status: str = "running",
        model: str = DEFAULT_MODEL,
        job_id: str | None = None,
        created_at: int | None = None,
        suffix: str | None = None,
    ) -> dict[str, Any]:
        """Add a job directly (no HTTP) and return a copy of it; `created_at` (epoch seconds) ages it."""
        job = _new_job(
            job_id=job_id or _new_id("ftjob-"), model=model, training_file=_new_id("file-"), status=status, suffix=suffix
        )
        if created_at is not None:
            job["created_at"] = created_at
        with self._lock:
            self._jobs[job["id"]] = job
            return json.loads(json.dumps(job))

    def set_status(self, job_id: str, status: str) -> None:
        """Move a job to another status, dropping a cancel still under way (KeyError for an unknown job)."""
        with self._lock:
            _apply_status(self._jobs[job_id], status, int(time.time()))
            self._cancels_due.pop(job_id, None)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Return a copy of one job, or None."""
        with self._lock:
            self._settle_cancels()
            job = self._jobs.get(job_id)
            return json.loads(json.dumps(job)) if job is not None else None

    def jobs(self) -> list[dict[str, Any]]:
        """Return copies of all jobs, oldest first."""
        with self._lock:
            self._settle_cancels()
            return json.loads(json.dumps(list(self._jobs.values())))

    def _settle_cancels(self) -> None:
        """Mark cancelled the jobs whose delayed cancel is due (call with the lock held)."""
        if not self._cancels_due:
            return
        now = time.monotonic()
        for job_id, due in list(self._cancels_due.items()):
            if due <= now:
                del self._cancels_due[job_id]
                _apply_status(self._jobs[job_id], "cancelled", int(time.time()))

    # --- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        delay: float | None = None,
        drop: bool = False,
        non_json: bool = False,
        method: str | None = None,
        path_suffix: str | None = None,
    ) -> None:
        """Misbehave on the next n requests matching method/path_suffix (FIFO after earlier faults)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        if status is None and delay is None and not drop and not non_json:
            raise ValueError("a fault needs status, delay, drop or non_json")
        fault = Fault(
            status=status,
            headers=dict(headers) if headers else None,
            body=body,
            delay=delay,
            drop=drop,
            non_json=non_json,
            method=method.upper() if method else None,
            path_suffix=path_suffix,
        )
        with self._lock:
            self._faults.append([fault, n])

    @property
    def pending_faults(self) -> int:
        """Return how many scripted fault applications are still queued."""
        with self._lock:
            return sum(entry[1] for entry in self._faults)

    def clear_faults(self) -> None:
        """Forget all scripted faults."""
        with self._lock:
            self._faults.clear()

    def set_fault_rate(
        self,
        probability: float,
        *,
        seed: int | None = None,
        kinds: Sequence[str] = FAULT_KINDS,
        timeout_delay: float = 2.0,
    ) -> None:
        """Apply a random fault of one of `kinds` to each request with this probability (0 turns it off)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}")
        with self._lock:
            self._fault_rate = probability
            self._fault_random = random.Random(seed)
            self._fault_kinds = tuple(kinds)
            self._timeout_delay = timeout_delay

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """Pop the scripted fault for this request, or draw a random one."""
        if not self._faults and not self._fault_rate:
            return None
        with self._lock:
            for index, entry in enumerate(self._faults):
                fault = entry[0]
                if fault.matches(method, path):
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._faults[index]
                    return fault
            if self._fault_rate and self._fault_random.random() < self._fault_rate:
                kind = self._fault_random.choice(self._fault_kinds)
                return _random_fault(kind, self._timeout_delay)
        return None

    # --- observation -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Return the requests seen so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget logged requests."""
        with self._lock:
            self._requests.clear()

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Return request counts keyed by (method, route kind: create/list/get/cancel/unknown)."""
        with self._lock:
            return dict(self._counts)

    # --- request handling ------------------------------------------------------------------

    def handle(self, handler: QuietHandler) -> None:
        """Answer one request; it is logged and counted before the answer leaves."""
        method = handler.command
        raw_path, _, raw_query = handler.path.partition("?")
        body = handler.read_body()
        query = dict(parse_qsl(raw_query)) if raw_query else {}
        path = unquote(raw_path)
        kind, job_id = _route(method, path)
        response = self._throttled()
        if response is None:
            fault = self._take_fault(method, path)
            if fault is not None:
                response = self._fault_response(handler, fault)
            if response is None:
                response = self._serve(handler, method, kind, job_id, query, body)
            if self._wait_latency(handler):
                response = _DROP  # stopped while answering: the connection goes away unanswered
        self._record(handler, method, path, query, kind, response.status)
        if response.status == 0:
            handler.drop_connection()
        else:
            handler.send_raw(response.status, response.body, response.headers, response.content_type)

    def _throttled(self) -> _Response | None:
        """The 429 for a request over the resource's rate limit (answered at once, as the gateway does), or None."""
        limit = self.rate_limit
        wait = limit.take() if limit is not None else None
        if wait is None:
            return None
        return self._json(429, _error("429", THROTTLED_MESSAGE), throttled_response_headers(wait))

    def _wait_latency(self, handler: QuietHandler) -> bool:
        """Sleep this answer's latency on the connection's own thread; True if the server stopped meanwhile."""
        latency = self.latency
        if latency is None:
            return False
        with self._lock:
            delay = latency.draw(self._latency_random)
        return handler.server.stopping.wait(delay)

    def _record(
        self, handler: QuietHandler, method: str, path: str, query: dict[str, str], kind: str, status: int
    ) -> None:
        """Count the request and log it if logging is on."""
        record = None
        if self.record_requests:
            record = RequestRecord(
                method, path, query, {k.lower(): v for k, v in handler.headers.items()}, time.time(), status
            )
        with self._lock:
            self._counts[(method, kind)] += 1
            if record is not None:
                self._requests.append(record)

    def _headers(self, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Return Azure's tracing headers, plus any extra ones."""
        headers = [
            ("apim-request-id", str(uuid.uuid4())),
            ("x-request-id", str(uuid.uuid4())),
            ("x-ms-region", self.region),
        ]
        if extra:
            headers.extend(extra.items())
        return headers

    def _json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> _Response:
        """Build a JSON response."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return _Response(status, body, self._headers(extra), "application/json")

    def _fault_response(self, handler: QuietHandler, fault: Fault) -> _Response | None:
        """Sleep if asked, then build the faulty response (status 0: drop), or None to serve normally."""
        if fault.delay and handler.server.stopping.wait(fault.delay):
            return _DROP  # stopped while sleeping: the connection goes away unanswered
        if fault.drop:
            return _DROP
        if fault.status is None and not fault.non_json:
            return None
        status = fault.status or 200
        extra = dict(fault.headers or {})
        content_type = "text/html" if fault.non_json else "application/json"
        for name in [name for name in extra if name.lower() == "content-type"]:
            content_type = extra.pop(name)  # a scripted content-type replaces the default one
        if isinstance(fault.body, bytes):
            body = fault.body
        elif fault.non_json:
            body = _HTML_BODY
        else:
            payload = fault.body if fault.body is not None else error_body(status)
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return _Response(status, body, self._headers(extra), content_type)

    def _serve(
        self, handler: QuietHandler, method: str, kind: str, job_id: str, query: dict[str, str], body: bytes
    ) -> _Response:
        """Answer a request the normal way."""
        # The gateway resolves the operation (path and api-version) before it checks the key.
        v1 = handler.path.startswith(V1_PREFIX)
        if kind == "unknown" or (not v1 and query.get("api-version") not in self.api_versions):
            return _Response(404, _NOT_FOUND_BYTES, self._headers(), "application/json")
        refusal = self._refusal(handler)
        if refusal is not None:
            return refusal
        if kind == "create":
            return self._json(*self._create(body))
        if kind == "list":
            return self._json(*self._list(query))
        if kind == "get":
            return self._json(*self._get(job_id))
        return self._json(*self._cancel(job_id))

    def _refusal(self, handler: QuietHandler) -> _Response | None:
        """The answer to a request without a credential this resource takes, or None."""
        api_key = handler.headers.get("api-key")
        scheme, _, token = (handler.headers.get("Authorization") or "").partition(" ")
        if api_key is not None:
            if self.key_access_disabled:
                return self._json(403, _error("AuthenticationTypeDisabled", KEYS_DISABLED_MESSAGE), None)
            if api_key == self.api_key:
                return None
        elif scheme.lower() == "bearer" and token:
            if self.token_verifier is not None and self.token_verifier(token.strip()):
                return None
            return self._json(401, _error("PermissionDenied", TOKEN_REFUSED_MESSAGE), None)
        return _Response(401, _UNAUTHORIZED_BYTES, self._headers(), "application/json")

    def _create(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """POST /fine_tuning/jobs."""
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return 400, _error("invalidPayload", "The request body must be a JSON object."), None
        for field in ("model", "training_file"):
            value = request.get(field)
            if not isinstance(value, str) or not value:
                return 400, _error("invalidPayload", f"The field '{field}' is required.", target=field), None
        hyperparameters = request.get("hyperparameters")
        seed = request.get("seed")
        job = _new_job(
            job_id=_new_id("ftjob-"),
            model=request["model"],
            training_file=request["training_file"],
            status="pending",
            validation_file=request.get("validation_file") if isinstance(request.get("validation_file"), str) else None,
            hyperparameters=hyperparameters if isinstance(hyperparameters, dict) else None,
            suffix=request.get("suffix") if isinstance(request.get("suffix"), str) else None,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )
        with self._lock:
            self._jobs[job["id"]] = job
            payload = dict(job)
        return 201, payload, {"location": f"{self.endpoint}/openai/fine_tuning/jobs/{job['id']}"}

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any], None]:
        """GET /fine_tuning/jobs, newest first, paged by `after` and `limit`."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return 400, _error("invalidPayload", "limit must be an integer from 1 to 100.", target="limit"), None
        after = query.get("after")
        with self._lock:
            self._settle_cancels()
            ordered = list(reversed(self._jobs.values()))
            if after:
                ids = [job["id"] for job in ordered]
                if after not in ids:
                    return 404, _error("notFound", f"Fine-tuning job '{after}' was not found."), None
                ordered = ordered[ids.index(after) + 1 :]
            page = [dict(job) for job in ordered[:limit]]
        return 200, {"object": "list", "data": page, "has_more": len(ordered) > limit}, None

    def _get(self, job_id: str) -> tuple[int, dict[str, Any], None]:
        """GET /fine_tuning/jobs/{id}."""
        with self._lock:
            self._settle_cancels()
            job = self._jobs.get(job_id)
            if job is not None:
                return 200, dict(job), None
        return 404, _error("notFound", f"Fine-tuning job '{job_id}' was not found."), None

    def _cancel(self, job_id: str) -> tuple[int, dict[str, Any], None]:
        """POST /fine_tuning/jobs/{id}/cancel: 200 with the job, cancelled now or after cancel_delay."""
        with self._lock:
            self._settle_cancels()
            job = self._jobs.get(job_id)
            if job is None:
                return 404, _error("notFound", f"Fine-tuning job '{job_id}' was not found."), None
            status = job["status"]
            if status not in CANCELLABLE_STATES:
                message = f"Job '{job_id}' cannot be cancelled: it is already in the terminal state '{status}'."
                return 400, _error("unexpectedEntityState", message), None
            if self.cancel_delay > 0:
                self._cancels_due.setdefault(job_id, time.monotonic() + self.cancel_delay)
            else:
                _apply_status(job, "cancelled", int(time.time()))
            return 200, dict(job), None


def _route(method: str, path: str) -> tuple[str, str]:
    """Return (route kind, job id) for a request; kind is "unknown" for anything Azure would 404.

    The v1 API's paths (`/openai/v1/fine_tuning/jobs...`, served without an api-version) are the same routes.
    """
    if path.startswith(V1_PREFIX):
        path = "/openai/" + path[len(V1_PREFIX) :]
    if not path.startswith("/openai/fine_tuning/jobs"):
        return "unknown", ""
    rest = path[len("/openai/fine_tuning/jobs") :]
    if not rest:
        if method == "POST":
            return "create", ""
        return ("list", "") if method == "GET" else ("unknown", "")
    parts = rest.split("/")
    if parts[0] != "" or not parts[1]:
        return "unknown", ""
    if len(parts) == 2 and method == "GET":
        return "get", parts[1]
    if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
        return "cancel", parts[1]
    return "unknown", ""


def latency_from_milliseconds(median_ms: float, fixed_ms: float | None = None, sigma: float = 0.5) -> Latency | None:
    """A Latency from milliseconds, the fixed part a third of the median unless given; None for a median of 0."""
    if median_ms <= 0:
        return None
    fixed = median_ms / 3 if fixed_ms is None else fixed_ms
    return Latency(fixed=fixed / 1000, median=median_ms / 1000, sigma=sigma)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM, printing one ready line with its endpoint as JSON."""
    parser = argparse.ArgumentParser(prog="python -m devstack.openai_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="the accepted api-key (random if omitted)")
    parser.add_argument(
        "--job", action="append", default=[], metavar="ID[=STATUS]", help="seed a job (default status: running)"
    )
    parser.add_argument("--no-request-log", action="store_true", help="do not keep a request log (benchmarks)")
    parser.add_argument("--latency-median-ms", type=float, default=0.0, help="median answer time (default 0: at once)")
    parser.add_argument("--latency-fixed-ms", type=float, default=None, help="fixed part of it (default: a third)")
    parser.add_argument("--latency-sigma", type=float, default=0.5, help="lognormal shape of the rest (default 0.5)")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_SECOND", help="requests/s, then 429")
    parser.add_argument("--rate-burst", type=float, default=None, help="token bucket size (default: a second's worth)")
    args = parser.parse_args(argv)
    api_key = args.api_key or secrets.token_hex(16)
    sim = FineTuningSimulator(
        api_key=api_key,
        host=args.host,
        port=args.port,
        record_requests=not args.no_request_log,
        latency=latency_from_milliseconds(args.latency_median_ms, args.latency_fixed_ms, args.latency_sigma),
        rate_limit=RateLimit(args.rate_limit, burst=args.rate_burst) if args.rate_limit else None,
    )
    for spec in args.job:
        job_id, _, status = spec.partition("=")
        sim.create_job(job_id=job_id, status=status or "running")
    return serve_until_signalled(
        sim, "openai-sim", lambda: {"AZURE_OPENAI_ENDPOINT": sim.endpoint, "api_key": api_key, "port": sim.port}
    )


if __name__ == "__main__":
    sys.exit(main())
