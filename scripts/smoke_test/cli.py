"""`python -m scripts.smoke_test TARGET`: check a deployed endpoint from the outside."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.smoke_test import checks
from scripts.smoke_test.readiness import Clock, Progress, Sleep, check_ready
from scripts.smoke_test.report import MIN_KEY_LENGTH, RedactingWriter, Report
from scripts.smoke_test.results import CheckResult, ExitCode, Status
from scripts.smoke_test.stack import read_outputs, select_endpoint
from scripts.smoke_test.target import DEFAULT_PORT, Target, UsageError, check_port, parse_target
from scripts.smoke_test.transport import Resolver, make_session, resolve

KEY_ENV = "VLLM_API_KEY"
DEFAULT_TIMEOUT_S = 20.0
_PRINTABLE_KEY = frozenset(map(chr, range(0x21, 0x7F)))
# Never names or measures the key itself: the message goes to the terminal.
SHORT_KEY = (
    f"the API key is too short to be a deployment's: keys under {MIN_KEY_LENGTH} characters "
    "are refused, and the deployments use keys of 32 or more characters. Check that the whole "
    "key was copied: `pulumi stack output api_key --show-secrets`, or use --stack NAME"
)

EPILOG = f"""\
checks, in order: 1 reachable, 2 GET /health is 200, 3 /v1/models refuses a missing or
wrong key, 4 /invocations, /metrics and /tokenize refuse requests without a key, 5 the
model is served, 6 /v1/completions returns text, 7 a streamed chat ends with [DONE].

exit codes: 0 every check passed, 1 a check failed, 2 usage error (nothing was sent),
3 not reachable, or not ready within --wait.

