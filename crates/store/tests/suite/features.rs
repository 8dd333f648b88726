//! Feature sets and vectors: upserts, reads, nearest neighbours.

use super::*;

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
