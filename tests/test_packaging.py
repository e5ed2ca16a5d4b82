"""What a deployment carries: `.funcignore` leaves exactly the app and its domain package."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
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
    assert names == {
        "azure-functions", "azure-identity", "azure-keyvault-secrets", "azure-storage-blob", "azure-storage-queue",
        "requests", "urllib3",
    }
    assert all(">=" in line and "<" in line for line in lines)


def test_every_package_the_deployed_code_imports_is_a_runtime_requirement() -> None:
    """What `function_app.py` and `shared/` import, anywhere in a module (lazy imports too), is deployed."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    requirements = {
        line.split("#")[0].strip().split(">")[0].split("<")[0].split("=")[0].lower()
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    }
    needed: dict[str, str] = {}
    for path in [ROOT / "function_app.py", *(ROOT / "shared").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("shared", "function_app"):
                    continue
                # azure is a namespace package: the distribution is named by its second part
                key = ".".join(module.split(".")[:2]) if top == "azure" else top
                for distribution in distributions.get(top, []):
                    if top != "azure" or distribution.lower().replace("-", ".") .startswith(key):
                        needed[distribution.lower()] = f"{path.name}: {module}"
    missing = {name: where for name, where in needed.items() if name not in requirements and name != "azure-core"}
    assert not missing, f"imported by the deployed code but not in requirements.txt: {missing}"


def test_loading_the_app_leaves_the_guard_and_the_blob_sdk_unloaded() -> None:
    """A cold start that cancels loads what a cancel needs: the guard (and its blob SDK) waits for a guard function."""
    probe = (
        "import sys, azure.functions, function_app\n"
        "function_app.app.get_functions()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('shared.guard', 'azure.storage.blob'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "[]"
