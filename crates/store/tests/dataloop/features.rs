//! Feature sets, vector upserts and nearest-neighbour queries.

use super::*;

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[tokio::test]
async fn feature_set_array_answer_and_vectors() {
    let (gate, b) = setup().await;
    let model = gate.seed_model("m", "trained", json!({}));
    let fs = b.feature_set_for_model(&model, "m", 3).await.unwrap();
    assert_eq!((fs.size, fs.model_id.as_deref()), (3, Some(model.as_str())));
    assert_eq!(
        b.feature_set_for_model(&model, "m", 3).await.unwrap().id,
        fs.id
    );
    assert_eq!(
        gate.calls_to("POST", "/features/sets")
            .iter()
            .filter(|c| !c.path.ends_with("query"))
            .count(),
        1
    );
    assert!(matches!(
        b.feature_set_for_model(&model, "m", 4).await,
        Err(StoreError::Conflict(_))
    ));

    let ds = b.create_dataset("d").await.unwrap();
    let mut items = Vec::new();
    for (n, tag) in [
        ("a.jpg", "train"),
        ("b.jpg", "validation"),
        ("c.jpg", "train"),
    ] {
        items.push(
            b.upload_item(&ds.id, img(n, None, Some(tag)))
                .await
                .unwrap(),
        );
    }
    let raw = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]];
    let vecs: Vec<NewVector> = items
        .iter()
        .zip(raw)
        .map(|(it, v)| NewVector {
            entity_id: it.id.clone(),
            dataset_id: ds.id.clone(),
            value: unit(&v),
        })
        .collect();
    assert_eq!(
        b.upsert_vectors(&fs.id, &vecs).await.unwrap(),
        UpsertSummary {
            inserted: 3,
            updated: 0
        }
    );
    // Re-upserting one replaces it: no duplicate.
    let moved = NewVector {
        value: unit(&[0.0, 1.0, 0.0]),
        ..vecs[1].clone()
    };
    assert_eq!(
        b.upsert_vectors(&fs.id, &[moved]).await.unwrap(),
        UpsertSummary {
            inserted: 0,
            updated: 1
        }
    );
    assert_eq!(gate.vector_count(), 3);
    assert_eq!(
        b.get_vector(&fs.id, &items[1].id).await.unwrap().value,
        unit(&[0.0, 1.0, 0.0])
    );
    let mut ents = b.vector_entities(&fs.id, Some(&ds.id)).await.unwrap();
    ents.sort();
    let mut want: Vec<_> = items.iter().map(|i| i.id.clone()).collect();
    want.sort();
    assert_eq!(ents, want);
    let bad = NewVector {
        value: vec![1.0, 2.0],
        ..vecs[0].clone()
    };
    assert!(matches!(
        b.upsert_vectors(&fs.id, &[bad]).await,
        Err(StoreError::Invalid { .. })
    ));

    // Cosine scores, best first; the query vector need not be normalised.
    let q = NearestQuery {
        vector: vec![2.0, 1.0, 0.0],
        k: 2,
        ..Default::default()
    };
    let got = b.nearest(&fs.id, &q).await.unwrap();
    let ids: Vec<_> = got.iter().map(|n| n.entity_id.clone()).collect();
    assert_eq!(ids, [items[0].id.clone(), items[1].id.clone()]);
    let qn = unit(&[2.0, 1.0, 0.0]);
    assert!((got[0].score - qn[0]).abs() < 1e-6, "{got:?}");
    assert!((got[1].score - qn[1]).abs() < 1e-6, "{got:?}");
    let sent = gate
        .calls_to("POST", "/features/vectors/query")
        .pop()
        .unwrap()
        .body;
    assert_eq!(
        sent["filter"]["value"]["$euclid"]["$euclidSort"],
        json!({"eu_dist": "ascending"})
    );

    // Within a dataset with an item filter: the join on feature_vectors.
    let q = NearestQuery {
        vector: vec![2.0, 1.0, 0.0],
        k: 5,
        dataset_id: Some(ds.id.clone()),
        filter: Some(json!({"metadata.system.tags.train": true})),
    };
    let got = b.nearest(&fs.id, &q).await.unwrap();
    let ids: Vec<_> = got.iter().map(|n| n.entity_id.clone()).collect();
    assert_eq!(ids, [items[0].id.clone(), items[2].id.clone()]);
    assert!(got[1].score.abs() < 1e-6);
    let join = &gate
        .calls_to("POST", &format!("/datasets/{}/query", ds.id))
        .pop()
        .unwrap()
        .body["join"];
    assert_eq!(
        join["on"],
        json!({"resource": "feature_vectors", "local": "entityId", "forigen": "id"})
    );
    assert!(matches!(
        b.nearest(
            &fs.id,
            &NearestQuery {
                vector: vec![0.0; 3],
                k: 1,
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Invalid { .. })
    ));
}
