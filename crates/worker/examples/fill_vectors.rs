//! Fills a model's feature set with N synthetic vectors, for the search-latency benchmark
//! (scripts/bench-embed-search.sh): `fill_vectors HOME MODEL N`. The vectors are seeded
//! pseudo-random values under entity ids `{i:024x}` in a dataset named `bench-vectors`
//! (no items: search answers ids and scores). Rerunning with a larger N adds the rest.

use cliptune_store::prelude::*;
use cliptune_store::{LocalStore, NewVector};
use std::time::Instant;

fn value(i: u64, dim: usize) -> Vec<f32> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D;
    (0..dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: fill_vectors HOME MODEL N");
        std::process::exit(2);
    }
    let n: u64 = args[3].parse()?;
    let store = LocalStore::open(args[1].as_ref())?;
    let model = store.resolve_model(&args[2]).await?;
    let dir = std::env::temp_dir().join(format!("fill-vectors-{}", std::process::id()));
    store.download_artifacts(&model.id, &dir).await?;
    let dim = cliptune_clip::checkpoint::inspect(&dir, &Default::default())?
        .config
        .embed_dim as u32;
    std::fs::remove_dir_all(&dir)?;
    let set = store
        .feature_set_for_model(&model.id, &model.name, dim)
        .await?;
    let dataset = match store.dataset_by_name("bench-vectors").await {
        Ok(d) => d,
        Err(_) => store.create_dataset("bench-vectors").await?,
    };
    let have = store
        .vector_entities(&set.id, Some(&dataset.id))
        .await?
        .len() as u64;
    let started = Instant::now();
    let mut i = have;
    while i < n {
        let end = (i + 10_000).min(n);
        let batch: Vec<NewVector> = (i..end)
            .map(|j| NewVector {
                entity_id: format!("{j:024x}"),
                dataset_id: dataset.id.clone(),
                value: value(j, dim as usize),
            })
            .collect();
        store.upsert_vectors(&set.id, &batch).await?;
        i = end;
    }
    println!(
        "{{\"feature_set\": \"{}\", \"dataset\": \"{}\", \"vectors\": {n}, \"dim\": {dim}, \"added\": {}, \"seconds\": {:.1}}}",
        set.id,
        dataset.id,
        n - have.min(n),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
