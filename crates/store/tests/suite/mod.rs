//! The behavioural suite every [`Platform`] backend must pass.
//!
//! Each function takes a backend (`&dyn Platform`) and a scratch folder, creates what it
//! needs through the trait (names get a random suffix, so functions can share one backend
//! and run in any order), and panics on the first broken expectation. To run it against a
//! backend, include this file from an integration test (`#[path = "suite/mod.rs"] mod suite;`)
//! and call [`run_all`] or the single functions.

#![allow(dead_code)]

use cliptune_store::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;

/// Runs every check in sequence on `p`.
pub async fn run_all(p: &dyn Platform, scratch: &Path) {
    datasets_and_items(p).await;
    dql_queries(p).await;
    template_subsets(p).await;
    item_updates(p).await;
    captions(p).await;
    models(p, scratch).await;
    pipelines_and_variables(p, scratch).await;
    executions(p).await;
    feature_sets_and_vectors(p).await;
}

pub fn suffix() -> String {
    new_id()[16..].to_string()
}

fn image(filename: &str, bytes: &[u8], description: Option<&str>, metadata: Value) -> NewItem {
    NewItem {
        filename: filename.into(),
        bytes: bytes.to_vec(),
        mimetype: Some("image/png".into()),
        description: description.map(String::from),
        metadata,
        hidden: false,
    }
}

fn names(items: &[Item]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|i| i.filename.clone()).collect();
    v.sort();
    v
}

fn assert_kind(err: StoreError, kind: &str, mentions: &str) {
    assert_eq!(err.kind(), kind, "wrong error kind for {err}");
    assert!(
        err.to_string().contains(mentions),
        "error {err:?} should mention {mentions:?}"
    );
}

/// A small dataset used by several checks: 5 files (one hidden), tags, metadata numbers.
pub async fn sample_dataset(p: &dyn Platform) -> Dataset {
    let ds = p
        .create_dataset(&format!("suite-{}", suffix()))
        .await
        .expect("create dataset");
    let items = [
        image(
            "/cats/a.png",
            b"cat a",
            Some("a cat"),
            json!({"system": {"tags": {"train": true}}, "user": {"score": 3, "label": "cat"}}),
        ),
        image(
            "/cats/b.png",
            b"cat b",
            None,
            json!({"system": {"description": "another cat", "tags": {"validation": true}}, "user": {"score": 7.5, "label": "cat"}}),
        ),
        image(
            "/dogs/c.jpg",
            b"dog c",
            Some("a dog"),
            json!({"system": {"tags": {"train": true}}, "user": {"score": 10, "label": "dog"}}),
        ),
        NewItem {
            filename: "notes/d.txt".into(),
            bytes: b"a text about birds".to_vec(),
            mimetype: Some("text/plain".into()),
            description: None,
            metadata: json!({"user": {"flag": false}}),
            hidden: false,
        },
        NewItem {
            hidden: true,
            ..image("/hidden/e.png", b"hidden e", Some("hidden"), json!({}))
        },
    ];
    for it in items {
        p.upload_item(&ds.id, it).await.expect("upload item");
    }
    p.get_dataset(&ds.id).await.expect("get dataset")
}

pub async fn datasets_and_items(p: &dyn Platform) {
    let ds = sample_dataset(p).await;
    assert!(is_id(&ds.id), "dataset id {:?} is not 24 hex", ds.id);
    assert_eq!(ds.items_count, 5);
    assert_eq!(p.dataset_by_name(&ds.name).await.unwrap().id, ds.id);
    assert_eq!(p.resolve_dataset(&ds.name).await.unwrap().id, ds.id);
    assert_eq!(p.resolve_dataset(&ds.id).await.unwrap().name, ds.name);
    assert!(p
        .list_datasets()
        .await
        .unwrap()
        .iter()
        .any(|d| d.id == ds.id));
    assert_kind(
        p.create_dataset(&ds.name).await.unwrap_err(),
        "conflict",
        &ds.name,
    );
    assert_kind(
        p.resolve_dataset("no-such-dataset-xyz").await.unwrap_err(),
        "not_found",
        "no-such-dataset-xyz",
    );
    assert_kind(
        p.get_item("ffffffffffffffffffffffff").await.unwrap_err(),
        "not_found",
        "ffffffffffffffffffffffff",
    );

    // Default filter: not hidden, type file.
    let page = p.query_items(&ds.id, &ItemQuery::default()).await.unwrap();
    assert_eq!(page.total_items_count, 4);
    assert!(!page.has_next_page);
    assert_eq!(
        names(&page.items),
        ["/cats/a.png", "/cats/b.png", "/dogs/c.jpg", "/notes/d.txt"]
    );
    let a = page.items.iter().find(|i| i.name == "a.png").unwrap();
    assert_eq!(a.dir, "/cats");
    assert_eq!(a.dataset_id, ds.id);
    assert_eq!(a.mimetype(), Some("image/png"));
    assert!(is_id(&a.id));
    assert_eq!(p.item_bytes(&a.id).await.unwrap(), b"cat a");
    assert_eq!(
        p.get_item(&a.id).await.unwrap().description.as_deref(),
        Some("a cat")
    );

    // Paging covers every item exactly once.
    let mut seen = Vec::new();
    let mut q = ItemQuery {
        filter: Some(json!({})),
        page: 0,
        page_size: 2,
    };
    loop {
        let page = p.query_items(&ds.id, &q).await.unwrap();
        assert_eq!(page.total_items_count, 5);
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|i| i.id.clone()));
        if !page.has_next_page {
            break;
        }
        q.page += 1;
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(p.all_items(&ds.id, None).await.unwrap().len(), 4);

    // Re-uploading the same filename overwrites the item, keeping its id.
    let again = p
        .upload_item(
            &ds.id,
            image("cats/a.png", b"cat a v2", Some("a cat, v2"), json!({})),
        )
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(p.item_bytes(&a.id).await.unwrap(), b"cat a v2");
    assert_eq!(p.get_dataset(&ds.id).await.unwrap().items_count, 5);

    // Updates write description, metadata and hidden.
    let mut edited = again.clone();
    edited.description = Some("edited".into());
    edited.hidden = true;
    set_path(&mut edited.metadata, &["user", "k"], json!(1));
    let saved = p.update_item(&edited).await.unwrap();
    assert_eq!(saved.description.as_deref(), Some("edited"));
    assert!(saved.hidden);
    assert_eq!(saved.metadata["user"]["k"], json!(1));
    assert_eq!(
        p.query_items(&ds.id, &ItemQuery::default())
            .await
            .unwrap()
            .total_items_count,
        3
    );

    // Annotations.
    let ann = p
        .add_annotation(&a.id, NewAnnotation::free_text("free text"))
        .await
        .unwrap();
    assert_eq!(ann.free_text(), Some("free text"));
    let anns = p.annotations(&a.id).await.unwrap();
    assert_eq!(anns.len(), 1);
    assert_eq!(anns[0].label, "free-text");
    assert_eq!(p.get_item(&a.id).await.unwrap().annotations_count, 1);
}

