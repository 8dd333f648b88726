"""dataloop/runner.py driven the way Dataloop's agent drives it, against the fake gate.

The agent's part is played here, from what dtlpy shows of it: it instantiates the runner
class, takes the service's queued executions (one at a time, each by exactly one replica),
marks one `in-progress`, calls the method with dtlpy entities, a `progress` object (whose
updates it posts to the execution) and the `context`, then posts `success` with the output
or `failed`. cliptune's worker (started by the runner, `--attached`) does the work: the
gate's records show what the platform would see.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "dataloop"))

SERVICE = "cliptune"
_DIRS = []


def scratch(prefix):
    """A temporary directory removed after this module (ViT-B/32 runs leave gigabytes)."""
    d = tempfile.mkdtemp(prefix=prefix)
    _DIRS.append(d)
    return d


@pytest.fixture(scope="module", autouse=True)
def _clean_up():
    yield
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def cliptune_bin():
    path = os.environ.get("CLIPTUNE_BIN") or os.path.join(ROOT, "target", "debug", "cliptune")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no cliptune binary at {path}: run scripts/dtlpy-test.sh (it builds one)")
    return path


@pytest.fixture(scope="module")
def world(dl, gate):
    """A captioned dataset (demo shapes), a tiny base model with real weights, two services."""
    data = scratch("cliptune-runner-data-")
    run = lambda *a: subprocess.run([cliptune_bin(), *a], check=True, capture_output=True, text=True).stdout
    run("demo", "data", "--out", data, "--count", "24", "--size", "32", "--seed", "3")
    run("models", "create", "--arch", os.path.join(data, "arch.json"), "--name", "tiny", "--seed", "0",
        "--out", os.path.join(data, "ckpt"))
    project = dl.projects.get(project_id=gate.info["projectId"])
    dataset = project.datasets.create(dataset_name=f"runner-shapes-{time.monotonic_ns()}")
    with open(os.path.join(data, "captions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        dataset.items.upload(local_path=os.path.join(data, r["file"]), item_description=r["caption"],
                             item_metadata={"user": {"split": r["subset"]}})
    base = gate.control("POST", "models", {"name": f"tiny-base-{time.monotonic_ns()}", "status": "pre-trained",
                                           "configuration": {"embeddings_size": 64},
                                           "artifactsDir": os.path.join(data, "ckpt")})
    service = gate.control("POST", "services", {"name": f"{SERVICE}-{time.monotonic_ns()}"})
    other = gate.control("POST", "services", {"name": f"another-app-{time.monotonic_ns()}"})
    subsets = {split: {"filter": {"$and": [{"hidden": False}, {"type": "file"}, {"metadata.user.split": split}]}}
               for split in ("train", "validation")}
    return {"project": project, "dataset": dataset, "base": dl.models.get(model_id=base["id"]),
            "service": service["id"], "other": other["id"], "subsets": subsets, "items": len(rows),
            "dir": data}


class Progress:
    """The agent's progress object: each update goes to the execution, as the agent posts it."""

    def __init__(self, dl, execution_id, alive):
        self.dl, self.execution_id, self.alive = dl, execution_id, alive
        self.updates = []

    def update(self, status=None, progress=0, message=None, output=None, duration=None, action=None):
        self.updates.append((progress, message))
        if self.alive():
            self.dl.executions.progress_update(execution_id=self.execution_id, status="in-progress",
                                               percent_complete=int(progress), message=message)