The key is read from --api-key, else the stack (--stack), else ${KEY_ENV}. Prefer the
environment variable: a command-line argument is visible to other users in the process list.
Keys under {MIN_KEY_LENGTH} characters are refused (the deployments' keys have 32 or more).
--timeout bounds each request as a whole: connecting, the answer, and a stream until [DONE].
A bare address or name means http on port {DEFAULT_PORT} (the GCP VM's proxy)."""


@dataclass
class Deps:
    """What tests replace: the environment, DNS, and time."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    resolver: Resolver = resolve
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.smoke_test",
        description="Check a deployed LLM endpoint from the outside: reachable, healthy, "
        "locked with its key, nothing else open, serving its model, streaming.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # so `--api` cannot be a hidden alias that escapes redaction
    )
    parser.add_argument(
        "target",
        nargs="?",
        help="IPv4 or IPv6 address, host name, or http(s)://HOST[:PORT] URL "
        "(optional with --stack)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"port for a bare address or name (default {DEFAULT_PORT}); a URL's own port wins",
    )
    parser.add_argument("--api-key", help=f"the endpoint's key (default: ${KEY_ENV})")
    parser.add_argument(
        "--model", help="model that must be served (default: exactly one must be served)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying until the endpoint is ready, up to SECONDS (default 0: check once)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="bound on each request as a whole, reading its answer or stream included "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report, not a table")
    parser.add_argument(
        "--stack",
        metavar="NAME",
        help="read endpoint, key and model from `pulumi stack output` of stack NAME",
    )
    parser.add_argument(
        "--index",
        type=int,
        metavar="N",
        help="with --stack: which endpoint to check, 0-based: the GCP `endpoint` first, then "
        "`runpod_endpoints` in order (default 0)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="CA certificate(s) (PEM) to verify an https:// endpoint with",
    )
    return parser


def _secrets_in_argv(argv: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i, arg in enumerate(argv):
        if arg == "--api-key" and i + 1 < len(argv):
            found.add(argv[i + 1])
        elif arg.startswith("--api-key="):
            found.add(arg.split("=", 1)[1])
    return found


def _short_key_in_argv(argv: Sequence[str]) -> bool:
    """Whether the command line gives a key too short to redact. Checked before argparse runs,
    because argparse echoes stray arguments (`--api-key KEY KEY`) in its complaints. A value
    that starts with "-" is not one argparse would take as the key."""
    for i, arg in enumerate(argv):
        if arg == "--api-key" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            key = argv[i + 1]
        elif arg.startswith("--api-key="):
            key = arg.split("=", 1)[1]
        else:
            continue
        if 0 < len(key) < MIN_KEY_LENGTH:
            return True
    return False


@dataclass(frozen=True)
class Options:
    target: Target
    api_key: str
    model: str | None
    wait_s: float
    timeout_s: float
    as_json: bool
    verify: bool | str
    stack: dict[str, Any] | None


def parse_options(
    argv: Sequence[str], deps: Deps, parser: argparse.ArgumentParser, secrets: set[str]
) -> Options:
    """Validated options; every problem is a usage error raised before any request is sent."""
    args = parser.parse_args(argv)
    if args.target is None and args.stack is None:
        raise UsageError("give a TARGET (address, host name or URL), or --stack NAME")
    if args.index is not None and args.stack is None:
        raise UsageError("--index picks one of a stack's endpoints; it needs --stack NAME")
    if args.port is not None:
        check_port(args.port)
    if args.wait < 0:
        raise UsageError("--wait must be 0 (check once) or a number of seconds")
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")

    stack_info: dict[str, Any] | None = None
    stack_ca: str | None = None
    url = args.target
    key = args.api_key
    model = args.model
    if args.stack is not None:
        chosen = select_endpoint(read_outputs(args.stack, deps.env), args.stack, args.index or 0)
        if chosen.api_key:
            secrets.add(chosen.api_key)
        url = url if url is not None else chosen.url
        key = key or chosen.api_key
        model = model or chosen.model
        stack_info = {"name": args.stack, "index": chosen.index, "count": chosen.count}
        stack_ca = chosen.ca_cert
    target = parse_target(url, args.port)
    key = key or deps.env.get(KEY_ENV)
    if not key:
        raise UsageError(
            f"no API key: set {KEY_ENV} (preferred), pass --api-key, or use --stack NAME"
        )
    secrets.add(key)
    if len(key) < MIN_KEY_LENGTH:
        raise UsageError(SHORT_KEY)
    if not set(key) <= _PRINTABLE_KEY:
        raise UsageError(
            "the API key contains spaces or control characters, so it cannot be sent in an "
            "Authorization header; check how it was copied"
        )
    verify: bool | str = True
    if args.ca_file is not None:
        if target.scheme != "https":
            raise UsageError("--ca-file verifies https:// endpoints; this target is http://")
        if not Path(args.ca_file).is_file():
            raise UsageError(f"--ca-file {args.ca_file}: no such file")
        verify = args.ca_file
    elif stack_ca is not None and target.scheme == "https":
        verify = _ca_file(stack_ca)  # the stack's own CA, as --ca-file would give it
    return Options(
        target=target,
        api_key=key,
        model=model,
        wait_s=args.wait,
        timeout_s=args.timeout,
        as_json=args.json,
        verify=verify,
        stack=stack_info,
    )


def _progress_writer() -> Progress:
    def progress(message: str) -> None:
        stream = sys.stderr
        if stream.isatty():
            stream.write("\r\x1b[2K" + message)
        else:
            stream.write(message + "\n")
        stream.flush()

    return progress


def run(options: Options, deps: Deps) -> Report:
    session = make_session(options.verify)
    with session:
        readiness = check_ready(
            session,
            options.target,
            timeout=options.timeout_s,
            wait_s=options.wait_s,
            resolver=deps.resolver,
            clock=deps.clock,
            sleep=deps.sleep,
            progress=_progress_writer(),
        )
        if readiness.attempts > 1 and sys.stderr.isatty():
            sys.stderr.write("\n")
        results: list[CheckResult] = [readiness.reachability, readiness.health]
        if readiness.not_ready:
            reached = readiness.reachability.status is Status.PASS
            reason = "endpoint not ready" if reached else "endpoint not reachable"
            results.extend(_skipped(n, reason) for n in range(3, 8))
            exit_code = ExitCode.NOT_READY
        else:
            ep = checks.Endpoint(session, options.target, options.api_key, options.timeout_s)
            results.append(checks.check_auth(ep))
            results.append(checks.check_open_paths(ep))
            models_result, model = checks.check_models(ep, options.model)
            results.append(models_result)
            if model is None:
                results.extend(_skipped(n, "no model to query (check 5)") for n in (6, 7))
            else:
                results.append(checks.check_completion(ep, model))
                results.append(checks.check_stream(ep, model))
            failed = any(r.status is Status.FAIL for r in results)
            exit_code = ExitCode.CHECK_FAILED if failed else ExitCode.OK
    return Report(
        endpoint=options.target.base_url,
        expected_model=options.model,
        checks=results,
        exit_code=exit_code,
        waited_s=readiness.waited_s,
        stack=options.stack,
    )


_SKIPPED = {
    3: ("auth", "Key required on /v1"),
    4: ("open_paths", "Nothing else open"),
    5: ("models", "Model served"),
    6: ("completion", "Completion has text"),
    7: ("stream", "Streamed chat ends [DONE]"),
}


def _skipped(number: int, reason: str) -> CheckResult:
    name, title = _SKIPPED[number]
    return CheckResult(number, name, title, Status.SKIP, 0.0, f"skipped: {reason}")


def main(argv: Sequence[str] | None = None, deps: Deps | None = None) -> int:
    """Run the smoke test; returns the exit code (see EPILOG)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    deps = deps or Deps()
    secrets = _secrets_in_argv(argv)
    env_key = deps.env.get(KEY_ENV)
    if env_key:
        secrets.add(env_key)
    out = RedactingWriter(sys.stdout, secrets)
    err = RedactingWriter(sys.stderr, secrets)
    with redirect_stdout(out), redirect_stderr(err):
        parser = build_parser()
        try:
            if _short_key_in_argv(argv):
                raise UsageError(SHORT_KEY)
            options = parse_options(argv, deps, parser, secrets)
        except SystemExit as stop:  # argparse: --help (0) or a malformed command line (2)
            return stop.code if isinstance(stop.code, int) else ExitCode.USAGE
        except UsageError as problem:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"{parser.prog}: error: {problem}\n")
            return ExitCode.USAGE
        report = run(options, deps)
        sys.stdout.write(report.render(options.as_json))
        sys.stdout.flush()
        return report.exit_code


def _ca_file(pem: str) -> str:
    """The stack's CA certificate (public) in a file, for requests' `verify`."""
    fd, path = tempfile.mkstemp(prefix="llm-endpoint-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write(pem)
    return path
