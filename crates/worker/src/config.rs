//! The worker's settings: one struct, every field a flag with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which platform the worker reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store under `--home` (SQLite + files).
    Local,
    /// Dataloop's REST API (see docs/operations.md for its variables).
    Dataloop,
}

/// Settings of `cliptune serve` (and of the in-process worker `cliptune pipeline execute` uses).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct WorkerConfig {
    /// Address to listen on.
    #[arg(long, env = "CLIPTUNE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Platform backend.
    #[arg(long, env = "CLIPTUNE_BACKEND", value_enum, default_value = "local")]
    pub backend: Backend,
    /// Device for training and embedding: cpu, cuda, cuda:N or auto.
    #[arg(long, env = "CLIPTUNE_DEVICE", default_value = "auto")]
    pub device: String,
    /// Bearer token required on every endpoint but /health (unset: no auth). Surrounding
    /// whitespace (a secret file's newline) is dropped; an empty or blank token is an error.
    #[arg(long, env = "CLIPTUNE_API_TOKEN", hide_env_values = true, value_parser = token)]
    #[serde(skip)]
    pub api_token: Option<String>,
    /// Serve without a token on an address other than loopback (a trusted network only:
    /// anyone who reaches the port can then train, change variables and read items).
    #[arg(long, env = "CLIPTUNE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Seconds a client may take to send a request's headers before its connection is
    /// closed (slow or stalled clients cannot hold connections open).
    #[arg(long, env = "CLIPTUNE_HEADER_TIMEOUT", default_value_t = 10, value_parser = positive_u64)]
    pub header_timeout_seconds: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CLIPTUNE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most executions waiting per lane (train, embed) before new ones get 429.
    #[arg(long, env = "CLIPTUNE_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a shutdown waits for running executions before stopping them at a step
    /// boundary (training keeps its last epoch checkpoint).
    #[arg(long, env = "CLIPTUNE_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Items per device batch of the embed node.
    #[arg(long, env = "CLIPTUNE_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch_size: usize,
    /// Precision of embedding: auto (bf16 autocast on CUDA and on CPUs with native bf16,
    /// i.e. AVX512-BF16 or AMX; fp32 elsewhere), fp32, bf16, or fp16 (CUDA only). Weights
    /// stay f32; vectors are stored as f32 either way.
    #[arg(long, env = "CLIPTUNE_EMBED_PRECISION", default_value = "auto")]
    pub embed_precision: String,
    /// Dataset embedding decodes JPEGs at least twice the model's input size at reduced
    /// scale (libjpeg-turbo DCT scaling): 1.6x (1/2) to 3.6x (1/8) faster per core, vectors
    /// within cosine 0.9999 of the exact path on average (docs/preprocessing.md). Off: PIL's
    /// exact pixels. Online queries always decode exactly.
    #[arg(long, env = "CLIPTUNE_FAST_DECODE")]
    pub fast_decode: bool,
    /// Threads decoding images for dataset embedding (0: every core this process may use
    /// less one for the device thread, at least 1). They run at once with item reads, the
    /// device and vector writes, behind bounded queues (docs/search.md).
    #[arg(long, env = "CLIPTUNE_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
    /// Online embedding: most tokens (text tokens plus image patches) in one device batch.
    #[arg(long, env = "CLIPTUNE_EMBED_TOKEN_BUDGET", default_value_t = 4096, value_parser = positive)]
    pub embed_token_budget: usize,
    /// Online embedding and search: most requests admitted at once; more answer 429 at once.
    #[arg(long, env = "CLIPTUNE_MAX_INFLIGHT", default_value_t = 128, value_parser = positive)]
    pub max_inflight: usize,
    /// Threads libtorch uses for intra-op parallelism (0: libtorch's default).
    #[arg(long, env = "CLIPTUNE_TORCH_THREADS", default_value_t = 0)]
    pub torch_threads: usize,
    /// Work directory for model downloads and training checkpoints (default: <home>/work).
    #[arg(long, env = "CLIPTUNE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Checkpoints of base models that carry no artifacts (Dataloop's marketplace
    /// `openai-clip`), found by their configuration's `model_name` under OpenAI's file names
    /// (`ViT-B-32.pt`, ...), as the runner image ships them.
    #[arg(long, env = "CLIPTUNE_WEIGHTS_DIR")]
    pub weights_dir: Option<PathBuf>,
    /// Attached mode (inside a Dataloop service, behind dataloop/runner.py): nodes run only
    /// for executions the platform created and hands over through `POST /attached`; the
    /// worker creates no executions, never writes their status (the agent does), and
    /// reruns only stale executions of its own service.
    #[arg(long, env = "CLIPTUNE_ATTACHED")]
    pub attached: bool,
    /// The FaaS service this worker serves in attached mode (default: learned from the
    /// first execution handed over). Executions of other services are refused and never
    /// touched.
    #[arg(long, env = "CLIPTUNE_SERVICE_ID")]
    pub service_id: Option<String>,
    /// Attached mode: an `in-progress` execution of this service whose status has not
    /// moved for this many seconds, and that no process here runs, belonged to a replica
    /// that died: it is rerun. The runner reports progress at least every 10 s.
    #[arg(long, env = "CLIPTUNE_STALE_SECONDS", default_value_t = 300, value_parser = positive_u64)]
    pub stale_seconds: u64,
}

