//! The training config: Dataloop's template keys with their meaning, plus ours.
//!
//! A config is a JSON object merged *shallowly* (top-level keys replace) onto the base
//! model's config, as Dataloop does, and validated as a whole before any work starts:
//! every impossible value is an error naming its key; unknown keys are warnings.

use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Half-cosine from the peak rate to 0 over the remaining steps (open_clip's `cosine`).
    Cosine,
    Constant,
}

/// Compute precision: defined in cliptune-clip (inference shares it), parsed by one table.
pub use cliptune_clip::Precision;

/// Every key a training config understands. See `docs/training.md` for the meaning of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Architecture name, informational unless it names a preset that contradicts the base model.
    pub model_name: Option<String>,
    /// Embedding dimension; must equal the base model's when given.
    pub embeddings_size: Option<i64>,
    /// Pairs per micro-batch (the contrastive batch is `batch_size * grad_accumulation`).
    pub batch_size: usize,
    pub num_epochs: usize,
    pub early_stopping: bool,
    /// Stop after exactly this many consecutive epochs without a lower validation loss.
    pub early_stopping_epochs: usize,
    pub learning_rate: f64,
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub epsilon: f64,
    pub warmup_steps: u64,
    pub lr_schedule: LrSchedule,
    pub precision: Precision,
    /// Micro-batches per optimizer step; features are cached so negatives span all of them.
    pub grad_accumulation: usize,
    /// Clip the global gradient L2 norm to this value (`null`: no clipping).
    pub max_grad_norm: Option<f64>,
    pub lock_image_tower: bool,
    /// With `lock_image_tower`: layer groups left trainable, counted from the top
    /// (1 = `ln_post` + `proj`, 2 = also the last block, ...).
    pub lock_image_unlocked_layers: usize,
    pub lock_text_tower: bool,
    /// With `lock_text_tower`: as `lock_image_unlocked_layers` (1 = `ln_final` + `text_projection`).
    pub lock_text_unlocked_layers: usize,
    /// WiSE-FT: final weights `(1 - a) * base + a * fine_tuned`; 1 keeps the fine-tuned weights.
    pub wise_ft_alpha: f64,
    pub seed: u64,
    /// Batch size of validation-loss evaluation; fixed so the loss does not depend on `batch_size`.
    pub eval_batch_size: usize,
    /// Random resized crops (scale 0.9-1, as open_clip's training transform) during training.
    pub augment: bool,
    /// Layer-wise learning-rate decay: a group `d` layers below the top trains at `lr * decay^d`.
    pub lr_layer_decay: f64,
    /// Fail the run when more than this share of the pairs is unusable.
    pub max_bad_fraction: f64,
    /// Share held out for validation when the data has no `subset` column.
    pub validation_fraction: f64,
    /// The file, next to cliptune's own, that holds `{"model_state_dict": ...}` as Dataloop's
    /// CLIP adapter saves and loads it; a plain file name.
    #[serde(default = "adapter_weights")]
    pub weights_filename: String,
}

fn adapter_weights() -> String {
    cliptune_clip::checkpoint::ADAPTER_WEIGHTS.to_string()
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model_name: None,
            embeddings_size: None,
            batch_size: 64,
            num_epochs: 10,
            early_stopping: true,
            early_stopping_epochs: 3,
            learning_rate: 1e-5,
            betas: [0.9, 0.98],
            weight_decay: 0.1,
            epsilon: 1e-6,
            warmup_steps: 0,
            lr_schedule: LrSchedule::Cosine,
            precision: Precision::Fp32,
            grad_accumulation: 1,
            max_grad_norm: None,
            lock_image_tower: false,
            lock_image_unlocked_layers: 0,
            lock_text_tower: false,
            lock_text_unlocked_layers: 0,
            wise_ft_alpha: 1.0,
            seed: 0,
            eval_batch_size: 256,
            augment: false,
            lr_layer_decay: 1.0,
            max_bad_fraction: 0.05,
            validation_fraction: 0.1,
            weights_filename: adapter_weights(),
        }
    }
}

