//! The committed dataloop.json against the real "CLIP Fine-tuning" template
//! (dataloop-ai-apps/pipeline-templates, mlops/smart_search/clip_train_and_embed/dataloop.json,
//! version 1.0.98) and the CLIP model adapter's functions (dataloop-ai-apps/clip-model-adapter):
//! the structural facts are written out here, nothing is copied. Then the manifest run end to
//! end by cliptune's engine on the embedded store, and the adapter's embedding functions.

mod pipeline_fixture;

use cliptune_store::prelude::*;
use cliptune_store::{Execution, ExecutionPipeline, ExecutionQuery, ExecutionStatus, NewExecution};
use cliptune_worker::{Function, Worker};
use pipeline_fixture as fx;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn manifest() -> Value {
    cliptune_worker::read_manifest(Some(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dataloop.json"),
    ))
    .unwrap()
}

fn template(m: &Value) -> &Value {
    &m["components"]["pipelineTemplates"][0]
}

fn node<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name:?}"))
}

/// (name, type) of a node's ports in `io` ("inputs" / "outputs").
fn ports(n: &Value, io: &str) -> Vec<(String, String)> {
    n[io]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The node and port names at the ends of a connection.
fn ends(t: &Value, c: &Value) -> ((String, String), (String, String)) {
    let end = |e: &str, io: &str| {
        let n = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == c[e]["nodeId"])
            .unwrap();
        let p = n[io]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["portId"] == c[e]["portId"])
            .unwrap();
        (
            n["name"].as_str().unwrap().to_string(),
            p["name"].as_str().unwrap().to_string(),
        )
    };
    (end("src", "outputs"), end("tgt", "inputs"))
}

fn subset_body(tag: &str) -> Value {
    json!({"filter": {"$and": [
        {"hidden": false},
        {"$or": [{"metadata": {"system": {"tags": {tag: true}}}}]},
        {"type": "file"}
    ]}})
}