async fn query(p: &dyn Platform, ds: &Dataset, filter: Value) -> Vec<String> {
    let page = p
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(filter.clone()),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("query {filter}: {e}"));
    // The in-memory evaluation must agree with the backend, both ways (a whole body is
    // read as the stores read it).
    let parsed = dql::Filter::parse_given(Some(&filter)).unwrap();
    let all = p.all_items(&ds.id, Some(json!({}))).await.unwrap();
    let expected: Vec<Item> = all.into_iter().filter(|i| parsed.matches(i)).collect();
    assert_eq!(
        names(&page.items),
        names(&expected),
        "backend and dql::Filter::matches disagree on {filter}"
    );
    names(&page.items)
}

pub async fn dql_queries(p: &dyn Platform) {
    let ds = sample_dataset(p).await;
    let q = |f: Value| query(p, &ds, f);
    assert_eq!(
        q(default_subset_filter("train")).await,
        ["/cats/a.png", "/dogs/c.jpg"]
    );
    assert_eq!(
        q(json!({"metadata.system.tags.validation": true})).await,
        ["/cats/b.png"]
    );
    assert_eq!(
        q(json!({"filename": "/cats/*"})).await,
        ["/cats/a.png", "/cats/b.png"]
    );
    assert_eq!(
        q(json!({"name": {"$glob": "*.jpg"}})).await,
        ["/dogs/c.jpg"]
    );
    assert_eq!(q(json!({"dir": "/dogs"})).await, ["/dogs/c.jpg"]);
    assert_eq!(q(json!({"hidden": true})).await, ["/hidden/e.png"]);
    assert_eq!(
        q(json!({"metadata.user.label": {"$in": ["dog", "bird"]}})).await,
        ["/dogs/c.jpg"]
    );
    // $nin and $ne also match items without the field.
    assert_eq!(
        q(json!({"metadata.user.label": {"$nin": ["cat"]}})).await,
        ["/dogs/c.jpg", "/hidden/e.png", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"metadata.user.label": {"$ne": "cat"}})).await,
        ["/dogs/c.jpg", "/hidden/e.png", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"metadata.user.score": {"$gt": 3, "$lte": 10}})).await,
        ["/cats/b.png", "/dogs/c.jpg"]
    );
    assert_eq!(
        q(json!({"metadata.user.score": {"$gte": 3, "$lt": 7.5}})).await,
        ["/cats/a.png"]
    );
    assert_eq!(
        q(json!({"metadata.user.flag": {"$exists": true}})).await,
        ["/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"description": {"$exists": false}, "hidden": false})).await,
        ["/cats/b.png", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"$or": [{"name": "a.png"}, {"metadata.user.flag": false}]})).await,
        ["/cats/a.png", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"$and": [{"type": "file"}, {"$not": {"filename": "/cats/*"}}, {"hidden": false}]})).await,
        ["/dogs/c.jpg", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"metadata.user.label": {"$not": {"$eq": "cat"}}, "hidden": false})).await,
        ["/dogs/c.jpg", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"metadata.system.mimetype": "text/plain"})).await,
        ["/notes/d.txt"]
    );
    // Types do not mix: the string "3" is not the number 3.
    assert!(q(json!({"metadata.user.score": "3"})).await.is_empty());
    // Nested objects below metadata are paths (as Dataloop reads them), not whole-object
    // equality: a.png's system metadata also holds a mimetype, and still matches.
    assert_eq!(
        q(json!({"metadata": {"system": {"tags": {"train": true}}}})).await,
        ["/cats/a.png", "/dogs/c.jpg"]
    );
    assert_eq!(
        q(json!({"metadata": {"user": {"label": "cat", "score": {"$gt": 3}}}})).await,
        ["/cats/b.png"]
    );
    // null matches null or absent, as in MongoDB.
    assert_eq!(
        q(json!({"metadata.user.label": null})).await,
        ["/hidden/e.png", "/notes/d.txt"]
    );
    assert_eq!(
        q(json!({"metadata": {"user": {"label": {"$ne": null}}}, "hidden": false})).await,
        ["/cats/a.png", "/cats/b.png", "/dogs/c.jpg"]
    );
    // A whole body is read as its filter, whatever paging it carries.
    assert_eq!(
        q(json!({"filter": {"metadata.user.label": "dog"}, "resource": "items", "page": 3, "pageSize": 1})).await,
        ["/dogs/c.jpg"]
    );
    let err = p
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"name": {"$regex": "^a"}})),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert_kind(err, "validation", "$regex");
    let err = p
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"$where": "1"})),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert_kind(err, "validation", "$where");
}

