#!/usr/bin/env bash
# Builds the Pulumi engine the real-engine tests drive, from Go source, into a cache:
#   bash .ci/pulumi-cli.sh        -> prints the bin directory on its last line
# The bin directory holds:
#   pulumi                         the CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
#   pulumi-language-python         the Python language host (see below)
#   pulumi-language-python-exec    the program runner the language host starts
#   pulumi-resource-pulumi-python  the dynamic-provider launcher (`python -m pulumi.dynamic`)
# The last three come from the sdk/v3 module at the same version as the CLI; see
# docs/testing.md ("Real engine") and docs/facts/pulumi.md ("Building the CLI").
# Reused while the version is unchanged. Without Go it says so, exits 0 and builds nothing:
# the real-engine tests then skip with that reason (tests/support/pulumi_cli.py).
# This is for tests only: people who deploy install the released CLI (README).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

version="$(tr -d '[:space:]' <.ci/pulumi-cli.version)"
cache_root="${LLM_ENDPOINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-endpoint}"
dest="$cache_root/pulumi-$version"
bin="$dest/bin"

if [ -f "$dest/complete" ] && [ "$(cat "$dest/complete")" = "$version" ]; then
  echo "pulumi-cli: reusing Pulumi $version built earlier in $bin"
  echo "$bin"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "pulumi-cli: no Go toolchain on PATH, so the Pulumi CLI $version is not built;" \
    "the real-engine tests will be skipped (install Go >= 1.26 to run them)" >&2
  exit 0
fi

started=$SECONDS
rm -rf "$dest"
mkdir -p "$dest/src" "$bin"
src="$dest/src"

# pkg/v3's go.mod replaces sdk/v3 with ../sdk, so `go install pkg/...@v` refuses it; a
# wrapper module requires both at one version and repeats pkg's non-local replace lines.
cat >"$src/go.mod" <<EOF
module llm-endpoint/pulumi-cli

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$version
	github.com/pulumi/pulumi/sdk/v3 v$version
)
EOF
# Keeps pkg/v3 required through `go mod tidy` (which reads files of every build tag).
cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
EOF
mkdir -p "$src/langhost"
cp .ci/pulumi-language-python/main.go "$src/langhost/main.go"
(
  cd "$src"
  go mod download "github.com/pulumi/pulumi/pkg/v3@v$version" "github.com/pulumi/pulumi/sdk/v3@v$version"
  pkg_mod="$(go mod download -json "github.com/pulumi/pulumi/pkg/v3@v$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  # Non-local replaces only: `=> ../x` points into Pulumi's own repository.
  grep -E '^replace .* => [^.]' "$pkg_mod" >>go.mod || true
  go mod tidy
  ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$version"
  echo "pulumi-cli: go build github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$version" >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  echo "pulumi-cli: go build the language host (.ci/pulumi-language-python)" >&2
  go vet ./langhost
  go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$bin/pulumi-language-python" ./langhost
)
# The program runner and the dynamic-provider launcher are scripts in sdk/v3 at python/cmd and
# python/dist; the engine looks for plugins next to the `pulumi` binary first.
sdk_dir="$(cd "$src" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)"
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$bin/"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$bin/"
echo "pulumi-cli: built Pulumi $version into $bin in $((SECONDS - started)) s"
echo "$version" >"$dest/complete"
echo "$bin"
