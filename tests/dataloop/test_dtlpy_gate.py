"""The real dtlpy SDK against the fake gate (crates/gate, run as the `cliptune-gate` binary).

Each test drives dtlpy's own repositories and entities, never hand-built requests, so the
gate's request shapes are proven against the client Dataloop ships. The tests share one gate
and one login and build on each other in file order (dataset -> items -> model -> pipeline
-> executions); the last one asserts the gate accepted every request dtlpy sent.
"""
import io
import json
import urllib.error
import urllib.request

import pytest

# The template's default subsets (dataloop.json, "CLIP Fine-tuning"): whole DQL bodies with
# the nested-object form below metadata.
TRAIN_SUBSET = {"filter": {"$and": [{"hidden": False}, {"type": "file"},
                                    {"metadata": {"system": {"tags": {"train": True}}}}]}}
VALIDATION_SUBSET = {"filter": {"$and": [{"hidden": False}, {"type": "file"},
                                         {"metadata": {"system": {"tags": {"validation": True}}}}]}}
CAPTIONS = {"red.png": ("a red square", "train"), "blue.png": ("a blue circle", "train"),
            "green.png": ("a green triangle", "validation"), "grey.png": ("a grey blur", None)}

shared = {}


def test_login_api_key_token_and_bot(dl, gate):
    # An API key is a JWT dtlpy checks with GET /users/me before keeping it.
    dl.login_api_key(api_key=gate.info["apiKey"])
    assert dl.token() == gate.info["apiKey"]
    assert dl.info()["user_email"] == gate.info["botUser"]
    # Back to the bot's own JWT from POST /token?default (login_m2m), then a token login.
    assert dl.login_m2m(email=gate.info["botUser"], password=gate.info["botPassword"], force=True)
    jwt = dl.token()
    assert jwt != gate.info["apiKey"] and not dl.token_expired()
    dl.login_token(jwt)
    assert dl.info()["user_email"] == gate.info["botUser"]


