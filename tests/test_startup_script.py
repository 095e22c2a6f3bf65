"""The VM startup script, run for real under bash in a sandbox.

Recording stubs stand in for the system commands it calls (apt-get, curl, docker, nvidia-smi,
systemctl, gpg, poweroff, sleep, date, ...); every other command it uses goes through a
recording wrapper around the real tool, and PATH holds nothing else, so every command line the
script runs is in the record. `LLM_ROOT` points the script's system paths into the sandbox and
time is a fake clock that only the `sleep` stub advances.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import requests

from infra import config as stack_config
from infra.proxy_config import PROXY_IMAGE, render_auth_include, render_proxy_config
from infra.serving import MIN_NVIDIA_DRIVER_MAJOR, VLLM_IMAGE, ServingSpec
from infra.startup_script import (
    DEAD_GRACE_MINUTES,
    DOCKER_APT_KEY_FINGERPRINT,
    StartupParams,
    needs_autostop,
    render_autostop_check,
    render_startup_script,
)
from tests.support.vllm_standin import StandinConfig, run_standin

API_KEY = "STUBKEY-api-0123456789-abcdefghijklmnopqrstuv"
HF_TOKEN = "hf_STUBTOKENabcdefghijklmnopqrstuvwxyz"
ACCESS_TOKEN = "ya29.STUB-ACCESS-TOKEN-0123456789"
SECRETS = (API_KEY, HF_TOKEN, ACCESS_TOKEN)
CLOCK_START = 1_800_000_000

SPEC = ServingSpec(
    model="Qwen/Qwen2.5-7B-Instruct",
    served_model_name="qwen-7b",
    max_model_len=8192,
    gpu_memory_utilization=0.9,
    tensor_parallel_size=1,
    weights_gb=15.3,
)
PARAMS = StartupParams(
    spec=SPEC,
    gcp_project="llm-endpoint-dev",
    api_key_secret="llm-dev-api-key",
    hf_token_secret=None,
)

# Tools the script may run for real, each behind a recording wrapper.
PASSTHROUGH = (
    "python3", "awk", "grep", "head", "install", "chmod", "sed", "mv", "rm", "sha256sum",
    "cat", "timeout", "nproc", "df", "dirname",
)  # fmt: skip

# The multi-call stub. It records its argv, then answers from $STUB_STATE and STUB_* variables.
# It uses only bash builtins and absolute paths, so its own work never shows up in the record.
STUB = r"""#!/bin/bash
name=${0##*/}
# One write per call: processes in a pipeline record at the same time.
line=$name; for a in "$@"; do line+=$'\t'${a//$'\n'/\\n}; done
printf '%s\n' "$line" >>"$STUB_STATE/calls.log"
S=$STUB_STATE
last=${!#}
case $name in
date)
  if [[ ${1:-} == +%s ]]; then printf '%s\n' "$(<"$S/clock")"; exit 0; fi
  exec /bin/date "$@" ;;
sleep)
  printf '%s\n' $(( $(<"$S/clock") + ${1%s} )) >"$S/clock" ;;
nvidia-smi)
  if [[ $STUB_DRIVER == broken ]]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    exit 9
  fi
  for ((i = 0; i < ${STUB_GPUS:-1}; i++)); do echo "NVIDIA A100-SXM4-40GB, $STUB_DRIVER"; done ;;
dpkg-query)
  while IFS= read -r p; do [[ $p == "$last" ]] && { printf 'install ok installed'; exit 0; }; done \
    < <([[ -f $S/dpkg ]] && printf '%s\n' "$(<"$S/dpkg")")
  echo "dpkg-query: no packages found matching $last" >&2
  exit 1 ;;
dpkg) echo amd64 ;;
apt-get)
  if [[ " $* " == *" ${STUB_APT_FAIL:-none} "* ]]; then
    echo "E: failed ($STUB_APT_FAIL)" >&2
    exit 100
  fi
  seen=
  for a in "$@"; do
    if [[ $a == install ]]; then seen=1
    elif [[ -n $seen && $a != -* ]]; then printf '%s\n' "$a" >>"$S/dpkg"; fi
  done ;;
gpg)
  if [[ " $* " == *" --dearmor "* ]]; then
    out=; while (($#)); do [[ $1 == -o ]] && out=$2; shift; done
    printf 'dearmored:%s' "$(</dev/stdin)" >"$out"
  elif [[ " $* " == *" --show-keys "* ]]; then
    echo "pub:-:4096:1:8D81803C0EBFCD88:1487788586:::-:::scESA::::::23::0:"
    echo "fpr:::::::::${STUB_DOCKER_FPR}:"
  fi ;;
nvidia-ctk)
  /bin/mkdir -p "$LLM_ROOT/etc/docker"
  echo '{"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}' \
    >"$LLM_ROOT/etc/docker/daemon.json" ;;
systemctl)
  case $1 in
    is-active) [[ -f $S/active-$last ]] ;;
    start | restart) : >"$S/active-$last" ;;
    stop) /bin/rm -f "$S/active-$last" ;;
  esac ;;
