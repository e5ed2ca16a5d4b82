"""The process entry point: `python -m devstack.runner`, the app settings taken from the environment.

    python -m devstack.runner --port 7071 --function-key KEY [--master-key KEY]

It prints the functions, then one ready line: `runner ready {"url", "api_url", "port", "master_key"}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.runner.errors import RunnerError
from devstack.runner.functions_runner import (
    DEFAULT_FUNCTION_KEY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FUNCTION_KEY_ENV,
    MASTER_KEY_ENV,
    FunctionsRunner,
)
from devstack.runner.host_config import HostSettings, load_settings_file
from devstack.runner.indexing import load_function_app
from devstack.runner.queue_listener import PROCESSING_LEASE_SECONDS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.runner",
        description="Run function_app.py locally against Azurite: a development tool that mirrors the "
        "Functions host's behaviour, not the host. App settings come from the environment.",
    )
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder of function_app.py and host.json")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--function-key",
        default=os.environ.get(FUNCTION_KEY_ENV) or DEFAULT_FUNCTION_KEY,
        help=f"key for auth level FUNCTION routes (default: ${FUNCTION_KEY_ENV} or {DEFAULT_FUNCTION_KEY})",
    )
    parser.add_argument(
        "--master-key",
        default=os.environ.get(MASTER_KEY_ENV) or None,
        help=f"key for the admin API and every route (default: ${MASTER_KEY_ENV}, else a generated one, "
        "printed in the ready line)",
    )
    parser.add_argument(
        "--settings-file", type=Path, help="a local.settings.json whose Values fill in settings the environment lacks"
    )
    parser.add_argument(
        "--visibility-timeout", type=float, metavar="SECONDS", help="test knob: overrides host.json's visibilityTimeout"
    )
    parser.add_argument(
        "--max-polling-interval",
        type=float,
        metavar="SECONDS",
        help="test knob: overrides host.json's maxPollingInterval",
    )
    parser.add_argument(
        "--processing-lease",
        type=float,
        default=PROCESSING_LEASE_SECONDS,
        metavar="SECONDS",
        help="test knob: how long a received message stays hidden, renewed halfway (the host's: 600)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Nothing turned down here: the worker logs everything at INFO, and the app quiets the SDKs itself
    # (shared/sdk_logging.py), so what this shows is what Application Insights gets.

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.settings_file:
            for name, value in load_settings_file(args.settings_file).items():
                os.environ.setdefault(name, value)
        runner = FunctionsRunner(
            load_function_app(args.app_dir),
            host_settings=HostSettings.from_host_json(args.app_dir / "host.json"),
            host=args.host,
            port=args.port,
            function_key=args.function_key,
            master_key=args.master_key,
            visibility_timeout=args.visibility_timeout,
            max_polling_interval=args.max_polling_interval,
            processing_lease=args.processing_lease,
        ).start()
    except (RunnerError, OSError) as err:
        print(f"runner: {err}", file=sys.stderr, flush=True)
        return 1
    print("Functions:", flush=True)
    for line in runner.describe():
        print("    " + line, flush=True)
    print(
        "runner ready " + json.dumps(
            {"url": runner.base_url, "api_url": runner.api_url, "port": runner.port, "master_key": runner.master_key}
        ),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
