// Command pulumi-language-python is the Python language host for the test-only Pulumi
// engine that .ci/pulumi-cli.sh builds.
//
// Why it is ours: the Go module proxy serves Pulumi's pkg/v3 and sdk/v3 modules (the CLI and
// engine), but not the module of Pulumi's own Python language host, so this file is the thin
// gRPC glue between the engine and the parts that are Pulumi's and do ship in sdk/v3:
//   - python/toolchain: resolves the `toolchain: uv` runtime option, runs `uv sync --inexact`
//     and the virtualenv's python, exactly as Pulumi's host does;
//   - python/cmd/pulumi-language-python-exec: the runner that connects the program to the
//     engine (installed next to this binary by .ci/pulumi-cli.sh).
//
// It implements what `pulumi preview/up/refresh/destroy` call: Handshake, GetPluginInfo,
// GetRequiredPlugins/Packages (none: plugins load on demand, and automatic plugin downloads
// are off in the tests) and Run. Everything else answers Unimplemented. See docs/testing.md
// ("Real engine") for what this leaves out.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// The runner exits with this code after printing a message meant for the user; the engine
// then shows that message only, without a traceback (the same code Pulumi's runner uses).
const bailExitCode = 32

var version = "dev" // set with -ldflags "-X main.version=..."

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
	execPath      string
}

func main() {
	flag.String("tracing", "", "ignored: tracing endpoint")
	flag.String("root", "", "ignored: the engine sends the root in each request")
	flag.Parse()
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	h := &host{execPath: self + "-exec"}
	if flag.NArg() > 0 {
		h.engineAddress = flag.Arg(0)
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
	})
	if err != nil {
		fail(err)
	}
	// The engine reads the port from the first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

func (h *host) Handshake(
	_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engineAddress = req.GetEngineAddress()
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (h *host) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

// Run starts the program through the project's toolchain and reports how it ended.
func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	cmd, err := tc.Command(ctx, append([]string{h.execPath}, h.runnerArgs(req)...)...)
	if err != nil {
		return nil, err
	}
	env, err := configEnv(req)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == bailExitCode:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exitErr):
		msg := fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode())
		return &pulumirpc.RunResponse{Error: msg}, nil
	default:
		return &pulumirpc.RunResponse{Error: "could not run the Python program: " + err.Error()}, nil
	}
}

// resolveToolchain reads Pulumi.yaml's runtime options (toolchain, virtualenv) as the engine
// passes them and hands them to Pulumi's own toolchain code.
func resolveToolchain(info *pulumirpc.ProgramInfo) (toolchain.Toolchain, error) {
	opts := info.GetOptions().AsMap()
	var tc toolchain.PythonOptions
	tc.Root = info.GetRootDirectory()
	tc.ProgramDir = info.GetProgramDirectory()
	if v, ok := opts["virtualenv"].(string); ok {
		tc.Virtualenv = v
	}
	switch opts["toolchain"] {
	case nil, "":
		tc.Toolchain = toolchain.Auto
	case "uv":
		tc.Toolchain = toolchain.Uv
	case "pip":
		tc.Toolchain = toolchain.Pip
	case "poetry":
		tc.Toolchain = toolchain.Poetry
	default:
		return nil, fmt.Errorf("unsupported toolchain %v in Pulumi.yaml", opts["toolchain"])
	}
	return toolchain.ResolveToolchain(tc)
}

func (h *host) runnerArgs(req *pulumirpc.RunRequest) []string {
	var args []string
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", fmt.Sprintf("%v", req.GetDryRun()))
	add("parallel", fmt.Sprint(req.GetParallel()))
	add("organization", req.GetOrganization())
	add("root_directory", req.GetInfo().GetRootDirectory())
	program := req.GetInfo().GetEntryPoint()
	if program == "" {
		program = "."
	}
	if !filepath.IsAbs(program) {
		program = filepath.Join(req.GetInfo().GetProgramDirectory(), program)
	}
	return append(append(args, program), req.GetArgs()...)
}

// configEnv passes the stack config the way the Python SDK reads it (pulumi.runtime.config).
func configEnv(req *pulumirpc.RunRequest) ([]string, error) {
	config, err := json.Marshal(req.GetConfig())
	if err != nil {
		return nil, err
	}
	keys := req.GetConfigSecretKeys()
	if keys == nil {
		keys = []string{} // the SDK expects a JSON list
	}
	secretKeys, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	return []string{
		"PULUMI_CONFIG=" + string(config),
		"PULUMI_CONFIG_SECRET_KEYS=" + string(secretKeys),
	}, nil
}
