//! `seek serve` as a process on a hostile network: a slowloris of more connections than the
//! server has file descriptors, kill -9 in the middle of traffic (no acknowledged request may be
//! missing from the audit log), TLS with the Python `openai` client trusting a self-signed
//! certificate authority, a rate-limited tenant seen through `openai.RateLimitError`, SIGTERM
//! under streamed load, and no socket to anything but loopback from `seek serve` or
//! `seek run` on local models. Uses the tiny DeepSeek-V3 fixture, so no download is needed.
//!
//! The Python packages come from `scripts/test-deps.sh` (into `SEEK_PYDEPS`).

mod common;

use common::{pydeps, python, Server};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fixture() -> String {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    assert!(dir.join("tokenizer.json").is_file(), "{}", dir.display());
    dir.display().to_string()
}

/// `seek serve` on the tiny fixture as `tiny`, with `args`, under `ulimit -n files` (if given).
fn start(args: &[&str], files: Option<u32>, tls_ca: Option<&Path>) -> Server {
    Server::start(&fixture(), "tiny", args, files, tls_ca)
}

/// Raises this process's open-file soft limit to its hard limit.
fn raise_own_file_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(1 << 16);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn a_slowloris_of_more_connections_than_the_file_limit_does_not_take_health_down() {
    let own = raise_own_file_limit();
    assert!(
        own >= 600,
        "this test needs 600 open files; `ulimit -n` is {own}"
    );
    let server = start(
        &["--header-timeout", "1", "--idle-timeout", "1"],
        Some(128),
        None,
    );
    let mut lines = server.started.clone();
    while let Ok(l) = server.log.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("open files 128") && l.contains("at most 64 connections")),
        "{lines:#?}"
    );
    // 400 connections, each sending half a request and waiting: far past the 128 descriptors.
    let mut attack: Vec<TcpStream> = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = TcpStream::connect(&server.addr) {
            let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: ");
            attack.push(s);
        }
    }
    let mut worst: f64 = 0.0;
    for _ in 0..10 {
        let (status, secs) = server.health();
        assert_eq!(status, "HTTP/1.1 200 OK");
        worst = worst.max(secs);
        for s in &mut attack {
            let _ = s.write_all(b"b");
        }
    }
    assert!(worst < 1.0, "/health took {worst:.2}s during the slowloris");
    // Every half-open connection is closed within the header timeout (plus the tick).
    let t = Instant::now();
    for s in &mut attack {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    assert!(
                        !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                        "a half-open connection is still open after {:.1}s",
                        t.elapsed().as_secs_f64()
                    );
                    break;
                }
            }
        }
    }
    assert_eq!(server.health().0, "HTTP/1.1 200 OK");
}

fn chat_body() -> serde_json::Value {
    serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "max_tokens": 4,
    })
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    for trial in 0..2 {
        let server = start(&["--audit-db", db.to_str().unwrap()], None, None);
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (url, acked, stop) = (server.url(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = ureq::post(&format!("{url}/v1/chat/completions"))
                            .timeout(Duration::from_secs(30))
                            .send_json(chat_body());
                        match r {
                            Ok(r) => {
                                let v: serde_json::Value = r.into_json().unwrap();
                                acked.lock().unwrap().push(v["id"].as_str().unwrap().into());
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().unwrap().len() < 12 * (trial + 1) {
            assert!(Instant::now() < deadline, "too few answers");
            std::thread::sleep(Duration::from_millis(5));
        }
        // In the middle of traffic, no warning.
        let pid = server.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success());
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        drop(server);
        let out = Command::new(env!("CARGO_BIN_EXE_seek"))
            .args(["audit", "list", "--json", "--limit", "100000"])
            .env("SEEK_AUDIT_DB", &db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let logged: HashSet<&str> = entries
            .iter()
            .filter_map(|e| e["request_id"].as_str())
            .collect();
        let acked = acked.lock().unwrap();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !logged.contains(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "trial {trial}: {} of {} acknowledged requests are not in the audit log: {missing:?}",
            missing.len(),
            acked.len()
        );
    }
}

const MAKE_CERT: &str = r#"
import sys, trustme
ca = trustme.CA()
cert = ca.issue_cert("localhost", "127.0.0.1")
d = sys.argv[1]
ca.cert_pem.write_to_path(d + "/ca.pem")
cert.private_key_pem.write_to_path(d + "/key.pem")
cert.cert_chain_pems[0].write_to_path(d + "/cert.pem")
"#;

const OPENAI_OVER_TLS: &str = r#"
import json, sys, openai
try:
    import httpx2 as httpx  # what openai 3.x is built on
except ImportError:
    import httpx
url, ca = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url + "/v1", api_key="sk-tls", http_client=httpx.Client(verify=ca))
r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=4, temperature=0)
chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4, temperature=0, stream=True))
untrusted = None
try:
    openai.OpenAI(base_url=url + "/v1", api_key="sk-tls", max_retries=0).models.list()
