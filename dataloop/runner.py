"""cliptune's Dataloop runner: the one piece of Python in the product.

Dataloop's agent instantiates `Runner` (the manifest's `className`) in the service's pod and
calls one method per execution, with the inputs as dtlpy entities and, because the methods
declare them, a `progress` object and the execution's `context`. Each method only forwards:
it hands the platform's execution id and the inputs (as ids) to the Rust worker
(`cliptune serve --attached`, started once per runner on a loopback port), relays the
worker's progress to `progress.update(...)` until the node ends, and returns the node's
outputs as dtlpy entities, typed by the function's output ports in `dataloop.json`. The
worker does the work; the agent owns the execution record (status, output).

Environment (all optional): CLIPTUNE_BIN (the binary; default `cliptune` on PATH),
CLIPTUNE_HOME (the worker's work directory; default a new temporary directory),
CLIPTUNE_START_SECONDS (how long the worker may take to be ready; default 120),
CLIPTUNE_POLL_SECONDS (longest wait between progress relays; default 5, at most 10).
Credentials: inside a pod the worker reads the agent's variables itself
(DTLPY_REFRESH_TOKEN_METHOD=proxy, AGENT_PROXY_MAIN_PORT, INTERNAL_REQUESTS_URL); anywhere
else it gets this process's dtlpy token through its environment, never a file.
"""
import atexit
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import dtlpy as dl

_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataloop.json")


def _output_ports():
    """function name -> [(port name, port type)], from every module of the manifest."""
    with open(_MANIFEST) as f:
        manifest = json.load(f)
    ports = {}
    for module in manifest.get("components", {}).get("modules", []):
        for function in module.get("functions", []):
            ports[function["name"]] = [(o["name"], o["type"]) for o in function.get("output", [])]
    return ports


def _ref(value):
    """A dtlpy entity (or a list of them) as the id(s) the worker reads; JSON as is."""
    if isinstance(value, (list, tuple)):
        return [_ref(v) for v in value]
    if isinstance(value, dl.Filters):
        return value.prepare()
    if hasattr(value, "id") and not isinstance(value, dict):
        return value.id
    return value


def _id(value):
    """The id in a worker output value: a bare id or Dataloop's {"model_id": ...} form."""
    if isinstance(value, dict):
        for key in ("model_id", "dataset_id", "item_id", "id"):
            if key in value:
                return value[key]
    return value


_ENTITY = {
    "Model": lambda v: dl.models.get(model_id=_id(v)),
    "Dataset": lambda v: dl.datasets.get(dataset_id=_id(v)),
    "Item": lambda v: dl.items.get(item_id=_id(v)),
}


def _entity(port_type, value):
    if value is None:
        return None
    if port_type.endswith("[]"):
        return [_entity(port_type[:-2], v) for v in value]
    convert = _ENTITY.get(port_type)
    return convert(value) if convert else value


class WorkerError(RuntimeError):
    """The worker could not start, or a node failed (its message is the worker's error)."""


