"""What a deployment carries: `.funcignore` leaves exactly the app and its domain package."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOYED_TOP_LEVEL = {"function_app.py", "host.json", "requirements.txt", "shared"}


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.rstrip("/") in parts[:-1]:
                return True
        elif fnmatch.fnmatch(parts[-1], pattern) or fnmatch.fnmatch(path, pattern):
            return True
    return False


def test_funcignore_leaves_only_the_app_and_shared() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    deployed = {path.split("/")[0] for path in tracked if not _ignored(path, patterns)}
    assert deployed == DEPLOYED_TOP_LEVEL


def test_runtime_requirements_are_bounded_and_minimal() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    ]
    names = {line.split(">")[0].split("<")[0].split("=")[0] for line in lines}
    assert names == {"azure-functions", "azure-identity", "azure-keyvault-secrets", "azure-storage-blob", "requests"}
    assert all(">=" in line and "<" in line for line in lines)