except openai.APIConnectionError as e:
    untrusted = type(e.__cause__).__name__ if e.__cause__ else type(e).__name__
print(json.dumps({"model": r.model, "usage": r.usage.total_tokens, "chunks": len(chunks),
                  "untrusted": untrusted}))
"#;

#[test]
fn tls_serves_the_openai_client_that_trusts_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    python(MAKE_CERT, &[d]);
    let (cert, key) = (format!("{d}/cert.pem"), format!("{d}/key.pem"));
    let ca = dir.path().join("ca.pem");
    let server = start(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--api-key",
            "sk-tls",
        ],
        None,
        Some(&ca),
    );
    let port = server.addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}");
    // Ready once a TLS client gets an answer (the model loads behind the listener).
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = Command::new("python3")
            .arg("-c")
            .arg(OPENAI_OVER_TLS)
            .args([&url, ca.to_str().unwrap()])
            .env("PYTHONPATH", pydeps())
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            Instant::now() < deadline && err.contains("loading"),
            "the openai client failed over TLS:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["model"], "tiny");
    assert!(v["usage"].as_u64().unwrap() > 0);
    assert!(v["chunks"].as_u64().unwrap() >= 2);
    // A client that does not trust the certificate is refused by its own TLS check.
    assert!(v["untrusted"].is_string(), "{v}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[test]
fn a_bad_certificate_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("cert.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(["serve", &fixture(), "--port", "0", "--tls-cert"])
        .arg(&bogus)
        .arg("--tls-key")
        .arg(&bogus)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no certificate in it"), "{err}");
}

/// The remote addresses of `pid`'s internet sockets (from /proc), and their local ones.
fn sockets_of(pid: u32) -> Vec<(String, String)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push((f[1].to_string(), f[2].to_string()));
            }
        }
    }
    out
}

/// Whether a /proc/net address (hex `ADDR:PORT`) is loopback or unspecified.
fn local_only(hex: &str) -> bool {
    let addr = hex.split(':').next().unwrap();
    match addr.len() {
        // IPv4, little-endian: 0100007F is 127.0.0.1.
        8 => addr == "00000000" || addr.ends_with("7F"),
        // IPv6: :: , ::1, or ::ffff:127.x.
        _ => {
            addr == "00000000000000000000000000000000"
                || addr == "00000000000000000000000001000000"
                || (addr.starts_with("0000000000000000FFFF0000") && addr.ends_with("7F"))
        }
    }
}