class Replica:
    """One pod of the service: a runner and the agent loop that feeds it."""

    claim_lock = threading.Lock()

    def __init__(self, dl, world, name, env, model_entity=None):
        import runner
        self.dl, self.world, self.name = dl, world, name
        home = scratch(f"cliptune-{name}-")
        saved = dict(os.environ)
        for k in ("DATALOOP_TOKEN", "DATALOOP_API_KEY", "DATALOOP_BOT_USERNAME"):
            os.environ.pop(k, None)
        os.environ.update(env, CLIPTUNE_BIN=cliptune_bin(), CLIPTUNE_HOME=home,
                          DATALOOP_PROJECT_ID=world["project"].id, CLIPTUNE_POLL_SECONDS="0.3",
                          CLIPTUNE_DEVICE="cpu", CLIPTUNE_SERVICE_ID=world["service"])
        try:
            self.runner = runner.Runner(**({"model_entity": model_entity} if model_entity else {}))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.alive = True
        self.handled, self.progress = [], {}
        self.busy_with = None

    def claim(self):
        """The platform's queue: the oldest created/rerun execution of the service, to one replica."""
        with Replica.claim_lock:
            f = self.dl.Filters(resource=self.dl.FiltersResource.EXECUTION, field="serviceId",
                                values=self.world["service"])
            for e in reversed(list(self.dl.executions.list(filters=f).all())):
                if e.latest_status["status"] in ("created", "rerun"):
                    self.dl.executions.progress_update(execution_id=e.id, status="in-progress")
                    return self.dl.executions.get(execution_id=e.id)
        return None

    def run(self, execution):
        """Calls the method with entities, progress and context; posts the outcome."""
        self.busy_with = execution.id
        progress = Progress(self.dl, execution.id, lambda: self.alive)
        self.progress[execution.id] = progress
        kwargs = {}
        for name, value in (execution.input or {}).items():
            if isinstance(value, dict) and "model_id" in value:
                value = self.dl.models.get(model_id=value["model_id"])
            elif isinstance(value, dict) and "dataset_id" in value:
                value = self.dl.datasets.get(dataset_id=value["dataset_id"])
            elif isinstance(value, list) and value and isinstance(value[0], dict) and "item_id" in value[0]:
                value = [self.dl.items.get(item_id=v["item_id"]) for v in value]
            kwargs[name] = value
        context = self.dl.Context(execution_dict=execution.to_json(), project=self.world["project"])
        try:
            result = getattr(self.runner, execution.function_name)(**kwargs, progress=progress, context=context)
        except Exception as e:  # the agent reports any exception as the execution's failure
            if self.alive:
                self.dl.executions.progress_update(execution_id=execution.id, status="failed", message=str(e))
            return e
        finally:
            self.busy_with = None
        if self.alive:
            self.handled.append(execution.id)
            self.dl.executions.progress_update(execution_id=execution.id, status="success",
                                               percent_complete=100, output=_output(result))
        return result

    def loop(self, stop):
        while not stop.is_set() and self.alive:
            e = self.claim()
            if e is None:
                time.sleep(0.2)
            else:
                self.run(e)

    def kill(self):
        """kill -9 of the pod: the worker dies, the agent reports nothing more."""
        self.alive = False
        self.runner._proc.kill()
        self.runner._proc.wait(timeout=10)


def _output(result):
    def one(v):
        if hasattr(v, "id") and not isinstance(v, dict):
            return {"model_id": v.id} if type(v).__name__ == "Model" else {"id": v.id}
        return v
    if isinstance(result, tuple):
        return [one(v) for v in result]
    return one(result)


def _execute(dl, world, function, inputs, service=None):
    return dl.executions.create(service_id=service or world["service"], function_name=function,
                                project_id=world["project"].id, execution_input=inputs)


def _models(result):
    return list(result) if isinstance(result, tuple) else [result]


def _create_input(world, config):
    return {"base_model": {"model_id": world["base"].id}, "dataset": {"dataset_id": world["dataset"].id},
            "train_subset": world["subsets"]["train"], "validation_subset": world["subsets"]["validation"],
            "model_configuration": config}


def pod_env(gate):
    """What the agent gives a pod: no credentials, a local proxy that hands out JWTs, and the
    gate's internal address. (The gate serves /get_jwt on its own port.)"""
    port = gate.info["host"].rsplit(":", 1)[1]
    return {"DTLPY_REFRESH_TOKEN_METHOD": "proxy", "AGENT_PROXY_MAIN_PORT": port,
            "INTERNAL_REQUESTS_URL": gate.url}


