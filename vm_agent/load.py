"""Fetch the agent's code from instance metadata before systemd starts it.

Installed by cloud-init as /usr/local/lib/llm-endpoint/load_agent.py and run as the agent
unit's ExecStartPre (`python3 -I load_agent.py /run/llm-endpoint/agent.zip`), so every start of
the agent runs the code the stack declares now (`llm-endpoint-agent`: a base64 zip), and an
update of it is, like the rest of the runtime, a metadata change, not a new VM. Standard library
only. LLM_ENDPOINT_METADATA_URL overrides the server (tests).
"""

from __future__ import annotations

import base64
import os
import sys
import urllib.request
import zipfile

URL = os.environ.get(
    "LLM_ENDPOINT_METADATA_URL", "http://metadata.google.internal/computeMetadata/v1"
)


def main(target: str) -> int:
    req = urllib.request.Request(  # noqa: S310 (the metadata server's fixed URL)
        f"{URL}/instance/attributes/llm-endpoint-agent", headers={"Metadata-Flavor": "Google"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        data = base64.b64decode(resp.read(), validate=True)
    tmp = f"{target}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    with zipfile.ZipFile(tmp) as bundle:
        bad = bundle.testzip()
        if bad is not None or "vm_agent/__main__.py" not in bundle.namelist():
            print(f"llm-endpoint: the agent bundle in metadata is damaged ({bad})", file=sys.stderr)
            return 1
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
