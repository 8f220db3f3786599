"""deploy/docker-compose.yml: validated by docker-compose, and its exact commands run on namespaces here.

No Docker engine runs on our machines, so the compose-commands test plays
the engine's part with the parts it would use:

- `docker-compose config` (with the mode's env file) gives each service's
  command, environment, user, capabilities, network mode and volumes;
- each named volume is a directory with the owner and mode that
  deploy/Dockerfile gives its mount point, and container paths in
  commands and environment are rewritten to those directories (and
  /opt/sandnet, the image's WORKDIR, to this checkout);
- `network_mode: none` is a fresh network namespace, `service:netns` is a
  namespace whose veth is named eth0 as in Docker, and `host` is that same
  namespace, standing in for the host's network;
- `user: root` with `cap_drop: [ALL]` and `cap_add` is root with that
  capability bounding set (setpriv); every other service runs as the image's
  user, uid and gid 10001.

The peer namespace at the far end of the veth plays the rest of the Docker
network and fetches the workload's page with curl.
"""

import contextlib
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402

pytestmark = pytest.mark.netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE_FILE = os.path.join(REPO, "deploy", "docker-compose.yml")
ENV_FILES = {"sandbox": "deploy/.env", "none": "deploy/none.env", "host": "deploy/host.env"}
IMAGE_WORKDIR = "/opt/sandnet"
IMAGE_UID = IMAGE_GID = 10001
# Owner, group and mode of each volume's mount point, as deploy/Dockerfile creates them.
VOLUME_ACCESS = {
    "/run/sandnet/link": (0, IMAGE_GID, 0o2770),
    "/run/sandnet/stack": (IMAGE_UID, IMAGE_GID, 0o755),
    "/run/sandnet/sockets": (IMAGE_UID, IMAGE_GID, 0o755),
}
# The order in which depends_on and the health checks start the services.
START_ORDER = ("linkd", "stackd", "sockd", "workload")
WORKLOAD_PORT = 8000


def image_user_can_run_python() -> bool:
    """Return True if uid 10001 can start this checkout's Python from a process of its own.

    `sandnet run` execs python3 as the already unprivileged user. When the
    interpreter sits under a directory that only root can enter (a pyenv in
    /root, say), that second exec fails, so the workload then runs as root.
    """
    python = os.path.join(netlab.BIN_DIR, "python3")
    probe = subprocess.run(["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_GID}", "--clear-groups",
                            "/bin/sh", "-c", 'exec "$0" -c pass', python], capture_output=True, timeout=30,
                           check=False)
    return probe.returncode == 0


def compose_config(mode: str) -> dict:
    result = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "--env-file", ENV_FILES[mode], "config"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def active_profiles(mode: str) -> set[str]:
    with open(os.path.join(REPO, ENV_FILES[mode])) as env_file:
        for line in env_file:
            name, _, value = line.strip().partition("=")
            if name == "COMPOSE_PROFILES":
                return set(value.split(","))
    return set()