impl WorkerConfig {
    /// Defaults for an in-process worker (tests, `cliptune pipeline execute`).
    pub fn local(device: &str) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            backend: Backend::Local,
            device: device.to_string(),
            api_token: None,
            allow_unauthenticated: false,
            header_timeout_seconds: 10,
            max_body_bytes: 16 * 1024 * 1024,
            max_queue: 64,
            drain_seconds: 30,
            embed_batch_size: 32,
            embed_precision: "auto".into(),
            embed_token_budget: 4096,
            max_inflight: 128,
            torch_threads: 0,
            work_dir: None,
            weights_dir: None,
            fast_decode: false,
            decode_threads: 0,
            attached: false,
            service_id: None,
            stale_seconds: 300,
        }
    }

    /// The embedding precision on `device`, or why the setting cannot be used there.
    pub fn embed_precision(
        &self,
        device: tch::Device,
    ) -> std::result::Result<cliptune_clip::Precision, String> {
        use cliptune_clip::Precision;
        let bad = || {
            format!(
                "--embed-precision {:?}: expected auto, fp32, bf16 or fp16",
                self.embed_precision
            )
        };
        match self.embed_precision.as_str() {
            "auto" if device.is_cuda() || cliptune_clip::cpu_has_native_bf16() => {
                Ok(Precision::Bf16)
            }
            "auto" => Ok(Precision::Fp32),
            other => match other.parse::<Precision>().map_err(|_| bad())? {
                Precision::Fp16 if !device.is_cuda() => {
                    Err("--embed-precision fp16 needs a CUDA device; use bf16 or fp32".into())
                }
                p => Ok(p),
            },
        }
    }

    /// Why these settings must not serve, if they must not: a blank token (it would read
    /// as "auth on" while checking nothing), or a non-loopback address without a token
    /// unless `--allow-unauthenticated` says the network is trusted. Every way of starting
    /// a worker goes through this one rule.
    pub fn check_auth(&self) -> std::result::Result<(), String> {
        if let Some(t) = &self.api_token {
            token(t)?;
        }
        let exposed = !self.addr.ip().is_loopback();
        if exposed && self.api_token.is_none() && !self.allow_unauthenticated {
            return Err(format!(
                "refusing to serve on {} without a token: anyone who reaches the port could \
                 read items, train, change variables and stop executions. Set \
                 CLIPTUNE_API_TOKEN (or --api-token) to require `Authorization: Bearer <token>`, \
                 or pass --allow-unauthenticated (CLIPTUNE_ALLOW_UNAUTHENTICATED=true) if only \
                 trusted clients can reach it",
                self.addr
            ));
        }
        Ok(())
    }

    /// Decode threads of dataset embedding, 0 resolved to the default.
    pub fn decode_threads(&self) -> usize {
        cliptune_train::feed::resolve_threads(self.decode_threads)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

/// A bearer token: surrounding whitespace dropped, never empty.
fn token(s: &str) -> std::result::Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(
            "the API token is empty or blank, which would check nothing: set a real \
                    secret (e.g. `openssl rand -hex 32`) or unset CLIPTUNE_API_TOKEN"
                .into(),
        );
    }
    Ok(t.to_string())
}

/// A whole number of seconds, at least 1.
fn positive_u64(s: &str) -> std::result::Result<u64, String> {
    positive(s).map(|n| n as u64)
}

/// A whole number of at least 1.
fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cliptune_train::Precision;
    use tch::Device;

    #[test]
    fn auth_cannot_fail_open() {
        let mut c = WorkerConfig::local("cpu");
        assert_eq!(c.check_auth(), Ok(()));
        for blank in ["", "   ", "\n"] {
            c.api_token = Some(blank.into());
            assert!(
                c.check_auth().unwrap_err().contains("empty or blank"),
                "{blank:?}"
            );
            assert!(token(blank).is_err());
        }
        assert_eq!(token(" s3cret\n").as_deref(), Ok("s3cret"));
        c.api_token = None;
        c.addr = "0.0.0.0:8080".parse().unwrap();
        let e = c.check_auth().unwrap_err();
        assert!(
            e.contains("CLIPTUNE_API_TOKEN") && e.contains("--allow-unauthenticated"),
            "{e}"
        );
        c.addr = "[::]:8080".parse().unwrap();
        assert!(c.check_auth().is_err());
        c.allow_unauthenticated = true;
        assert_eq!(c.check_auth(), Ok(()));
        c.allow_unauthenticated = false;
        c.api_token = Some("s3cret".into());
        assert_eq!(c.check_auth(), Ok(()));
        c.addr = "[::1]:8080".parse().unwrap();
        c.api_token = None;
        assert_eq!(c.check_auth(), Ok(()));
    }

    #[test]
    fn embed_precision_resolves_per_device_and_names_bad_values() {
        let mut c = WorkerConfig::local("cpu");
        let cpu_auto = if cliptune_clip::cpu_has_native_bf16() {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(c.embed_precision(Device::Cpu), Ok(cpu_auto));
        assert_eq!(c.embed_precision(Device::Cuda(0)), Ok(Precision::Bf16));
        c.embed_precision = "fp32".into();
        assert_eq!(c.embed_precision(Device::Cpu), Ok(Precision::Fp32));
        c.embed_precision = "fp16".into();
        assert!(c
            .embed_precision(Device::Cpu)
            .unwrap_err()
            .contains("needs a CUDA device"));
        assert_eq!(c.embed_precision(Device::Cuda(0)), Ok(Precision::Fp16));
        c.embed_precision = "half".into();
        let e = c.embed_precision(Device::Cpu).unwrap_err();
        assert!(
            e.contains("\"half\"") && e.contains("auto, fp32, bf16 or fp16"),
            "{e}"
        );
    }

    #[test]
    fn limits_must_be_positive() {
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").unwrap_err().contains("positive"));
        assert!(positive("-1").is_err());
    }
}
