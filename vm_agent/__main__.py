"""`python3 -m vm_agent` (systemd's llm-endpoint-agent.service)."""

from __future__ import annotations

import sys
import time

from vm_agent.agent import Agent
from vm_agent.gce import Metadata, SecretManager
from vm_agent.host import SystemHost


class _SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def main() -> int:
    metadata = Metadata()
    agent = Agent(SystemHost(), metadata, SecretManager(metadata), _SystemClock())
    agent.console("starting")
    print(f"llm-endpoint-agent: stopped: {agent.run()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