def test_make_compose_check():
    result = subprocess.run(["make", "compose-check"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", sorted(ENV_FILES))
def test_compose_services_per_mode(mode):
    config = compose_config(mode)
    profiles = active_profiles(mode)
    started = {name for name, service in config["services"].items()
               if not service.get("profiles") or profiles & set(service["profiles"])}
    expected = {"sandbox": {"netns", "linkd", "stackd", "sockd", "workload"},
                "none": {"stackd", "sockd", "workload"},
                "host": {"sockd", "workload"}}[mode]
    assert started == expected
    assert config["services"]["workload"]["network_mode"] == "none"
    assert config["services"]["sockd"]["environment"]["SANDNET_SOCKD_NETWORK"] == mode


def test_compose_linkd_privileges():
    linkd = compose_config("sandbox")["services"]["linkd"]
    assert linkd["cap_drop"] == ["ALL"]
    assert sorted(linkd["cap_add"]) == ["NET_ADMIN", "NET_RAW"]
    assert "privileged" not in linkd


class ComposeRun:
    """The services of one compose mode, started the way Docker would on namespaces of this machine."""

    def __init__(self, mode: str, topo, stack: contextlib.ExitStack, workdir: str):
        self.mode = mode
        self.topo = topo
        self.stack = stack
        self.config = compose_config(mode)
        self.profiles = active_profiles(mode)
        self.paths = {IMAGE_WORKDIR: REPO}
        for mount, (uid, gid, mode_bits) in VOLUME_ACCESS.items():
            directory = os.path.join(workdir, os.path.basename(mount))
            os.mkdir(directory)
            os.chown(directory, uid, gid)
            os.chmod(directory, mode_bits)
            self.paths[mount] = directory
        self.processes: dict[str, netlab.ServiceProcess] = {}

    def rewrite(self, text: str) -> str:
        for container_path, host_path in self.paths.items():
            text = text.replace(container_path, host_path)
        return text

    def active(self, name: str) -> bool:
        service = self.config["services"].get(name)
        return service is not None and (not service.get("profiles") or bool(self.profiles & set(service["profiles"])))

    def namespace(self, service: dict) -> netlab.Netns:
        network_mode = service.get("network_mode", "")
        if network_mode in ("service:netns", "host"):
            return self.topo.sandbox
        assert network_mode == "none", f"unexpected network_mode {network_mode!r}"
        return self.stack.enter_context(netlab.Netns())

    def privileges(self, name: str, service: dict) -> list[str]:
        if service.get("user") == "root":
            caps = ",".join(["-all"] + [f"+{cap.lower()}" for cap in service.get("cap_add", [])])
            assert service.get("cap_drop") == ["ALL"]
            return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
        if name == "workload" and not image_user_can_run_python():
            # The image's Python is world-readable; this machine's may not be.
            return []
        return ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_GID}", "--clear-groups"]

    def environment(self, service: dict) -> dict[str, str]:
        env = {name: self.rewrite(str(value)) for name, value in service.get("environment", {}).items()}
        env["PATH"] = netlab.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        env["HOME"] = "/nonexistent"
        return env

    def start(self, name: str) -> None:
        service = self.config["services"][name]
        argv = self.privileges(name, service) + [self.rewrite(arg) for arg in service["command"]]
        env = self.environment(service)
        ns = self.namespace(service)
        if name == "workload":
            self.workload = self.stack.enter_context(
                ns.popen(*argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True))
            self.workload_env = env
            self.workload_ns = ns
            self.stack.callback(self._stop_workload)
            return
        health = env["SANDNET_HEALTH_TARGET"].removeprefix("unix:")
        self.processes[name] = self.stack.enter_context(netlab.ServiceProcess(argv, health, ns=ns, env=env))

    def _stop_workload(self) -> None:
        if self.workload.poll() is None:
            self.workload.terminate()
            try:
                self.workload.wait(10)
            except subprocess.TimeoutExpired:
                self.workload.kill()

    def workload_output(self) -> str:
        self._stop_workload()
        return "--- workload ---\n" + self.workload.stdout.read()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{process.log_text()}" for name, process in self.processes.items())


@contextlib.contextmanager
def compose_topology():
    """A sandbox namespace whose veth is eth0, as in a container, and a peer namespace."""
    netlab.require_root()
    subnet = secrets.randbelow(0xFFFF)
    with netlab.Netns() as sandbox, netlab.Netns() as peer:
        topo = netlab.Topology(sandbox, peer, "eth0", netlab.unique_name("snp"), subnet)
        netlab.veth_pair(sandbox, "eth0", peer, topo.peer_if)
        sandbox.run("ip", "addr", "add", f"{topo.sandbox_ip}/24", "dev", "eth0")
        peer.run("ip", "addr", "add", f"{topo.peer_ip}/24", "dev", topo.peer_if)
        sandbox.run("ip", "route", "add", "default", "via", topo.peer_ip, "dev", "eth0")
        yield topo


def fetch_from_peer(topo, path: str, timeout: float = 30) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + timeout
    while True:
        result = topo.peer.run("curl", "-sS", "-m", "5", f"http://{topo.sandbox_ip}:{WORKLOAD_PORT}/{path}",
                               check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.parametrize("mode", ["sandbox", "host", "none"])
def test_compose_commands_run(mode):
    with compose_topology() as topo, tempfile.TemporaryDirectory(prefix="sandnet-compose-") as workdir, \
            contextlib.ExitStack() as stack:
        os.chmod(workdir, 0o755)
        run = ComposeRun(mode, topo, stack, workdir)
        for name in START_ORDER:
            if run.active(name):
                run.start(name)

        if mode == "none":
            shown = run.workload_ns.run(netlab.BIN_DIR + "/sandnet", "ip", "addr", env={**os.environ,
                                                                                         **run.workload_env})
            assert "eth0" not in shown.stdout
            assert "127.0.0.1/8" in shown.stdout
            result = fetch_from_peer(topo, "pyproject.toml", timeout=3)
            assert result.returncode != 0
            return

        result = fetch_from_peer(topo, "pyproject.toml")
        assert result.returncode == 0, result.stderr + run.logs() + run.workload_output()
        with open(os.path.join(REPO, "pyproject.toml")) as expected:
            assert result.stdout == expected.read()
        for name, process in run.processes.items():
            assert process.process.poll() is None, f"{name} exited:\n{process.log_text()}"
        if mode == "sandbox":
            link_socket = os.path.join(run.paths["/run/sandnet/link"], "linkd.sock")
            assert stat.S_IMODE(os.stat(link_socket).st_mode) == 0o660
            assert os.stat(link_socket).st_gid == IMAGE_GID