class Runner(dl.BaseServiceRunner):
    def __init__(self, model_entity=None):
        self._model = model_entity
        self._ports = _output_ports()
        self._proc = None
        self._url = None
        self._token = secrets.token_urlsafe(32)
        project = os.environ.get("DATALOOP_PROJECT_ID") or getattr(model_entity, "project_id", None)
        if project:
            self._start(project)

    # ---- the manifest's functions: forwarding only ----

    def create_model(self, base_model, dataset, train_subset=None, validation_subset=None,
                     model_configuration=None, progress=None, context=None):
        return self._call("create_model", {
            "base_model": base_model, "dataset": dataset, "train_subset": train_subset,
            "validation_subset": validation_subset, "model_configuration": model_configuration,
        }, progress, context)

    def train_model(self, model, progress=None, context=None):
        return self._call("train_model", {"model": model}, progress, context)

    def embed_items(self, items, progress=None, context=None):
        return self._call("embed_items", {"items": items, "model": self._model}, progress, context)

    def embed_dataset(self, dataset, filters=None, progress=None, context=None):
        return self._call("embed_dataset", {"dataset": dataset, "filters": filters, "model": self._model},
                          progress, context)

    # ---- plumbing ----

    def _call(self, function, inputs, progress, context):
        execution_id = getattr(context, "execution_id", None)
        if not execution_id:
            raise ValueError(f"{function}: no platform execution in the context: cliptune runs nodes "
                             "only for executions the agent hands over (context.execution_id)")
        if self._proc is None:
            project = getattr(getattr(context, "project", None), "id", None) or \
                (context.execution_dict or {}).get("projectId")
            if not project:
                raise ValueError(f"{function}: the project is unknown: set DATALOOP_PROJECT_ID")
            self._start(project)
        body = {"execution_id": execution_id, "function": function,
                "input": {k: _ref(v) for k, v in inputs.items() if v is not None}}
        view = self._request("POST", "/attached", body)
        poll = min(float(os.environ.get("CLIPTUNE_POLL_SECONDS", "5")), 10.0)
        while view["state"] in ("queued", "running"):
            try:
                self.kill_event()
            except InterruptedError:
                self._request("POST", f"/attached/{execution_id}/terminate")
                raise
            if progress is not None:
                # Sent on every poll, changed or not: the platform sees the execution alive.
                # Below 100: completion is the agent's to report, when this method returns.
                progress.update(progress=min(view["percent"], 99), message=view["message"])
            view = self._request("GET", f"/attached/{execution_id}?wait={poll}")
        if view["state"] != "success":
            raise WorkerError(f"{function} {view['state']}: {view.get('error')}")
        outputs = [_entity(kind, (view["output"] or {}).get(name)) for name, kind in self._ports[function]]
        if not outputs:
            return None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _start(self, project):
        binary = os.environ.get("CLIPTUNE_BIN") or shutil.which("cliptune")
        if not binary or not os.access(binary, os.X_OK):
            raise WorkerError("the cliptune binary was not found: put it on PATH or set CLIPTUNE_BIN")
        home = os.environ.get("CLIPTUNE_HOME") or tempfile.mkdtemp(prefix="cliptune-runner-")
        env = dict(os.environ, CLIPTUNE_API_TOKEN=self._token, DATALOOP_PROJECT_ID=project,
                   CLIPTUNE_ATTACHED="true", CLIPTUNE_BACKEND="dataloop", CLIPTUNE_HOME=home)
        env.setdefault("DATALOOP_GATE_URL", dl.client_api.environment)
        if "DATALOOP_SERVICE_ID" in env:
            env.setdefault("CLIPTUNE_SERVICE_ID", env["DATALOOP_SERVICE_ID"])
        in_pod = os.environ.get("DTLPY_REFRESH_TOKEN_METHOD") == "proxy"
        own = any(k in os.environ for k in ("DATALOOP_API_KEY", "DATALOOP_TOKEN", "DATALOOP_BOT_USERNAME"))
        if not in_pod and not own:
            env["DATALOOP_TOKEN"] = dl.client_api.token
            if dl.client_api.refresh_token:
                env["DATALOOP_REFRESH_TOKEN"] = dl.client_api.refresh_token
        self._log = open(os.path.join(home, "worker.log"), "a+")
        self._proc = subprocess.Popen([binary, "--json", "serve", "--addr", "127.0.0.1:0"], env=env,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True)
        atexit.register(self.close)
        # `--json` prints one JSON object (over several lines) once it listens.
        text = ""
        for line in self._proc.stdout:
            text += line
            try:
                self._url = json.loads(text)["listening"]
                break
            except ValueError:
                continue
        if self._url is None:
            self._proc.wait(timeout=10)
            raise WorkerError(f"cliptune serve did not start (exit {self._proc.returncode}): {self._log_tail()}")
        deadline = time.monotonic() + float(os.environ.get("CLIPTUNE_START_SECONDS", "120"))
        while True:
            try:
                self._request("GET", "/ready")
                return
            except WorkerError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise WorkerError(f"cliptune serve is not ready: {self._log_tail()}")
                time.sleep(0.2)

    def _request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._url + path, data=data, method=method, headers={
            "authorization": f"Bearer {self._token}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise WorkerError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None
        except (urllib.error.URLError, ConnectionError) as e:
            code = self._proc.poll()
            why = f"the worker exited ({code}): {self._log_tail()}" if code is not None else str(e)
            raise WorkerError(f"{method} {path}: {why}") from None

    def _log_tail(self):
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-2000:]

    def close(self):
        """Stops the worker (SIGTERM: running nodes stop at a step boundary)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
