"""The hypothesis settings of the property tests over the real handlers: reproducible, no example database."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
