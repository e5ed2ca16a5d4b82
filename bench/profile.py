"""Where a case's client time goes: `python -m bench.profile CASE --jobs FILE --text OUT`.

Cancels the jobs one at a time under pyinstrument (the profiled thread is the main one) and
splits the sampled time into owners: socket calls (kernel work and the wait for the answer), requests/urllib3/http.client,
our code (function_app.py and shared/, with the standard library it calls), azure-functions,
the benchmark's own loop. Prints one JSON line of microseconds per cancel by owner.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.cases import CASES, build_case

REPO = Path(__file__).resolve().parent.parent
SAMPLE_INTERVAL = 0.001  # pyinstrument's default; its cost is per Python call, not per sample
_STDLIB = (sysconfig.get_paths()["stdlib"], "<frozen ", "<built-in>")
_SOCKET_CALLS = ("socket.", "select.", "_ssl.")  # C calls that wait on the kernel or the peer
_SDK_PACKAGES = frozenset(
    {
        "openai",
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "h11",
        "anyio",
        "sniffio",
        "pydantic",
        "pydantic_core",
        "jiter",
        "distro",
        "typing_extensions",
        "annotated_types",
        "typing_inspection",
    }
)
OWNERS = (
    "socket send/receive",
    "requests, urllib3, http.client",
    "our code",
    "azure-functions",
    "openai SDK, httpx",
    "azure-identity, keyvault",
    "benchmark loop",
    "other",
)


def owner_of(file_path: str) -> str | None:
    """The owner of a non-stdlib frame, or None for the standard library (charged to its caller)."""
    if not file_path or file_path.startswith(_STDLIB):
        return None
    path = file_path.replace("\\", "/")
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        if package in ("requests", "urllib3", "charset_normalizer", "idna", "certifi"):
            return "requests, urllib3, http.client"
        if package == "azure":
            sub = path.split("/site-packages/azure/", 1)[1].split("/", 1)[0]
            return "azure-functions" if sub == "functions" else "azure-identity, keyvault"
        if package in _SDK_PACKAGES:
            return "openai SDK, httpx"
        return "other"
    if path.startswith(str(REPO / "bench")):
        return "benchmark loop"
    if path.startswith(str(REPO)):
        return "our code"
    return "other"


def split_by_owner(root: Any) -> Counter[str]:
    """Seconds of self time per owner: socket calls apart, stdlib frames charged to the nearest owner."""
    seconds: Counter[str] = Counter()
    stack: list[tuple[Any, str]] = [(root, "other")]
    while stack:
        frame, inherited = stack.pop()
        path = frame.file_path or ""
        owner = owner_of(path) or inherited
        if path.endswith("http/client.py"):  # stdlib, but it is the HTTP client requests runs on
            owner = "requests, urllib3, http.client"
        if path == "<built-in>" and frame.function.startswith(_SOCKET_CALLS):
            owner = "socket send/receive"
        seconds[owner] += frame.total_self_time  # includes the synthetic [self] children, skipped below
        stack.extend((child, owner) for child in frame.children if not child.is_synthetic)
    return seconds


def profile_case(case_name: str, warmup: Sequence[str], timed: Sequence[str]) -> tuple[dict[str, float], str]:
    """Microseconds per cancel by owner, and pyinstrument's text report, for one-at-a-time cancels."""
    case = build_case(case_name)
    cancel = case.thread_cancel()
    for job_id in warmup:
        cancel(job_id)
    profiler = Profiler(interval=SAMPLE_INTERVAL)
    profiler.start()
    for job_id in timed:
        cancel(job_id)
    session = profiler.stop()
    root = session.root_frame()
    seconds = split_by_owner(root) if root is not None else Counter()
    per_cancel = {owner: seconds.get(owner, 0.0) / len(timed) * 1e6 for owner in OWNERS}
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("Profile at "))
    return per_cancel, text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--jobs", type=Path, required=True, help='JSON file {"warmup": [...], "timed": [...]}')
    parser.add_argument("--text", type=Path, help="where to write pyinstrument's text report")
    args = parser.parse_args(argv)
    jobs = json.loads(args.jobs.read_text(encoding="utf-8"))
    per_cancel, text = profile_case(args.case, jobs["warmup"], jobs["timed"])
    if args.text:
        args.text.write_text(text, encoding="utf-8")
    print(json.dumps({"case": args.case, "cancels": len(jobs["timed"]), "us_per_cancel": per_cancel}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
