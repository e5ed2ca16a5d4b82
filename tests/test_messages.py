"""CONTRACT sections 2 and 4: which job ids and queue message bodies are accepted."""

from __future__ import annotations

import base64
import json

import pytest

from shared.records import InvalidRequest, parse_queue_message, validate_correlation_id, validate_job_id

JOB = "ftjob-0f4191f0c59a4256b7a797a3d9eed219"


@pytest.mark.parametrize("job_id", [JOB, "ft-72a2792ef7d24ba7b82c7fe4a37e379f", "ftjob-a", "ftjob-" + "A" * 64])
def test_valid_job_ids(job_id: str) -> None:
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "ftjob-",
        "ftjob-" + "a" * 65,
        "job-abc",
        "FTJOB-abc",
        "ftjob-abc/../def",
        "ftjob-abc/cancel",
        "ftjob-a.b",
        "ftjob-a?b",
        "ftjob-a#b",
        "ftjob-a%2Fb",
        "ftjob-a b",
        "ftjob-abc\n",
        "ftjob-\u00e9t\u00e9",
        "ftjob-\uff41",  # fullwidth letter: \w would take it, the contract does not
        None,
        42,
    ],
)
def test_invalid_job_ids(job_id: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_job_id(job_id)
    assert caught.value.target == "job_id"


@pytest.mark.parametrize(
    ("body", "job_id", "correlation_id"),
    [
        (JOB.encode(), JOB, None),
        (f"  {JOB}\n".encode(), JOB, None),
        (json.dumps({"job_id": JOB}).encode(), JOB, None),
        (json.dumps({"job_id": JOB, "correlation_id": "run-7", "extra": [1]}).encode(), JOB, "run-7"),
        (base64.b64encode(JOB.encode()), JOB, None),
        (base64.b64encode(json.dumps({"job_id": JOB, "correlation_id": "c"}).encode()), JOB, "c"),
    ],
)
def test_accepted_message_bodies(body: bytes, job_id: str, correlation_id: str | None) -> None:
    request = parse_queue_message(body, dequeue_count=2)
    assert (request.job_id, request.correlation_id, request.dequeue_count) == (job_id, correlation_id, 2)


@pytest.mark.parametrize(
    ("body", "readable_job_id", "target"),
    [
        (b"", "", "job_id"),
        (b"hello", "hello", "job_id"),
        (b"cancelme", "cancelme", "job_id"),  # valid base64 of binary garbage: read as text
        (b"ftjob-../../x", "ftjob-../../x", "job_id"),
        (b"\xff\xfe\x00", None, "message"),
        (b"{not json", None, "message"),
        (b"[1, 2]", "[1, 2]", "job_id"),  # not an object: read as a bare (bad) job id
        (b'{"id": "ftjob-abc"}', None, "job_id"),
        (b'{"job_id": 12}', None, "job_id"),
        (b'{"job_id": "ftjob-a/b"}', "ftjob-a/b", "job_id"),
        (json.dumps({"job_id": JOB, "correlation_id": "x" * 129}).encode(), JOB, "correlation_id"),
        (json.dumps({"job_id": JOB, "correlation_id": "tab\there"}).encode(), JOB, "correlation_id"),
        (base64.b64encode(b"ftjob-a.b"), "ftjob-a.b", "job_id"),
        (b"x" * 5000, "x" * 200, "job_id"),  # offending text is cut to 200 characters
    ],
)
def test_rejected_message_bodies(body: bytes, readable_job_id: str | None, target: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_queue_message(body, dequeue_count=1)
    assert caught.value.target == target
    assert caught.value.job_id == readable_job_id
    assert len(caught.value.message) < 300


@pytest.mark.parametrize("value", [None, "run-1", "x" * 128, "~!@#$%^&*()_+ printable"])
def test_valid_correlation_ids(value: str | None) -> None:
    assert validate_correlation_id(value) == value


def test_empty_correlation_id_is_none() -> None:
    assert validate_correlation_id("") is None


@pytest.mark.parametrize("value", ["x" * 129, "caf\u00e9", "line\nbreak", "nul\x00", 7])
def test_invalid_correlation_ids(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_correlation_id(value)
    assert caught.value.target == "correlation_id"