/// The template's default subsets (pipeline-templates `clip_train_and_embed/dataloop.json`
/// v1.0.98, node *Create New Model*, inputs `train_subset` / `validation_subset`).
pub fn template_subset(tag: &str) -> Value {
    json!({"filter": {"$and": [
        {"hidden": false},
        {"$or": [{"metadata": {"system": {"tags": {tag: true}}}}]},
        {"type": "file"}
    ]}})
}

/// Every DQL form the template's defaults use selects the items tagged for that subset, with
/// whatever else their tags and system metadata hold, and a model keeps its subsets as given.
pub async fn template_subsets(p: &dyn Platform) {
    let ds = p
        .create_dataset(&format!("suite-subsets-{}", suffix()))
        .await
        .unwrap();
    let tagged = |name: &str, tags: Value| {
        image(
            &format!("/{name}.png"),
            name.as_bytes(),
            Some(name),
            json!({"system": {"tags": tags}, "user": {"n": name}}),
        )
    };
    let items = [
        // dtlpy's Item.assign_subset("train") writes all three tags.
        tagged(
            "t1",
            json!({"train": true, "validation": null, "test": null}),
        ),
        // The Active Learning app's data split writes the one tag.
        tagged("t2", json!({"train": true})),
        tagged("v1", json!({"validation": true})),
        tagged(
            "v2",
            json!({"train": null, "validation": true, "test": null}),
        ),
        tagged("x", json!({"test": true})),
        tagged("f", json!({"train": false, "validation": false})),
        tagged("s", json!({"train": "true"})),
        image("/n.png", b"n", Some("n"), json!({"user": {"n": "n"}})),
        NewItem {
            hidden: true,
            ..tagged("h", json!({"train": true, "validation": true}))
        },
    ];
    for it in items {
        p.upload_item(&ds.id, it).await.unwrap();
    }
    let q = |f: Value| query(p, &ds, f);
    for (tag, want) in [
        ("train", ["/t1.png", "/t2.png"]),
        ("validation", ["/v1.png", "/v2.png"]),
    ] {
        let body = template_subset(tag);
        let inner = body["filter"].clone();
        let nested = json!({"metadata": {"system": {"tags": {tag: true}}}});
        let mut prepared = body.clone(); // what dtlpy's Filters(custom_filter=...).prepare() sends
        prepared["resource"] = json!("items");
        prepared["page"] = json!(0);
        prepared["pageSize"] = json!(1000);
        for form in [
            body.clone(),
            prepared,
            inner,
            json!({"$and": [{"hidden": false}, nested.clone(), {"type": "file"}]}),
            default_subset_filter(tag),
        ] {
            assert_eq!(q(form.clone()).await, want, "subset {tag}, form {form}");
        }
        // The bare nested form alone also takes the hidden item.
        let mut with_hidden = want.to_vec();
        with_hidden.insert(0, "/h.png");
        assert_eq!(q(nested).await, with_hidden);
    }
    // Items with no subset at all, as dtlpy's get_items_missing_ml_subset asks (null or absent).
    assert_eq!(
        q(json!({"$and": [
            {"metadata.system.tags.train": null},
            {"metadata.system.tags.validation": null},
            {"metadata.system.tags.test": null}
        ]}))
        .await,
        ["/n.png"]
    );

    // The model keeps the bodies as given (no wrapping, no rewriting), and the train node's
    // read of them (all_items with the stored subset) selects the tagged items.
    let base = p
        .create_model(NewModel {
            name: format!("suite-subsets-base-{}", suffix()),
            status: ModelStatus::PreTrained,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap();
    let subsets = Subsets {
        train: template_subset("train"),
        validation: template_subset("validation"),
    };
    let clone = p
        .clone_model(
            &base.id,
            CloneModel {
                dataset_id: Some(ds.id.clone()),
                subsets: Some(subsets.clone()),
                ..CloneModel::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(clone.subsets(), Some(subsets.clone()));
    let stored = p.get_model(&clone.id).await.unwrap().subsets().unwrap();
    assert_eq!(stored, subsets);
    let train = p.all_items(&ds.id, Some(stored.train)).await.unwrap();
    assert_eq!(names(&train), ["/t1.png", "/t2.png"]);
    let validation = p.all_items(&ds.id, Some(stored.validation)).await.unwrap();
    assert_eq!(names(&validation), ["/v1.png", "/v2.png"]);

    // A body wrapped twice is refused, not read as a field named "filter".
    let err = p
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"filter": template_subset("train")})),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert_kind(err, "validation", "filter");
}

/// `update_item` writes what the copy holds and keeps what it leaves out, on every backend:
/// a copy read before the platform added system metadata cannot erase it.
pub async fn item_updates(p: &dyn Platform) {
    let ds = p
        .create_dataset(&format!("suite-updates-{}", suffix()))
        .await
        .unwrap();
    let stale = p
        .upload_item(
            &ds.id,
            image(
                "/u.png",
                b"u",
                Some("before"),
                json!({"system": {"tags": {"train": true}}, "user": {"a": 1}}),
            ),
        )
        .await
        .unwrap();
    // Someone else sets system fields in between.
    let mut other = p.get_item(&stale.id).await.unwrap();
    set_path(&mut other.metadata, &["system", "width"], json!(7));
    set_path(
        &mut other.metadata,
        &["system", "tags", "validation"],
        json!(true),
    );
    p.update_item(&other).await.unwrap();

    let mut mine = stale.clone();
    mine.description = Some("after".into());
    mine.metadata = json!({"user": {"b": 2}});
    let saved = p.update_item(&mine).await.unwrap();
    assert_eq!(saved.description.as_deref(), Some("after"));
    assert_eq!(saved.metadata["system"]["width"], json!(7));
    assert_eq!(saved.metadata["system"]["tags"]["train"], json!(true));
    assert_eq!(saved.metadata["system"]["tags"]["validation"], json!(true));
    assert_eq!(saved.metadata["system"]["mimetype"], json!("image/png"));
    assert_eq!(saved.metadata["user"], json!({"a": 1, "b": 2}));
    assert_eq!(p.get_item(&stale.id).await.unwrap(), saved);

    // Clearing a tag is setting it to null (dtlpy's remove_subset does the same); the item
    // then leaves the subset.
    let mut untag = saved.clone();
    set_path(
        &mut untag.metadata,
        &["system", "tags", "train"],
        Value::Null,
    );
    let untagged = p.update_item(&untag).await.unwrap();
    assert!(!untagged.has_tag("train"));
    assert_eq!(
        query(p, &ds, template_subset("train")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        query(p, &ds, template_subset("validation")).await,
        ["/u.png"]
    );
    // Nothing changed: the item comes back as it is.
    assert_eq!(
        p.update_item(&untagged).await.unwrap().metadata,
        untagged.metadata
    );
    let mut bad = untagged.clone();
    bad.metadata = json!([1]);
    assert_kind(
        p.update_item(&bad).await.unwrap_err(),
        "validation",
        "metadata",
    );
}

pub async fn captions(p: &dyn Platform) {
    let images = p
        .create_dataset(&format!("suite-images-{}", suffix()))
        .await
        .unwrap();
    let prompts = p
        .create_dataset(&format!("suite-prompts-{}", suffix()))
        .await
        .unwrap();
    let top = p
        .upload_item(
            &images.id,
            image(
                "/1.png",
                b"one",
                Some("top-level"),
                json!({"system": {"description": "system"}}),
            ),
        )
        .await
        .unwrap();
    let sys = p
        .upload_item(
            &images.id,
            image(
                "/2.png",
                b"two",
                None,
                json!({"system": {"description": "from system"}}),
            ),
        )
        .await
        .unwrap();
    let none = p
        .upload_item(&images.id, image("/3.png", b"three", Some("  "), json!({})))
        .await
        .unwrap();
    let c = p.caption(&top).await.unwrap();
    assert_eq!(c.caption.as_deref(), Some("top-level"));
    assert_eq!(
        c.image_item.as_ref().map(|i| i.id.as_str()),
        Some(top.id.as_str())
    );
    assert_eq!(
        p.caption(&sys).await.unwrap().caption.as_deref(),
        Some("from system")
    );
    assert_eq!(p.caption(&none).await.unwrap().caption, None);

    let prompt_json = PromptContent::to_json(&sys.id, Some("user text"));
    let prompt = p
        .upload_item(
            &prompts.id,
            NewItem {
                filename: "/p1.json".into(),
                bytes: serde_json::to_vec(&prompt_json).unwrap(),
                mimetype: Some("application/json".into()),
                description: None,
                metadata: json!({"system": {"shebang": {"dltype": "prompt"}}}),
                hidden: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(prompt.kind(), ItemKind::Prompt);
    // Without an annotation the prompt's own text is the caption.
    let c = p.caption(&prompt).await.unwrap();
    assert_eq!(
        c.image_item.as_ref().map(|i| i.id.as_str()),
        Some(sys.id.as_str())
    );
    assert_eq!(c.caption.as_deref(), Some("user text"));
    p.add_annotation(
        &prompt.id,
        NewAnnotation::free_text("the assistant's caption"),
    )
    .await
    .unwrap();
    let c = p.caption(&prompt).await.unwrap();
    assert_eq!(c.caption.as_deref(), Some("the assistant's caption"));
    let img = c.image_item.unwrap();
    assert_eq!(
        img.dataset_id, images.id,
        "the image lives in the other dataset"
    );
    assert_eq!(p.item_bytes(&img.id).await.unwrap(), b"two");

    let text = p
        .upload_item(
            &images.id,
            NewItem {
                filename: "/t.txt".into(),
                bytes: b"  just text \n".to_vec(),
                mimetype: Some("text/plain".into()),
                ..NewItem::default()
            },
        )
        .await
        .unwrap();
    let c = p.caption(&text).await.unwrap();
    assert_eq!(c.image_item, None);
    assert_eq!(c.caption.as_deref(), Some("just text"));
}

/// Writes a small fake checkpoint folder (nested files) and returns it.
fn write_checkpoint(dir: &Path, seed: u8) -> std::path::PathBuf {
    let ck = dir.join(format!("ck-{}-{seed}", suffix()));
    std::fs::create_dir_all(ck.join("sub")).unwrap();
    std::fs::write(ck.join("config.json"), format!("{{\"seed\": {seed}}}")).unwrap();
    let weights: Vec<u8> = (0..100_000u32)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    std::fs::write(ck.join("sub/model.safetensors"), weights).unwrap();
    ck
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub async fn base_model(p: &dyn Platform, scratch: &Path) -> Model {
    let base = p
        .create_model(NewModel {
            name: format!("suite-base-{}", suffix()),
            status: ModelStatus::PreTrained,
            configuration: json!({"model_name": "ViT-B/32", "embeddings_size": 512, "batch_size": 128, "betas": [0.9, 0.98]})
                .as_object()
                .unwrap()
                .clone(),
            dataset_id: None,
            description: Some("base".into()),
            metadata: json!({}),
        })
        .await
        .expect("create model");
    let ck = write_checkpoint(scratch, 3);
    p.upload_artifacts(&base.id, &ck)
        .await
        .expect("upload artifacts")
}

pub async fn models(p: &dyn Platform, scratch: &Path) {
    let base = base_model(p, scratch).await;
    assert!(is_id(&base.id));
    assert_eq!(base.status, ModelStatus::PreTrained);
    assert_eq!(base.artifacts.len(), 2);
    assert_eq!(p.model_by_name(&base.name).await.unwrap().id, base.id);
    assert_eq!(p.resolve_model(&base.name).await.unwrap().id, base.id);
    assert!(p
        .list_models()
        .await
        .unwrap()
        .iter()
        .any(|m| m.id == base.id));
    assert_kind(
        p.create_model(NewModel {
            name: base.name.clone(),
            status: ModelStatus::Created,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap_err(),
        "conflict",
        &base.name,
    );

    // Artifacts round trip into a fresh folder.
    let out = scratch.join(format!("download-{}", suffix()));
    p.download_artifacts(&base.id, &out).await.unwrap();
    let src = scratch.join(
        std::fs::read_dir(scratch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .find(|n| {
                n.to_string_lossy().starts_with("ck-")
                    && read_tree(&scratch.join(n)) == read_tree(&out)
            })
            .expect("downloaded artifacts equal an uploaded checkpoint"),
    );
    assert_eq!(read_tree(&src).len(), 2);

    // Clone: name template, shallow merge, subsets, base id, no artifacts, status created.
    let ds = p
        .create_dataset(&format!("suite-train-{}", suffix()))
        .await
        .unwrap();
    let clone = p
        .clone_model(
            &base.id,
            CloneModel {
                configuration: Some(
                    json!({"num_epochs": 2, "betas": [0.8]})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                dataset_id: Some(ds.id.clone()),
                ..CloneModel::default()
            },
        )
        .await
        .unwrap();
    let stamp = clone
        .name
        .strip_prefix(&format!("{}_", base.name))
        .unwrap_or_else(|| {
            panic!(
                "clone name {} does not start with the base name",
                clone.name
            )
        });
    let shape: String = stamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999_99_99-T99_99_99", "clone name {}", clone.name);
    assert_eq!(clone.status, ModelStatus::Created);
    assert_eq!(clone.base_model_id.as_deref(), Some(base.id.as_str()));
    assert_eq!(clone.dataset_id.as_deref(), Some(ds.id.as_str()));
    assert!(clone.artifacts.is_empty());
    assert_eq!(clone.configuration["model_name"], json!("ViT-B/32"));
    assert_eq!(clone.configuration["num_epochs"], json!(2));
    assert_eq!(
        clone.configuration["betas"],
        json!([0.8]),
        "merge is shallow"
    );
    assert_eq!(clone.subsets(), Some(Subsets::default_filters()));

    // A clash gets `_v1`, then `_v2`.
    let named = |n: &str| CloneModel {
        name: Some(n.to_string()),
        subsets: Some(Subsets {
            train: json!({"metadata.system.tags.train": true}),
            validation: json!({"metadata.system.tags.validation": true}),
        }),
        ..CloneModel::default()
    };
    let v1 = p.clone_model(&base.id, named(&clone.name)).await.unwrap();
    assert_eq!(v1.name, format!("{}_v1", clone.name));
    assert_eq!(
        v1.subsets().unwrap().train,
        json!({"metadata.system.tags.train": true})
    );
    let v2 = p.clone_model(&base.id, named(&clone.name)).await.unwrap();
    assert_eq!(v2.name, format!("{}_v2", clone.name));

    // Lifecycle and update.
    let mut m = clone.clone();
    m.status = ModelStatus::Training;
    let m = p.update_model(&m).await.unwrap();
    assert_eq!(
        p.get_model(&m.id).await.unwrap().status,
        ModelStatus::Training
    );
    let mut renamed = m.clone();
    renamed.name = base.name.clone();
    assert_kind(
        p.update_model(&renamed).await.unwrap_err(),
        "conflict",
        &base.name,
    );

    // Metrics keep their order.
    let samples: Vec<MetricSample> = (0..3)
        .flat_map(|e| {
            ["train", "val"].map(|legend| MetricSample {
                model_id: m.id.clone(),
                dataset_id: Some(ds.id.clone()),
                figure: "loss".into(),
                legend: legend.into(),
                data: MetricPoint {
                    x: f64::from(e),
                    y: 1.0 / f64::from(e + 1),
                },
                created_at: String::new(),
            })
        })
        .collect();
    assert_eq!(p.publish_metrics(&samples).await.unwrap(), 6);
    let got = p.list_metrics(&m.id).await.unwrap();
    assert_eq!(got.len(), 6);
    for (g, s) in got.iter().zip(&samples) {
        assert_eq!((g.legend.as_str(), g.data), (s.legend.as_str(), s.data));
    }
    assert!(p.list_metrics(&base.id).await.unwrap().is_empty());
}

pub async fn pipelines_and_variables(p: &dyn Platform, scratch: &Path) {
    let base = base_model(p, scratch).await;
    let name = format!("suite-pipeline-{}", suffix());
    let pipe = p
        .create_pipeline(NewPipeline {
            name: name.clone(),
            nodes: vec![json!({"id": "n1", "name": "train"})],
            connections: vec![],
            start_nodes: vec![json!({"nodeId": "n1", "type": "root"})],
            variables: vec![
                Variable {
                    id: String::new(),
                    name: "Newest CLIP model".into(),
                    reference: String::new(),
                    var_type: "Model".into(),
                    value: json!(base.id),
                    description: None,
                },
                Variable {
                    id: String::new(),
                    name: "Model config".into(),
                    reference: String::new(),
                    var_type: "Json".into(),
                    value: json!({"num_epochs": 1}),
                    description: Some("trainer config".into()),
                },
            ],
        })
        .await
        .unwrap();
    assert!(is_id(&pipe.id));
    assert_eq!(pipe.nodes.len(), 1);
    assert_eq!(pipe.variables.len(), 2);
    assert_eq!(pipe.variables[0].reference, pipe.id);
    assert_eq!(p.resolve_pipeline(&name).await.unwrap().id, pipe.id);
    assert!(p
        .list_pipelines()
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == pipe.id));
    assert_kind(
        p.create_pipeline(NewPipeline {
            name: name.clone(),
            ..NewPipeline::default()
        })
        .await
        .unwrap_err(),
        "conflict",
        &name,
    );

    let vars = p
        .update_variables(
            &pipe.id,
            &[VariableUpdate {
                name: "Model config".into(),
                value: json!({"num_epochs": 5}),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        vars.iter()
            .find(|v| v.name == "Model config")
            .unwrap()
            .value,
        json!({"num_epochs": 5})
    );
    // All or nothing: an unknown name fails and leaves the others as they were.
    let err = p
        .update_variables(
            &pipe.id,
            &[
                VariableUpdate {
                    name: "Model config".into(),
                    value: json!(null),
                },
                VariableUpdate {
                    name: "Nope".into(),
                    value: json!(1),
                },
            ],
        )
        .await
        .unwrap_err();
    assert_kind(err, "not_found", "Nope");
    let pipe_now = p.get_pipeline(&pipe.id).await.unwrap();
    assert_eq!(
        pipe_now.variable("Model config").unwrap().value,
        json!({"num_epochs": 5})
    );

    // Promotion only for a trained model with stored artifacts.
    let new = p
        .clone_model(&base.id, CloneModel::default())
        .await
        .unwrap();
    let var = "Newest CLIP model";
    assert_kind(
        p.promote_model_variable(&pipe.id, var, &new.id)
            .await
            .unwrap_err(),
        "conflict",
        "not trained",
    );
    let mut trained = new.clone();
    trained.status = ModelStatus::Trained;
    p.update_model(&trained).await.unwrap();
    assert_kind(
        p.promote_model_variable(&pipe.id, var, &new.id)
            .await
            .unwrap_err(),
        "conflict",
        "no stored artifacts",
    );
    assert_eq!(
        p.get_variables(&pipe.id).await.unwrap()[0].value,
        json!(base.id),
        "failed promotions leave the variable unchanged"
    );
    p.upload_artifacts(&new.id, &write_checkpoint(scratch, 5))
        .await
        .unwrap();
    let v = p
        .promote_model_variable(&pipe.id, var, &new.id)
        .await
        .unwrap();
    assert_eq!(v.value, json!(new.id));
    assert_eq!(
        p.get_pipeline(&pipe.id)
            .await
            .unwrap()
            .variable(var)
            .unwrap()
            .value,
        json!(new.id)
    );
    assert_kind(
        p.promote_model_variable(&pipe.id, "Model config", &new.id)
            .await
            .unwrap_err(),
        "validation",
        "Model config",
    );
}

pub async fn executions(p: &dyn Platform) {
    let tag = suffix();
    let e = p
        .create_execution(NewExecution {
            function_name: format!("train-{tag}"),
            service_name: Some("cliptune".into()),
            pipeline: Some(ExecutionPipeline {
                id: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
                node_id: Some("train".into()),
                execution_id: Some(format!("bbbbbbbbbbbbbbbb{}", &tag[..8])),
            }),
            input: json!({"model": {"model_id": "x"}}),
        })
        .await
        .unwrap();
    assert!(is_id(&e.id));
    assert_eq!(e.status, ExecutionStatus::Created);
    assert_eq!(e.latest_status.percent_complete, 0);
    let e = p
        .progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(40),
                message: Some("epoch 2/5".into()),
                ..ExecutionProgress::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::InProgress);
    assert_eq!(e.latest_status.percent_complete, 40);
    assert_eq!(e.latest_status.message.as_deref(), Some("epoch 2/5"));
    let got = p.get_execution(&e.id).await.unwrap();
    assert_eq!(got.latest_status, e.latest_status);
    assert_kind(
        p.progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(101),
                ..ExecutionProgress::default()
            },
        )
        .await
        .unwrap_err(),
        "validation",
        "101",
    );
    let listed = p
        .list_executions(&ExecutionQuery {
            function_name: Some(format!("train-{tag}")),
            status: Some(ExecutionStatus::InProgress),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|x| &x.id).collect::<Vec<_>>(), [&e.id]);
    let by_run = p
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: e.pipeline.as_ref().unwrap().execution_id.clone(),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_run.len(), 1);

    let done = p
        .finish_execution(
            &e.id,
            ExecutionStatus::Success,
            Some(json!({"model_id": "m"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Success);
    assert_eq!(done.latest_status.percent_complete, 100);
    assert_eq!(done.output, json!({"model_id": "m"}));
    let log: Vec<ExecutionStatus> = done.status_log.iter().map(|s| s.status).collect();
    assert_eq!(
        log,
        [
            ExecutionStatus::Created,
            ExecutionStatus::InProgress,
            ExecutionStatus::Success
        ]
    );
    assert_kind(
        p.progress_execution(&e.id, ExecutionProgress::default())
            .await
            .unwrap_err(),
        "conflict",
        "already finished",
    );
    assert_kind(
        p.finish_execution(&e.id, ExecutionStatus::Failed, None, Some("late".into()))
            .await
            .unwrap_err(),
        "conflict",
        "already finished",
    );

    let f = p
        .create_execution(NewExecution {
            function_name: format!("embed-{tag}"),
            ..NewExecution::default()
        })
        .await
        .unwrap();
    let f = p
        .finish_execution(
            &f.id,
            ExecutionStatus::Failed,
            None,
            Some("out of memory".into()),
        )
        .await
        .unwrap();
    assert_eq!(f.latest_status.error.as_deref(), Some("out of memory"));
    assert_kind(
        p.get_execution("cccccccccccccccccccccccc")
            .await
            .unwrap_err(),
        "not_found",
        "cccccccccccccccccccccccc",
    );
}

/// Deterministic pseudo-random unit-ish vectors.
pub fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub async fn feature_sets_and_vectors(p: &dyn Platform) {
    let ds = sample_dataset(p).await;
    let other = sample_dataset(p).await;
    let model = p
        .create_model(NewModel {
            name: format!("suite-embed-{}", suffix()),
            status: ModelStatus::Trained,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap();
    let fs = p
        .feature_set_for_model(&model.id, &model.name, 8)
        .await
        .unwrap();
    assert_eq!((fs.size, fs.entity_type.as_str()), (8, "item"));
    assert_eq!(fs.model_id.as_deref(), Some(model.id.as_str()));
    let again = p
        .feature_set_for_model(&model.id, &model.name, 8)
        .await
        .unwrap();
    assert_eq!(again.id, fs.id, "create-or-get returns the same set");
    assert_kind(
        p.feature_set_for_model(&model.id, &model.name, 16)
            .await
            .unwrap_err(),
        "conflict",
        "size",
    );
    assert_eq!(p.get_feature_set(&fs.id).await.unwrap(), fs);
    assert!(p
        .list_feature_sets()
        .await
        .unwrap()
        .iter()
        .any(|f| f.id == fs.id));

    let mut items = p.all_items(&ds.id, Some(json!({}))).await.unwrap();
    items.sort_by(|a, b| a.filename.cmp(&b.filename));
    let other_items = p.all_items(&other.id, Some(json!({}))).await.unwrap();
    let vals = vectors(items.len() + other_items.len(), 8, 42);
    let new: Vec<NewVector> = items
        .iter()
        .chain(&other_items)
        .zip(&vals)
        .map(|(i, v)| NewVector {
            entity_id: i.id.clone(),
            dataset_id: i.dataset_id.clone(),
            value: v.clone(),
        })
        .collect();
    let s = p.upsert_vectors(&fs.id, &new).await.unwrap();
    assert_eq!((s.inserted, s.updated), (10, 0));
    // Upserting again never duplicates.
    let s = p.upsert_vectors(&fs.id, &new[..3]).await.unwrap();
    assert_eq!((s.inserted, s.updated), (0, 3));
    assert_eq!(p.vector_entities(&fs.id, None).await.unwrap().len(), 10);
    let mut mine = p.vector_entities(&fs.id, Some(&ds.id)).await.unwrap();
    mine.sort();
    let mut want: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    want.sort();
    assert_eq!(mine, want);
    // A page's worth of ids: those with a vector, whatever else is asked about.
    let mut asked: Vec<String> = vec![items[1].id.clone(), "no-such-entity".into()];
    asked.push(other_items[0].id.clone());
    asked.push(items[1].id.clone());
    let mut with = p.entities_with_vectors(&fs.id, &asked).await.unwrap();
    with.sort();
    let mut want_with = vec![items[1].id.clone(), other_items[0].id.clone()];
    want_with.sort();
    assert_eq!(with, want_with);
    assert!(p
        .entities_with_vectors(&fs.id, &[])
        .await
        .unwrap()
        .is_empty());
    assert_kind(
        p.entities_with_vectors("no-such-set", &asked)
            .await
            .unwrap_err(),
        "not_found",
        "no-such-set",
    );
    let got = p.get_vector(&fs.id, &items[0].id).await.unwrap();
    assert_eq!(got.value, vals[0]);
    assert_eq!(got.dataset_id, ds.id);

    // Nearest: exact top-k by cosine within the dataset.
    let query = vectors(1, 8, 7).remove(0);
    let hits = p
        .nearest(
            &fs.id,
            &NearestQuery {
                vector: query.clone(),
                k: 3,
                dataset_id: Some(ds.id.clone()),
                filter: None,
            },
        )
        .await
        .unwrap();
    let mut brute: Vec<(String, f32)> = items
        .iter()
        .zip(&vals)
        .map(|(i, v)| (i.id.clone(), cosine(v, &query)))
        .collect();
    brute.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(hits.len(), 3);
    for (h, (id, score)) in hits.iter().zip(&brute) {
        assert_eq!(&h.entity_id, id);
        assert!((h.score - score).abs() < 1e-4, "{} vs {score}", h.score);
    }
    // A vector is its own nearest neighbour, score 1.
    let own = p
        .nearest(
            &fs.id,
            &NearestQuery {
                vector: vals[7].clone(),
                k: 1,
                dataset_id: None,
                filter: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(own[0].entity_id, other_items[2].id);
    assert!((own[0].score - 1.0).abs() < 1e-5);
    // Filtered by DQL on items.
    let cats = p
        .nearest(
            &fs.id,
            &NearestQuery {
                vector: query.clone(),
                k: 10,
                dataset_id: Some(ds.id.clone()),
                filter: Some(json!({"filename": "/cats/*"})),
            },
        )
        .await
        .unwrap();
    let cat_ids: HashSet<&str> = items
        .iter()
        .filter(|i| i.filename.starts_with("/cats/"))
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(cats.len(), 2);
    assert!(cats.iter().all(|h| cat_ids.contains(h.entity_id.as_str())));
    assert!(cats[0].score >= cats[1].score);
    // An updated vector moves.
    p.upsert_vectors(
        &fs.id,
        &[NewVector {
            entity_id: items[4].id.clone(),
            dataset_id: ds.id.clone(),
            value: query.iter().map(|x| x * 2.0).collect(),
        }],
    )
    .await
    .unwrap();
    let top = p
        .nearest(
            &fs.id,
            &NearestQuery {
                vector: query.clone(),
                k: 1,
                dataset_id: Some(ds.id.clone()),
                filter: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(top[0].entity_id, items[4].id);
    assert!((top[0].score - 1.0).abs() < 1e-5);

    assert_kind(
        p.upsert_vectors(
            &fs.id,
            &[NewVector {
                entity_id: items[0].id.clone(),
                dataset_id: ds.id.clone(),
                value: vec![0.0; 7],
            }],
        )
        .await
        .unwrap_err(),
        "validation",
        "7",
    );
    assert_kind(
        p.nearest(
            &fs.id,
            &NearestQuery {
                vector: vec![0.0; 9],
                k: 1,
                ..NearestQuery::default()
            },
        )
        .await
        .unwrap_err(),
        "validation",
        "9",
    );
}
