"""How the proxy gets into a pod, tested offline: shellcheck on the entrypoint stub and the
rendered bootstrap, the Dockerfile against infra/serving.py, and the stub + bootstrap run for
real with bash and Debian's nginx, in front of a fake `vllm` on loopback, exactly with the
environment the provider puts in the create request."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from infra import serving
from infra.runpod import bootstrap
from tests.support.nginx import NGINX_BUILDS, free_port, nginx_binary
from tests.support.runpod_testing import ENDPOINT_KEY, SERVING

IMAGE_DIR = bootstrap.IMAGE_DIR

FAKE_VLLM = """#!{python}
# Stands in for `vllm serve`: records its argv, serves /health and /v1/models (key checked the
# way vLLM does, from VLLM_API_KEY) and answers 200 on every other path, like vLLM's open ones.
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
open(os.environ["FAKE_VLLM_ARGV"], "w").write(json.dumps(args))
open(os.environ["FAKE_VLLM_ARGV"] + ".pid", "w").write(str(os.getpid()))
who = {{"uid": os.getuid(), "home": os.environ.get("HOME"), "hf_home": os.environ.get("HF_HOME")}}
open(os.environ["FAKE_VLLM_ARGV"] + ".who", "w").write(json.dumps(who))
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
key = os.environ["VLLM_API_KEY"]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/v1") and self.headers.get("Authorization") != "Bearer " + key:
            self.send_response(401); self.end_headers(); return
        self.send_response(200); self.end_headers(); self.wfile.write(b"vllm " + self.path.encode())
ThreadingHTTPServer((host, port), H).serve_forever()
"""


def shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (CI installs it from Debian)")
    return subprocess.run(
        ["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True, check=False
    )


def test_entrypoint_stub_and_bootstrap_pass_shellcheck(tmp_path: Path):
    rendered = tmp_path / "bootstrap.sh"
    rendered.write_text(bootstrap.render_bootstrap())
    for script in (IMAGE_DIR / "entrypoint.sh", rendered):
        result = shellcheck(script)
        assert result.returncode == 0, result.stdout


def test_dockerfile_builds_on_the_pinned_vllm_image_with_the_stub_as_entrypoint():
    text = (IMAGE_DIR / "Dockerfile").read_text()
    assert f"ARG VLLM_IMAGE={serving.VLLM_IMAGE}\n" in text
    assert "FROM ${VLLM_IMAGE}" in text
    assert "COPY entrypoint.sh /usr/local/bin/llm-endpoint-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/llm-endpoint-entrypoint"]' in text
    assert os.access(IMAGE_DIR / "entrypoint.sh", os.X_OK)


def test_pod_image_workflow_builds_this_image_for_the_pinned_vllm():
    text = (IMAGE_DIR.parents[2] / ".github/workflows/pod-image.yml").read_text()
    assert "context: infra/runpod/image" in text
    assert "build-args: VLLM_IMAGE=${{ steps.meta.outputs.vllm_image }}" in text
    assert "from infra import serving; print(serving.VLLM_IMAGE)" in text
    assert '- "pod-image-v*"' in text and "packages: write" in text


def test_pod_env_holds_the_key_only_as_vllm_api_key():
    env = bootstrap.pod_env(ENDPOINT_KEY, None)
    own = {"LLM_ENDPOINT_BOOTSTRAP_B64", "LLM_ENDPOINT_PROXY_CONF_B64", "VLLM_API_KEY"}
    assert set(env) == own | set(serving.vllm_container_env())
    assert env["VLLM_API_KEY"] == ENDPOINT_KEY
    assert ENDPOINT_KEY not in bootstrap.render_bootstrap()
    assert ENDPOINT_KEY not in bootstrap.pod_proxy_config()
    assert "listen 8000;" in bootstrap.pod_proxy_config()
    assert "server 127.0.0.1:8001;" in bootstrap.pod_proxy_config()


@dataclass
class Pod:
    proc: subprocess.Popen[bytes]
    url: str
    conf_dir: Path
    argv_file: Path
    log: Path


def container_argv(vllm_args: list[str], *, custom_image: bool) -> list[str]:
    """What the container runtime runs: the custom image's ENTRYPOINT (the stub) with `args`,
    or the stock image with the pod's `entrypoint` then `cmd` (exec form, joined as Docker
    joins ENTRYPOINT and CMD)."""
    command = bootstrap.launch_command(vllm_args, custom_image=custom_image)
    if custom_image:
        return [str(IMAGE_DIR / "entrypoint.sh"), *vllm_args]
    entrypoint, cmd = command["entrypoint"], command["cmd"]
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    return [*entrypoint, *cmd]


# Stands in for the stock image's apt-get: records its arguments; `install` links the real nginx
# onto PATH as the package would, anything else fails the way a broken archive does.
FAKE_APT = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  update) [ "{mode}" != update-fails ] || {{ echo "E: Failed to fetch archive" >&2; exit 100; }} ;;
  install) [ "{mode}" = works ] || {{ echo "E: Unable to locate package $6" >&2; exit 100; }}
           ln -s "{nginx}" "{bin}/nginx" ;;
esac
"""


