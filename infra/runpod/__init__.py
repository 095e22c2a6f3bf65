"""RunPod GPU pods serving the project's vLLM endpoint, through RunPod's REST API v2.

Modules, one job each: `errors` (what can go wrong, with messages that say what to do),
`client` (HTTP, auth, retries; nothing about pods' lifecycle), `lifecycle` (placing a pod,
waiting until it serves, deleting it for sure), `bootstrap` (what the pod runs so that only
`/health` and `/v1/*` are reachable, with a key), `naming` (how this project's pods are
recognised), `provider` (the Pulumi dynamic provider). The pod image (the pinned vLLM image,
nginx and an entrypoint stub) is defined in `image/`.
"""
