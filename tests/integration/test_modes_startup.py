"""Service start-up with bad input: one clear line and a non-zero exit, for flags and environment alike."""

import os
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402

SERVICES = ("sandnet-linkd", "sandnet-stackd", "sandnet-sockd")


def run_service(name: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(netlab.BIN_DIR, name), *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize("argv, env", [
    (["--network", "bogus"], {}),
    ([], {"SANDNET_SOCKD_NETWORK": "bogus"}),
])
def test_sockd_unknown_mode_one_line(argv, env):
    result = run_service("sandnet-sockd", *argv, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "invalid network mode 'bogus': choose one of sandbox, host, none" in result.stderr


def test_stackd_unknown_mode_one_line():
    result = run_service("sandnet-stackd", "--network", "bogus", "--listen", "unix:/tmp/sn-unused.sock")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "invalid --network 'bogus'" in result.stderr


def test_sockd_unreachable_stackd_exits_1():
    with tempfile.TemporaryDirectory(prefix="sandnet-startup-") as workdir:
        result = run_service("sandnet-sockd", "--stack", f"unix:{workdir}/absent.sock",
                             "--listen", f"unix:{workdir}/sockd.sock", "--stack-timeout", "1")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("sandnet-sockd:")]
    assert len(errors) == 1
    assert "stackd is not reachable" in errors[0]


@pytest.mark.parametrize("service", SERVICES)
def test_help_names_env_and_defaults(service):
    result = run_service(service, "--help")
    assert result.returncode == 0
    prefix = "SANDNET_" + service.removeprefix("sandnet-").upper()
    assert f"{prefix}_LISTEN_MODE" in result.stdout
    assert "--listen-owner" in result.stdout
    assert "default" in result.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_invalid_listen_mode_one_line(service):
    result = run_service(service, "--listen-mode", "999")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "invalid mode '999'" in result.stderr
