//! Run directory: per-epoch checkpoints (weights, optimizer, state), written so that a
//! crash at any instant leaves the previous complete checkpoint readable.
//!
//! ```text
//! RUN/run.json            what the run is (key, config, base model)
//! RUN/checkpoint.json     {"last": N, "best": M}, replaced atomically after epoch N is on disk
//! RUN/epoch-N/            model.safetensors, clip_config.json, optimizer.safetensors, state.json
//! RUN/final/              the trained model (best epoch, WiSE-FT applied) and its report
//! ```

use crate::metrics::Metrics;
use crate::optim::AdamW;
use crate::precision::LossScale;
use crate::{Result, TrainError};
use cliptune_clip::{checkpoint, Clip};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// One evaluated epoch (epoch 0 is the base model, before training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Mean training loss over the epoch's steps.
    pub train_loss: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: Option<f64>,
    pub samples_per_sec: Option<f64>,
    /// Share of the epoch's training time spent waiting for data.
    pub data_wait_fraction: Option<f64>,
    pub seconds: f64,
    /// Validation loss below every earlier epoch's.
    pub improved: bool,
}

/// Everything besides tensors that training needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Completed epochs (0: only the baseline evaluation).
    pub epoch: usize,
    pub global_step: u64,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub bad_epochs: usize,
    pub stopped_early: bool,
    pub history: Vec<EpochRecord>,
    pub loss_scale: Option<LossScale>,
    /// Data order and augmentation are pure functions of (seed, epoch, index): this records
    /// the scheme so that a resumed run reproduces them.
    pub data_order: String,
    pub seconds: f64,
}