poweroff | systemd-run) : ;;
curl)
  url= out= hfile= wfmt= fail=
  while (($#)); do
    case $1 in
      -o) out=$2; shift ;;
      -H) [[ $2 == @* ]] && hfile=${2#@}; shift ;;
      -w) wfmt=$2; shift ;;
      --max-time | --retry) shift ;;
      -*f*) [[ $1 != --* ]] && fail=1 ;;
      http*) url=$1 ;;
    esac
    shift
  done
  code=200 body=
  case $url in
    */instance/service-accounts/default/token)
      body="{\"access_token\":\"$STUB_ACCESS_TOKEN\",\"expires_in\":3599}" ;;
    */instance/name) body=llm-dev-vm ;;
    */instance/zone) body=projects/123/zones/us-central1-a ;;
    */external-ip) body=203.0.113.7 ;;
    https://secretmanager.googleapis.com/v1/projects/*/secrets/*/versions/latest:access)
      secret=${url%/versions/*}; secret=${secret##*/}
      if [[ -z $hfile || "$(<"$hfile")" != "Authorization: Bearer $STUB_ACCESS_TOKEN" ]]; then
        code=401 body='{"error":{"code":401,"message":"invalid credentials"}}'
      elif [[ ${STUB_SECRET_STATUS:-200} != 200 ]] && { [[ ! -f $S/secret_failures ]] ||
        (( $(<"$S/secret_failures") > 0 )); }; then
        if [[ -f $S/secret_failures ]]; then
          printf '%s\n' $(( $(<"$S/secret_failures") - 1 )) >"$S/secret_failures"
        fi
        code=$STUB_SECRET_STATUS
        msg="Permission 'secretmanager.versions.access' denied for resource"
        msg+=" 'projects/p/secrets/$secret/versions/latest' (or it may not exist)."
        body="{\"error\":{\"code\":$code,\"message\":\"$msg\"}}"
      else
        case $secret in
          *api-key) data=$STUB_API_KEY_B64 ;;
          *hf-token) data=$STUB_HF_TOKEN_B64 ;;
          *) data= ;;
        esac
        body="{\"name\":\"projects/1/secrets/$secret/versions/3\","
        body+="\"payload\":{\"data\":\"$data\",\"dataCrc32c\":\"1\"}}"
      fi ;;
    https://download.docker.com/linux/ubuntu/gpg) body='-----BEGIN PGP-- docker' ;;
    https://nvidia.github.io/libnvidia-container/gpgkey) body='-----BEGIN PGP-- nvidia' ;;
    https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list)
      body='deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /' ;;
    http://127.0.0.1:8000/health)
      n=$(( $( [[ -f $S/health_calls ]] && printf '%s' "$(<"$S/health_calls")" || echo 0) + 1 ))
      printf '%s\n' "$n" >"$S/health_calls"
      from=${STUB_HEALTH_OK_FROM:-1}
      if [[ $from == never ]] || ((n < from)); then code=502; fi ;;
    http://127.0.0.1:8001/metrics)
      [[ -f $S/metrics ]] || exit 7
      body=$(<"$S/metrics") ;;
    http://127.0.0.1:8001/health)
      if [[ -f $S/vllm_dead ]]; then
        echo "curl: (7) Failed to connect to 127.0.0.1 port 8001: Connection refused" >&2
        exit 7
      fi ;;
    *) echo "stub curl: unexpected URL $url" >&2; exit 6 ;;
  esac
  if [[ -n $fail ]] && ((code >= 400)); then
    echo "curl: (22) The requested URL returned error: $code" >&2
    exit 22
  fi
  if [[ -n $out ]]; then printf '%s' "$body" >"$out"; else printf '%s' "$body"; fi
  if [[ -n $wfmt ]]; then printf "${wfmt//'%{http_code}'/$code}"; fi ;;
docker)
  sub=$1; shift
  case $sub in
    image) while IFS= read -r i; do [[ $i == "$last" ]] && exit 0; done \
        < <([[ -f $S/images ]] && printf '%s\n' "$(<"$S/images")"); exit 1 ;;
    pull) printf '%s\n' "$last" >>"$S/images" ;;
    run)
      if [[ " $* " == *" --rm "* ]]; then
        if [[ ${STUB_GPU_IN_CONTAINER:-ok} != ok ]]; then
          echo 'docker: could not select device driver "" with capabilities: [[gpu]].' >&2
          exit 125
        fi
        echo "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0000)"
        exit 0
      fi
      cname= label= prev=
      for a in "$@"; do
        [[ $prev == --name ]] && cname=$a
        [[ $prev == --label ]] && label=${a#*=}
        prev=$a
      done
      status=running
      [[ $cname == llm-vllm ]] && status=${STUB_VLLM_STATUS:-running}
      /bin/mkdir -p "$S/containers"
      printf '%s %s\n' "$status" "$label" >"$S/containers/$cname"
      echo "0123456789ab-$cname" ;;
    inspect)
      fmt=$2 cname=$3
      [[ -f $S/containers/$cname ]] || { echo "Error: No such object: $cname" >&2; exit 1; }
      read -r status label <"$S/containers/$cname"
      if [[ $fmt == *State.Running* ]]; then
        [[ $status == running ]] && echo "true $label" || echo "false $label"
      elif [[ $fmt == *State.Health* ]]; then
        health=healthy
        [[ -f $S/containers/$cname.health ]] && health=$(<"$S/containers/$cname.health")
        echo "$status $health"
      else
        echo "$status"
      fi ;;
    rm) for a in "$@"; do [[ $a == -* ]] || /bin/rm -f "$S/containers/$a"; done ;;
    logs)
      echo "INFO 11-28 05:00:01 [api_server.py] vLLM API server version 0.33.0"
      echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" ;;
    *) echo "stub docker: unexpected $sub" >&2; exit 1 ;;
  esac ;;