def test_create_train_update_variable_embed_through_the_runner(dl, gate, world):
    replica = Replica(dl, world, "solo", pod_env(gate))
    try:
        config = {"num_epochs": 2, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 1e-3,
                  "early_stopping": False}
        created = replica.run(replica_claim(replica, _execute(dl, world, "create_model",
                                                              _create_input(world, config))))
        new = _models(created)[0]
        assert new.status == "created" and new.id != world["base"].id, created
        assert new.configuration["num_epochs"] == 2

        e = _execute(dl, world, "train_model", {"model": {"model_id": new.id}})
        trained = replica.run(replica_claim(replica, e))
        assert not isinstance(trained, Exception), trained
        trained = _models(trained)[0]
        assert trained.id == new.id and dl.models.get(model_id=new.id).status == "trained"
        record = dl.executions.get(execution_id=e.id)
        assert record.latest_status["status"] == "success"
        statuses = [s["status"] for s in record.status_log]
        assert statuses[0] == "created" and statuses[-1] == "success" and "in-progress" in statuses
        relayed = replica.progress[e.id].updates
        assert all(p < 100 for p, _ in relayed) and any(p > 0 for p, _ in relayed), relayed
        assert any("epoch" in (m or "") for _, m in relayed), relayed

        # The built-in updateVariable node is the platform's: it points the variable at the model.
        pipeline = dl.pipelines.get(pipeline_id=gate.control("POST", "pipelines", {
            "name": f"CLIP Fine-tuning {time.monotonic_ns()}", "variables": [
                {"name": "Newest CLIP model", "type": "Model", "value": world["base"].id}]})["id"])
        {v.name: v for v in pipeline.variables}["Newest CLIP model"].value = trained.id
        pipeline.update()

        # The embedding service is deployed with the newest model as its init input.
        newest = dl.models.get(model_id={v.name: v.value for v in dl.pipelines.get(
            pipeline_id=pipeline.id).variables}["Newest CLIP model"])
        embedder = Replica(dl, world, "embed", pod_env(gate), model_entity=newest)
        try:
            e = _execute(dl, world, "embed_dataset", {"dataset": {"dataset_id": world["dataset"].id}})
            out = embedder.run(replica_claim(embedder, e))
            assert not isinstance(out, Exception), out
            assert dl.executions.get(execution_id=e.id).latest_status["status"] == "success"
            vectors = gate_vectors(dl, world["project"].id, trained.id)
            assert len(vectors) == world["items"], f"{len(vectors)} vectors for {world['items']} items"
        finally:
            embedder.runner.close()
    finally:
        replica.runner.close()
    assert_nothing_refused(gate)


def replica_claim(replica, execution):
    """The queue hands this execution (created just now) to this replica."""
    claimed = replica.claim()
    assert claimed is not None and claimed.id == execution.id, (claimed, execution.id)
    return claimed


def gate_vectors(dl, project_id, model_id):
    """The model's feature set and its vectors, read with dtlpy's own request plumbing."""
    def query(path, resource, filter):
        body = {"filter": filter, "resource": resource, "page": 0, "pageSize": 1000,
                "context": {"projects": [project_id]}}
        ok, resp = dl.client_api.gen_request(req_type="post", path=path, json_req=body)
        assert ok, resp.text
        return resp.json()["items"]
    sets = query("/features/sets/query", "feature_sets", {"modelId": model_id})
    assert len(sets) == 1, sets
    return query("/features/vectors/query", "feature_vectors", {"featureSetId": sets[0]["id"]})


def assert_nothing_refused(gate):
    report = gate.report()
    refused = [c for c in report["calls"] if c["status"] >= 400]
    unrecognised = [c for c in report["calls"] if c["unrecognised"]]
    assert refused == [] and unrecognised == [], json.dumps(refused + unrecognised, indent=1)


def test_two_replicas_another_service_and_a_kill_9(dl, gate, world):
    # Another app's executions in the same project: one waiting, one long "running".
    theirs = [_execute(dl, world, "train_model", {"model": {"model_id": world["base"].id}}, world["other"]),
              _execute(dl, world, "train", {"model": {"model_id": world["base"].id}}, world["other"])]
    dl.executions.progress_update(execution_id=theirs[1].id, status="in-progress", percent_complete=10)
    time.sleep(6.5)  # older than the replicas' stale limit: only the service filter protects it
    before = [dl.executions.get(execution_id=t.id).to_json() for t in theirs]

    env = {"CLIPTUNE_STALE_SECONDS": "6"}
    a, b = Replica(dl, world, "a", env), Replica(dl, world, "b", env)
    stop = threading.Event()
    try:
        long = {"num_epochs": 40, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 1e-3,
                "early_stopping": False}
        short = dict(long, num_epochs=2)
        # Two models to train, created through the replicas.
        creates = [_execute(dl, world, "create_model", _create_input(world, c)) for c in (long, short)]
        threads = [threading.Thread(target=r.loop, args=(stop,), daemon=True) for r in (a, b)]
        for t in threads:
            t.start()
        models = [wait_success(dl, c.id)["output"] for c in creates]
        ids = [_first_model_id(o) for o in models]
        trains = [_execute(dl, world, "train_model", {"model": {"model_id": i}}) for i in ids]
        # Kill whichever replica runs the long training once it has reported progress.
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            for r in (a, b):
                p = r.progress.get(trains[0].id)
                if r.busy_with == trains[0].id and p and any(0 < pc < 100 for pc, _ in p.updates):
                    victim = r
            time.sleep(0.05)
        assert victim is not None, "the long training never reported progress"
        victim.kill()
        survivor = b if victim is a else a
        for t in trains:
            wait_success(dl, t.id, timeout=600)
    finally:
        stop.set()
        for r in (a, b):
            r.runner.close()

    long_record = dl.executions.get(execution_id=trains[0].id)
    log = [s["status"] for s in long_record.status_log]
    assert "rerun" in log, log
    assert log.count("success") == 1, log
    assert trains[0].id in survivor.handled and trains[0].id not in victim.handled
    for e in creates + trains:
        record = dl.executions.get(execution_id=e.id)
        assert [s["status"] for s in record.status_log].count("success") == 1, record.status_log
        assert sum(e.id in r.handled for r in (a, b)) == 1
    assert dl.models.get(model_id=ids[0]).status == "trained"
    after = [dl.executions.get(execution_id=t.id).to_json() for t in theirs]
    assert after == before, "another service's executions were touched"
    assert_nothing_refused(gate)


