"""The VM agent: makes a Google Cloud VM run what its instance metadata declares.

Standard library only (the VM has the system python3 and nothing else, and no pip). The
Pulumi program ships this package, together with infra/serving.py (also stdlib only: the one
definition of "ready" and of vLLM's environment), as a zip in the `llm-endpoint-agent`
metadata value; systemd runs it (docs/gcp-vm.md explains the life cycle).
"""
