"""A JSON message naming the queue trigger's metadata, through the real app in the runner.

The runner overwrites the metadata as the host does (host src/WebJobs.Script/Utility.cs ApplyBindingData,
then azure.functions queue.py QueueMessageInConverter.decode), so `{"DequeueCount": 1}` makes every
delivery look like the first and `{"id": ...}` replaces the message id. The contract (CONTRACT.md §8,
"Queue metadata names") rejects such a message: one `rejected` record naming the field, nothing upstream.
"""

from __future__ import annotations

import json

import pytest

from devstack.openai_sim import FineTuningSimulator

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("field", "value"), [("DequeueCount", 1), ("id", "x"), ("dequeueCount", 1)])
def test_a_message_carrying_a_metadata_field_ends_in_one_rejected_record_naming_it(
    start_local_app, simulator: FineTuningSimulator, field: str, value: object
):
    app = start_local_app()
    job = simulator.create_job(status="running")

    app.enqueue(json.dumps({"job_id": job["id"], field: value}))

    [record] = app.wait_for_records(1)
    assert record["outcome"] == "rejected"
    assert record["error"]["target"] == field
    assert simulator.requests == []
    assert simulator.job(job["id"])["status"] == "running"
    assert app.messages_left() == 0
    assert app.messages_left(app.queue(app.requests_queue.queue_name + "-poison")) == 0
    assert app.results_queue.peek_messages() == []  # exactly one record
