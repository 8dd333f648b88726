"""Starts the fake Dataloop gate (the `cliptune-gate` binary) and points the real dtlpy at it.

dtlpy keeps its login state in a cookie under DATALOOP_PATH, read when dtlpy is imported, so
the variable is set here, before any test module imports dtlpy: nothing touches ~/.dataloop.
"""
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import pytest

_STATE = tempfile.mkdtemp(prefix="cliptune-dtlpy-")
os.environ["DATALOOP_PATH"] = _STATE
# A developer's proxy settings must not send loopback traffic elsewhere.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gate_binary():
    path = os.environ.get("CLIPTUNE_GATE_BIN") or os.path.join(ROOT, "target", "debug", "cliptune-gate")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no gate binary at {path}: run scripts/dtlpy-test.sh (it builds one)")
    return path


class Gate:
    """A running cliptune-gate process and its side door (/_gate/...)."""

    def __init__(self, *args):
        """`args`: more flags of the binary (e.g. `--jwt-secret S`)."""
        self.log = open(os.path.join(_STATE, f"gate-{time.monotonic_ns()}.log"), "w+")
        self.proc = subprocess.Popen([gate_binary(), "--addr", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            pytest.fail(f"cliptune-gate did not print its URL (got {line!r}); log:\n{self.log_text()}")
        self.url = line
        self.info = self.control("GET", "info")

    def control(self, method, what, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.info_host()}/_gate/{what}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def info_host(self):
        return self.url[: -len("/api/v1")]

    def report(self):
        return self.control("GET", "report")

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def gate():
    g = Gate()
    yield g
    g.stop()


@pytest.fixture
def fresh_gate():
    g = Gate()
    yield g
    g.stop()


@pytest.fixture(scope="session")
def dl(gate):
    """dtlpy, logged in to the gate as its bot user (dtlpy's own login call)."""
    import dtlpy

    dtlpy.add_environment(environment=gate.url, gate_url=gate.info["host"], alias="cliptune-fake-gate",
                          verify_ssl=False, url=gate.info["host"] + "/")
    dtlpy.setenv(gate.url)
    assert dtlpy.login_m2m(email=gate.info["botUser"], password=gate.info["botPassword"]) is True
    return dtlpy