impl State {
    /// Records epoch `epoch`'s validation loss: a strictly lower loss than every earlier
    /// epoch (the baseline included) makes it the best; otherwise it is a bad epoch, and
    /// with early stopping the run stops after exactly `early_stopping_epochs` bad epochs
    /// in a row. Returns whether the epoch improved.
    pub fn observe(&mut self, epoch: usize, val_loss: f64, cfg: &crate::TrainConfig) -> bool {
        self.epoch = epoch;
        let improved = val_loss < self.best_val_loss;
        if improved {
            self.best_val_loss = val_loss;
            self.best_epoch = epoch;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.stopped_early = cfg.early_stopping
            && self.bad_epochs >= cfg.early_stopping_epochs
            && epoch < cfg.num_epochs;
        improved
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Pointer {
    pub last: usize,
    pub best: usize,
}

pub const RUN: &str = "run.json";
pub const POINTER: &str = "checkpoint.json";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

pub fn epoch_dir(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("epoch-{epoch}"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::io(path, e)
}

/// Writes epoch `state.epoch`'s checkpoint, then points `checkpoint.json` at it, then
/// removes directories no longer pointed to.
pub fn save(run: &Path, clip: &Clip, opt: &AdamW, state: &State) -> Result<()> {
    let dir = epoch_dir(run, state.epoch);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    checkpoint::save(clip, &dir)?;
    let tmp = dir.join(".optimizer.tmp");
    Tensor::write_safetensors(&opt.state(), &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    let opt_path = dir.join(OPTIMIZER);
    std::fs::rename(&tmp, &opt_path).map_err(io(&opt_path))?;
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    checkpoint::write_atomic(&dir.join(STATE), &json)?;
    sync_dir(&dir);
    let pointer = Pointer {
        last: state.epoch,
        best: state.best_epoch,
    };
    checkpoint::write_atomic(
        &run.join(POINTER),
        &serde_json::to_vec(&pointer).expect("pointer serializes"),
    )?;
    sync_dir(run);
    prune(run, &pointer)
}

fn sync_dir(dir: &Path) {
    // Makes the renames durable; failure only weakens power-loss safety, never correctness.
    let _ = std::fs::File::open(dir).and_then(|f| f.sync_all());
}

/// Removes epoch directories other than `last` and `best` (and half-written ones).
pub fn prune(run: &Path, keep: &Pointer) -> Result<()> {
    for entry in std::fs::read_dir(run).map_err(io(run))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if n != keep.last && n != keep.best {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
    }
    Ok(())
}

pub fn read_pointer(run: &Path) -> Result<Option<Pointer>> {
    let path = run.join(POINTER);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// Loads epoch `epoch`'s weights into `clip`, its optimizer state into `opt`, and returns
/// its state.
pub fn load(run: &Path, epoch: usize, clip: &Clip, opt: &mut AdamW) -> Result<State> {
    let dir = epoch_dir(run, epoch);
    load_weights(clip, &dir)?;
    let opt_path = dir.join(OPTIMIZER);
    let tensors = Tensor::read_safetensors(&opt_path)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", opt_path.display())))?;
    opt.load_state(&tensors)?;
    let state_path = dir.join(STATE);
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", state_path.display())))
}

/// Copies a native checkpoint's weights into `clip` in place (its variables keep their
/// identity, so optimizer references stay valid).
pub fn load_weights(clip: &Clip, dir: &Path) -> Result<()> {
    let path = dir.join(checkpoint::NATIVE_WEIGHTS);
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", path.display())))?
        .into_iter()
        .collect();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in clip.var_store().variables() {
            let src = tensors
                .get(&name)
                .ok_or_else(|| TrainError::Resume(format!("{} lacks {name}", path.display())))?;
            if src.size() != var.size() {
                return Err(TrainError::Resume(format!(
                    "{}: {name} has shape {:?}, the model {:?}",
                    path.display(),
                    src.size(),
                    var.size()
                )));
            }
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(baseline: f64) -> State {
        State {
            epoch: 0,
            global_step: 0,
            best_epoch: 0,
            best_val_loss: baseline,
            bad_epochs: 0,
            stopped_early: false,
            history: Vec::new(),
            loss_scale: None,
            data_order: String::new(),
            seconds: 0.0,
        }
    }

    /// Feeds losses until the run would stop; returns (epochs run, best epoch).
    fn simulate(baseline: f64, losses: &[f64], cfg: &crate::TrainConfig) -> (usize, usize) {
        let mut st = state(baseline);
        for (i, &l) in losses.iter().enumerate() {
            st.observe(i + 1, l, cfg);
            if st.stopped_early || st.epoch == cfg.num_epochs {
                break;
            }
        }
        (st.epoch, st.best_epoch)
    }

    #[test]
    fn stops_after_exactly_n_bad_epochs() {
        let cfg = crate::TrainConfig {
            num_epochs: 20,
            early_stopping_epochs: 3,
            ..Default::default()
        };
        // Best at epoch 2; epochs 3, 4, 5 are bad (an equal loss is not an improvement).
        let losses = [4.0, 3.0, 3.5, 3.0, 3.2, 1.0, 1.0];
        assert_eq!(simulate(5.0, &losses, &cfg), (5, 2));
        // A new best resets the count.
        let losses = [4.0, 4.5, 4.6, 3.9, 4.0, 4.1, 4.2, 1.0];
        assert_eq!(simulate(5.0, &losses, &cfg), (7, 4));
        // Nothing beats the baseline: the model stays the base model's weights.
        assert_eq!(simulate(1.0, &[2.0, 3.0, 4.0, 0.5], &cfg), (3, 0));
        let no_stop = crate::TrainConfig {
            early_stopping: false,
            num_epochs: 6,
            ..cfg.clone()
        };
        assert_eq!(simulate(1.0, &[2.0; 10], &no_stop), (6, 0));
        // Patience is not consumed by the final epoch: stopping is only reported before it.
        let short = crate::TrainConfig {
            num_epochs: 3,
            ..cfg
        };
        assert_eq!(simulate(1.0, &[2.0; 3], &short), (3, 0));
    }
}
