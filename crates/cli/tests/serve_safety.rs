//! What a stranger's first hour found: start-up rules that must not fail open (blank
//! tokens, exposed addresses), the one-worker lock across kills and work directories, CLI
//! output into closed pipes, and empty captions at import.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cliptune");

fn cliptune(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--home").arg(home).args(args);
    c.env_remove("CLIPTUNE_API_TOKEN")
        .env_remove("CLIPTUNE_ADDR")
        .env_remove("CLIPTUNE_ALLOW_UNAUTHENTICATED")
        .env("CLIPTUNE_DEVICE", "cpu")
        .env("CLIPTUNE_TORCH_THREADS", "1");
    c
}

/// Runs to the end (killed and failed after a minute: a `serve` that should have been
/// refused would otherwise run forever); (exit status, stderr).
fn run(mut c: Command) -> (std::process::ExitStatus, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("still running after 60 s: it should have been refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `serve` child on `addr` and its start-up line.
fn serve_at(home: &Path, addr: &str, extra: &[&str]) -> (Child, String) {
    let mut args = vec!["serve", "--addr", addr];
    args.extend_from_slice(extra);
    let mut child = cliptune(home, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// A `serve` child on loopback and the URL from its start-up line.
fn serve(home: &Path, extra: &[&str]) -> (Child, String) {
    let (child, line) = serve_at(home, "127.0.0.1:0", extra);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the start-up line {line:?}"))
        .to_string();
    (child, url)
}

#[test]
fn blank_tokens_and_open_addresses_are_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for blank in ["", "   "] {
        let mut c = cliptune(&home, &["serve", "--addr", "127.0.0.1:0"]);
        c.env("CLIPTUNE_API_TOKEN", blank);
        let (status, err) = run(c);
        assert_eq!(status.code(), Some(2), "{blank:?}: {err}");
        assert!(err.contains("empty or blank"), "{blank:?}: {err}");
    }
    let started = Instant::now();
    let (status, err) = run(cliptune(&home, &["serve", "--addr", "0.0.0.0:0"]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("without a token")
            && err.contains("CLIPTUNE_API_TOKEN")
            && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Each way out works: a token, or saying the network is trusted.
    for extra in [
        &["--api-token", "s3cret"][..],
        &["--allow-unauthenticated"][..],
    ] {
        let (mut child, line) = serve_at(&home, "0.0.0.0:0", extra);
        assert!(
            line.contains("listening on http://0.0.0.0:"),
            "{extra:?}: {line}"
        );
        assert_eq!(line.contains("bearer auth on"), extra[0] == "--api-token");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn one_worker_per_store_survives_kill_9_and_other_work_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (mut first, url) = serve(&home, &[]);
    // A second worker on the same store is refused, whatever its work directory.
    let other = dir.path().join("other-work");
    let (status, err) = run(cliptune(
        &home,
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--work-dir",
            other.to_str().unwrap(),
        ],
    ));
    assert!(!status.success(), "{err}");
    assert!(err.contains("another cliptune worker"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the holder: {err}"
    );
    // kill -9: no chance to clean up. The next start must not be blocked by what is left.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(home.join("worker.lock").exists());
    let (mut second, url2) = serve(&home, &[]);
    assert_ne!(url, url2);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn closed_pipes_end_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // `cliptune tokenize ... | head -c0`: the reader is gone before the first write.
    let text = "a photo of a cat ".repeat(50);
    let mut child = cliptune(&home, &["--json", "tokenize", &text, &text, &text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.signal() == Some(libc_sigpipe()) || out.status.success(),
        "{:?}: {err}",
        out.status
    );
    // An error reported into a closed stderr: no panic (exit 101) either.
    let mut child = cliptune(&home, &["models", "inspect", "/no/such/checkpoint"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "{status:?}");
    assert!(
        status.signal() == Some(libc_sigpipe()) || status.code() == Some(1),
        "{status:?}"
    );
}

fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn empty_captions_are_imported_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let src = dir.path().join("photos");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        image::RgbImage::from_pixel(8, 8, image::Rgb([40 * i as u8, 90, 200]))
            .save(src.join(name))
            .unwrap();
    }
    std::fs::write(
        src.join("captions.jsonl"),
        "{\"file\": \"a.png\", \"caption\": \"a blue square\"}\n\
         {\"file\": \"b.png\", \"caption\": \"  \"}\n\
         {\"file\": \"c.png\", \"caption\": \"\"}\n",
    )
    .unwrap();
    let out = cliptune(
        &home,
        &[
            "--json",
            "datasets",
            "import",
            src.to_str().unwrap(),
            "--name",
            "p",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["items"]["created"], 3, "{report}");
    let warnings = report["warnings"].as_array().unwrap();
    let at: Vec<&str> = warnings
        .iter()
        .map(|w| w["location"].as_str().unwrap())
        .collect();
    assert_eq!(at, ["captions.jsonl:2", "captions.jsonl:3"], "{report}");
    assert!(warnings[0]["reason"]
        .as_str()
        .unwrap()
        .contains("empty caption"));
    // The person reading the human output sees it too.
    let out = cliptune(
        &home,
        &["datasets", "import", src.to_str().unwrap(), "--name", "q"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: 2 entries") && text.contains("captions.jsonl:3"),
        "{text}"
    );
}
