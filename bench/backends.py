"""What every case runs against: the fine-tuning simulator in a process of its own, Key Vault and Azurite.

The simulator is `python -m devstack.openai_sim` with its request log off. Azurite takes the
records the app writes (one queue message per cancel, as in Azure). The Key Vault
emulator (and its managed-identity endpoint) serves from threads of the benchmark's own
process, which only waits while a case's worker process runs, so its read counter can be
asked directly. `child_environ()` is the app settings of CONTRACT section 1 pointed at both.
A second simulator serves from threads of this process too (`local_simulator`): the drain runs and
cold starts, which need its latency and rate-limit knobs, its counters and Entra token checks, and
whose own time is spent asleep rather than on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Self

from bench import load
from devstack.environment import RESULTS_QUEUE, SECRET_NAME, child_environ, emulator_app_settings
from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.processes import read_ready_line
from devstack.storage import Azurite

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key-6a1f0d93c2e84b7e9f51a3c7d2b8e046"
COGNITIVE_SERVICES_AUDIENCE = "https://cognitiveservices.azure.com"  # the audience of Entra tokens for Azure OpenAI


class Backends:
    """The simulator process and the in-process Key Vault emulator, started and stopped together."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._simulator: subprocess.Popen[str] | None = None
        self.vault = KeyVaultEmulator(workdir=workdir / "vault")
        self.azurite = Azurite(log_path=workdir / "azurite.log")
        self.local_simulator = FineTuningSimulator(
            api_key=API_KEY,
            record_requests=False,
            token_verifier=lambda token: self.vault.verify_token(token, audience=COGNITIVE_SERVICES_AUDIENCE),
        )
        self.endpoint = ""
        self.port = 0

    def __enter__(self) -> Self:
        self._simulator = subprocess.Popen(
            [sys.executable, "-m", "devstack.openai_sim", "--port", "0", "--api-key", API_KEY, "--no-request-log"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert self._simulator.stdout is not None
            ready = read_ready_line(self._simulator.stdout, "openai-sim", timeout=30)
            self.endpoint, self.port = ready["AZURE_OPENAI_ENDPOINT"], int(ready["port"])
            self.vault.start()
            self.local_simulator.start()
            self.vault.set_secret(SECRET_NAME, API_KEY)
            self.azurite.start().wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.vault.stop()
        self.local_simulator.stop()
        self.azurite.stop()
        if self._simulator is not None and self._simulator.poll() is None:
            self._simulator.terminate()
            try:
                self._simulator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._simulator.kill()
                self._simulator.wait()

    @property
    def simulator_pid(self) -> int:
        assert self._simulator is not None
        return self._simulator.pid

    def create_jobs(self, count: int) -> list[str]:
        """Cancellable jobs for one run, made over HTTP before the run starts."""
        return load.create_jobs(self.port, API_KEY, count)

    def clear_records(self) -> None:
        """Empty the results queue: Azurite's every Get and Delete scans all the messages the account holds
        (see `bench.drain.storage_op_costs`), so records left by one run would slow the runs after it."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.azurite.queue(RESULTS_QUEUE).clear_messages()
        except ResourceNotFoundError:  # no run has written a record yet
            pass

    def kv_reads(self) -> int:
        return self.vault.read_count(SECRET_NAME)

    def child_environ(self, **overrides: str) -> dict[str, str]:
        """This process's environment (without `devstack.environment.steering_variables`) plus the app settings,
        for a case's worker process."""
        settings = emulator_app_settings(
            key_vault=self.vault.environ(), openai_endpoint=self.endpoint, storage=self.azurite.connection_string
        )
        return child_environ({**settings, "PYTHONPATH": str(REPO), **overrides})
