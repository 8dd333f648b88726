//! The optimizer, loss, schedule and clipping against reference values that
//! scripts/reference/train_reference.py produced with torch 2.11 and open_clip.

use cliptune_train::optim::{learning_rate, AdamW};
use cliptune_train::{loss, LrSchedule, TrainConfig};
use serde_json::Value;
use tch::{Kind, Tensor};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/train/reference.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &Tensor, want: &[f32], tol: f64, what: &str) {
    let got: Vec<f32> = Vec::try_from(got.flatten(0, -1)).unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            ((g - w) as f64).abs() <= tol * (1.0 + w.abs() as f64),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn adamw_matches_torch() {
    let f = &fixture()["adamw"];
    let shape: Vec<i64> = f["w_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let w = Tensor::from_slice(&floats(&f["w0"]))
        .view(shape.as_slice())
        .set_requires_grad(true);
    let b = Tensor::from_slice(&floats(&f["b0"])).set_requires_grad(true);
    let betas = [
        f["betas"][0].as_f64().unwrap(),
        f["betas"][1].as_f64().unwrap(),
    ];
    let mut opt = AdamW::new(
        vec![
            ("w".into(), w.shallow_clone(), 1.0, true),
            ("b".into(), b.shallow_clone(), 1.0, false),
        ],
        betas,
        f["eps"].as_f64().unwrap(),
        f["weight_decay"].as_f64().unwrap(),
    );
    for (i, lr) in f["lrs"].as_array().unwrap().iter().enumerate() {
        // Gradients come from a backward pass whose result is exactly the reference grad.
        let gw = Tensor::from_slice(&floats(&f["grads"][i]["w"])).view(shape.as_slice());
        let gb = Tensor::from_slice(&floats(&f["grads"][i]["b"]));
        opt.zero_grad();
        ((&w * &gw).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
        opt.step(lr.as_f64().unwrap());
        assert_close(
            &w,
            &floats(&f["after"][i]["w"]),
            1e-6,
            &format!("w after step {}", i + 1),
        );
        assert_close(
            &b,
            &floats(&f["after"][i]["b"]),
            1e-6,
            &format!("b after step {}", i + 1),
        );
    }
}

#[test]
fn clip_loss_matches_open_clip() {
    let f = &fixture()["clip_loss"];
    let (n, d) = (f["n"].as_i64().unwrap(), f["d"].as_i64().unwrap());
    let img = Tensor::from_slice(&floats(&f["image"])).view([n, d]);
    let txt = Tensor::from_slice(&floats(&f["text"])).view([n, d]);
    let scale = f["logit_scale"].as_f64().unwrap().exp();
    let logits =
        cliptune_clip::normalize(&img).matmul(&cliptune_clip::normalize(&txt).tr()) * scale;
    let got = loss::clip_loss(&logits).double_value(&[]);
    let want = f["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn cosine_schedule_matches_open_clip_train() {
    let f = &fixture()["cosine"];
    let cfg = TrainConfig {
        learning_rate: f["base"].as_f64().unwrap(),
        warmup_steps: f["warmup"].as_u64().unwrap(),
        lr_schedule: LrSchedule::Cosine,
        ..TrainConfig::default()
    };
    let steps = f["steps"].as_u64().unwrap();
    for (i, want) in f["lrs"].as_array().unwrap().iter().enumerate() {
        let got = learning_rate(&cfg, i as u64, steps);
        assert!(
            (got - want.as_f64().unwrap()).abs() < 1e-12,
            "step {i}: {got} vs {want}"
        );
    }
}

#[test]
fn grad_clipping_matches_torch() {
    let f = &fixture()["clip_grad_norm"];
    let a = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let ga = Tensor::from_slice(&floats(&f["grads"][0]));
    let gb = Tensor::from_slice(&floats(&f["grads"][1])).view([2, 3]);
    ((&a * &ga).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
    let mut opt = AdamW::new(
        vec![
            ("a".into(), a.shallow_clone(), 1.0, true),
            ("b".into(), b.shallow_clone(), 1.0, true),
        ],
        [0.9, 0.999],
        1e-8,
        0.0,
    );
    let norm = opt.clip_grad_norm(f["max"].as_f64().unwrap());
    assert!((norm - f["norm"].as_f64().unwrap()).abs() < 1e-5);
    assert_close(&a.grad(), &floats(&f["after"][0]), 1e-6, "a.grad");
    assert_close(&b.grad(), &floats(&f["after"][1]), 1e-6, "b.grad");
}
