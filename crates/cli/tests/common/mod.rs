//! Helpers shared by the tests that run `seek serve` as a process and drive it with real
//! Python clients (installed by `scripts/test-deps.sh` into `SEEK_PYDEPS`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A sample model from `models/` (fetched by `scripts/fetch-sample-models.sh`).
pub fn sample_model(name: &str) -> String {
    let dir = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        p.display()
    );
    p.display().to_string()
}

pub struct Server {
    pub child: Child,
    /// `host:port`.
    pub addr: String,
    pub log: mpsc::Receiver<String>,
    /// What it printed up to the address.
    pub started: Vec<String>,
}

impl Server {
    /// `seek serve MODEL --served-model-name NAME ARGS...` under `ulimit -n files` (if given),
    /// ready on /health (unless it serves TLS, which the caller checks).
    pub fn start(
        model: &str,
        name: &str,
        args: &[&str],
        files: Option<u32>,
        tls_ca: Option<&Path>,
    ) -> Self {
        let seek = env!("CARGO_BIN_EXE_seek");
        let mut cmd = match files {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(seek);
                c
            }
            None => Command::new(seek),
        };
        cmd.args(["serve", model, "--port", "0", "--served-model-name", name])
            .args(args)
            .env("SEEK_THREADS", "1")
            .env_remove("SEEK_API_KEY")
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("seek runs");
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no address printed: {seen:#?}"));
            seen.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap();
                break url.split("://").nth(1).unwrap().to_string();
            }
        };
        let s = Self {
            child,
            addr,
            log: rx,
            started: seen.clone(),
        };
        if tls_ca.is_none() {
            let deadline = Instant::now() + Duration::from_secs(120);
            while s.health().0 != "HTTP/1.1 200 OK" {
                assert!(Instant::now() < deadline, "never ready: {seen:#?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        s
    }

    /// `GET /health` on a new connection: status line and seconds.
    pub fn health(&self) -> (String, f64) {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return (String::new(), 0.0);
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        (
            text.lines().next().unwrap_or("").to_string(),
            t.elapsed().as_secs_f64(),
        )
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pydeps() -> PathBuf {
    std::env::var_os("SEEK_PYDEPS").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/seek/pydeps")
        },
        PathBuf::from,
    )
}

/// Runs a Python script with the test packages; its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", pydeps())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed (are openai and trustme installed? run scripts/test-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
