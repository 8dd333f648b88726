//! Dataset import: the three formats, bad entries with their locations, the all-or-nothing
//! threshold, and idempotent re-import.

use cliptune_store::import::{import, Format, ImportOptions};
use cliptune_store::*;
use serde_json::json;
use std::path::Path;

fn store(dir: &Path) -> LocalStore {
    LocalStore::open(&dir.join("home")).unwrap()
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn jsonl_folder(root: &Path, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        write(&root.join(format!("img/{i}.jpg")), format!("jpeg {i}"));
        let subset = if i % 4 == 0 { "validation" } else { "train" };
        lines.push_str(&format!(
            "{{\"file\": \"img/{i}.jpg\", \"caption\": \"photo {i}\", \"subset\": \"{subset}\", \"label\": \"l{}\"}}\n",
            i % 2
        ));
    }
    write(&root.join("captions.jsonl"), lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captions_jsonl_import_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    jsonl_folder(&src, 8);
    let s = store(dir.path());
    let r = import(&s, &src, &ImportOptions::new("photos"))
        .await
        .unwrap();
    assert_eq!(r.format, Format::CaptionsJsonl);
    assert_eq!((r.entries, r.items.created, r.items.updated), (8, 8, 0));
    assert!(r.bad.is_empty());
    assert_eq!(r.dataset.items_count, 8);

    let train = s
        .all_items(&r.dataset.id, Some(default_subset_filter("train")))
        .await
        .unwrap();
    let val = s
        .all_items(&r.dataset.id, Some(default_subset_filter("validation")))
        .await
        .unwrap();
    assert_eq!((train.len(), val.len()), (6, 2));
    let item = val.iter().find(|i| i.filename == "/img/4.jpg").unwrap();
    assert_eq!(item.description.as_deref(), Some("photo 4"));
    assert_eq!(item.metadata["user"]["label"], json!("l0"));
    assert_eq!(item.mimetype(), Some("image/jpeg"));
    assert_eq!(s.item_bytes(&item.id).await.unwrap(), b"jpeg 4");

    // Same folder again: nothing changes, ids stay.
    let again = import(&s, &src, &ImportOptions::new("photos"))
        .await
        .unwrap();
    assert_eq!(
        (
            again.items.created,
            again.items.updated,
            again.items.unchanged
        ),
        (0, 0, 8)
    );
    assert_eq!(again.dataset.id, r.dataset.id);
    assert_eq!(s.get_item(&item.id).await.unwrap().filename, "/img/4.jpg");

    // One caption edited: one update.
    let text = std::fs::read_to_string(src.join("captions.jsonl")).unwrap();
    write(
        &src.join("captions.jsonl"),
        text.replace("photo 3\"", "photo three\""),
    );
    let third = import(&s, &src, &ImportOptions::new("photos"))
        .await
        .unwrap();
    assert_eq!(
        (
            third.items.created,
            third.items.updated,
            third.items.unchanged
        ),
        (0, 1, 7)
    );
    assert_eq!(s.get_dataset(&r.dataset.id).await.unwrap().items_count, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_reported_and_the_threshold_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    jsonl_folder(&src, 6);
    write(&dir.path().join("outside.jpg"), "secret");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("outside.jpg"), src.join("img/link.jpg")).unwrap();
    let mut text = std::fs::read_to_string(src.join("captions.jsonl")).unwrap();
    text.push_str("{\"file\": \"img/missing.jpg\", \"caption\": \"x\"}\n"); // line 7
    text.push_str("{not json\n"); // line 8
    text.push_str("{\"file\": \"../outside.jpg\"}\n"); // line 9
    text.push_str("{\"file\": \"img/link.jpg\"}\n"); // line 10
    text.push_str("{\"file\": \"img/0.jpg\", \"subset\": \"holdout\"}\n"); // line 11
    write(&src.join("captions.jsonl"), text);
    let s = store(dir.path());

    let err = import(&s, &src, &ImportOptions::new("strict"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind().as_str(), "validation");
    for needle in [
        "5 of 11 entries are bad",
        "captions.jsonl:7: file \"img/missing.jpg\" not found",
        "captions.jsonl:8: unreadable JSON",
        "captions.jsonl:9: path \"../outside.jpg\" escapes the folder",
        "captions.jsonl:10: path \"img/link.jpg\" escapes the folder",
        "captions.jsonl:11: \"subset\" must be",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
    }
    assert!(
        s.list_datasets().await.unwrap().is_empty(),
        "nothing committed"
    );

    let lenient = ImportOptions {
        max_bad_fraction: 0.5,
        ..ImportOptions::new("lenient")
    };
    let r = import(&s, &src, &lenient).await.unwrap();
    assert_eq!(r.items.created, 6);
    let locations: Vec<&str> = r.bad.iter().map(|b| b.location.as_str()).collect();
    assert_eq!(
        locations,
        [
            "captions.jsonl:7",
            "captions.jsonl:8",
            "captions.jsonl:9",
            "captions.jsonl:10",
            "captions.jsonl:11"
        ]
    );
    assert_eq!(r.dataset.items_count, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_captions() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.png"), "png a");
    write(&src.join("a.txt"), "  a red car \n");
    write(&src.join("sub/b.webp"), "webp b");
    write(&src.join("sub/b.txt"), "a blue boat");
    write(&src.join("c.jpg"), "no caption");
    write(&src.join("notes.md"), "ignored");
    let s = store(dir.path());
    let r = import(&s, &src, &ImportOptions::new("side")).await.unwrap();
    assert_eq!(r.format, Format::Sidecar);
    assert_eq!(r.items.created, 3);
    let items = s.all_items(&r.dataset.id, None).await.unwrap();
    let caption = |f: &str| {
        items
            .iter()
            .find(|i| i.filename == f)
            .unwrap()
            .description
            .clone()
    };
    assert_eq!(caption("/a.png").as_deref(), Some("a red car"));
    assert_eq!(caption("/sub/b.webp").as_deref(), Some("a blue boat"));
    assert_eq!(caption("/c.jpg"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataloop_prompt_export_with_its_images_export() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images-export");
    let prompts = dir.path().join("prompts-export");
    let image_ids = ["65a0000000000000000000a1", "65a0000000000000000000a2"];
    for (i, id) in image_ids.iter().enumerate() {
        write(
            &images.join(format!("items/pics/{i}.jpg")),
            format!("pixels {i}"),
        );
        write(
            &images.join(format!("json/pics/{i}.json")),
            serde_json::to_vec(&json!({
                "id": id, "filename": format!("/pics/{i}.jpg"), "type": "file",
                "metadata": {"system": {"mimetype": "image/jpeg", "description": format!("system caption {i}"),
                             "tags": {"train": true}}},
            }))
            .unwrap(),
        );
        write(
            &prompts.join(format!("items/p{i}.json")),
            serde_json::to_vec(&PromptContent::to_json(id, Some("describe this"))).unwrap(),
        );
        write(
            &prompts.join(format!("json/p{i}.json")),
            serde_json::to_vec(&json!({
                "id": format!("65b00000000000000000000{i}"), "filename": format!("/p{i}.json"),
                "metadata": {"system": {"mimetype": "application/json", "shebang": {"dltype": "prompt"},
                             "tags": {"validation": i == 1}}},
                "annotations": [{"type": "text", "label": "free-text", "coordinates": format!("assistant caption {i}")}],
            }))
            .unwrap(),
        );
    }
    // A broken JSON file is a bad entry, named by its path (1 of 3 > 5%: needs a threshold).
    write(&prompts.join("json/broken.json"), "{");
    let s = store(dir.path());
    let opts = ImportOptions {
        images: Some(images.clone()),
        images_name: Some("pics".into()),
        max_bad_fraction: 0.5,
        ..ImportOptions::new("prompts")
    };
    let r = import(&s, &prompts, &opts).await.unwrap();
    assert_eq!(r.format, Format::DataloopExport);
    assert_eq!(r.items.created, 2);
    assert_eq!(r.images.as_ref().unwrap().created, 2);
    assert_eq!(r.bad.len(), 1);
    assert_eq!(r.bad[0].location, "json/broken.json");
    let pics = r.images_dataset.clone().unwrap();
    assert_eq!(pics.name, "pics");

    // Dataloop ids are kept, so prompts resolve to their images across the two datasets.
    let img = s.get_item(image_ids[1]).await.unwrap();
    assert_eq!(img.dataset_id, pics.id);
    assert_eq!(
        s.caption(&img).await.unwrap().caption.as_deref(),
        Some("system caption 1")
    );
    let p1 = s.get_item("65b000000000000000000001").await.unwrap();
    assert_eq!(p1.kind(), ItemKind::Prompt);
    assert!(p1.has_tag("validation"));
    let c = s.caption(&p1).await.unwrap();
    assert_eq!(c.caption.as_deref(), Some("assistant caption 1"));
    assert_eq!(c.image_item.unwrap().id, image_ids[1]);

    let again = import(&s, &prompts, &opts).await.unwrap();
    assert_eq!(again.items.unchanged, 2);
    assert_eq!(again.images.unwrap().unchanged, 2);
    assert_eq!(
        s.annotations(&p1.id).await.unwrap().len(),
        1,
        "no duplicate annotations"
    );

    // Importing the prompts alone into another dataset resolves images already in the store...
    let alone = import(
        &s,
        &prompts,
        &ImportOptions {
            max_bad_fraction: 0.5,
            ..ImportOptions::new("prompts-2")
        },
    )
    .await
    .unwrap();
    assert_eq!(alone.items.created, 2);
    // ...and a prompt whose image is nowhere fails the import, naming both.
    let lonely = dir.path().join("lonely");
    write(
        &lonely.join("items/x.json"),
        serde_json::to_vec(&PromptContent::to_json("65c0000000000000000000ff", None)).unwrap(),
    );
    write(
        &lonely.join("json/x.json"),
        serde_json::to_vec(&json!({"filename": "/x.json", "metadata": {"system": {"mimetype": "application/json"}}})).unwrap(),
    );
    let err = import(&s, &lonely, &ImportOptions::new("lonely"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("65c0000000000000000000ff"),
        "{err}"
    );
    assert!(s.dataset_by_name("lonely").await.is_err());
}
