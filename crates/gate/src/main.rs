//! `cliptune-gate [--addr HOST:PORT] [--quiet] [--jwt-secret SECRET] [--jwt-ttl SECONDS]`:
//! the fake Dataloop gate as a process, for clients that are not Rust tests (the real dtlpy
//! SDK in tests/dataloop). Prints the REST base URL (`http://HOST:PORT/api/v1`) on its first
//! stdout line once it accepts connections, then serves until killed. `GET /_gate/info` says
//! which project, API key, bot user and service it made; `GET /_gate/report` lists the
//! requests it saw. It also plays a pod's agent proxy at `http://HOST:PORT/get_jwt`:
//! `--jwt-secret` makes it require that `X-Get-Jwt-Secret`, `--jwt-ttl` sets the lifetime
//! of the JWTs it hands out (default 3600 s).

use cliptune_gate::FakeGate;
use std::io::Write;
use std::net::SocketAddr;

const USAGE: &str =
    "usage: cliptune-gate [--addr HOST:PORT] [--quiet] [--jwt-secret SECRET] [--jwt-ttl SECONDS]";

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut log = true;
    let mut jwt_secret = None;
    let mut jwt_ttl = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => match args.next().map(|s| s.parse()) {
                Some(Ok(a)) => addr = a,
                _ => fail("--addr needs HOST:PORT"),
            },
            "--quiet" => log = false,
            "--jwt-secret" => match args.next().filter(|s| !s.is_empty()) {
                Some(s) => jwt_secret = Some(s),
                None => fail("--jwt-secret needs a non-empty SECRET"),
            },
            "--jwt-ttl" => match args.next().map(|s| s.parse::<u64>()) {
                Some(Ok(n)) if n > 0 => jwt_ttl = Some(n),
                _ => fail("--jwt-ttl needs a number of seconds above 0"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")));
    rt.block_on(async {
        let gate = FakeGate::start_on(addr)
            .await
            .unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")));
        gate.with(|s| {
            s.log = log;
            s.jwt_secret = jwt_secret;
            if let Some(ttl) = jwt_ttl {
                s.proxy_token_ttl = ttl;
            }
        });
        let mut out = std::io::stdout().lock();
        // A reader waits for this line, so it must not sit in a buffer.
        let _ = writeln!(out, "{}", gate.url).and_then(|_| out.flush());
        drop(out);
        std::future::pending::<()>().await;
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("cliptune-gate: {msg}\n{USAGE}");
    std::process::exit(2);
}