def _first_model_id(output):
    first = output[0] if isinstance(output, list) else output
    return first["model_id"]


def wait_success(dl, execution_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        e = dl.executions.get(execution_id=execution_id)
        if e.latest_status["status"] == "success":
            return e.to_json()
        if e.latest_status["status"] == "failed":
            pytest.fail(f"execution {execution_id} failed: {e.latest_status}")
        time.sleep(0.2)
    pytest.fail(f"execution {execution_id} did not succeed within {timeout} s: {e.latest_status}")


def test_an_artifactless_base_model_needs_the_weights_dir(dl, gate, world):
    """Dataloop's marketplace `openai-clip` carries no files: its weights are OpenAI's checkpoint
    named by `model_name`, which the runner image ships in CLIPTUNE_WEIGHTS_DIR."""
    empty = scratch("cliptune-no-artifacts-")
    market = gate.control("POST", "models", {"name": f"openai-clip-{time.monotonic_ns()}", "status": "pre-trained",
                                             "configuration": {"model_name": "ViT-B/32", "embeddings_size": 512},
                                             "artifactsDir": empty})
    assert market["artifacts"] == []
    config = {"num_epochs": 1, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 1e-5,
              "early_stopping": False}
    inputs = dict(_create_input(world, config), base_model={"model_id": market["id"]})

    replica = Replica(dl, world, "no-weights", pod_env(gate))
    try:
        failed = replica.run(replica_claim(replica, _execute(dl, world, "create_model", inputs)))
    finally:
        replica.runner.close()
    assert isinstance(failed, Exception) and "CLIPTUNE_WEIGHTS_DIR" in str(failed) \
        and "ViT-B-32.pt" in str(failed), failed

    weights = scratch("cliptune-weights-")
    # Random weights in OpenAI's architecture: no pretrained ones are reachable here.
    subprocess.run([cliptune_bin(), "models", "create", "--preset", "ViT-B/32", "--name", "b32", "--seed", "0",
                    "--out", os.path.join(weights, "ViT-B-32")], check=True, capture_output=True)
    replica = Replica(dl, world, "weights", dict(pod_env(gate), CLIPTUNE_WEIGHTS_DIR=weights))
    try:
        new = _models(replica.run(replica_claim(replica, _execute(dl, world, "create_model", inputs))))[0]
        trained = replica.run(replica_claim(replica, _execute(dl, world, "train_model",
                                                              {"model": {"model_id": new.id}})))
        assert not isinstance(trained, Exception), trained
        assert dl.models.get(model_id=new.id).status == "trained"
        assert dl.models.get(model_id=new.id).model_artifacts, "the trained model stores its weights"
    finally:
        replica.runner.close()
    embedder = Replica(dl, world, "weights-embed", dict(pod_env(gate), CLIPTUNE_WEIGHTS_DIR=weights),
                       model_entity=dl.models.get(model_id=market["id"]))
    try:
        out = embedder.run(replica_claim(embedder, _execute(dl, world, "embed_dataset",
                                                            {"dataset": {"dataset_id": world["dataset"].id}})))
        assert not isinstance(out, Exception), out
    finally:
        embedder.runner.close()
    vectors = gate_vectors(dl, world["project"].id, market["id"])
    assert len(vectors) == world["items"] and len(vectors[0]["value"]) == 512
