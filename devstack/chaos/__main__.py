"""`python -m devstack.chaos`: the chaos run from the command line (`make chaos`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import devstack.chaos as chaos
from devstack.chaos.plan import DEFAULT_LOG_DIR, DEFAULT_MESSAGES, DEFAULT_SEED, ChaosSettings
from devstack.chaos.run import run_chaos


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.chaos", description=chaos.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="queue messages (default 5000)")
    parser.add_argument("--http-cancels", type=int, help="HTTP cancels during the run (default: messages/25, >= 10)")
    parser.add_argument("--fault-rate", type=float, default=ChaosSettings.fault_rate)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--key-vault-outage", type=float, metavar="SECONDS", help="default: 6 s, 15 s past 1000 messages"
    )
    parser.add_argument("--time-limit", type=float, metavar="SECONDS", help="default: 60 s + 0.12 s per message")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    settings = ChaosSettings(
        messages=args.messages,
        http_cancels=args.http_cancels,
        fault_rate=args.fault_rate,
        seed=args.seed,
        key_vault_outage_seconds=args.key_vault_outage,
        time_limit_seconds=args.time_limit,
        log_dir=args.log_dir.resolve(),
    )
    report = run_chaos(settings, output=args.output)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
