//! Items: paging, uploads, captions, PATCH bodies, the gate's payload rules.

use super::*;

#[tokio::test]
async fn paging_walks_every_page_in_filename_order() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("pets").await.unwrap();
    for n in ["e.jpg", "b.jpg", "d.jpg", "a.jpg", "c.jpg"] {
        b.upload_item(&ds.id, img(n, Some("cap"), None))
            .await
            .unwrap();
    }
    let mut q = ItemQuery {
        page_size: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    for (page, more) in [(0, true), (1, true), (2, false)] {
        q.page = page;
        let p = b.query_items(&ds.id, &q).await.unwrap();
        assert_eq!(
            (p.page, p.has_next_page, p.total_items_count),
            (page, more, 5)
        );
        seen.extend(p.items.into_iter().map(|i| i.name));
    }
    assert_eq!(seen, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]);
    let body = &gate.calls_to("POST", &format!("/datasets/{}/query", ds.id))[0].body;
    assert_eq!(body["resource"], "items");
    assert_eq!(
        body["filter"],
        json!({"$and": [{"hidden": false}, {"type": "file"}]})
    );
    assert_eq!(
        (body["page"].clone(), body["pageSize"].clone()),
        (json!(0), json!(2))
    );
    assert_eq!(b.all_items(&ds.id, None).await.unwrap().len(), 5);
}