def start_pod(
    tmp_path: Path,
    *,
    key: str | None,
    vllm_args: list[str],
    custom_image: bool = True,
    nginx: str | None = None,
    apt_mode: str | None = None,
    as_vllm_user: bool = False,
) -> Pod:
    """The pod's command with `nginx` (default: the machine's) first on PATH, in front of the
    fake vLLM. `apt_mode` set: the image has no nginx, and a fake apt-get ("works",
    "install-fails", "update-fails") installs it. `as_vllm_user`: vLLM drops to
    serving.VLLM_UID as in a pod (needs root; the fake vLLM then lives where that uid can run
    it); else it keeps the test's uid."""
    nginx_dir = Path(nginx_binary(nginx)).parent
    if as_vllm_user:
        if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
            pytest.skip("dropping to the vLLM uid needs root and /usr/bin/python3")
        tmp_path = Path(tempfile.mkdtemp(prefix="llm-endpoint-pod-"))
        tmp_path.chmod(0o777)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bin_dir.chmod(0o755)
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python="/usr/bin/python3" if as_vllm_user else sys.executable))
    fake.chmod(0o755)
    conf_dir, state_dir = tmp_path / "etc", tmp_path / "run"
    public = free_port()
    internal = int(vllm_args[vllm_args.index("--port") + 1])
    conf = bootstrap.pod_proxy_config(
        conf_dir=str(conf_dir),
        state_dir=str(state_dir),
        listen_port=public,
        listen_address="127.0.0.1",
        upstream_port=internal,
    )
    path = f"{bin_dir}:{nginx_dir}:/usr/bin:/bin"
    extra: dict[str, str] = {}
    if apt_mode is not None:
        apt = bin_dir / "apt-get"
        apt.write_text(
            FAKE_APT.format(
                log=tmp_path / "apt.log", mode=apt_mode, nginx=nginx_binary(nginx), bin=bin_dir
            )
        )
        apt.chmod(0o755)
        os_release = tmp_path / "os-release"
        os_release.write_text("ID=ubuntu\nVERSION_ID=22.04\nVERSION_CODENAME=jammy\n")
        path = f"{bin_dir}:/usr/bin:/bin"  # no nginx in the image
        extra["LLM_ENDPOINT_OS_RELEASE"] = str(os_release)
    env = {
        **extra,
        "PATH": path,
        "LLM_ENDPOINT_BOOTSTRAP_B64": bootstrap.b64(bootstrap.render_bootstrap()),
        "LLM_ENDPOINT_PROXY_CONF_B64": bootstrap.b64(conf),
        "LLM_ENDPOINT_CONF_DIR": str(conf_dir),
        "LLM_ENDPOINT_STATE_DIR": str(state_dir),
        "FAKE_VLLM_ARGV": str(tmp_path / "argv.json"),
        "LLM_ENDPOINT_VLLM_UID": str(serving.VLLM_UID) if as_vllm_user else str(os.getuid()),
        **{
            k: str(tmp_path / "vllm-home" / v.removeprefix(serving.VLLM_HOME).lstrip("/"))
            for k, v in serving.vllm_container_env().items()
            if v.startswith(serving.VLLM_HOME)
        },
        "LLM_ENDPOINT_VLLM_MAX_RESTARTS": "1",
        "LLM_ENDPOINT_VLLM_RESTART_DELAY_S": "0",
    }
    if key is not None:
        env["VLLM_API_KEY"] = key
    log = tmp_path / "pod.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            container_argv(vllm_args, custom_image=custom_image),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Pod(proc, f"http://127.0.0.1:{public}", conf_dir, tmp_path / "argv.json", log)


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.proc.poll() is None:
            os.killpg(pod.proc.pid, signal.SIGTERM)
            try:
                pod.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait(timeout=10)
        if pod.conf_dir.parent.name.startswith("llm-endpoint-pod-"):  # made by as_vllm_user
            shutil.rmtree(pod.conf_dir.parent, ignore_errors=True)


