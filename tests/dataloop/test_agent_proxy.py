"""dtlpy's own token renewal inside a Dataloop pod (DTLPY_REFRESH_TOKEN_METHOD=proxy) against
the gate's agent-proxy endpoint: `GET http://localhost:$AGENT_PROXY_MAIN_PORT/get_jwt` with
`X-Get-Jwt-Secret`, answered `{"jwt": ...}`, as cliptune's DataloopAuth::AgentProxy reads it.
"""
import urllib.parse

import pytest

from conftest import Gate


def _port(gate):
    return str(urllib.parse.urlparse(gate.url).port)


@pytest.fixture
def proxy_env(monkeypatch, dl):
    """The pod's variables, and the shared login put back afterwards."""
    saved = dl.token()
    monkeypatch.setenv("DTLPY_REFRESH_TOKEN_METHOD", "proxy")
    yield monkeypatch
    monkeypatch.delenv("DTLPY_REFRESH_TOKEN_METHOD")
    dl.login_token(saved)


def test_dtlpy_renews_its_token_through_the_agent_proxy(dl, gate, proxy_env):
    proxy_env.setenv("AGENT_PROXY_MAIN_PORT", _port(gate))
    proxy_env.delenv("GET_JWT_ENDPOINT_SECRET", raising=False)
    before = dl.token()
    assert dl.client_api.renew_token() is True
    assert dl.token() != before
    # The proxy's JWT is the project user's: the gate takes it.
    project = dl.projects.get(project_id=gate.info["projectId"])
    assert project.id == gate.info["projectId"]


def test_the_proxy_checks_the_secret(dl, proxy_env):
    g = Gate("--jwt-secret", "pod-secret")
    try:
        assert g.info["jwtSecretRequired"] is True
        proxy_env.setenv("AGENT_PROXY_MAIN_PORT", _port(g))
        proxy_env.setenv("GET_JWT_ENDPOINT_SECRET", "wrong")
        assert dl.client_api.renew_token() is False
        proxy_env.setenv("GET_JWT_ENDPOINT_SECRET", "pod-secret")
        assert dl.client_api.renew_token() is True
        calls = [c for c in g.report()["calls"] if c["path"] == "/get_jwt"]
        assert [c["status"] for c in calls] == [401, 200]
        assert g.report()["unrecognised"] == 0
    finally:
        g.stop()