def test_gate_counts_refused_and_unrecognised_requests(fresh_gate):
    # Raw requests: the shared dtlpy login must stay intact. What dtlpy's login_token sends.
    req = urllib.request.Request(fresh_gate.url + "/users/me",
                                 headers={"authorization": "Bearer not-a-token"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    # And a route the gate does not model is counted as such, so the last test's zero means
    # something.
    req = urllib.request.Request(fresh_gate.url + "/projects",
                                 headers={"authorization": "Bearer " + fresh_gate.info["apiKey"]})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404
    report = fresh_gate.report()
    assert (report["refused"], report["unrecognised"]) == (2, 1)


def test_project_and_dataset(dl, gate):
    project = dl.projects.get(project_id=gate.info["projectId"])
    assert project.id == gate.info["projectId"]
    assert project.name == gate.info["projectName"]
    dataset = project.datasets.create(dataset_name="captions")
    assert dataset.name == "captions"
    assert dl.datasets.get(dataset_id=dataset.id).id == dataset.id
    assert project.datasets.get(dataset_name="captions").id == dataset.id
    # The system dataset holding model artifacts is not a user dataset.
    assert [d.name for d in project.datasets.list()] == ["captions"]
    shared["project"], shared["dataset"] = project, dataset


def _png(rgb):
    """A 1x1 PNG; dtlpy only needs bytes with a name."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00" + bytes(rgb)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_item_upload_with_description_and_metadata(dl):
    dataset = shared["dataset"]
    colours = {"red.png": (255, 0, 0), "blue.png": (0, 0, 255), "green.png": (0, 255, 0),
               "grey.png": (128, 128, 128)}
    items = {}
    for name, (caption, subset) in CAPTIONS.items():
        buf = io.BytesIO(_png(colours[name]))
        buf.name = name
        item = dataset.items.upload(local_path=buf, remote_path="/shapes",
                                    item_metadata={"user": {"label": name[:-4]}},
                                    item_description=caption)
        assert item.filename == f"/shapes/{name}"
        assert item.description == caption
        assert item.metadata["user"] == {"label": name[:-4]}
        items[name] = item
    # ML subsets as Dataloop keeps them: metadata.system.tags, written with system=True.
    for name, (_, subset) in CAPTIONS.items():
        if subset:
            item = items[name]
            item.metadata["system"]["tags"] = {subset: True}
            items[name] = item.update(system_metadata=True)
            assert items[name].metadata["system"]["tags"] == {subset: True}
    # A user-metadata change goes without the flag.
    grey = items["grey.png"]
    grey.metadata["user"]["note"] = "unlabelled"
    grey = grey.update()
    assert dl.items.get(item_id=grey.id).metadata["user"] == {"label": "grey", "note": "unlabelled"}
    assert dl.items.get(item_id=items["red.png"].id).description == "a red square"
    shared["items"] = items


def _names(pages):
    return sorted(item.name for item in pages.all())


def test_items_list_with_filters(dl):
    dataset = shared["dataset"]
    assert _names(dataset.items.list()) == sorted(CAPTIONS)
    f = dl.Filters()
    f.add(field="metadata.system.tags.train", values=True)
    assert _names(dataset.items.list(filters=f)) == ["blue.png", "red.png"]
    f = dl.Filters()
    f.add(field="metadata.user.label", values=["green", "grey"], operator=dl.FiltersOperations.IN)
    assert _names(dataset.items.list(filters=f)) == ["green.png", "grey.png"]
    # The template's subset bodies, as given.
    assert _names(dataset.items.list(filters=dl.Filters(custom_filter=TRAIN_SUBSET))) == ["blue.png", "red.png"]
    assert _names(dataset.items.list(filters=dl.Filters(custom_filter=VALIDATION_SUBSET))) == ["green.png"]
    # Paging: dtlpy walks every page.
    f = dl.Filters(page_size=1)
    pages = dataset.items.list(filters=f)
    assert pages.items_count == 4 and _names(pages) == sorted(CAPTIONS)


def test_models_get_list_clone(dl, gate):
    project = shared["project"]
    base = gate.control("POST", "models", {"name": "clip-base", "status": "pre-trained",
                                           "configuration": {"model_name": "ViT-B/32", "embeddings_size": 512,
                                                             "num_epochs": 20, "learning_rate": 5e-7}})
    model = dl.models.get(model_id=base["id"])
    assert model.name == "clip-base" and model.status == "pre-trained"
    assert [m.name for m in project.models.list().all()] == ["clip-base"]
    train = dl.Filters(custom_filter=TRAIN_SUBSET)
    validation = dl.Filters(custom_filter=VALIDATION_SUBSET)
    config = dict(model.configuration, num_epochs=2)
    clone = model.clone(model_name="clip-base_2026_01_01-T00_00_00", dataset=shared["dataset"],
                        configuration=config, status="created", project_id=project.id,
                        train_filter=train, validation_filter=validation)
    assert clone.id != model.id
    assert clone.status == "created"
    assert clone.configuration["num_epochs"] == 2
    assert clone.dataset_id == shared["dataset"].id
    subsets = dl.models.get(model_id=clone.id).metadata["system"]["subsets"]
    assert subsets["train"]["filter"] == TRAIN_SUBSET["filter"]
    assert subsets["validation"]["filter"] == VALIDATION_SUBSET["filter"]
    f = dl.Filters(resource=dl.FiltersResource.MODEL, field="name", values=clone.name)
    assert [m.id for m in project.models.list(filters=f).all()] == [clone.id]
    shared["base"], shared["clone"] = model, clone


def test_pipeline_variables_read_and_patch(dl, gate):
    base, clone = shared["base"], shared["clone"]
    seeded = gate.control("POST", "pipelines", {"name": "CLIP Fine-tuning", "variables": [
        {"name": "Dataset with captions", "type": "Dataset", "value": shared["dataset"].id},
        {"name": "Base CLIP model", "type": "Model", "value": base.id},
        {"name": "Newest CLIP model", "type": "Model", "value": base.id},
        {"name": "Model config", "type": "Json", "value": {"num_epochs": 2}},
    ]})
    pipeline = dl.pipelines.get(pipeline_id=seeded["id"])
    assert pipeline.name == "CLIP Fine-tuning"
    variables = {v.name: v for v in pipeline.variables}
    assert variables["Newest CLIP model"].value == base.id
    assert variables["Model config"].value == {"num_epochs": 2}
    variables["Newest CLIP model"].value = clone.id
    pipeline = pipeline.update()
    assert {v.name: v.value for v in pipeline.variables}["Newest CLIP model"] == clone.id
    again = shared["project"].pipelines.get(pipeline_name="CLIP Fine-tuning")
    values = {v.name: v.value for v in again.variables}
    assert values["Newest CLIP model"] == clone.id
    assert values["Base CLIP model"] == base.id


def test_executions_create_get_list_progress(dl, gate):
    service_id = gate.info["serviceId"]
    other = gate.control("POST", "services", {"name": "another-app"})
    project_id = shared["project"].id
    mine = dl.executions.create(service_id=service_id, function_name="train", project_id=project_id,
                                execution_input=[dl.FunctionIO(type=dl.PackageInputType.MODEL, name="model",
                                                               value={"model_id": shared["clone"].id})])
    theirs = dl.executions.create(service_id=other["id"], function_name="train", project_id=project_id,
                                  execution_input={"model": {"model_id": shared["base"].id}})
    assert mine.function_name == "train" and mine.latest_status["status"] == "created"
    assert dl.executions.get(execution_id=mine.id).input == {"model": {"model_id": shared["clone"].id}}
    f = dl.Filters(resource=dl.FiltersResource.EXECUTION, field="serviceId", values=service_id)
    assert [e.id for e in dl.executions.list(filters=f).all()] == [mine.id]
    f = dl.Filters(resource=dl.FiltersResource.EXECUTION, field="functionName", values="train")
    assert sorted(e.id for e in dl.executions.list(filters=f).all()) == sorted([mine.id, theirs.id])
    dl.executions.progress_update(execution_id=mine.id, percent_complete=40, message="epoch 1/2")
    got = dl.executions.get(execution_id=mine.id)
    assert got.latest_status["status"] == "in-progress"
    assert got.latest_status["percentComplete"] == 40
    assert got.latest_status["message"] == "epoch 1/2"
    dl.executions.progress_update(execution_id=mine.id, status="success", percent_complete=100,
                                  output={"model": {"model_id": shared["clone"].id}})
    got = dl.executions.get(execution_id=mine.id)
    assert got.latest_status["status"] == "success"
    assert [s["status"] for s in got.status_log] == ["created", "in-progress", "success"]
    f = dl.Filters(resource=dl.FiltersResource.EXECUTION, field="latestStatus.status", values="success")
    assert [e.id for e in dl.executions.list(filters=f).all()] == [mine.id]
    assert dl.executions.get(execution_id=theirs.id).latest_status["status"] == "created"


def test_every_dtlpy_request_was_accepted(gate):
    report = gate.report()
    calls = report["calls"]
    by_route = {}
    for c in calls:
        by_route.setdefault(f"{c['method']} {c['path']}", []).append(c["status"])
    print(f"\ndtlpy sent {len(calls)} requests to the gate:")
    for route, statuses in sorted(by_route.items()):
        print(f"  {len(statuses):3d} x {route}  {sorted(set(statuses))}")
    unrecognised = [c for c in calls if c["unrecognised"]]
    refused = [c for c in calls if c["status"] >= 400]
    assert unrecognised == [], f"requests the gate does not model:\n{json.dumps(unrecognised, indent=1)}"
    assert refused == [], f"requests the gate refused:\n{json.dumps(refused, indent=1)}\n{gate.log_text()}"
    # Sanity: the earlier tests did reach the gate through dtlpy.
    assert report["requests"] >= 40
