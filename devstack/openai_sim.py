"""Local simulator of the Azure OpenAI fine-tuning API (2024-10-21): the HTTP server and its answers.

Serves `/openai/fine_tuning/jobs[/{id}[/cancel]]` over plain HTTP on loopback, answers like
Azure (gateway 401/404 bodies, `apim-request-id`/`x-request-id`/`x-ms-region` headers,
FineTuningJob and ErrorResponse bodies valid for `devstack/fine_tuning_schema.json`, and for the
upstream spec where the tests can find it). Each part has a module of its own: the routes
(`openai_sim_routes`), the jobs and their states (`openai_sim_jobs`), the error bodies
(`openai_sim_errors`), the faults it injects on purpose, scripted or random, counted by kind
(`openai_sim_faults`), and the benchmarks' latency and rate limit (`openai_sim_pacing`).
Run standalone with `python -m devstack.openai_sim --port N --api-key K`.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl, unquote

from devstack._http import AppHandler, BackgroundServer, EmulatorServer, QuietHandler
from devstack.openai_sim_errors import (
    KEYS_DISABLED_MESSAGE,
    NON_JSON_BODY,
    NOT_FOUND_BYTES,
    RESOURCE_NOT_FOUND_BODY,
    TOKEN_REFUSED_MESSAGE,
    UNAUTHORIZED_BYTES,
    error,
    error_body,
)
from devstack.openai_sim_faults import FAULT_KINDS, Fault, FaultPlan
from devstack.openai_sim_jobs import DEFAULT_MODEL, JOB_STATES, JobStore, NotCancellable, new_id, new_job
from devstack.openai_sim_pacing import (
    THROTTLED_MESSAGE,
    Latency,
    RateLimit,
    latency_from_milliseconds,
    throttled_response_headers,
)
from devstack.openai_sim_routes import SUPPORTED_API_VERSIONS, V1_PREFIX, route
from devstack.processes import serve_until_signalled

# Imported from here by the tests, the stack and the benchmarks.
__all__ = ["DEFAULT_MODEL", "FAULT_KINDS", "JOB_STATES", "RESOURCE_NOT_FOUND_BODY", "FaultPlan", "FineTuningSimulator"]
__all__ += ["Latency", "RateLimit", "RequestRecord", "error_body", "latency_from_milliseconds"]


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
        faults: FaultPlan | None = None,
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
        self.store = JobStore()
        self.faults = faults if faults is not None else FaultPlan()
        self._lock = threading.Lock()
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

    # --- seeding (the job store's, kept here for the tests and the stack) ------------------

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
        job = new_job(
            job_id=job_id or new_id("ftjob-"), model=model, training_file=new_id("file-"), status=status, suffix=suffix
        )
        if created_at is not None:
            job["created_at"] = created_at
        return self.store.add(job)

    def set_status(self, job_id: str, status: str) -> None:
        """Move a job to another status, dropping a cancel still under way (KeyError for an unknown job)."""
        self.store.set_status(job_id, status)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Return a copy of one job, or None."""
        return self.store.job(job_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Return copies of all jobs, oldest first."""
        return self.store.jobs()

    # --- faults (the fault plan's, kept here for the tests) --------------------------------

    def fail_next(self, n: int = 1, **fault: Any) -> None:
        """Misbehave on the next n matching requests: see FaultPlan.fail_next."""
        self.faults.fail_next(n, **fault)

    @property
    def pending_faults(self) -> int:
        """Return how many scripted fault applications are still queued."""
        return self.faults.pending

    def clear_faults(self) -> None:
        """Forget all scripted faults."""
        self.faults.clear()

    def set_fault_rate(self, probability: float, **options: Any) -> None:
        """Fail each request with this probability (0: off), in a random kind: see FaultPlan.set_rate."""
        self.faults.set_rate(probability, **options)

    def fault_counts(self) -> dict[str, int]:
        """The faults injected so far, by kind (FAULT_KINDS names, and "scripted")."""
        return self.faults.counts()

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
        kind, job_id = route(method, path)
        response = self._throttled()
        if response is None:
            fault = self.faults.take(method, path)
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
        return self._json(429, error("429", THROTTLED_MESSAGE), throttled_response_headers(wait))

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
            body = NON_JSON_BODY
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
            return _Response(404, NOT_FOUND_BYTES, self._headers(), "application/json")
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
                return self._json(403, error("AuthenticationTypeDisabled", KEYS_DISABLED_MESSAGE), None)
            if api_key == self.api_key:
                return None
        elif scheme.lower() == "bearer" and token:
            if self.token_verifier is not None and self.token_verifier(token.strip()):
                return None
            return self._json(401, error("PermissionDenied", TOKEN_REFUSED_MESSAGE), None)
        return _Response(401, UNAUTHORIZED_BYTES, self._headers(), "application/json")

    def _create(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """POST /fine_tuning/jobs."""
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return 400, error("invalidPayload", "The request body must be a JSON object."), None
        for field in ("model", "training_file"):
            value = request.get(field)
            if not isinstance(value, str) or not value:
                return 400, error("invalidPayload", f"The field '{field}' is required.", target=field), None
        hyperparameters = request.get("hyperparameters")
        seed = request.get("seed")
        job = new_job(
            job_id=new_id("ftjob-"),
            model=request["model"],
            training_file=request["training_file"],
            status="pending",
            validation_file=request.get("validation_file") if isinstance(request.get("validation_file"), str) else None,
            hyperparameters=hyperparameters if isinstance(hyperparameters, dict) else None,
            suffix=request.get("suffix") if isinstance(request.get("suffix"), str) else None,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )
        payload = self.store.add(job)
        return 201, payload, {"location": f"{self.endpoint}/openai/fine_tuning/jobs/{job['id']}"}

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any], None]:
        """GET /fine_tuning/jobs, newest first, paged by `after` and `limit`."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return 400, error("invalidPayload", "limit must be an integer from 1 to 100.", target="limit"), None
        after = query.get("after")
        try:
            page, has_more = self.store.page(after=after, limit=limit)
        except KeyError:
            return 404, error("notFound", f"Fine-tuning job '{after}' was not found."), None
        return 200, {"object": "list", "data": page, "has_more": has_more}, None

    def _get(self, job_id: str) -> tuple[int, dict[str, Any], None]:
        """GET /fine_tuning/jobs/{id}."""
        job = self.store.job(job_id)
        if job is not None:
            return 200, job, None
        return 404, error("notFound", f"Fine-tuning job '{job_id}' was not found."), None

    def _cancel(self, job_id: str) -> tuple[int, dict[str, Any], None]:
        """POST /fine_tuning/jobs/{id}/cancel: 200 with the job, cancelled now or after cancel_delay."""
        try:
            return 200, self.store.cancel(job_id, delay=self.cancel_delay), None
        except KeyError:
            return 404, error("notFound", f"Fine-tuning job '{job_id}' was not found."), None
        except NotCancellable as err:
            message = f"Job '{job_id}' cannot be cancelled: it is already in the terminal state '{err.status}'."
            return 400, error("unexpectedEntityState", message), None


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
