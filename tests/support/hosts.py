"""host.json settings for runner tests: batches small and polling fast, so a retry or a batch takes milliseconds."""

from __future__ import annotations

from devstack.runner import HostSettings

FAST_HOST = HostSettings(
    route_prefix="api",
    message_encoding="none",
    max_dequeue_count=3,
    visibility_timeout=0,
    batch_size=4,
    new_batch_threshold=2,
    max_polling_interval=0.2,
)