/// Keys of the config object, in documentation order (`episilon` is an alias of `epsilon`).
pub const KEYS: &[&str] = &[
    "model_name",
    "embeddings_size",
    "batch_size",
    "num_epochs",
    "early_stopping",
    "early_stopping_epochs",
    "learning_rate",
    "betas",
    "weight_decay",
    "epsilon",
    "warmup_steps",
    "lr_schedule",
    "precision",
    "grad_accumulation",
    "max_grad_norm",
    "lock_image_tower",
    "lock_image_unlocked_layers",
    "lock_text_tower",
    "lock_text_unlocked_layers",
    "wise_ft_alpha",
    "seed",
    "eval_batch_size",
    "augment",
    "lr_layer_decay",
    "max_bad_fraction",
    "validation_fraction",
    "weights_filename",
];

/// A validated config and the warnings found while reading it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: TrainConfig,
    pub warnings: Vec<String>,
}

/// Merges JSON objects shallowly, later ones winning, key by key.
pub fn merge(layers: &[&Value]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (i, layer) in layers.iter().enumerate() {
        match layer {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    out.insert(k.clone(), v.clone());
                }
            }
            other => {
                return Err(TrainError::config(
                    "<root>",
                    format!(
                        "config layer {i} must be a JSON object, got {}",
                        type_name(other)
                    ),
                ))
            }
        }
    }
    Ok(out)
}

impl TrainConfig {
    /// Merges `layers` (e.g. the base model's stored config, then the user's) onto the
    /// defaults and validates the result.
    pub fn from_layers(layers: &[&Value]) -> Result<Parsed> {
        let merged = merge(layers)?;
        Self::from_map(&merged)
    }

