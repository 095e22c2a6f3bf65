"""Where to look next, named for the kind of machine behind the endpoint.

The GCP VM runs vLLM as the systemd unit `llm-vllm.service` (container `llm-vllm`) and the proxy
as `llm-proxy.service` (container `llm-proxy`), both started by the agent
(`llm-endpoint-agent.service`), which reports its state in guest attributes: readable with the
Compute API, no SSH. A RunPod pod runs both in one container, with its logs in RunPod's console.
Hints that only make sense for one of them are never shown for the other.
"""

from __future__ import annotations

from scripts.smoke_test.target import Target

RUNPOD_PROXY_SUFFIX = ".proxy.runpod.net"


def is_pod(target: Target) -> bool:
    return target.host.endswith(RUNPOD_PROXY_SUFFIX)


def vllm_logs(target: Target) -> str:
    if is_pod(target):
        return "the pod's logs (RunPod console: the pod, then Logs), where vLLM and its proxy write"
    return (
        "vLLM's log on the VM (`sudo journalctl -u llm-vllm.service -n 200`, after `gcloud "
        "compute ssh $(pulumi stack output instance_name) --tunnel-through-iap`), or, without "
        "SSH, the agent's state (`gcloud compute instances get-guest-attributes $(pulumi stack "
        "output instance_name) --query-path=llm-endpoint/`) and the serial console (`gcloud "
        "compute instances get-serial-port-output $(pulumi stack output instance_name)`)"
    )


def redeploy(target: Target) -> str:
    if is_pod(target):
        return "run `pulumi up` again: the pod is updated and restarted"
    return (
        "run `pulumi up` again: it updates the VM in place and waits until its agent reports "
        "it serves the new settings"
    )
