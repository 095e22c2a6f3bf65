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


def tls(target: Target) -> str:
    text = (
        "The certificate is not trusted or does not match the name. For a self-signed "
        "certificate or a private CA, pass --ca-file CA.pem"
    )
    if is_pod(target):
        return text + "."
    return (
        text + ": the GCP VM's certificate is signed by the stack's own CA (`pulumi stack output "
        "ca_cert > ca.pem`, then --ca-file ca.pem, or --stack NAME, which reads it), or the "
        "stack serves plain HTTP (gcp.tls false: use http://)."
    )


def refused(target: Target) -> str:
    text = f"The machine answers but nothing listens on port {target.port}. "
    if is_pod(target):
        return text + "The pod may still be starting (use --wait), or the URL is not the pod's."
    return text + (
        "The VM may still be booting (its agent starts the proxy after the first boot's "
        "install: use --wait), the port may be wrong (the GCP proxy listens on 8000), or the IP "
        "belongs to another machine."
    )


def dropped(target: Target) -> str:
    if is_pod(target):
        return "RunPod's proxy did not answer: check the pod is running (RunPod console)."
    return (
        "The firewall admits only the stack's allowedSourceRanges: check that your public IP "
        "is inside them. Otherwise the VM is stopped or still booting, or the IP is not this "
        "deployment's (pulumi stack output ip)."
    )