#[test]
fn the_manifest_has_the_real_templates_structure() {
    let m = manifest();
    let t = template(&m);
    // Nodes: names and types.
    let mut nodes: Vec<(String, String)> = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        pairs(&[
            ("Create New Model", "custom"),
            ("Dataset with captions", "storage"),
            ("Embeddings", "ml"),
            ("OpenAI CLIP", "ml"),
            ("Update Variable", "updateVariable"),
        ])
    );
    // Ports: names and types, in the template's order.
    let create = node(t, "Create New Model");
    assert_eq!(
        ports(create, "inputs"),
        pairs(&[
            ("base_model", "Model"),
            ("dataset", "Dataset"),
            ("train_subset", "Json"),
            ("validation_subset", "Json"),
            ("model_configuration", "Json"),
        ])
    );
    assert_eq!(
        ports(create, "outputs"),
        pairs(&[("new_model", "Model"), ("base_model", "Model")])
    );
    let train = node(t, "OpenAI CLIP");
    assert_eq!(ports(train, "inputs"), pairs(&[("model", "Model")]));
    assert_eq!(ports(train, "outputs"), pairs(&[("model", "Model")]));
    assert_eq!(train["namespace"]["functionName"], "train");
    let update = node(t, "Update Variable");
    assert_eq!(
        ports(update, "inputs"),
        pairs(&[("Newest CLIP model", "Model")])
    );
    assert_eq!(
        ports(update, "outputs"),
        pairs(&[("Newest CLIP model", "Model")])
    );
    let storage = node(t, "Dataset with captions");
    assert_eq!(ports(storage, "inputs"), pairs(&[("item", "Item")]));
    assert_eq!(ports(storage, "outputs"), pairs(&[("item", "Item")]));
    assert_eq!(
        storage["metadata"]["variableDataset"],
        "Dataset with captions"
    );
    assert_eq!(storage["metadata"]["triggerToPipeline"]["active"], false);
    let embed = node(t, "Embeddings");
    assert_eq!(ports(embed, "inputs"), pairs(&[("item", "Item")]));
    assert_eq!(
        ports(embed, "outputs"),
        pairs(&[("item", "Item"), ("json", "Json")])
    );
    assert_eq!(embed["metadata"]["variableModel"], "Newest CLIP model");
    assert_eq!(embed["namespace"]["functionName"], "embed");
    // Port bindings: variables and the subsets' defaults (whole DQL bodies).
    let bound = |n: &Value, port: &str, key: &str| {
        n["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port)
            .unwrap()[key]
            .clone()
    };
    assert_eq!(
        bound(create, "base_model", "variableName"),
        "Base CLIP model"
    );
    assert_eq!(
        bound(create, "dataset", "variableName"),
        "Dataset with captions"
    );
    assert_eq!(
        bound(create, "model_configuration", "variableName"),
        "Model config"
    );
    assert_eq!(
        bound(create, "train_subset", "defaultValue"),
        subset_body("train")
    );
    assert_eq!(
        bound(create, "validation_subset", "defaultValue"),
        subset_body("validation")
    );
    // Connections by node and port name.
    let mut connections: Vec<_> = t["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ends(t, c))
        .collect();
    connections.sort();
    let c = |a: &str, ap: &str, b: &str, bp: &str| {
        (
            (a.to_string(), ap.to_string()),
            (b.to_string(), bp.to_string()),
        )
    };
    assert_eq!(
        connections,
        [
            c("Create New Model", "new_model", "OpenAI CLIP", "model"),
            c("Dataset with captions", "item", "Embeddings", "item"),
            c(
                "OpenAI CLIP",
                "model",
                "Update Variable",
                "Newest CLIP model"
            ),
        ]
    );
    // Start node: only Create New Model.
    let starts = t["startNodes"].as_array().unwrap();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["nodeId"], create["id"]);
    // Variables, with the README's config defaults.
    let vars: Vec<(String, String)> = t["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        vars,
        pairs(&[
            ("Dataset with captions", "Dataset"),
            ("Base CLIP model", "Model"),
            ("Newest CLIP model", "Model"),
            ("Model config", "Json"),
        ])
    );
    assert_eq!(
        t["variables"][3]["value"],
        json!({"model_name": "ViT-B/32", "embeddings_size": 512, "batch_size": 128,
               "num_epochs": 20, "early_stopping": true, "early_stopping_epochs": 5,
               "learning_rate": 5e-7, "betas": [0.9, 0.98], "weight_decay": 0.01})
    );
}

/// name -> (inputs, outputs) of a module's functions, as (name, type) pairs.
type Ports = Vec<(String, String)>;

fn functions(module: &Value) -> Vec<(String, Ports, Ports)> {
    module["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let io = |k: &str| {
                f[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["type"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            };
            (
                f["name"].as_str().unwrap().to_string(),
                io("input"),
                io("output"),
            )
        })
        .collect()
}

#[test]
fn the_modules_are_the_custom_node_and_the_adapters_functions() {
    let m = manifest();
    let modules = m["components"]["modules"].as_array().unwrap();
    for module in modules {
        assert_eq!(module["entryPoint"], "dataloop/runner.py", "{module}");
        assert_eq!(module["className"], "Runner", "{module}");
        for f in module["functions"].as_array().unwrap() {
            Function::parse(f["name"].as_str().unwrap()).unwrap();
        }
    }
    assert!(!m.to_string().contains("cliptune serve"));
    let create = node(template(&m), "Create New Model");
    let pipeline_module = modules
        .iter()
        .find(|md| md["name"] == create["namespace"]["moduleName"])
        .unwrap();
    let (name, inputs, outputs) = &functions(pipeline_module)[0];
    assert_eq!(name, create["namespace"]["functionName"].as_str().unwrap());
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(inputs.clone()),
        sorted(ports(create, "inputs")),
        "the node's ports are the function's"
    );
    assert_eq!(outputs, &ports(create, "outputs"));
    // The models component: the adapter's functions, the model as init input.
    let model = &m["components"]["models"][0];
    let models_module = modules
        .iter()
        .find(|md| md["name"] == model["moduleName"])
        .unwrap();
    assert_eq!(models_module["initInputs"][0]["type"], "Model");
    assert_eq!(
        functions(models_module),
        vec![
            (
                "train_model".to_string(),
                pairs(&[("model", "Model")]),
                pairs(&[("model", "Model")])
            ),
            (
                "embed_items".to_string(),
                pairs(&[("items", "Item[]")]),
                pairs(&[("items", "Item[]"), ("json", "Json")])
            ),
            (
                "embed_dataset".to_string(),
                pairs(&[("dataset", "Dataset"), ("filters", "Json")]),
                vec![]
            ),
        ]
    );
    for c in m["components"]["computeConfigs"].as_array().unwrap() {
        // A registry path tagged with the app's version (the image of the Dockerfile's
        // `dataloop` target, pushed; docs/dataloop.md), not a name only one machine knows.
        let image = c["runtime"]["runnerImage"].as_str().unwrap();
        let version = m["version"].as_str().unwrap();
        assert!(
            image.contains('/') && image.ends_with(&format!(":{version}")),
            "{image}"
        );
    }
}

