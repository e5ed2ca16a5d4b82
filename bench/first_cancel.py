"""A cold start's child: `python -m bench.first_cancel ours|naive JOB_ID` sets up one case and cancels once.

Prints CLOCK_MONOTONIC marks as JSON: when its code started, when azure-functions was imported
(ours only: the Functions worker has it loaded before it imports `function_app`), when the case
was set up, and when the first cancel returned. Imports nothing else of its own, so both kinds
start the same way.
"""

import json
import sys
import time


def main(kind: str, job_id: str) -> int:
    started = time.monotonic()
    if kind == "ours":
        import azure.functions  # noqa: F401 - timed apart: the worker's library, not the app's
    platform = time.monotonic()
    from bench.cases import build_case

    case = build_case(kind)
    ready = time.monotonic()
    case.thread_cancel()(job_id)
    done = time.monotonic()
    print(json.dumps({"started": started, "platform": platform, "ready": ready, "done": done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
