//! Datasets, items, DQL (the template's subset forms included), item updates, captions.

use super::*;

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