#[test]
fn serve_run_and_eval_on_local_models_open_no_socket_beyond_loopback() {
    let server = start(&[], None, None);
    let v: serde_json::Value = ureq::post(&format!("{}/v1/chat/completions", server.url()))
        .send_json(chat_body())
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(v["model"], "tiny");
    let socks = sockets_of(server.child.id());
    assert!(!socks.is_empty(), "the listening socket should be seen");
    for (local, remote) in &socks {
        assert!(
            local_only(local) && local_only(remote),
            "serve: {local} -> {remote}"
        );
    }
    drop(server);

    let out = tempfile::tempdir().unwrap();
    let eval_out = out.path().join("eval");
    let runs: [Vec<String>; 2] = [
        ["run", &fixture(), "--max-tokens", "16", "Say hello."]
            .map(String::from)
            .to_vec(),
        [
            "eval",
            "reliability",
            "--model",
            &fixture(),
            "--datasets",
            "gsm8k",
            "--limit",
            "3",
            "--max-tokens",
            "32",
            "--out",
            eval_out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in runs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Polled while it runs: any internet socket it holds at a look is reported.
        let mut seen = 0;
        while child.try_wait().unwrap().is_none() {
            for (local, remote) in sockets_of(child.id()) {
                seen += 1;
                assert!(
                    local_only(&local) && local_only(&remote),
                    "{args:?}: {local} -> {remote}"
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(child.wait().unwrap().success(), "{args:?} failed");
        assert_eq!(seen, 0, "{args:?} on a local model opened a socket");
    }
}

#[test]
fn sigterm_under_load_finishes_what_is_in_flight_and_exits_cleanly() {
    let server = start(&["--shutdown-grace", "30"], None, None);
    let outcomes = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, outcomes, started) = (server.url(), outcomes.clone(), started.clone());
            std::thread::spawn(move || loop {
                started.fetch_add(1, Ordering::Relaxed);
                // Streamed and long, so that requests are in flight when the signal comes: the
                // head is sent at once, and a stream cut short has no `[DONE]`.
                let mut body = chat_body();
                body["stream"] = true.into();
                body["max_tokens"] = 160.into();
                body["ignore_eos"] = true.into();
                let r = ureq::post(&format!("{url}/v1/chat/completions"))
                    .timeout(Duration::from_secs(60))
                    .send_json(body);
                let outcome = match r {
                    Ok(r) => match r.into_string() {
                        Ok(t)
                            if t.trim_end().ends_with("data: [DONE]")
                                && t.contains("\"length\"") =>
                        {
                            "200".into()
                        }
                        Ok(t) => format!("stream cut short: {}", &t[t.len().saturating_sub(300)..]),
                        Err(e) => format!("stream cut off: {e}"),
                    },
                    Err(ureq::Error::Status(503, _)) => "503".into(),
                    // No response head: the request was never taken in (refused, or reset in
                    // the listen backlog or on an idle connection as the server stopped). A
                    // client's request is lost only if an answer it got is cut off.
                    Err(ureq::Error::Transport(_)) => "not served".into(),
                    Err(e) => format!("failed: {e}"),
                };
                let last = outcome == "not served";
                outcomes.lock().unwrap().push(outcome);
                if last {
                    return;
                }
            })
        })
        .collect();
    while outcomes.lock().unwrap().len() < 12 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut server = server;
    let status = server.child.wait().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let mut log = server.started.clone();
    log.extend(server.log.try_iter());
    assert!(status.success(), "exit {status:?}: {log:#?}");
    assert!(log.iter().any(|l| l.contains("draining")), "{log:#?}");
    let outcomes = outcomes.lock().unwrap();
    let bad: Vec<&String> = outcomes
        .iter()
        .filter(|o| !matches!(o.as_str(), "200" | "503" | "not served"))
        .collect();
    assert!(bad.is_empty(), "{bad:?} among {} requests", outcomes.len());
    assert!(outcomes.iter().filter(|o| *o == "200").count() >= 12);
}

const OPENAI_RATE_LIMITED: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-a", max_retries=0)
first = client.chat.completions.with_raw_response.create(
    model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
try:
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    second = None
except openai.RateLimitError as e:
    second = {"status": e.status_code, "code": e.code, "retry_after": e.response.headers.get("retry-after"),
              "limit": e.response.headers.get("x-ratelimit-limit-requests")}
print(json.dumps({"first_remaining": first.headers.get("x-ratelimit-remaining-requests"), "second": second}))
"#;

#[test]
fn the_openai_client_raises_rate_limit_error_with_openais_headers() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "team-a:sk-a rpm=1\n").unwrap();
    let server = start(
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--rpm-limit",
            "100",
        ],
        None,
        None,
    );
    let out = python(OPENAI_RATE_LIMITED, &[&server.url()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["first_remaining"], "0", "{v}");
    let second = &v["second"];
    assert_eq!(second["status"], 429, "{v}");
    assert_eq!(second["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(second["limit"], "1", "{v}");
    assert!(
        second["retry_after"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
}
