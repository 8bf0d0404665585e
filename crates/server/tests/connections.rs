//! The accept loop against hostile clients, over real TCP: half-open connections (slowloris),
//! silent and idle keep-alive connections, dribbled bodies, and caps that are full. No model is
//! needed (a server with none is ready and answers `/health`), so these run in a second.
//! Waits poll for a state with a deadline; the only time bounds asserted are the ones the
//! server promises (a timeout closes within its value plus the watchdog's tick).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use seek_server::{AppState, ConnLimits, ServerConfig};

struct Live {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), seek_server::ServeError>>>,
    state: AppState,
}

impl Live {
    fn start(limits: ConnLimits) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(ServerConfig {
            connections: limits,
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::default()
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(seek_server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Self {
            rt,
            addr,
            stop: Some(tx),
            server: Some(server),
            state,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// `GET /health` on a new connection: (status line, seconds it took).
    fn health(&self) -> (String, f64) {
        let t = Instant::now();
        let mut s = self.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        (
            text.lines().next().unwrap_or("").to_string(),
            t.elapsed().as_secs_f64(),
        )
    }

    fn metric(&self, line: &str) -> f64 {
        let text = self.state.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
    }

    fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let server = self.server.take().unwrap();
        self.rt.block_on(server).unwrap().unwrap();
    }
}

/// Whether the server closed `s` (EOF or reset) within `within`; the bytes it sent first.
fn closed_within(s: &mut TcpStream, within: Duration) -> (bool, String) {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into()),
        }
    }
    (false, String::from_utf8_lossy(&got).into())
}

fn limits(max: usize, per_client: usize) -> ConnLimits {
    ConnLimits {
        max_connections: max,
        max_connections_per_client: per_client,
        header_timeout: Duration::from_millis(600),
        body_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(600),
    }
}

#[test]
fn a_slowloris_beyond_every_cap_leaves_health_answering_and_is_closed() {
    let live = Live::start(limits(32, 8));
    // Three times the global cap of half-sent requests, from the same address as /health's.
    let mut attackers: Vec<TcpStream> = (0..96)
        .map(|_| {
            let mut s = live.connect();
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s
        })
        .collect();
    for _ in 0..10 {
        let (status, secs) = live.health();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(secs < 1.0, "/health took {secs:.2}s under a slowloris");
        // Keep the attack going: a byte more on each connection still open.
        for s in &mut attackers {
            let _ = s.write_all(b"a");
        }
    }
    // Every half-open connection is closed: made room for others, or past the header timeout.
    for s in &mut attackers {
        let (closed, _) = closed_within(s, Duration::from_secs(3));
        assert!(closed, "a half-open connection is still open");
    }
    assert!(live.metric("seek_connections_closed_total{reason=\"evicted_at_cap\"}") >= 64.0);
    assert!(live.metric("seek_connections_closed_total{reason=\"header_timeout\"}") >= 1.0);
    assert!(live.metric("seek_connections_open") <= 32.0);
    live.shutdown();
}

#[test]
fn silent_and_idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let live = Live::start(limits(100, 0));
    let mut silent = live.connect();
    let mut kept = live.connect();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let (closed, text) = closed_within(&mut kept, Duration::from_secs(5));
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        (0.5..3.0).contains(&secs),
        "closed after {secs:.2}s, idle timeout 0.6s"
    );
    assert!(closed_within(&mut silent, Duration::from_secs(3)).0);
    assert!(live.metric("seek_connections_closed_total{reason=\"idle_timeout\"}") >= 2.0);
    live.shutdown();
}

#[test]
fn a_dribbled_body_gets_408_and_the_connection_closes() {
    let live = Live::start(limits(100, 0));
    let mut s = live.connect();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"model\":",
    )
    .unwrap();
    let (closed, text) = closed_within(&mut s, Duration::from_secs(5));
    assert!(closed, "still open: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    live.shutdown();
}

#[test]
fn when_every_connection_is_busy_a_new_one_gets_a_fast_503() {
    let live = Live::start(ConnLimits {
        body_timeout: Duration::from_secs(20),
        ..limits(2, 0)
    });
    // Two requests in flight: headers sent, bodies still coming.
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = live.connect();
            s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
                .unwrap();
            s
        })
        .collect();
    // Both are in flight once the server has read their headers (until then a new connection
    // could take the place of one).
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = live.health();
        if status.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = live.connect();
    let (closed, text) = closed_within(&mut s, Duration::from_secs(2));
    assert!(closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(live.metric("seek_connections_closed_total{reason=\"refused_at_cap\"}") >= 1.0);
    // The busy ones were not touched.
    for s in &mut busy {
        let (closed, _) = closed_within(s, Duration::from_millis(200));
        assert!(!closed);
    }
    drop(busy);
    live.shutdown();
}

#[test]
fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    let live = Live::start(ConnLimits {
        idle_timeout: Duration::from_secs(60),
        header_timeout: Duration::from_secs(60),
        ..limits(100, 0)
    });
    let mut kept = live.connect();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(kept.read(&mut buf).unwrap() > 0);
    let t = Instant::now();
    live.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(closed_within(&mut kept, Duration::from_secs(1)).0);
}
