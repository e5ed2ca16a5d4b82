"""The chaos run: the whole local stack under injected faults, checked message by message.

Azurite (a child process, data on disk) and the Functions runner (a child process running
`function_app.py`) run as in `make run`; the Azure OpenAI simulator and the Key Vault emulator run
in this process, so faults can be switched on and off. A known mix of queue messages is enqueued
(running jobs as bare ids, JSON and base64; finished, missing and invalid ones) and some jobs are
cancelled over HTTP meanwhile. While they are processed the simulator fails a share of upstream
calls (429 with `retry-after` and with `retry-after-ms`, 500, 503, an answer later than the
timeout, a dropped connection), Key Vault is down for a window longer than the api-key cache, and
Azurite is stopped and started again on the same port and data folder.

Then every message and request is checked against the outcome expected for it: lost (no record),
duplicates (more than one record for one request id), poison-queue messages, records with an
unexpected outcome, running jobs the simulator does not show cancelled, and the api-key (and every
bearer token the identity emulator issued) searched in every record, HTTP response, log file and
line printed. The run stops by itself: when every message and request has its record, or when its
time limit is up (then it fails, saying how far it got).

One module per job: the plan (`plan`: the settings, the mix of messages, the faults), the drivers
(`drivers`: sending the messages and HTTP cancels, the Key Vault outage, the Azurite restart;
`storage`: the run's Azurite clients and the record collector), the judge (`judge`: losses,
duplicates, unexpected outcomes, leaks; `report`: the figures and the summary lines) and the run
that ties them together (`run`).

    python -m devstack.chaos --messages 5000 --output docs/chaos/last-run.json    # make chaos
"""

from devstack.chaos.plan import ChaosSettings
from devstack.chaos.report import ChaosReport
from devstack.chaos.run import ChaosRun, run_chaos

__all__ = ["ChaosReport", "ChaosRun", "ChaosSettings", "run_chaos"]