def wait_serving(pod: Pod) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert pod.proc.poll() is None, pod.log.read_text()
        try:
            if requests.get(pod.url + "/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail("the pod's proxy never served /health:\n" + pod.log.read_text())


@pytest.mark.parametrize("nginx", NGINX_BUILDS)
@pytest.mark.parametrize("custom_image", [False, True], ids=["stock-image", "custom-image"])
def test_bootstrap_serves_only_health_and_keyed_v1_through_nginx(
    tmp_path: Path, pods, custom_image: bool, nginx: str
):
    """With the machine's nginx and with 1.18 (Ubuntu 22.04's, what the stock vLLM image gets
    from its archive; it has no `-e`)."""
    args = SERVING.vllm_args(port=free_port())
    pod = start_pod(
        tmp_path, key=ENDPOINT_KEY, vllm_args=args, custom_image=custom_image, nginx=nginx
    )
    pods.append(pod)
    wait_serving(pod)

    import json

    assert json.loads(pod.argv_file.read_text()) == ["serve", *args]
    assert requests.get(pod.url + "/health", timeout=5).status_code == 200
    assert requests.get(pod.url + "/v1/models", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert requests.get(pod.url + "/v1/models", headers=wrong, timeout=5).status_code == 401
    right = {"Authorization": f"Bearer {ENDPOINT_KEY}"}
    ok = requests.get(pod.url + "/v1/models", headers=right, timeout=5)
    assert ok.status_code == 200 and ok.text == "vllm /v1/models"
    metrics = requests.get(pod.url + "/metrics", headers=right, timeout=5)
    assert metrics.status_code == 200 and metrics.text == "vllm /metrics"  # key holders only
    assert requests.get(pod.url + "/metrics", timeout=5).status_code == 401
    for open_in_vllm in ("/metrics/", "/invocations", "/tokenize", "/version"):
        blocked = requests.get(pod.url + open_in_vllm, headers=right, timeout=5)
        assert blocked.status_code in (403, 404), open_in_vllm
        assert "vllm" not in blocked.text
    auth = pod.conf_dir / "proxy-auth.conf"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert stat.S_IMODE(pod.conf_dir.stat().st_mode) == 0o700
    assert ENDPOINT_KEY not in pod.log.read_text()

    # vLLM that dies is restarted, a bounded number of times (1 here); then the pod stops
    # instead of reloading the model forever (RunPod then shows it EXITED).
    pid_file = Path(str(pod.argv_file) + ".pid")
    first = int(pid_file.read_text())
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        not pid_file.exists() or pid_file.read_text() in ("", str(first))
    ):
        time.sleep(0.1)
    assert "restart 1 of 1" in pod.log.read_text()
    wait_serving(pod)  # the restarted vLLM serves again behind the same proxy
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert pod.proc.wait(timeout=15) != 0
    assert "after 1 restart(s); giving up" in pod.log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(pod.url + "/health", timeout=5)


def test_stock_image_without_nginx_installs_the_pinned_release_nginx(tmp_path: Path, pods):
    if shutil.which("nginx", path="/usr/bin:/bin"):
        pytest.skip("nginx is on /usr/bin here, so the image cannot be made to lack it")
    args = SERVING.vllm_args(port=free_port())
    pod = start_pod(
        tmp_path, key=ENDPOINT_KEY, vllm_args=args, custom_image=False, apt_mode="works"
    )
    pods.append(pod)
    wait_serving(pod)
    apt = (tmp_path / "apt.log").read_text()
    assert "install -y -qq --no-install-recommends nginx=1.18.*" in apt  # jammy's nginx
    right = {"Authorization": f"Bearer {ENDPOINT_KEY}"}
    assert requests.get(pod.url + "/v1/models", headers=right, timeout=5).status_code == 200


@pytest.mark.parametrize("mode", ["install-fails", "update-fails"])
def test_a_failed_nginx_install_is_a_failed_start_with_the_reason_in_the_log(
    tmp_path: Path, pods, mode: str
):
    if shutil.which("nginx", path="/usr/bin:/bin"):
        pytest.skip("nginx is on /usr/bin here, so the image cannot be made to lack it")
    args = SERVING.vllm_args(port=free_port())
    pod = start_pod(tmp_path, key=ENDPOINT_KEY, vllm_args=args, custom_image=False, apt_mode=mode)
    pods.append(pod)
    assert pod.proc.wait(timeout=15) != 0
    log = pod.log.read_text()
    assert "could not install nginx" in log or "could not install nginx=1.18.*" in log
    assert "E: " in log  # apt-get's own reason, in the pod log
    assert not pod.argv_file.exists()  # vLLM never started without its proxy


def test_vllm_runs_as_the_unprivileged_user_with_its_own_home(tmp_path: Path, pods):
    args = SERVING.vllm_args(port=free_port())
    pod = start_pod(
        tmp_path, key=ENDPOINT_KEY, vllm_args=args, custom_image=False, as_vllm_user=True
    )
    pods.append(pod)
    wait_serving(pod)
    import json

    who = json.loads(Path(str(pod.argv_file) + ".who").read_text())
    assert who["uid"] == serving.VLLM_UID
    assert who["home"].endswith("vllm-home") and who["hf_home"].endswith(".cache/huggingface")
    assert Path(who["hf_home"]).stat().st_uid == serving.VLLM_UID
    right = {"Authorization": f"Bearer {ENDPOINT_KEY}"}
    assert requests.get(pod.url + "/v1/models", headers=right, timeout=5).status_code == 200
    # The key file stays root's: the unprivileged vLLM cannot read nginx's copy of the key.
    assert (pod.conf_dir / "proxy-auth.conf").stat().st_uid == 0


def test_bootstrap_refuses_to_start_without_a_key(tmp_path: Path, pods):
    pod = start_pod(tmp_path, key=None, vllm_args=SERVING.vllm_args(port=free_port()))
    pods.append(pod)
    assert pod.proc.wait(timeout=15) != 0
    assert "VLLM_API_KEY is empty" in pod.log.read_text()
    assert not pod.argv_file.exists()


def test_bootstrap_refuses_vllm_on_a_public_address(tmp_path: Path, pods):
    args = SERVING.vllm_args(host="0.0.0.0", port=free_port())  # noqa: S104 (the bad case)
    pod = start_pod(tmp_path, key=ENDPOINT_KEY, vllm_args=args)
    pods.append(pod)
    assert pod.proc.wait(timeout=15) != 0
    assert "must be started with --host 127.0.0.1" in pod.log.read_text()
    assert not pod.argv_file.exists()


def test_bootstrap_refuses_an_nginx_older_than_1_18(tmp_path: Path, pods):
    old = tmp_path / "old-nginx"
    old.mkdir()
    (old / "nginx").write_text("#!/bin/sh\necho 'nginx version: nginx/1.16.1' >&2\n")
    (old / "nginx").chmod(0o755)
    pod = start_pod(
        tmp_path,
        key=ENDPOINT_KEY,
        vllm_args=SERVING.vllm_args(port=free_port()),
        nginx=str(old / "nginx"),
    )
    pods.append(pod)
    assert pod.proc.wait(timeout=15) != 0
    assert "nginx 1.16 is older than 1.18" in pod.log.read_text()
    assert not pod.argv_file.exists()


def test_the_bootstrap_never_passes_e_to_nginx():
    """nginx before 1.19.5 exits on `-e` (docs/facts/nginx.md, "Versions"); the test above runs
    the bootstrap with 1.18 for real, this one says why in one line."""
    lines = [line for line in bootstrap.render_bootstrap().splitlines() if "nginx_args=" in line]
    assert lines and all(" -e " not in line for line in lines)


def test_entrypoint_stub_refuses_to_start_without_the_bootstrap(tmp_path: Path):
    done = subprocess.run(
        [str(IMAGE_DIR / "entrypoint.sh"), "--model", "x"],
        env={"PATH": "/usr/bin:/bin", "LLM_ENDPOINT_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=15,
    )
    assert done.returncode != 0
    assert "LLM_ENDPOINT_BOOTSTRAP_B64" in done.stderr