/// The output ports the manifest declares for a worker function (by its module function).
fn output_ports(m: &Value, function: &str) -> BTreeSet<String> {
    m["components"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|md| md["functions"].as_array().unwrap().iter())
        .filter(|f| {
            Function::parse(f["name"].as_str().unwrap())
                .unwrap()
                .as_str()
                == function
        })
        .flat_map(|f| f["output"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

async fn wait(worker: &Worker, e: Execution) -> Execution {
    let e = worker.wait(&e.id).await.unwrap();
    assert!(e.status.is_terminal(), "{e:?}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cliptunes_engine_runs_the_manifest_end_to_end() {
    let s = fx::store(24).await;
    let worker = fx::worker(&s, fx::config()).await;
    let run = worker.execute_pipeline(
        "CLIP Fine-tuning",
        &[
            ("Dataset with captions".into(), json!("shapes")),
            ("Base CLIP model".into(), json!("tiny-base")),
            (
                "Model config".into(),
                json!({"num_epochs": 1, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 1e-4}),
            ),
        ],
    )
    .await
    .unwrap();
    let run = wait(&worker, run).await;
    assert_eq!(run.status, ExecutionStatus::Success, "{run:?}");
    let mut nodes = s
        .store
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: Some(run.id.clone()),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    nodes.reverse();
    let names: Vec<&str> = nodes.iter().map(|n| n.function_name.as_str()).collect();
    assert_eq!(
        names,
        ["create-model", "train", "update-variable", "embed-items"]
    );
    let m = manifest();
    let t = template(&m);
    // Each node's execution carries its template node id; outputs are keyed by the ports.
    for (n, name) in nodes.iter().zip([
        "Create New Model",
        "OpenAI CLIP",
        "Update Variable",
        "Embeddings",
    ]) {
        assert_eq!(
            n.pipeline.as_ref().unwrap().node_id.as_deref(),
            node(t, name)["id"].as_str()
        );
        let keys: BTreeSet<String> = n.output.as_object().unwrap().keys().cloned().collect();
        let declared = match n.function_name.as_str() {
            // The built-in node's port is named after its variable.
            "update-variable" => ports(node(t, name), "outputs")
                .into_iter()
                .map(|p| p.0)
                .collect(),
            f => output_ports(&m, f),
        };
        assert!(!declared.is_empty(), "{name}");
        assert!(
            declared.is_subset(&keys),
            "{name}: outputs {keys:?} lack the ports {declared:?}"
        );
    }
    let create = &nodes[0];
    assert_eq!(
        create.input["train_subset"],
        subset_body("train"),
        "the port's default"
    );
    let new_id = create.output["new_model"]["model_id"].as_str().unwrap();
    assert_eq!(create.output["base_model"]["model_id"], json!(s.base.id));
    let model = s.store.get_model(new_id).await.unwrap();
    assert_eq!(model.configuration["num_epochs"], 1);
    assert_eq!(nodes[1].input["model"]["model_id"], json!(new_id));
    assert_eq!(
        nodes[2].output["Newest CLIP model"]["model_id"],
        json!(new_id)
    );
    // The branch embedded every item with the model the update step had just set.
    let embed = &nodes[3];
    assert_eq!(embed.input["model"]["model_id"], json!(new_id));
    assert_eq!(embed.input["items"].as_array().unwrap().len(), 24);
    assert_eq!(embed.output["json"].as_array().unwrap().len(), 24);
    let set = embed.output["feature_set_id"].as_str().unwrap();
    let fs = s.store.get_feature_set(set).await.unwrap();
    assert_eq!(fs.model_id.as_deref(), Some(new_id));
    assert_eq!(s.store.vector_entities(set, None).await.unwrap().len(), 24);
    let p = s.store.get_pipeline(&s.pipeline.id).await.unwrap();
    assert_eq!(
        p.variable("Newest CLIP model").unwrap().value,
        json!(new_id)
    );
    let summary = run.output["nodes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(summary["name"], "Embeddings");
    assert_eq!(summary["output"]["embedded"], 24, "{summary}");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_dataset_with_filters_and_embed_items() {
    let s = fx::store(20).await;
    let worker = fx::worker(&s, fx::config()).await;
    let model = json!({"model_id": s.base.id});
    let submit = |f: Function, input: Value| {
        let w = worker.clone();
        async move { wait(&w, w.submit(f, input, None).await.unwrap()).await }
    };
    // dtlpy's Filters.prepare(): a whole DQL body, in the template's nested-object form.
    let mut body = subset_body("validation");
    body["page"] = json!(0);
    body["pageSize"] = json!(1000);
    body["resource"] = json!("items");
    let e = submit(
        Function::EmbedDataset,
        json!({"dataset": {"dataset_id": s.dataset.id}, "filters": body, "model": model}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Success, "{e:?}");
    assert_eq!(e.input["filters"], body, "stored as given, not wrapped");
    let validation: BTreeSet<String> = s
        .store
        .all_items(&s.dataset.id, Some(subset_body("validation")))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(validation.len(), 4);
    assert_eq!(e.output["embedded"], 4, "{e:?}");
    let set = e.output["feature_set_id"].as_str().unwrap().to_string();
    let have: BTreeSet<String> = s
        .store
        .vector_entities(&set, None)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(have, validation, "exactly the filtered items");
    // A bare filter (a dotted path) selects the training items.
    let e = submit(
        Function::EmbedDataset,
        json!({"dataset": s.dataset.id, "filters": {"metadata.system.tags.train": true}, "model": model}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Success, "{e:?}");
    assert_eq!(e.output["embedded"], 16, "{e:?}");
    assert_eq!(e.output["already_embedded"], 0, "{e:?}");
    // embed_items: the refs of the embedded items in input order and their vectors; an
    // unreadable one is reported, not fatal.
    let some: Vec<String> = validation.iter().take(2).cloned().collect();
    let missing = "000000000000000000000000";
    let e = submit(
        Function::parse("embed_items").unwrap(),
        json!({"items": [{"item_id": some[1]}, {"item_id": missing}, {"item_id": some[0]}], "model": model}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Success, "{e:?}");
    assert_eq!(
        e.output["items"],
        json!([{"item_id": some[1]}, {"item_id": some[0]}])
    );
    assert_eq!(e.output["already_embedded"], 2, "{e:?}");
    assert_eq!(e.output["failed"][0]["item_id"], missing);
    let vectors = e.output["json"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    let stored = s.store.get_vector(&set, &some[1]).await.unwrap().value;
    let got: Vec<f32> = serde_json::from_value(vectors[0].clone()).unwrap();
    assert_eq!(got, stored);
    let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    // Bad input is refused at submission, naming the field.
    for (f, bad, field) in [
        (Function::EmbedItems, json!({"items": []}), "items"),
        (
            Function::EmbedDataset,
            json!({"dataset": s.dataset.id, "filters": {"$bogus": 1}}),
            "filters",
        ),
        (
            Function::EmbedDataset,
            json!({"dataset": s.dataset.id, "filter": {}, "filters": {}}),
            "filter",
        ),
    ] {
        let err = worker.submit(f, bad.clone(), None).await.unwrap_err();
        assert!(err.to_string().contains(field), "{bad}: {err}");
    }
    worker.shutdown().await;
}

/// Copies `e` as a node execution of run `run_id`, finished as it finished.
async fn copy_node(s: &fx::Store, e: &Execution, run_id: &str, input: Value) -> Execution {
    let mut pipeline = e.pipeline.clone().unwrap();
    pipeline.execution_id = Some(run_id.to_string());
    let copy = s
        .store
        .create_execution(NewExecution {
            function_name: e.function_name.clone(),
            service_name: Some(cliptune_worker::SERVICE_NAME.into()),
            pipeline: Some(pipeline),
            input,
        })
        .await
        .unwrap();
    s.store
        .finish_execution(
            &copy.id,
            ExecutionStatus::Success,
            Some(e.output.clone()),
            None,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_reuses_the_branch_executions_that_finished() {
    let s = fx::store(12).await;
    let worker = fx::worker(&s, fx::config()).await;
    let vars = [
        ("Dataset with captions".to_string(), json!("shapes")),
        ("Base CLIP model".to_string(), json!("tiny-base")),
        (
            "Model config".to_string(),
            json!({"num_epochs": 1, "batch_size": 4, "eval_batch_size": 4}),
        ),
    ];
    let first = worker
        .execute_pipeline("CLIP Fine-tuning", &vars)
        .await
        .unwrap();
    let first = wait(&worker, first).await;
    assert_eq!(first.status, ExecutionStatus::Success, "{first:?}");
    worker.shutdown().await;
    drop(worker);
    let mut done = s
        .store
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: Some(first.id.clone()),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    done.reverse();
    // What a killed process leaves: runs that never started whose nodes ran, in one
    // all of them, in the other all but the branch's batch (its items differ).
    let left = |s: &fx::Store| {
        let store = s.store.clone();
        let pid = s.pipeline.id.clone();
        async move {
            store
                .create_execution(NewExecution {
                    function_name: "pipeline".into(),
                    service_name: Some(cliptune_worker::SERVICE_NAME.into()),
                    pipeline: Some(ExecutionPipeline {
                        id: pid.clone(),
                        node_id: None,
                        execution_id: None,
                    }),
                    input: json!({"pipeline_id": pid}),
                })
                .await
                .unwrap()
        }
    };
    let (whole, partial) = (left(&s).await, left(&s).await);
    let mut copied = Vec::new();
    for e in &done {
        copied.push(copy_node(&s, e, &whole.id, e.input.clone()).await.id);
        let mut input = e.input.clone();
        if e.function_name == "embed-items" {
            input["items"] = json!([input["items"][0].clone()]);
        }
        copy_node(&s, e, &partial.id, input).await;
    }
    let worker = fx::worker(&s, fx::config()).await;
    let nodes_of = |run: String| {
        let store = s.store.clone();
        async move {
            store
                .list_executions(&ExecutionQuery {
                    pipeline_execution_id: Some(run),
                    ..ExecutionQuery::default()
                })
                .await
                .unwrap()
        }
    };
    let whole = wait(&worker, whole).await;
    assert_eq!(whole.status, ExecutionStatus::Success, "{whole:?}");
    let mut ids: Vec<String> = nodes_of(whole.id.clone())
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.reverse();
    assert_eq!(ids, copied, "nothing ran again");
    let branch = whole.output["nodes"].as_array().unwrap().last().unwrap();
    assert_eq!(branch["output"]["executions"], json!([copied[3]]));
    // The batch whose items differ runs again, finding every item embedded.
    let partial = wait(&worker, partial).await;
    assert_eq!(partial.status, ExecutionStatus::Success, "{partial:?}");
    let nodes = nodes_of(partial.id.clone()).await;
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    let rerun = &nodes[0];
    assert_eq!(rerun.function_name, "embed-items");
    assert_eq!(rerun.input["items"].as_array().unwrap().len(), 12);
    assert_eq!(rerun.output["already_embedded"], 12, "{rerun:?}");
    worker.shutdown().await;
}