*) echo "stub: unknown command $name" >&2; exit 127 ;;
esac
"""

STUBBED = (
    "date", "sleep", "nvidia-smi", "dpkg-query", "dpkg", "apt-get", "gpg", "nvidia-ctk",
    "systemctl", "systemd-run", "poweroff", "curl", "docker",
)  # fmt: skip


@dataclass
class Run:
    returncode: int
    output: str
    calls: list[list[str]]

    def named(self, name: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def docker(self, sub: str) -> list[list[str]]:
        return [c[1:] for c in self.named("docker") if c and c[0] == sub]

    def container_run(self, name: str) -> list[str]:
        runs = [c for c in self.docker("run") if "--name" in c and c[c.index("--name") + 1] == name]
        assert len(runs) == 1, f"expected one docker run for {name}, got {len(runs)}"
        return runs[0]

    @property
    def powered_off(self) -> bool:
        return bool(self.named("poweroff"))


@dataclass
class Sandbox:
    path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def reboot(self, boot_id: str) -> None:
        (self.root / "proc/sys/kernel/random/boot_id").write_text(boot_id + "\n")
        for f in self.state.glob("active-*"):
            f.unlink()
        (self.state / "health_calls").unlink(missing_ok=True)

    def set_container(self, name: str, status: str) -> None:
        path = self.state / "containers" / name
        label = path.read_text().split()[1]
        path.write_text(f"{status} {label}\n")

    def clock(self) -> int:
        return int((self.state / "clock").read_text())

    def run_script(self, text: str, script_name: str = "startup.sh", **env: str) -> Run:
        script = self.path / script_name
        script.write_text(text)
        log = self.state / "calls.log"
        log.write_text("")
        result = subprocess.run(
            ["/bin/bash", str(script)],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        calls = [line.split("\t") for line in log.read_text().splitlines()]
        return Run(result.returncode, result.stdout + result.stderr, calls)

    def run(self, params: StartupParams = PARAMS, **env: str) -> Run:
        return self.run_script(render_startup_script(params), **env)


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    box = Sandbox(tmp_path)
    for d in (box.root / "etc", box.root / "proc/sys/kernel/random", box.state, box.bin):
        d.mkdir(parents=True)
    (box.root / "etc/os-release").write_text(
        'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n'
        "VERSION_CODENAME=noble\nUBUNTU_CODENAME=noble\n"
    )
    (box.root / "proc/meminfo").write_text("MemTotal:       87544064 kB\nMemFree: 1 kB\n")
    (box.state / "clock").write_text(f"{CLOCK_START}\n")
    box.reboot("boot-1")
    _write_exe(box.bin / "_stub", STUB)
    for name in STUBBED:
        (box.bin / name).symlink_to("_stub")
    for name in PASSTHROUGH:
        real = shutil.which(name)
        assert real, f"{name} is needed by the tests"
        _write_exe(
            box.bin / name,
            "#!/bin/bash\n"
            f"line={name}; for a in \"$@\"; do line+=$'\\t'${{a//$'\\n'/\\\\n}}; done\n"
            'printf \'%s\\n\' "$line" >>"$STUB_STATE/calls.log"\n'
            f'exec {real} "$@"\n',
        )
    box.env = {
        "PATH": str(box.bin),
        "LLM_ROOT": str(box.root),
        "STUB_STATE": str(box.state),
        "STUB_DRIVER": "580.95.05",
        "STUB_DOCKER_FPR": DOCKER_APT_KEY_FINGERPRINT,
        "STUB_ACCESS_TOKEN": ACCESS_TOKEN,
        "STUB_API_KEY_B64": base64.b64encode(API_KEY.encode()).decode(),
        "STUB_HF_TOKEN_B64": base64.b64encode(HF_TOKEN.encode()).decode(),
        "LANG": "C.UTF-8",
    }
    return box


def assert_no_secret_exposed(run: Run) -> None:
    for secret in SECRETS:
        for call in run.calls:
            assert not any(secret in arg for arg in call), f"a secret is on the command line {call}"
        assert secret not in run.output, "a secret is in the script's output"


def _flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# --- first boot ------------------------------------------------------------------------------


def test_first_boot_installs_configures_and_starts_everything(sandbox: Sandbox) -> None:
    run = sandbox.run()
    assert run.returncode == 0, run.output
    out = run.output

    # What it logs at the start: OS, GPU model, driver, disk free.
    assert "Ubuntu 24.04.3 LTS" in out
    assert "NVIDIA A100-SXM4-40GB" in out
    assert "NVIDIA driver 580.95.05" in out
    assert "disk free on /:" in out
    assert any(c[0] == "df" for c in run.calls)

    installs = [c for c in run.named("apt-get") if "install" in c]
    assert [c[c.index("--no-install-recommends") + 1 :] for c in installs] == [
        ["docker-ce", "docker-ce-cli", "containerd.io"],
        ["nvidia-container-toolkit"],
    ]
    docker_list = (sandbox.root / "etc/apt/sources.list.d/docker.list").read_text()
    assert docker_list == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] "
        "https://download.docker.com/linux/ubuntu noble stable\n"
    )
    nvidia_list = sandbox.root / "etc/apt/sources.list.d/nvidia-container-toolkit.list"
    assert nvidia_list.read_text().startswith(
        "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.gpg] https://nvidia.github.io/"
    )
    assert (sandbox.root / "etc/apt/keyrings/nvidia-container-toolkit.gpg").exists()
    assert run.named("gpg")[0][:2] == ["--show-keys", "--with-colons"]

    assert run.named("nvidia-ctk") == [["runtime", "configure", "--runtime=docker"]]
    assert ["restart", "docker"] in run.named("systemctl")
    assert [c[-1] for c in run.docker("pull")] == [VLLM_IMAGE, PROXY_IMAGE]
    gpu_check = [c for c in run.docker("run") if "--rm" in c]
    assert gpu_check and gpu_check[0][-2:] == [VLLM_IMAGE, "-L"]
    assert "--gpus" in gpu_check[0]
    run.container_run("llm-vllm")
    run.container_run("llm-proxy")
    # The GPU check and both containers start after the runtime is configured.
    order = [c[0] for c in run.calls if c[0] in ("nvidia-ctk", "docker")]
    assert order.index("nvidia-ctk") < order.index("docker")

    assert "ready: qwen-7b answers on http://203.0.113.7:8000 after 0s" in out
    assert not run.powered_off
    assert run.named("sleep") == []

    # The watchdog for a hanging step: armed first, disarmed once ready.
    watchdog = run.named("systemd-run")
    assert len(watchdog) == 1
    assert watchdog[0][:4] == [
        "--quiet",
        "--unit",
        "llm-endpoint-watchdog",
        f"--on-active={45 * 60 + 600}s",
    ]
    assert "systemctl poweroff" in watchdog[0][-1]
    assert run.calls.index(["systemd-run", *watchdog[0]]) < 5
    systemctl = run.named("systemctl")
    disarm = ["reset-failed", "llm-endpoint-watchdog.service"]
    disarmed = len(systemctl) - 1 - systemctl[::-1].index(disarm)
    # ... and the autostop check (stopOnFailure) takes over from it once ready.
    assert systemctl[disarmed + 1 :] == [
        ["daemon-reload"],
        ["restart", "llm-endpoint-autostop.timer"],
    ]


def test_first_boot_writes_root_only_secret_files_and_the_proxy_config(sandbox: Sandbox) -> None:
    run = sandbox.run(replace(PARAMS, hf_token_secret="llm-dev-hf-token"))
    assert run.returncode == 0, run.output
    etc = sandbox.root / "etc/llm-endpoint"
    env_file = etc / "vllm.env"
    assert env_file.read_text() == f"VLLM_API_KEY={API_KEY}\nHF_TOKEN={HF_TOKEN}\n"
    auth = etc / "proxy-auth.conf"
    assert auth.read_text() == render_auth_include(API_KEY)
    for path in (env_file, auth):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    assert (etc / "nginx.conf").read_text() == render_proxy_config()
    assert API_KEY not in (etc / "nginx.conf").read_text()
    # The access token's header file is gone once the secrets are fetched.
    assert not (sandbox.root / "run/llm-endpoint/secrets").exists()


@pytest.mark.parametrize("hf", [None, "llm-dev-hf-token"], ids=["no-hf-token", "hf-token"])
def test_no_secret_on_any_command_line_or_in_the_logs(sandbox: Sandbox, hf: str | None) -> None:
    run = sandbox.run(replace(PARAMS, hf_token_secret=hf))
    assert run.returncode == 0, run.output
    urls = [c[-1] for c in run.named("curl")]
    assert any(u.endswith("/secrets/llm-dev-api-key/versions/latest:access") for u in urls)
    assert any(u.endswith("/secrets/llm-dev-hf-token/versions/latest:access") for u in urls) == (
        hf is not None
    )
    # The token travels as `-H @file`, never as a header value on the command line.
    sm_calls = [c for c in run.named("curl") if "secretmanager" in c[-1]]
    assert all(c[c.index("-H") + 1].startswith("@") for c in sm_calls)
    assert_no_secret_exposed(run)
    # The rendered script itself names the secrets, never their values.
    script = render_startup_script(replace(PARAMS, hf_token_secret=hf))
    assert all(s not in script for s in SECRETS)


def test_vllm_container_arguments(sandbox: Sandbox) -> None:
    run = sandbox.run()
    argv = run.container_run("llm-vllm")
    assert argv[0] == "-d"
    image_at = argv.index(VLLM_IMAGE)
    options, args = argv[:image_at], argv[image_at + 1 :]
    assert args == SPEC.vllm_args(host="127.0.0.1", port=8001)
    assert _flag_values(options, "--gpus") == ["all"]
    assert "--ipc=host" in options
    assert _flag_values(options, "--network") == ["host"]
    assert not {"-p", "--publish", "-P", "--publish-all"} & set(options), "vLLM publishes nothing"
    memory = _flag_values(options, "--memory")
    assert memory == [f"{87544064 // 1024 - 4096}m"]
    assert _flag_values(options, "--memory-swap") == memory
    assert _flag_values(options, "--cpus")
    assert _flag_values(options, "--pids-limit") == ["8192"]
    assert _flag_values(options, "--security-opt") == ["no-new-privileges"]
    assert _flag_values(options, "--cap-drop") == ["ALL"]
    assert _flag_values(options, "--cap-add") == []
    assert _flag_values(options, "--restart") == ["on-failure:5"]
    assert _flag_values(options, "--log-driver") == ["json-file"]
    assert set(_flag_values(options, "--log-opt")) == {"max-size=50m", "max-file=5"}
    env_file = str(sandbox.root / "etc/llm-endpoint/vllm.env")
    assert _flag_values(options, "--env-file") == [env_file]
    hf_cache = f"{sandbox.root}/var/lib/llm-endpoint/huggingface:/root/.cache/huggingface"
    assert _flag_values(options, "-v") == [hf_cache]
    assert (sandbox.root / "var/lib/llm-endpoint/huggingface").is_dir()
    health = _flag_values(options, "--health-cmd")
    assert len(health) == 1 and "http://127.0.0.1:8001/health" in health[0]
    assert _flag_values(options, "--health-start-period") == ["30m"]
    labels = _flag_values(options, "--label")
    assert len(labels) == 1 and labels[0].startswith("llm-endpoint.config=")
    # Nothing secret in what `docker inspect` shows as Args/Cmd or labels.
    assert all(s not in " ".join(argv) for s in SECRETS)


def test_proxy_container_arguments(sandbox: Sandbox) -> None:
    run = sandbox.run()
    argv = run.container_run("llm-proxy")
    image_at = argv.index(PROXY_IMAGE)
    options, args = argv[:image_at], argv[image_at + 1 :]
    assert args == ["-e", "stderr", "-g", "daemon off; pid /tmp/nginx.pid;"]
    assert _flag_values(options, "--entrypoint") == ["nginx"]
    assert _flag_values(options, "--network") == ["host"]
    assert "--read-only" in options
    assert _flag_values(options, "--security-opt") == ["no-new-privileges"]
    assert _flag_values(options, "--cap-drop") == ["ALL"]
    assert sorted(_flag_values(options, "--cap-add")) == ["CHOWN", "SETGID", "SETUID"]
    assert _flag_values(options, "--memory") and _flag_values(options, "--pids-limit")
    assert _flag_values(options, "--restart") == ["unless-stopped"]
    assert "max-size=20m" in _flag_values(options, "--log-opt")
    etc = sandbox.root / "etc/llm-endpoint"
    assert _flag_values(options, "-v") == [
        f"{etc}/nginx.conf:/etc/nginx/nginx.conf:ro",
        f"{etc}/proxy-auth.conf:/etc/llm-endpoint/proxy-auth.conf:ro",
    ]


# --- later boots and reruns ------------------------------------------------------------------


def test_second_boot_installs_nothing_and_replaces_the_containers(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.reboot("boot-2")
    sandbox.set_container("llm-vllm", "exited")  # what a reboot leaves behind
    run = sandbox.run()
    assert run.returncode == 0, run.output
    assert [c for c in run.named("apt-get") if "install" in c or "update" in c] == []
    assert run.named("nvidia-ctk") == []
    assert ["restart", "docker"] not in run.named("systemctl")
    assert run.docker("pull") == []
    assert "Docker Engine already installed" in run.output
    assert "removing container llm-vllm from an earlier run (status: exited)" in run.output
    docker_calls = [c[1:3] for c in run.calls if c[0] == "docker" and c[1] in ("rm", "run")]
    removes = [i for i, c in enumerate(docker_calls) if c[0] == "rm"]
    starts = [i for i, c in enumerate(docker_calls) if c[0] == "run" and c[1] == "-d"]
    assert len(removes) == 2 and len(starts) == 2
    assert max(removes) < min(starts), "old containers are removed before new ones start"
    assert "ready:" in run.output
    assert not run.powered_off


def test_rerun_on_a_healthy_vm_leaves_it_serving(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    run = sandbox.run()  # same boot
    assert run.returncode == 0, run.output
    assert "already serving qwen-7b in this boot with the same settings" in run.output
    assert run.docker("rm") == []
    assert [c for c in run.docker("run")] == []
    assert not run.powered_off


def test_rerun_with_a_dead_container_replaces_it(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.set_container("llm-vllm", "exited")
    run = sandbox.run()
    assert run.returncode == 0, run.output
    assert "already serving" not in run.output
    run.container_run("llm-vllm")


def test_rerun_after_the_key_changed_replaces_the_containers(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    new_key = "rotated-key-0123456789-abcdefghijklmnopqrst"
    run = sandbox.run(STUB_API_KEY_B64=base64.b64encode(new_key.encode()).decode())
    assert run.returncode == 0, run.output
    assert "already serving" not in run.output
    run.container_run("llm-vllm")
    env_file = sandbox.root / "etc/llm-endpoint/vllm.env"
    assert env_file.read_text() == f"VLLM_API_KEY={new_key}\n"


# --- failures --------------------------------------------------------------------------------


def _assert_failed_and_stopped(run: Run, message: str) -> None:
    assert run.returncode != 0
    assert message in run.output, run.output
    assert "the endpoint is NOT serving" in run.output
    assert run.named("poweroff") == [[]]
    assert "gcloud compute instances start llm-dev-vm --zone us-central1-a" in run.output
    assert [c for c in run.docker("run") if "-d" in c] == []


def test_missing_driver_fails_with_its_message(sandbox: Sandbox) -> None:
    (sandbox.bin / "nvidia-smi").unlink()
    run = sandbox.run()
    _assert_failed_and_stopped(run, "no NVIDIA driver: nvidia-smi is not installed")
    assert run.named("apt-get") == []


def test_old_driver_fails_with_its_message(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_DRIVER="535.104.05")
    _assert_failed_and_stopped(run, "NVIDIA driver 535.104.05 is too old")
    assert f"needs {MIN_NVIDIA_DRIVER_MAJOR} or newer" in run.output
    assert run.named("apt-get") == []


def test_unresponsive_driver_fails_with_its_message(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_DRIVER="broken")
    _assert_failed_and_stopped(run, "the NVIDIA driver does not answer")


def test_too_few_gpus_fails(sandbox: Sandbox) -> None:
    run = sandbox.run(replace(PARAMS, spec=replace(SPEC, tensor_parallel_size=2)))
    _assert_failed_and_stopped(run, "vLLM is set to use 2 GPUs but nvidia-smi shows 1")


def test_secret_manager_403_fails_with_its_message(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_SECRET_STATUS="403")
    _assert_failed_and_stopped(run, "Secret Manager refused the API key (secret llm-dev-api-key")
    assert "roles/secretmanager.secretAccessor" in run.output
    assert "Permission 'secretmanager.versions.access' denied" in run.output
    assert not (sandbox.root / "etc/llm-endpoint/vllm.env").exists()
    # Retried for a few minutes first (IAM grants take time to apply), on the fake clock.
    assert len([c for c in run.named("curl") if "secretmanager" in c[-1]]) == 10
    assert run.named("sleep") == [["30"]] * 9
    assert_no_secret_exposed(run)


def test_secret_manager_403_then_200_succeeds(sandbox: Sandbox) -> None:
    (sandbox.state / "secret_failures").write_text("2\n")
    run = sandbox.run(STUB_SECRET_STATUS="403")
    assert run.returncode == 0, run.output
    assert "answered HTTP 403 for the API key (attempt 2 of 10)" in run.output
    assert run.named("sleep") == [["30"]] * 2
    assert not run.powered_off


def test_secret_manager_404_fails_with_its_message(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_SECRET_STATUS="404")
    _assert_failed_and_stopped(run, "does not exist or has no version (HTTP 404)")


def test_wrong_docker_key_fingerprint_refuses_the_repository(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_DOCKER_FPR="0" * 40)
    _assert_failed_and_stopped(run, "Docker's apt signing key does not have the expected")
    assert [c for c in run.named("apt-get") if "install" in c] == []
    assert not (sandbox.root / "etc/apt/keyrings/docker.asc").exists()


def test_gpu_not_visible_in_containers_fails(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_GPU_IN_CONTAINER="no")
    _assert_failed_and_stopped(run, "a container cannot see the GPUs")


def test_unexpected_failure_logs_line_and_command_then_stops(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_APT_FAIL="install")
    assert run.returncode != 0
    assert "ERROR: line " in run.output
    assert "'apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -y -q install" in run.output
    assert "exited with status 100" in run.output
    assert run.named("poweroff") == [[]]


def test_apt_update_is_retried_then_fails_with_its_message(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_APT_FAIL="update")
    _assert_failed_and_stopped(run, "apt-get update kept failing")
    assert len([c for c in run.named("apt-get") if "update" in c]) == 5
    assert run.named("sleep") == [["30"]] * 5
    assert [c for c in run.named("apt-get") if "install" in c] == []


def test_health_never_ok_prints_the_logs_and_powers_off(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_HEALTH_OK_FROM="never")
    _assert_failed_and_stopped_after_start(run)
    assert "vLLM was not ready within 45 minutes (gcp.readyTimeoutMinutes)" in run.output
    assert "  vllm| torch.OutOfMemoryError: CUDA out of memory" in run.output
    assert run.powered_off
    # The fake clock went past the deadline through the script's own sleeps.
    assert sandbox.clock() - CLOCK_START >= 45 * 60
    assert all(c == ["10"] for c in run.named("sleep"))
    assert len(run.named("sleep")) == 45 * 6


def _assert_failed_and_stopped_after_start(run: Run) -> None:
    assert run.returncode != 0
    assert "the endpoint is NOT serving" in run.output
    assert "ready:" not in run.output
    assert run.docker("logs")[0] == ["--tail", "60", "llm-vllm"]


def test_health_never_ok_without_stop_on_failure_keeps_the_vm(sandbox: Sandbox) -> None:
    params = replace(PARAMS, stop_on_failure=False, ready_timeout_minutes=5)
    run = sandbox.run(params, STUB_HEALTH_OK_FROM="never")
    _assert_failed_and_stopped_after_start(run)
    assert "CUDA out of memory" in run.output
    assert "stopOnFailure is off: the VM stays up" in run.output
    assert not run.powered_off
    assert run.named("systemd-run") == []


def test_ready_after_some_polls_reports_the_elapsed_time(sandbox: Sandbox) -> None:
    run = sandbox.run(replace(PARAMS, ready_timeout_minutes=10), STUB_HEALTH_OK_FROM="4")
    assert run.returncode == 0, run.output
    assert len(run.named("sleep")) == 3
    assert "after 30s" in run.output
    assert not run.powered_off


def test_vllm_exiting_fails_fast(sandbox: Sandbox) -> None:
    run = sandbox.run(STUB_HEALTH_OK_FROM="never", STUB_VLLM_STATUS="exited")
    _assert_failed_and_stopped_after_start(run)
    assert "vLLM stopped (container status: exited) before it was ready" in run.output
    assert run.named("sleep") == []
    assert run.powered_off


# --- autostop: dead vLLM and idle stop --------------------------------------------------------

IDLE = replace(PARAMS, idle_stop_minutes=30)
NO_STOP = replace(PARAMS, stop_on_failure=False)
GRACE = DEAD_GRACE_MINUTES
AUTOSTOP_CHECK = "usr/local/sbin/llm-endpoint-autostop"
UNITS = "etc/systemd/system"


def _metrics(running: int = 0, waiting: int = 0, success: float = 5.0, tokens: float = 900.0):
    labels = 'engine="0",model_name="qwen-7b"'
    return textwrap.dedent(f"""\
        # TYPE vllm:num_requests_running gauge
        vllm:num_requests_running{{{labels}}} {running}.0
        vllm:num_requests_waiting{{{labels}}} {waiting}.0
        # TYPE vllm:request_success_total counter
        vllm:request_success_total{{{labels},finished_reason="stop"}} {success}
        vllm:request_success_total{{{labels},finished_reason="length"}} 1.0
        vllm:request_success_created{{{labels},finished_reason="stop"}} 1.7e9
        vllm:generation_tokens_total{{{labels}}} {tokens}
        """)


def _started_units(run: Run) -> list[list[str]]:
    """The project's own units started (Docker's aside)."""
    return [
        c
        for c in run.named("systemctl")
        if c[0] in ("start", "restart", "enable") and c[-1].startswith("llm-endpoint")
    ]


def test_autostop_is_installed_after_ready_by_default(sandbox: Sandbox) -> None:
    """stopOnFailure (on by default) alone installs the check: a vLLM that dies after it was
    ready must not bill forever, even with idle stop off."""
    run = sandbox.run()
    assert run.returncode == 0, run.output
    check = sandbox.root / AUTOSTOP_CHECK
    assert check.read_text() == render_autostop_check(PARAMS)
    assert stat.S_IMODE(check.stat().st_mode) == 0o755
    units = sandbox.root / UNITS
    assert (
        "ExecStart=/usr/local/sbin/llm-endpoint-autostop"
        in (units / "llm-endpoint-autostop.service").read_text()
    )
    assert "OnUnitActiveSec=1min" in (units / "llm-endpoint-autostop.timer").read_text()
    assert _started_units(run) == [["restart", "llm-endpoint-autostop.timer"]]
    # Started only once the endpoint is ready: the ready line comes first.
    assert run.output.index("ready:") < run.output.index("autostop on:")
    assert f"stays dead for {GRACE} minutes" in run.output
    assert "idle stop on" not in run.output
    # The rendered check judges death only.
    text = render_autostop_check(PARAMS)
    assert "readonly STOP_ON_FAILURE=1" in text and "readonly IDLE_STOP_SECONDS=0" in text


def test_autostop_off_when_stop_on_failure_and_idle_stop_are_off(sandbox: Sandbox) -> None:
    assert sandbox.run(IDLE).returncode == 0
    assert (sandbox.root / UNITS / "llm-endpoint-autostop.timer").exists()
    sandbox.reboot("boot-2")
    run = sandbox.run(NO_STOP)
    assert run.returncode == 0, run.output
    assert not (sandbox.root / UNITS / "llm-endpoint-autostop.timer").exists()
    assert not (sandbox.root / AUTOSTOP_CHECK).exists()
    assert _started_units(run) == []
    assert "autostop off" in run.output
    # A fresh VM with both off installs nothing either.
    sandbox.reboot("boot-3")
    (sandbox.root / "etc/docker/daemon.json").unlink()
    run = sandbox.run(NO_STOP)
    assert run.returncode == 0, run.output
    assert _started_units(run) == []
    assert ["restart", "docker"] in run.named("systemctl")  # a first boot indeed
    assert not (sandbox.root / UNITS).exists() or not any((sandbox.root / UNITS).iterdir())


def test_idle_stop_is_installed_after_ready(sandbox: Sandbox) -> None:
    run = sandbox.run(IDLE)
    assert run.returncode == 0, run.output
    check = sandbox.root / AUTOSTOP_CHECK
    assert check.read_text() == render_autostop_check(IDLE)
    assert ["restart", "llm-endpoint-autostop.timer"] in run.named("systemctl")
    assert run.output.index("ready:") < run.output.index("idle stop on")
    # Turned off again by a later boot with idleStopMinutes 0: the check remains, for death only.
    sandbox.reboot("boot-2")
    run = sandbox.run(PARAMS)
    assert run.returncode == 0
    assert check.read_text() == render_autostop_check(PARAMS)
    assert "idle stop on" not in run.output


def _autostop(
    sandbox: Sandbox,
    minutes_later: int,
    metrics: str | None = None,
    *,
    dead: bool = False,
    status: str = "running",
    health: str = "healthy",
) -> Run:
    """One run of the installed check, `minutes_later` after the clock's start, with vLLM's
    /metrics answering `metrics` (None: unreachable), its /health failing when `dead`, and its
    container in Docker state `status`/`health`."""
    clock = sandbox.state / "clock"
    clock.write_text(f"{CLOCK_START + minutes_later * 60}\n")
    metrics_file = sandbox.state / "metrics"
    if metrics is None:
        metrics_file.unlink(missing_ok=True)
    else:
        metrics_file.write_text(metrics)
    dead_file = sandbox.state / "vllm_dead"
    if dead:
        dead_file.write_text("")
    else:
        dead_file.unlink(missing_ok=True)
    sandbox.set_container("llm-vllm", status)
    (sandbox.state / "containers/llm-vllm.health").write_text(health)
    check = (sandbox.root / AUTOSTOP_CHECK).read_text()
    run = sandbox.run_script(check, "autostop.sh", LLM_CONSOLE=str(sandbox.path / "console"))
    assert run.returncode == 0, run.output
    return run


# Death (stopOnFailure).


def test_vllm_dead_after_ready_powers_off_after_the_grace_period_not_before(
    sandbox: Sandbox,
) -> None:
    assert sandbox.run().returncode == 0
    (sandbox.path / "console").write_text("")
    assert not _autostop(sandbox, 1).powered_off  # healthy
    # The crash loop is over: the container exited and /health is refused.
    for minute in range(2, 2 + GRACE):
        run = _autostop(sandbox, minute, dead=True, status="exited", health="unhealthy")
        assert not run.powered_off, minute
    assert f"the VM powers off if that lasts {GRACE} min" in run.output
    run = _autostop(sandbox, 2 + GRACE, dead=True, status="exited", health="unhealthy")
    assert run.named("poweroff") == [[]]
    assert f"vLLM has not been healthy for {GRACE} minutes" in run.output
    assert "container llm-vllm: exited" in run.output
    assert "vLLM is dead (gcp.stopOnFailure): powering the VM off" in run.output
    # Why, with vLLM's last lines, and how to start it again: in the journal and on the console.
    assert "  vllm| torch.OutOfMemoryError: CUDA out of memory" in run.output
    start = (
        "gcloud compute instances start llm-dev-vm --zone us-central1-a --project llm-endpoint-dev"
    )
    assert start in run.output
    console = (sandbox.path / "console").read_text()
    for line in ("vLLM is dead (gcp.stopOnFailure): powering the VM off", start, "vllm| torch"):
        assert line in console
    health_urls = {c[-1] for c in run.named("curl") if c[-1].endswith("/health")}
    assert health_urls == {"http://127.0.0.1:8001/health"}


def test_vllm_hung_while_its_container_runs_powers_off(sandbox: Sandbox) -> None:
    """Docker does not restart a container whose health check fails: only this check stops it."""
    assert sandbox.run().returncode == 0
    for minute in range(1, 1 + GRACE):
        assert not _autostop(sandbox, minute, dead=True, health="unhealthy").powered_off
    run = _autostop(sandbox, 1 + GRACE, dead=True, health="unhealthy")
    assert run.powered_off
    assert "container llm-vllm: running, health unhealthy" in run.output


def test_vllm_container_gone_powers_off(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    assert not _autostop(sandbox, 1, dead=True, status="exited").powered_off
    (sandbox.state / "containers/llm-vllm").unlink()
    check = (sandbox.root / AUTOSTOP_CHECK).read_text()
    (sandbox.state / "clock").write_text(f"{CLOCK_START + (1 + GRACE) * 60}\n")
    run = sandbox.run_script(check, "autostop.sh", LLM_CONSOLE=str(sandbox.path / "console"))
    assert run.returncode == 0, run.output
    assert run.powered_off
    assert "container llm-vllm: missing" in run.output


def test_brief_outage_shorter_than_the_grace_period_does_not_power_off(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    for minute in range(1, GRACE):
        assert not _autostop(sandbox, minute, dead=True, health="unhealthy").powered_off
    assert not _autostop(sandbox, GRACE, health="healthy").powered_off  # back
    # The next outage starts a new grace period: no carry-over from the first.
    for minute in range(GRACE + 1, 2 * GRACE + 1):
        assert not _autostop(sandbox, minute, dead=True, health="unhealthy").powered_off
    assert _autostop(sandbox, 2 * GRACE + 1, dead=True, health="unhealthy").powered_off


def test_restart_in_progress_does_not_power_off(sandbox: Sandbox) -> None:
    """A crash that Docker restarts: the model reloads for longer than the grace period while
    the container is 'restarting' or in its health-check start period ('starting')."""
    assert sandbox.run().returncode == 0
    assert not _autostop(sandbox, 1, dead=True, status="restarting", health="unhealthy").powered_off
    for minute in range(2, 3 * GRACE):
        run = _autostop(sandbox, minute, dead=True, health="starting")
        assert not run.powered_off, minute
    assert "vLLM is restarting (container llm-vllm: running, health starting)" in run.output
    assert not _autostop(sandbox, 3 * GRACE, health="healthy").powered_off  # reloaded
    # A restart that never gets healthy: once Docker's start period ends it is 'unhealthy'
    # and the grace period runs from there.
    for minute in range(3 * GRACE + 1, 4 * GRACE + 1):
        assert not _autostop(sandbox, minute, dead=True, health="unhealthy").powered_off
    assert _autostop(sandbox, 4 * GRACE + 1, dead=True, health="unhealthy").powered_off


def test_a_new_ready_resets_the_dead_clock(sandbox: Sandbox) -> None:
    """A rerun of the startup script (same boot) that gets vLLM ready again starts afresh."""
    assert sandbox.run().returncode == 0
    for minute in range(1, GRACE):
        assert not _autostop(sandbox, minute, dead=True, status="exited").powered_off
    assert sandbox.run().returncode == 0  # replaces the dead container, ready again
    assert (sandbox.root / "var/lib/llm-endpoint/dead-state").read_text() == "0 healthy\n"
    assert not _autostop(sandbox, GRACE + 1, dead=True, status="exited").powered_off


def test_stop_on_failure_off_never_powers_off_a_dead_vllm(sandbox: Sandbox) -> None:
    params = replace(NO_STOP, idle_stop_minutes=60)  # the check runs, for idleness only
    assert sandbox.run(params).returncode == 0
    text = render_autostop_check(params)
    assert "readonly STOP_ON_FAILURE=0" in text
    for minute in range(1, 59, 3):
        run = _autostop(
            sandbox, minute, _metrics(success=float(minute)), dead=True, status="exited"
        )
        assert not run.powered_off, minute
    assert [c for c in run.named("curl") if c[-1].endswith("/health")] == []
    assert run.named("docker") == []


# Idle stop (gcp.idleStopMinutes): unchanged by the death check, with vLLM healthy.


def test_idle_stop_fires_only_when_idle(sandbox: Sandbox) -> None:
    assert sandbox.run(IDLE).returncode == 0
    (sandbox.path / "console").write_text("")
    # Served requests keep moving the counters: never idle.
    for minute, success in ((10, 5.0), (25, 6.0), (50, 9.0)):
        assert not _autostop(sandbox, minute, _metrics(success=success)).powered_off
    # Nothing new for 29 minutes: still up.
    assert not _autostop(sandbox, 79, _metrics(success=9.0)).powered_off
    # A long generation in flight counts as busy even though no counter moved.
    assert not _autostop(sandbox, 85, _metrics(success=9.0, running=1)).powered_off
    assert not _autostop(sandbox, 114, _metrics(success=9.0, waiting=2)).powered_off
    # 30 minutes after the last busy sample with no change: power off, and say why.
    run = _autostop(sandbox, 144, _metrics(success=9.0))
    assert run.named("poweroff") == [[]]
    assert "served nothing for 30 minutes" in run.output
    assert "gcloud compute instances start llm-dev-vm --zone us-central1-a" in run.output
    assert "powering the VM off" in (sandbox.path / "console").read_text()
    metrics_urls = [c[-1] for c in run.named("curl") if "metrics" in c[-1]]
    assert metrics_urls == ["http://127.0.0.1:8001/metrics"]


def test_idle_stop_reads_the_vllm_standin_metrics(sandbox: Sandbox) -> None:
    """The same decisions on /metrics text as the vLLM stand-in (tests/support) serves it."""
    assert sandbox.run(IDLE).returncode == 0
    with run_standin(StandinConfig()) as vllm:

        def scrape(**values: float) -> str:
            vllm.set_metrics(**values)
            return requests.get(f"{vllm.url}/metrics", timeout=5).text

        assert "vllm:request_success_total" in scrape()
        assert not _autostop(sandbox, 5, scrape(request_success_total=1.0)).powered_off
        assert not _autostop(sandbox, 30, scrape(num_requests_running=1.0)).powered_off
        assert not _autostop(sandbox, 59, scrape(num_requests_running=0.0)).powered_off
        assert not _autostop(sandbox, 61, scrape(generation_tokens_total=50.0)).powered_off
        assert _autostop(sandbox, 91, scrape()).powered_off


def test_idle_stop_never_fires_on_metrics_it_cannot_read(sandbox: Sandbox) -> None:
    assert sandbox.run(IDLE).returncode == 0
    renamed = _metrics().replace("vllm:", "vllm_v2:")
    for minute in (10, 40, 70):
        run = _autostop(sandbox, minute, renamed)
        assert not run.powered_off
    assert "none of the series the idle check reads" in run.output


@pytest.mark.parametrize("stop_on_failure", [True, False], ids=["stop-on-failure", "no-stop"])
def test_idle_stop_counts_an_unreachable_vllm_as_idle(
    sandbox: Sandbox, stop_on_failure: bool
) -> None:
    """Unchanged: /metrics unreachable is idle. A restart in progress (so no death yet) does
    not hold the idle stop back."""
    assert sandbox.run(replace(IDLE, stop_on_failure=stop_on_failure)).returncode == 0
    for minute in (1, 30):
        assert not _autostop(sandbox, minute, None, dead=True, health="starting").powered_off
    run = _autostop(sandbox, 31, None, dead=True, health="starting")
    assert run.named("poweroff") == [[]]
    assert "served nothing for 30 minutes" in run.output


def test_idle_stop_only_when_stop_on_failure_is_off(sandbox: Sandbox) -> None:
    """With stopOnFailure off and idle stop on, the idle stop still fires."""
    params = replace(NO_STOP, idle_stop_minutes=30)
    assert sandbox.run(params).returncode == 0
    assert not _autostop(sandbox, 1, _metrics()).powered_off
    assert not _autostop(sandbox, 30, _metrics()).powered_off
    assert _autostop(sandbox, 31, _metrics()).powered_off


# --- the rendered text -----------------------------------------------------------------------


def _from_stack_config(**gcp: object) -> StartupParams:
    """StartupParams built the way infra/gcp_vm.py builds them, from a parsed stack config."""
    cfg = stack_config.parse(
        {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "hfToken": HF_TOKEN,
            "gcp": {
                "project": "llm-endpoint-dev",
                "allowedSourceRanges": ["203.0.113.0/24"],
                **gcp,
            },
        }
    )
    assert cfg.gcp is not None
    return StartupParams(
        spec=cfg.serving_for(cfg.gcp.shape.gpus),
        gcp_project=cfg.gcp.project,
        api_key_secret="llm-dev-api-key",
        hf_token_secret="llm-dev-hf-token",
        stop_on_failure=cfg.gcp.stop_on_failure,
        ready_timeout_minutes=cfg.gcp.ready_timeout_minutes,
        idle_stop_minutes=cfg.gcp.idle_stop_minutes,
    )


SPOT = _from_stack_config(
    spot=True, machineType="a2-ultragpu-2g", zone="us-central1-a", idleStopMinutes=60,
    stopOnFailure=False, readyTimeoutMinutes=90,
)  # fmt: skip

VARIANTS = {
    "spot-from-config": SPOT,
    "default": PARAMS,
    "hf-token": replace(PARAMS, hf_token_secret="llm-dev-hf-token"),
    "idle": IDLE,
    "no-stop": replace(PARAMS, stop_on_failure=False, ready_timeout_minutes=90),
    "eight-gpus": replace(
        PARAMS,
        spec=replace(
            SPEC, tensor_parallel_size=8, model="org/Model's-Name", served_model_name="a b"
        ),
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shellcheck_passes(tmp_path: Path, variant: str) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "install shellcheck (apt-get install shellcheck) or run `bash .ci/run`"
    params = VARIANTS[variant]
    files = [tmp_path / "startup.sh"]
    files[0].write_text(render_startup_script(params))
    if needs_autostop(params):
        files.append(tmp_path / "autostop.sh")
        files[1].write_text(render_autostop_check(params))
    result = subprocess.run(
        [shellcheck, "--shell=bash", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_quoted_values_survive_rendering(sandbox: Sandbox) -> None:
    params = VARIANTS["eight-gpus"]
    run = sandbox.run(params, STUB_GPUS="8")
    assert run.returncode == 0, run.output
    args = run.container_run("llm-vllm")
    assert args[args.index(VLLM_IMAGE) + 1 :] == params.spec.vllm_args()


def test_stack_config_values_reach_the_script(sandbox: Sandbox) -> None:
    run = sandbox.run(SPOT, STUB_GPUS="2", STUB_HEALTH_OK_FROM="never")
    assert "not ready within 90 minutes" in run.output
    assert not run.powered_off  # stopOnFailure: false
    argv = run.container_run("llm-vllm")
    vllm_args = argv[argv.index(VLLM_IMAGE) + 1 :]
    assert vllm_args[vllm_args.index("--tensor-parallel-size") + 1] == "2"
    assert vllm_args[0] == "meta-llama/Llama-3.1-8B-Instruct"  # `vllm serve <model_tag>`
    env_file = sandbox.root / "etc/llm-endpoint/vllm.env"
    assert env_file.read_text() == f"VLLM_API_KEY={API_KEY}\nHF_TOKEN={HF_TOKEN}\n"


def test_script_fits_in_instance_metadata() -> None:
    for params in VARIANTS.values():
        assert len(render_startup_script(params).encode()) < 256 * 1024
