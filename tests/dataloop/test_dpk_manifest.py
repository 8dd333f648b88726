"""dataloop.json as dtlpy reads it: `dl.Dpk.from_json`, and every module, function and compute
config the manifest references exists in it (the platform resolves these names on publish)."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dpk():
    import dtlpy

    with open(os.path.join(ROOT, "dataloop.json")) as f:
        manifest = json.load(f)
    return dtlpy.Dpk.from_json(_json=manifest, client_api=dtlpy.client_api, project=None)


def test_parses(dpk):
    assert dpk.name == "cliptune"
    assert dpk.components.modules and dpk.components.compute_configs


def test_compute_configs_referenced_exist(dpk):
    configs = {c.name for c in dpk.components.compute_configs}
    for module in dpk.components.modules:
        if module.compute_config is not None:
            assert module.compute_config in configs, module.name
        for function in module.functions:
            if function.compute_config is not None:
                assert function.compute_config in configs, (module.name, function.name)


def test_models_name_existing_modules(dpk):
    modules = {m.name for m in dpk.components.modules}
    for model in dpk.components.models:
        assert model["moduleName"] in modules, model["name"]


def test_pipeline_nodes_name_existing_functions(dpk):
    functions = {(m.name, f.name) for m in dpk.components.modules for f in m.functions}
    nodes = [n for t in dpk.components.pipeline_templates for n in t["nodes"]]
    assert nodes
    for node in nodes:
        ns = node.get("namespace") or {}
        if ns.get("packageName") == dpk.name:
            assert (ns["moduleName"], ns["functionName"]) in functions, node["name"]


def test_entry_points_hold_the_class_and_every_function(dpk):
    """What the agent will import: each module's entry point file, its class, a method per
    function taking the declared inputs by name (plus the agent's `progress` and `context`),
    and the init inputs as constructor arguments."""
    import importlib.util
    import inspect

    for module in dpk.components.modules:
        path = os.path.join(ROOT, module.entry_point)
        assert os.path.isfile(path), f"{module.name}: no entry point {module.entry_point}"
        spec = importlib.util.spec_from_file_location(f"entry_{module.name.replace('-', '_')}", path)
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        cls = getattr(code, module.class_name)
        init = inspect.signature(cls.__init__).parameters
        for i in module.init_inputs or []:
            assert i.name in init, (module.name, "init", i.name)
        for function in module.functions:
            method = getattr(cls, function.name, None)
            assert callable(method), (module.name, function.name)
            params = inspect.signature(method).parameters
            for i in function.inputs or []:
                assert i.name in params, (module.name, function.name, i.name)
            assert "progress" in params and "context" in params, (module.name, function.name)
