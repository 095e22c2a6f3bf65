"""RunPod GPU pods serving the project's vLLM endpoint, through RunPod's REST API v2.

Modules, one job each: `errors` (what can go wrong, with messages that say what to do),
`client` (HTTP, auth, retries, deadlines; nothing about pods' lifecycle), `inputs` (the rules
for pod settings, shared by the stack config and the provider's check), `bodies` (the create and
update requests), `placement` (which candidate takes the pod), `probes` (is the pod's service
ready), `lifecycle` (create, wait, update, delete for sure), `bootstrap` (what the pod runs so
that only `/health` and `/v1/*` are reachable, with a key), `naming` (how this project's pods
are recognised), `provider` (the Pulumi dynamic provider). The optional custom pod image is
defined in `image/`.
"""