    /// Reads and validates one JSON object.
    pub fn from_map(map: &Map<String, Value>) -> Result<Parsed> {
        let mut warnings = Vec::new();
        let mut c = TrainConfig::default();
        let mut map = map.clone();
        // Dataloop's adapter reads the misspelt key; accept it so old configs keep working.
        if let Some(v) = map.remove("episilon") {
            if map.contains_key("epsilon") {
                warnings.push(
                    "both `epsilon` and its misspelt alias `episilon` are set; using `epsilon`"
                        .into(),
                );
            } else {
                map.insert("epsilon".into(), v);
            }
        }
        let mut unknown: Vec<&String> =
            map.keys().filter(|k| !KEYS.contains(&k.as_str())).collect();
        unknown.sort();
        for k in unknown {
            warnings.push(match suggest(k) {
                Some(s) => format!("unknown config key `{k}` ignored (did you mean `{s}`?)"),
                None => format!("unknown config key `{k}` ignored"),
            });
        }
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());
        if let Some(v) = get("model_name") {
            c.model_name = Some(string(v, "model_name")?);
        }
        if let Some(v) = get("embeddings_size") {
            c.embeddings_size = Some(int_at_least(v, "embeddings_size", 1)? as i64);
        }
        if let Some(v) = get("batch_size") {
            c.batch_size = int_at_least(v, "batch_size", 2)? as usize;
        }
        if let Some(v) = get("num_epochs") {
            c.num_epochs = int_at_least(v, "num_epochs", 1)? as usize;
        }
        if let Some(v) = get("early_stopping") {
            c.early_stopping = boolean(v, "early_stopping")?;
        }
        if let Some(v) = get("early_stopping_epochs") {
            c.early_stopping_epochs = int_at_least(v, "early_stopping_epochs", 1)? as usize;
        }
        if let Some(v) = get("learning_rate") {
            c.learning_rate = number(v, "learning_rate")?;
            if c.learning_rate <= 0.0 {
                return Err(TrainError::config(
                    "learning_rate",
                    format!("must be > 0, got {}", c.learning_rate),
                ));
            }
        }
        if let Some(v) = get("betas") {
            let items = v.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                TrainError::config("betas", format!("must be a list of two numbers, got {v}"))
            })?;
            for (i, b) in items.iter().enumerate() {
                let b = number(b, "betas")?;
                if !(0.0..1.0).contains(&b) {
                    return Err(TrainError::config(
                        "betas",
                        format!("betas[{i}] must be in [0, 1), got {b}"),
                    ));
                }
                c.betas[i] = b;
            }
        }
        if let Some(v) = get("weight_decay") {
            c.weight_decay = non_negative(v, "weight_decay")?;
        }
        if let Some(v) = get("epsilon") {
            c.epsilon = number(v, "epsilon")?;
            if c.epsilon <= 0.0 {
                return Err(TrainError::config(
                    "epsilon",
                    format!("must be > 0, got {}", c.epsilon),
                ));
            }
        }
        if let Some(v) = get("warmup_steps") {
            c.warmup_steps = int_at_least(v, "warmup_steps", 0)?;
        }
        if let Some(v) = get("lr_schedule") {
            c.lr_schedule = match string(v, "lr_schedule")?.as_str() {
                "cosine" => LrSchedule::Cosine,
                "constant" | "const" => LrSchedule::Constant,
                other => {
                    return Err(TrainError::config(
                        "lr_schedule",
                        format!("must be \"cosine\" or \"constant\", got {other:?}"),
                    ))
                }
            };
        }
        if let Some(v) = get("precision") {
            c.precision = string(v, "precision")?
                .parse()
                .map_err(|e: String| TrainError::config("precision", e))?;
        }
        if let Some(v) = get("grad_accumulation") {
            c.grad_accumulation = int_at_least(v, "grad_accumulation", 1)? as usize;
        }
        if let Some(v) = get("max_grad_norm") {
            let n = number(v, "max_grad_norm")?;
            if n <= 0.0 {
                return Err(TrainError::config(
                    "max_grad_norm",
                    format!("must be > 0 (or null for no clipping), got {n}"),
                ));
            }
            c.max_grad_norm = Some(n);
        }
        if let Some(v) = get("lock_image_tower") {
            c.lock_image_tower = boolean(v, "lock_image_tower")?;
        }
        if let Some(v) = get("lock_image_unlocked_layers") {
            c.lock_image_unlocked_layers =
                int_at_least(v, "lock_image_unlocked_layers", 0)? as usize;
        }
        if let Some(v) = get("lock_text_tower") {
            c.lock_text_tower = boolean(v, "lock_text_tower")?;
        }
        if let Some(v) = get("lock_text_unlocked_layers") {
            c.lock_text_unlocked_layers = int_at_least(v, "lock_text_unlocked_layers", 0)? as usize;
        }
        if let Some(v) = get("wise_ft_alpha") {
            c.wise_ft_alpha = unit_interval(v, "wise_ft_alpha")?;
        }
        if let Some(v) = get("seed") {
            c.seed = int_at_least(v, "seed", 0)?;
        }
        if let Some(v) = get("eval_batch_size") {
            c.eval_batch_size = int_at_least(v, "eval_batch_size", 2)? as usize;
        }
        if let Some(v) = get("augment") {
            c.augment = boolean(v, "augment")?;
        }
        if let Some(v) = get("lr_layer_decay") {
            c.lr_layer_decay = number(v, "lr_layer_decay")?;
            if !(c.lr_layer_decay > 0.0 && c.lr_layer_decay <= 1.0) {
                return Err(TrainError::config(
                    "lr_layer_decay",
                    format!("must be in (0, 1], got {}", c.lr_layer_decay),
                ));
            }
        }
        if let Some(v) = get("max_bad_fraction") {
            c.max_bad_fraction = unit_interval(v, "max_bad_fraction")?;
        }
        if let Some(v) = get("validation_fraction") {
            c.validation_fraction = number(v, "validation_fraction")?;
            if !(c.validation_fraction > 0.0 && c.validation_fraction < 1.0) {
                return Err(TrainError::config(
                    "validation_fraction",
                    format!("must be in (0, 1), got {}", c.validation_fraction),
                ));
            }
        }
        if let Some(v) = get("weights_filename") {
            c.weights_filename = weights_filename(v)?;
        }
        if !c.lock_image_tower && c.lock_image_unlocked_layers > 0 {
            warnings.push(
                "`lock_image_unlocked_layers` has no effect without `lock_image_tower`".into(),
            );
        }
        if !c.lock_text_tower && c.lock_text_unlocked_layers > 0 {
            warnings
                .push("`lock_text_unlocked_layers` has no effect without `lock_text_tower`".into());
        }
        if !c.early_stopping && map.contains_key("early_stopping_epochs") {
            warnings.push(
                "`early_stopping_epochs` has no effect while `early_stopping` is false".into(),
            );
        }
        Ok(Parsed {
            config: c,
            warnings,
        })
    }

    /// Checks the config against the model it will train (the keys that name architecture facts).
    pub fn check_model(&self, model: &cliptune_clip::ClipConfig) -> Result<()> {
        if let Some(e) = self.embeddings_size {
            if e != model.embed_dim {
                return Err(TrainError::config(
                    "embeddings_size",
                    format!(
                        "{e} does not match the base model's embedding size {}",
                        model.embed_dim
                    ),
                ));
            }
        }
        if let Some(name) = &self.model_name {
            if let Ok(preset) = cliptune_clip::ClipConfig::preset(name) {
                let same = preset.vision == model.vision
                    && preset.text.width == model.text.width
                    && preset.text.layers == model.text.layers
                    && preset.embed_dim == model.embed_dim;
                if !same {
                    return Err(TrainError::config(
                        "model_name",
                        format!("{name:?} names an architecture different from the base model's"),
                    ));
                }
            }
        }
        let checks = [
            (
                self.lock_image_tower,
                "lock_image_unlocked_layers",
                self.lock_image_unlocked_layers,
                model.vision.layers as usize + 2,
            ),
            (
                self.lock_text_tower,
                "lock_text_unlocked_layers",
                self.lock_text_unlocked_layers,
                model.text.layers as usize + 2,
            ),
        ];
        for (locked, key, n, groups) in checks {
            if locked && n > groups {
                return Err(TrainError::config(
                    key,
                    format!(
                        "{n} exceeds the tower's {groups} layer groups (embeddings, blocks, head)"
                    ),
                ));
            }
        }
        if self.lock_image_tower
            && self.lock_image_unlocked_layers == 0
            && self.lock_text_tower
            && self.lock_text_unlocked_layers == 0
        {
            tracing::warn!("both towers locked: only logit_scale trains");
        }
        Ok(())
    }

    /// The config as a JSON object (stored with trained models, so that training on top of
    /// them starts from the same settings).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("config serializes")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn number(v: &Value, key: &str) -> Result<f64> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
        TrainError::config(key, format!("must be a number, got {} {v}", type_name(v)))
    })
}

