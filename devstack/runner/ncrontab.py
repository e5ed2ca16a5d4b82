"""Timer schedules: the six-field NCRONTAB expressions of the host's timer trigger, as far as the runner reads them."""

from __future__ import annotations

import time

from devstack.runner.errors import RunnerError


class NcrontabSchedule:
    """A six-field NCRONTAB expression (`{second} {minute} {hour} {day} {month} {day-of-week}`), as the host's
    timer trigger reads it (azure-webjobs-sdk-extensions `TimerTriggerAttribute`, NCrontab `CrontabSchedule`):
    `*`, `a`, `a-b`, `*/n`, `a-b/n` and lists. Names (`Mon`, `Jan`) and TimeSpan schedules are refused here.
    """

    _RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))

    def __init__(self, fields: tuple[frozenset[int], ...]) -> None:
        self._fields = fields

    @classmethod
    def parse(cls, expression: str, *, where: str) -> NcrontabSchedule:
        parts = expression.split()
        if len(parts) != 6:
            raise RunnerError(f"{where}: timer schedule '{expression}' is not six NCRONTAB fields")
        try:
            return cls(tuple(cls._field(part, low, high) for part, (low, high) in zip(parts, cls._RANGES, strict=True)))
        except ValueError as err:
            raise RunnerError(f"{where}: timer schedule '{expression}' is not one the local runner reads") from err

    @staticmethod
    def _field(text: str, low: int, high: int) -> frozenset[int]:
        values: set[int] = set()
        for item in text.split(","):
            span, _, step = item.partition("/")
            first, last = (low, high) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
            if not low <= first <= last <= high:
                raise ValueError(item)
            values.update(range(first, last + 1, int(step) if step else 1))
        return frozenset(values)

    def matches(self, moment: time.struct_time) -> bool:
        second, minute, hour, day, month, weekday = self._fields
        return (
            moment.tm_sec in second
            and moment.tm_min in minute
            and moment.tm_hour in hour
            and moment.tm_mday in day
            and moment.tm_mon in month
            and (moment.tm_wday + 1) % 7 in weekday  # NCRONTAB: Sunday is 0
        )