#[tokio::test]
async fn items_upload_patch_stream_and_captions() {
    let (gate, b) = setup().await;
    let images = b.create_dataset("images").await.unwrap();
    let prompts = b.create_dataset("prompts").await.unwrap();
    let cat = b
        .upload_item(&images.id, img("/cats/1.jpg", None, Some("train")))
        .await
        .unwrap();
    assert_eq!(
        (cat.dir.as_str(), cat.filename.as_str(), cat.name.as_str()),
        ("/cats", "/cats/1.jpg", "1.jpg")
    );
    assert_eq!(cat.mimetype(), Some("image/jpeg"));
    assert!(cat.has_tag("train"));
    let up = &gate.calls_to("POST", "/items")[0];
    assert_eq!(up.query, "mode=overwrite");

    // Overwrite keeps the id and replaces bytes.
    let mut again = img("cats/1.jpg", Some("a cat"), None);
    again.bytes = b"new bytes".to_vec();
    let cat2 = b.upload_item(&images.id, again).await.unwrap();
    assert_eq!(cat2.id, cat.id);
    assert_eq!(b.item_bytes(&cat.id).await.unwrap(), b"new bytes");

    let mut edited = cat2.clone();
    edited.description = Some("a black cat".into());
    edited.hidden = true;
    let edited = b.update_item(&edited).await.unwrap();
    assert_eq!(edited.own_caption(), Some("a black cat"));
    assert!(edited.hidden);
    // Only the change goes out, and without ?system=true as no system metadata changed.
    let patch = gate.calls_to("PATCH", "/items/").pop().unwrap();
    assert_eq!(patch.query, "");
    assert_eq!(
        patch.body,
        json!({"description": "a black cat", "hidden": true})
    );

    // A prompt item in another dataset, captioned by a free-text annotation.
    let prompt = PromptContent::to_json(&cat.id, Some("describe"));
    let p = b
        .upload_item(
            &prompts.id,
            NewItem {
                filename: "p1.json".into(),
                bytes: prompt.to_string().into_bytes(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(p.is_prompt());
    b.add_annotation(&p.id, NewAnnotation::free_text("a cat on a mat"))
        .await
        .unwrap();
    let ann = gate.calls_to("POST", "/annotations").pop().unwrap();
    assert_eq!(
        ann.body,
        json!([{"type": "text", "label": "free-text", "coordinates": "a cat on a mat"}])
    );
    let resolved = b.caption(&p).await.unwrap();
    assert_eq!(resolved.caption.as_deref(), Some("a cat on a mat"));
    assert_eq!(resolved.image_item.unwrap().id, cat.id);

    let hidden = NewItem {
        hidden: true,
        ..img("h.jpg", None, None)
    };
    assert!(b.upload_item(&images.id, hidden).await.unwrap().hidden);
    assert!(matches!(
        b.upload_item(&images.id, img("../x.jpg", None, None)).await,
        Err(StoreError::Invalid { .. })
    ));
}

#[tokio::test]
async fn item_updates_send_the_change_and_flag_system_changes() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    let it = b
        .upload_item(&ds.id, img("/a.jpg", Some("a"), Some("train")))
        .await
        .unwrap();
    let patches = || gate.calls_to("PATCH", "/items/");
    // Unchanged: no request at all.
    assert_eq!(b.update_item(&it).await.unwrap(), it);
    assert!(patches().is_empty());

    let mut user = it.clone();
    set_path(&mut user.metadata, &["user", "label"], json!("cat"));
    b.update_item(&user).await.unwrap();
    let p = patches().pop().unwrap();
    assert_eq!(
        (p.query.as_str(), &p.body),
        ("", &json!({"metadata": {"user": {"label": "cat"}}}))
    );

    // assign_subset("validation") as dtlpy writes it: the tags only, with ?system=true.
    let mut tags = b.get_item(&it.id).await.unwrap();
    set_path(
        &mut tags.metadata,
        &["system", "tags"],
        json!({"train": null, "validation": true, "test": null}),
    );
    let saved = b.update_item(&tags).await.unwrap();
    let p = patches().pop().unwrap();
    assert_eq!(p.query, "system=true");
    assert_eq!(
        p.body,
        json!({"metadata": {"system": {"tags": {"train": null, "validation": true, "test": null}}}})
    );
    assert!(saved.has_tag("validation") && !saved.has_tag("train"));
    // The gate's own system fields were not sent, so they are intact.
    assert_eq!(saved.metadata["system"]["mimetype"], "image/jpeg");
    assert_eq!(saved.metadata["user"]["label"], "cat");
}

/// The fake gate refuses what the real one would not take (or would silently drop), so the
/// backend tests above cannot pass by accident.
#[tokio::test]
async fn fake_gate_enforces_payload_rules() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    let it = b
        .upload_item(&ds.id, img("/a.jpg", None, Some("train")))
        .await
        .unwrap();
    let base = gate.seed_model("base", "pre-trained", json!({}));
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String, body: Value| {
        let req = http
            .request(method, format!("{}{path}", gate.url))
            .bearer_auth(&gate.api_key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let system_change = json!({"metadata": {"system": {"tags": {"train": null}}}});
    let (st, msg) = send(
        reqwest::Method::PATCH,
        format!("/items/{}", it.id),
        system_change.clone(),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("system=true"), "{msg}");
    let (st, _) = send(
        reqwest::Method::PATCH,
        format!("/items/{}?system=true", it.id),
        system_change,
    )
    .await;
    assert_eq!(st, 200);

    let mut model = gate.model_json(&base);
    model["metadata"]["system"]["subsets"] = json!({"train": {}, "validation": {}});
    let (st, msg) = send(
        reqwest::Method::PATCH,
        format!("/ml/models/{base}"),
        model.clone(),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("system=true"), "{msg}");
    let (st, _) = send(
        reqwest::Method::PATCH,
        format!("/ml/models/{base}?system=true"),
        model,
    )
    .await;
    assert_eq!(st, 200);

    // A clone must carry the source's package and types, as dtlpy's model.clone does.
    let (st, msg) = send(
        reqwest::Method::POST,
        format!("/ml/models/{base}/clone"),
        json!({"name": "c", "projectId": gate.project_id, "outputType": "embedding", "inputType": "image"}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("packageId"), "{msg}");
    // A create without the types dtlpy always sends.
    let (st, msg) = send(
        reqwest::Method::POST,
        "/ml/models".into(),
        json!({"name": "n", "projectId": gate.project_id}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("outputType"), "{msg}");
    // A body wrapped in a body.
    let (st, msg) = send(
        reqwest::Method::POST,
        format!("/datasets/{}/query", ds.id),
        json!({"filter": {"filter": {"hidden": false}}, "resource": "items", "page": 0, "pageSize": 10}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("filter"), "{msg}");
}

#[tokio::test]
async fn subset_bodies_are_sent_unwrapped() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    for (name, tag) in [("/t.jpg", "train"), ("/v.jpg", "validation")] {
        b.upload_item(&ds.id, img(name, None, Some(tag)))
            .await
            .unwrap();
    }
    let body = json!({"filter": {"$and": [{"hidden": false},
        {"$or": [{"metadata": {"system": {"tags": {"train": true}}}}]}, {"type": "file"}]}});
    let got = b.all_items(&ds.id, Some(body.clone())).await.unwrap();
    assert_eq!(
        got.iter().map(|i| i.filename.as_str()).collect::<Vec<_>>(),
        ["/t.jpg"]
    );
    let sent = gate.calls_to("POST", "/query").pop().unwrap();
    assert_eq!(sent.body["filter"], body["filter"]);
    assert_eq!(sent.body["resource"], "items");
    // A join cannot be evaluated by the embedded store, so neither backend takes one.
    let err = b
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"filter": {}, "join": {"filter": {}}})),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("join"), "{err}");
}