fn non_negative(v: &Value, key: &str) -> Result<f64> {
    let x = number(v, key)?;
    if x < 0.0 {
        return Err(TrainError::config(key, format!("must be >= 0, got {x}")));
    }
    Ok(x)
}

fn unit_interval(v: &Value, key: &str) -> Result<f64> {
    let x = number(v, key)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(TrainError::config(
            key,
            format!("must be in [0, 1], got {x}"),
        ));
    }
    Ok(x)
}

fn int_at_least(v: &Value, key: &str, min: u64) -> Result<u64> {
    let x = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 9e15)
            .map(|f| f as u64)
    });
    match x {
        Some(x) if x >= min => Ok(x),
        Some(x) => Err(TrainError::config(
            key,
            format!("must be >= {min}, got {x}"),
        )),
        None => Err(TrainError::config(
            key,
            format!("must be an integer >= {min}, got {} {v}", type_name(v)),
        )),
    }
}

fn boolean(v: &Value, key: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| {
        TrainError::config(
            key,
            format!("must be true or false, got {} {v}", type_name(v)),
        )
    })
}

fn string(v: &Value, key: &str) -> Result<String> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        TrainError::config(key, format!("must be a string, got {} {v}", type_name(v)))
    })
}

/// Checks the `weights_filename` of a config layer alone (model creation checks it before a
/// model exists; the other keys are checked when training reads the merged config).
pub fn check_weights_filename(layer: &Map<String, Value>) -> Result<()> {
    match layer.get("weights_filename").filter(|v| !v.is_null()) {
        Some(v) => weights_filename(v).map(drop),
        None => Ok(()),
    }
}

