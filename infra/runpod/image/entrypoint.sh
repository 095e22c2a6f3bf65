#!/bin/sh
# Entrypoint of the llm-endpoint RunPod image (infra/runpod/image/Dockerfile).
#
# RunPod's REST API v2 passes a pod's `args` to the image's ENTRYPOINT and has no field to
# replace it, so this small, fixed stub is baked into the image and everything that may change
# (the bootstrap script, the proxy config) travels in the pod's environment, set by the Pulumi
# program (infra/runpod/bootstrap.py). Without that environment the pod refuses to start: it
# exits, RunPod shows it EXITED, and the provider deletes it.
set -eu
: "${LLM_ENDPOINT_BOOTSTRAP_B64:?is not set; this image is started by the llm-endpoint Pulumi program (infra/runpod)}"
umask 077
state_dir=${LLM_ENDPOINT_STATE_DIR:-/run/llm-endpoint}
mkdir -p "$state_dir"
printf '%s' "$LLM_ENDPOINT_BOOTSTRAP_B64" | base64 -d > "$state_dir/bootstrap.sh"
unset LLM_ENDPOINT_BOOTSTRAP_B64
exec bash "$state_dir/bootstrap.sh" "$@"
