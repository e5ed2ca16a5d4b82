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
    marks = {"started": started, "platform": platform, "ready": ready, "done": done}
    print(json.dumps({**marks, "app_sources": _app_sources()}), flush=True)
    return 0


def _app_sources() -> list[str]:
    """The files of the app's own modules this process loaded (function_app and shared, not the harness)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    files = (Path(getattr(module, "__file__", None) or "") for module in list(sys.modules.values()))
    return sorted(
        str(path.relative_to(repo))
        for path in files
        if path.suffix == ".py" and path.is_relative_to(repo) and path.relative_to(repo).parts[0] in ("shared", "function_app.py")
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