/// A plain file name: the file is written into the model's artifact folder, so a path
/// could land outside it, and one of cliptune's own names would overwrite that file.
fn weights_filename(v: &Value) -> Result<String> {
    let key = "weights_filename";
    let name = string(v, key)?;
    let own = [
        cliptune_clip::checkpoint::NATIVE_CONFIG,
        cliptune_clip::checkpoint::NATIVE_WEIGHTS,
        crate::report::JSON,
        crate::report::HTML,
        crate::trainer::CONFIG_FILE,
    ];
    let why = if name.trim().is_empty() {
        Some("must not be empty")
    } else if name.contains(['/', '\\']) || name == "." || name.contains("..") {
        Some("must be a plain file name, without `/`, `\\` or `..`")
    } else if name.starts_with('.') || name.chars().any(char::is_control) {
        Some("must be a plain file name, not hidden and without control characters")
    } else if own.contains(&name.as_str()) {
        Some("names one of cliptune's own files")
    } else {
        None
    };
    match why {
        Some(why) => Err(TrainError::config(key, format!("{why}, got {name:?}"))),
        None => Ok(name),
    }
}

/// The known key closest to a typo (edit distance <= 2).
fn suggest(key: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    KEYS.iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Parsed> {
        TrainConfig::from_layers(&[&v])
    }

    fn key_of(e: TrainError) -> String {
        match e {
            TrainError::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn defaults_and_template_keys() {
        let p = parse(json!({
            "model_name": "ViT-B/32", "embeddings_size": 512, "batch_size": 128, "num_epochs": 5,
            "early_stopping": true, "early_stopping_epochs": 2, "learning_rate": 5e-7,
            "betas": [0.9, 0.98], "weight_decay": 0.2, "epsilon": 1e-6
        }))
        .unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = p.config;
        assert_eq!(
            (c.batch_size, c.num_epochs, c.early_stopping_epochs),
            (128, 5, 2)
        );
        assert_eq!(c.learning_rate, 5e-7);
        assert_eq!(c.weight_decay, 0.2);
        assert_eq!(c.precision, Precision::Fp32);
        assert_eq!(
            TrainConfig::from_layers(&[]).unwrap().config,
            TrainConfig::default()
        );
    }

    #[test]
    fn episilon_alias_and_unknown_keys() {
        let p = parse(json!({"episilon": 1e-8, "bach_size": 3, "foo": 1})).unwrap();
        assert_eq!(p.config.epsilon, 1e-8);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("`bach_size`") && p.warnings[0].contains("`batch_size`"));
        assert!(p.warnings[1].contains("`foo`"));
        let both = parse(json!({"episilon": 1e-8, "epsilon": 1e-7})).unwrap();
        assert_eq!(both.config.epsilon, 1e-7);
        assert_eq!(both.warnings.len(), 1);
    }

    #[test]
    fn shallow_merge_later_layers_win() {
        let base = json!({"batch_size": 32, "betas": [0.8, 0.9], "learning_rate": 1e-4});
        let user = json!({"betas": [0.9, 0.999], "num_epochs": 2});
        let c = TrainConfig::from_layers(&[&base, &user]).unwrap().config;
        assert_eq!(c.batch_size, 32);
        assert_eq!(c.betas, [0.9, 0.999]);
        assert_eq!(c.learning_rate, 1e-4);
        assert_eq!(c.num_epochs, 2);
    }

    #[test]
    fn impossible_values_name_their_key() {
        let cases = [
            (json!({"batch_size": 1}), "batch_size"),
            (json!({"batch_size": 8.5}), "batch_size"),
            (json!({"batch_size": "64"}), "batch_size"),
            (json!({"learning_rate": -1e-5}), "learning_rate"),
            (json!({"learning_rate": 0}), "learning_rate"),
            (json!({"betas": [0.9, 1.0]}), "betas"),
            (json!({"betas": [-0.1, 0.9]}), "betas"),
            (json!({"betas": [0.9]}), "betas"),
            (json!({"weight_decay": -0.1}), "weight_decay"),
            (json!({"epsilon": 0}), "epsilon"),
            (json!({"episilon": -1}), "epsilon"),
            (json!({"num_epochs": 0}), "num_epochs"),
            (json!({"early_stopping_epochs": 0}), "early_stopping_epochs"),
            (json!({"early_stopping": "yes"}), "early_stopping"),
            (json!({"lr_schedule": "linear"}), "lr_schedule"),
            (json!({"precision": "fp8"}), "precision"),
            (json!({"grad_accumulation": 0}), "grad_accumulation"),
            (json!({"max_grad_norm": 0}), "max_grad_norm"),
            (json!({"wise_ft_alpha": 1.5}), "wise_ft_alpha"),
            (json!({"eval_batch_size": 1}), "eval_batch_size"),
            (json!({"lr_layer_decay": 0}), "lr_layer_decay"),
            (json!({"lr_layer_decay": 1.1}), "lr_layer_decay"),
            (json!({"max_bad_fraction": -0.01}), "max_bad_fraction"),
            (json!({"validation_fraction": 1}), "validation_fraction"),
            (json!({"seed": -3}), "seed"),
        ];
        for (value, key) in cases {
            let err = parse(value.clone()).expect_err(&format!("{value} must be rejected"));
            let msg = err.to_string();
            assert!(msg.contains(key), "{value}: {msg}");
            assert_eq!(key_of(err), key, "{value}");
        }
        assert!(TrainConfig::from_layers(&[&json!([1, 2])]).is_err());
    }

    #[test]
    fn weights_filename_is_a_plain_file_name() {
        assert_eq!(TrainConfig::default().weights_filename, "best.pt");
        let c = parse(json!({"weights_filename": "clip_weights.pth"}))
            .unwrap()
            .config;
        assert_eq!(c.weights_filename, "clip_weights.pth");
        for bad in [
            json!("../best.pt"),
            json!("weights/best.pt"),
            json!("/tmp/best.pt"),
            json!("..\\best.pt"),
            json!(".."),
            json!(""),
            json!(".hidden.pt"),
            json!("model.safetensors"),
            json!("clip_config.json"),
            json!("train_config.json"),
            json!(7),
        ] {
            let layer = json!({ "weights_filename": bad.clone() });
            let err = parse(layer.clone()).expect_err(&format!("{bad} must be rejected"));
            assert!(err.to_string().contains("weights_filename"), "{bad}: {err}");
            assert_eq!(key_of(err), "weights_filename", "{bad}");
            let alone = check_weights_filename(layer.as_object().unwrap()).unwrap_err();
            assert_eq!(key_of(alone), "weights_filename", "{bad}");
        }
        // Alone, the other keys are left to training.
        let layer = json!({"weights_filename": "w.pt", "learning_rate": -1.0});
        check_weights_filename(layer.as_object().unwrap()).unwrap();
    }

    #[test]
    fn checks_against_the_model() {
        let model = cliptune_clip::ClipConfig::preset("ViT-B/32").unwrap();
        let c = parse(json!({"embeddings_size": 768})).unwrap().config;
        assert_eq!(
            key_of(c.check_model(&model).unwrap_err()),
            "embeddings_size"
        );
        let c = parse(json!({"model_name": "ViT-L/14"})).unwrap().config;
        assert_eq!(key_of(c.check_model(&model).unwrap_err()), "model_name");
        let c = parse(json!({"model_name": "ViT-B/32", "embeddings_size": 512}))
            .unwrap()
            .config;
        c.check_model(&model).unwrap();
        let c = parse(json!({"lock_text_tower": true, "lock_text_unlocked_layers": 15}))
            .unwrap()
            .config;
        assert_eq!(
            key_of(c.check_model(&model).unwrap_err()),
            "lock_text_unlocked_layers"
        );
    }
}
