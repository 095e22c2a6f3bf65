#!/bin/sh
# Entrypoint stub of llm-endpoint RunPod pods (infra/runpod/bootstrap.py). It runs either as the
# ENTRYPOINT of the custom image (infra/runpod/image/Dockerfile), or, with the stock vLLM image,
# as the pod's `entrypoint` (`sh -c <this text> llm-endpoint-entrypoint`), comment lines dropped.
# Its arguments are vLLM's. Everything that may change (the bootstrap script, the proxy config)
# travels in the pod's environment, set by the Pulumi program. Without that environment the pod
# refuses to start: it exits, RunPod shows it EXITED, and the provider deletes it.
set -eu
: "${LLM_ENDPOINT_BOOTSTRAP_B64:?is not set; this image is started by the llm-endpoint Pulumi program (infra/runpod)}"
umask 077
state_dir=${LLM_ENDPOINT_STATE_DIR:-/run/llm-endpoint}
mkdir -p "$state_dir"
printf '%s' "$LLM_ENDPOINT_BOOTSTRAP_B64" | base64 -d > "$state_dir/bootstrap.sh"
unset LLM_ENDPOINT_BOOTSTRAP_B64
exec bash "$state_dir/bootstrap.sh" "$@"
