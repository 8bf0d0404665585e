//! Connections: the accept loop in front of the routes, and what keeps one client from taking
//! the server down by opening connections and never finishing them (slowloris), by flooding it,
//! or by not reading what it is sent.
//!
//! Every connection is in a registry with its client address and a few clocks, read by a
//! watchdog on the connection's own task:
//! - *idle*: no request in flight and no byte of a new one for `idle_timeout` (a fresh
//!   connection that says nothing, or keep-alive between requests) -> closed;
//! - *headers*: the first byte of a request arrived but its header is not complete after
//!   `header_timeout` -> closed;
//! - *body*: a request body not complete `body_timeout` after its header -> 408 (the body is read
//!   through [`DeadlineBody`]);
//! - *write*: the client has not taken a byte of what it is sent for `body_timeout` -> closed.
//!
//! Caps: at most `max_connections` open, and `max_connections_per_client` per client address.
//! At a cap, the oldest connection that has no request in flight (idle, or still dribbling its
//! header) is closed to make room; when every connection is busy, the new one gets a fast 503
//! and is closed. So half-open connections cannot lock out a new client, and a client never
//! loses a request that is running.
//!
//! Design decision: hyper's own header timeout also runs between keep-alive requests and needs
//! a timer per connection; one watchdog per connection with all four clocks is simpler to
//! reason about and to test, so hyper's is off.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Limits on the connections of a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: no per-client cap).
    pub max_connections_per_client: usize,
    /// How long a request's header may take from its first byte.
    pub header_timeout: Duration,
    /// How long a request's body may take after its header, and how long a client may leave
    /// a response unread.
    pub body_timeout: Duration,
    /// How long a connection may stay open with no request (keep-alive, or a new one silent).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self::for_open_files(1024)
    }
}

/// File descriptors kept for what is not a client connection: model files, the audit
/// database, the runtime, logs.
pub const RESERVED_FILES: u64 = 64;

impl ConnLimits {
    /// Timeouts like production servers' (seconds) and caps sized to an open-file limit:
    /// every connection holds one descriptor, [`RESERVED_FILES`] stay for the rest, and one
    /// client address may hold a quarter.
    pub fn for_open_files(open_files: u64) -> Self {
        let max = open_files
            .saturating_sub(RESERVED_FILES)
            .max(open_files / 2)
            .clamp(8, 1 << 20) as usize;
        Self {
            max_connections: max,
            max_connections_per_client: (max / 4).max(4),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15),
        }
    }

    /// A setting that cannot work, named with its fix.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("the connection cap must be at least 1 (--max-connections)".into());
        }
        for (name, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be more than 0 seconds"));
            }
        }
        Ok(())
    }

    /// How often a connection's watchdog looks at its clocks.
    fn tick(&self) -> Duration {
        let shortest = self
            .header_timeout
            .min(self.body_timeout)
            .min(self.idle_timeout);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// TLS for the listening socket (rustls): a certificate chain and its private key.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// From PEM files: `cert` holds the certificate chain (the server's first), `key` its
    /// private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("cannot read the TLS {what} {}: {e}", p.display()))
        };
        let cert_pem = read(cert, "certificate")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "{}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
                cert.display()
            ));
        }
        let key_pem = read(key, "key")?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                format!(
                    "{} and {} do not make a usable certificate and key: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Counters of what happened to connections, for `/metrics` (collected in `metrics.rs`).
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused at a cap with every connection busy.
    pub refused: AtomicU64,
    /// Closed to make room at a cap.
    pub evicted: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub tls_failures: AtomicU64,
    /// `accept` failed (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
}

const NONE: u64 = u64::MAX;

/// Milliseconds on the process's monotonic clock.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One connection's clocks, shared by its IO, its requests and its watchdog.
struct ConnState {
    id: u64,
    ip: IpAddr,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of a request header arrived, until the header is complete.
    head_since: AtomicU64,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    /// Closed to make room: its task stops at once.
    evicted: AtomicBool,
    wake: Notify,
}

impl ConnState {
    fn new(id: u64, ip: IpAddr) -> Self {
        Self {
            id,
            ip,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_since: AtomicU64::new(NONE),
            write_blocked_since: AtomicU64::new(NONE),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Which clock ran out, if one did.
    fn expired(&self, limits: &ConnLimits, now: u64) -> Option<Expiry> {
        let over = |since: u64, limit: Duration| {
            since != NONE && now.saturating_sub(since) >= limit.as_millis() as u64
        };
        if over(
            self.write_blocked_since.load(Ordering::Acquire),
            limits.body_timeout,
        ) {
            return Some(Expiry::Write);
        }
        if self.busy() {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE {
            return over(head, limits.header_timeout).then_some(Expiry::Header);
        }
        over(self.idle_since.load(Ordering::Acquire), limits.idle_timeout).then_some(Expiry::Idle)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expiry {
    Idle,
    Header,
    Write,
}

/// The open connections.
struct Registry {
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    inner: Mutex<RegistryInner>,
    /// Signalled when the last connection closes.
    empty: Notify,
}

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    /// By id, so oldest first.
    conns: BTreeMap<u64, Arc<ConnState>>,
    per_client: HashMap<IpAddr, usize>,
}

impl RegistryInner {
    fn remove(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&c.ip);
            }
        }
        Some(c)
    }

    /// Closes the oldest connection without a request in flight (from `ip`, if given).
    fn evict_oldest_idle(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .values()
            .find(|c| ip.is_none_or(|ip| c.ip == ip) && !c.busy())
            .map(|c| c.id);
        match victim.and_then(|id| self.remove(id)) {
            Some(c) => {
                c.evicted.store(true, Ordering::Release);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`, making room at a cap; `None`: refuse it.
    fn admit(&self, ip: IpAddr) -> Option<Arc<ConnState>> {
        let mut r = self.lock();
        let per_client = self.limits.max_connections_per_client;
        if per_client > 0 && r.per_client.get(&ip).copied().unwrap_or(0) >= per_client {
            if !r.evict_oldest_idle(Some(ip)) {
                return None;
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if r.conns.len() >= self.limits.max_connections {
            if !r.evict_oldest_idle(None) {
                return None;
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        r.next_id += 1;
        let c = Arc::new(ConnState::new(r.next_id, ip));
        r.conns.insert(c.id, c.clone());
        *r.per_client.entry(ip).or_insert(0) += 1;
        self.stats
            .open
            .store(r.conns.len() as u64, Ordering::Relaxed);
        Some(c)
    }

    fn close(&self, id: u64) {
        let mut r = self.lock();
        r.remove(id);
        self.stats
            .open
            .store(r.conns.len() as u64, Ordering::Relaxed);
        if r.conns.is_empty() {
            self.empty.notify_waiters();
        }
    }

    async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            if self.lock().conns.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// What a refused connection reads before it is closed.
const REFUSAL: &str = "{\"error\":{\"message\":\"too many open connections: every connection \
    is busy with a request; retry shortly\",\"type\":\"server_error\",\"param\":null,\
    \"code\":\"too_many_connections\"}}";

fn refusal_response() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL}",
        REFUSAL.len()
    )
}

/// Accepts connections on `listener` and serves `router` on them until `stop` completes;
/// then stops accepting, lets every connection finish its request in flight, and returns once
/// all are closed.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<Tls>,
    stats: Arc<ConnStats>,
    stop: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry {
        limits,
        stats: stats.clone(),
        inner: Mutex::new(RegistryInner::default()),
        empty: Notify::new(),
    });
    let (closing_tx, closing_rx) = watch::channel(false);
    let refusal = refusal_response();
    tokio::pin!(stop);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(
                            error = %e,
                            "cannot accept a connection (out of file descriptors? raise `ulimit -n` \
                             or lower --max-connections); retrying"
                        );
                        last_accept_warning = Some(Instant::now());
                    }
                    // The pending connection stays in the backlog; try again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(conn) = registry.admit(peer.ip()) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if tls.is_none() {
                // Best effort and never blocking: a fresh socket's send buffer has room.
                let _ = tcp.try_write(refusal.as_bytes());
            }
            drop(tcp);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let registry = registry.clone();
        let tls = tls.clone();
        let closing = closing_rx.clone();
        tokio::spawn(async move {
            let id = conn.id;
            connection(tcp, peer, conn, router, &registry, tls, closing).await;
            registry.close(id);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    registry.wait_empty().await;
}

/// One connection, from the TLS handshake (if any) to its close.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: Arc<ConnState>,
    router: Router,
    registry: &Registry,
    tls: Option<Tls>,
    closing: watch::Receiver<bool>,
) {
    let limits = registry.limits;
    let stats = &registry.stats;
    match tls {
        None => serve_http(tcp, peer, conn, router, &limits, stats, closing).await,
        Some(tls) => {
            // The handshake counts as the header: it must finish within the header timeout.
            conn.head_since.store(now_ms(), Ordering::Release);
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.header_timeout, tls.acceptor.accept(tcp)) => r,
                _ = conn.wake.notified() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    conn.head_since.store(NONE, Ordering::Release);
                    conn.idle_since.store(now_ms(), Ordering::Release);
                    serve_http(stream, peer, conn, router, &limits, stats, closing).await
                }
                Ok(Err(e)) => {
                    stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn serve_http<S>(
    io: S,
    peer: SocketAddr,
    conn: Arc<ConnState>,
    router: Router,
    limits: &ConnLimits,
    stats: &ConnStats,
    mut closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: io,
        conn: conn.clone(),
    });
    let service = ConnService {
        router,
        conn: conn.clone(),
        body_timeout: limits.body_timeout,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);
    let tick = limits.tick();
    let mut draining = *closing.borrow();
    if draining {
        http.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = conn.wake.notified() => {
                if conn.evicted.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "closed to make room for a new connection");
                    return;
                }
            }
            r = closing.changed(), if !draining => {
                draining = true;
                if r.is_ok() {
                    http.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(tick) => {
                if let Some(why) = conn.expired(limits, now_ms()) {
                    let counter = match why {
                        Expiry::Idle => &stats.idle_timeouts,
                        Expiry::Header => &stats.header_timeouts,
                        Expiry::Write => &stats.write_timeouts,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, reason = ?why, "connection timed out; closing it");
                    return;
                }
            }
        }
    }
}

/// The socket, noting when a request's first byte arrives and when writes stall.
struct Watched<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && !self.conn.busy() {
            let _ = self.conn.head_since.compare_exchange(
                NONE,
                now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    fn note<T>(&self, r: &Poll<T>) {
        let w = &self.conn.write_blocked_since;
        match r {
            Poll::Pending => {
                let _ = w.compare_exchange(NONE, now_ms(), Ordering::AcqRel, Ordering::Acquire);
            }
            Poll::Ready(_) => w.store(NONE, Ordering::Release),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The routes, as one connection's hyper service: counts requests in flight until their
/// response body is sent, and puts a deadline on request bodies.
#[derive(Clone)]
struct ConnService {
    router: Router,
    conn: Arc<ConnState>,
    body_timeout: Duration,
}

/// A request in flight on a connection; dropped when its response has been sent (or dropped).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.head_since.store(NONE, Ordering::Release);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.conn.clone());
        let timeout = self.body_timeout;
        let req = req.map(|b| Body::new(DeadlineBody::new(b, timeout)));
        let router = self.router.clone();
        Box::pin(async move {
            let res = tower::ServiceExt::oneshot(router, req).await?;
            Ok(res.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until sent.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that was not complete within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} of its header")]
pub struct BodyTimeout(pub Duration);

/// A request body with a deadline: past it, reading fails with [`BodyTimeout`].
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (or what caused it) is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            max_connections_per_client: per_client,
            ..ConnLimits::default()
        }
    }

    fn registry(l: ConnLimits) -> Registry {
        Registry {
            limits: l,
            stats: Arc::default(),
            inner: Mutex::default(),
            empty: Notify::new(),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn caps_come_from_the_open_file_limit() {
        let l = ConnLimits::for_open_files(1024);
        assert_eq!(l.max_connections, 960);
        assert_eq!(l.max_connections_per_client, 240);
        // A low limit keeps half for connections rather than nothing.
        assert_eq!(ConnLimits::for_open_files(100).max_connections, 50);
        assert_eq!(ConnLimits::for_open_files(4).max_connections, 8);
        assert!(l.header_timeout <= Duration::from_secs(60));
        assert!(l.check().is_ok());
        let bad = ConnLimits {
            idle_timeout: Duration::ZERO,
            ..l
        };
        assert!(bad.check().unwrap_err().contains("--idle-timeout"));
    }

    #[test]
    fn at_the_per_client_cap_the_oldest_idle_connection_of_that_client_makes_room() {
        let r = registry(limits(100, 2));
        let a1 = r.admit(A).unwrap();
        let a2 = r.admit(A).unwrap();
        let b1 = r.admit(B).unwrap();
        // a1 is running a request: a2 is the one to go.
        let busy = InFlight::new(a1.clone());
        let a3 = r.admit(A).unwrap();
        assert!(a2.evicted.load(Ordering::Acquire));
        assert!(!a1.evicted.load(Ordering::Acquire) && !b1.evicted.load(Ordering::Acquire));
        // Both of A's are busy now: refused, B unaffected.
        let _busy3 = InFlight::new(a3.clone());
        assert!(r.admit(A).is_none());
        assert!(r.admit(B).is_some());
        drop(busy);
        assert!(r.admit(A).is_some(), "a1 finished its request: it can go");
        assert!(a1.evicted.load(Ordering::Acquire));
        assert_eq!(r.stats.evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn at_the_global_cap_the_oldest_idle_connection_goes() {
        let r = registry(limits(2, 0));
        let a = r.admit(A).unwrap();
        let b = r.admit(B).unwrap();
        let _ga = InFlight::new(a.clone());
        assert!(r.admit(B).is_some());
        assert!(b.evicted.load(Ordering::Acquire) && !a.evicted.load(Ordering::Acquire));
        assert_eq!(r.lock().conns.len(), 2);
        r.close(a.id);
        assert_eq!(r.lock().conns.len(), 1);
        assert_eq!(r.stats.open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_clocks() {
        let l = ConnLimits {
            header_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(200),
            ..ConnLimits::default()
        };
        let c = Arc::new(ConnState::new(1, A));
        let t0 = c.idle_since.load(Ordering::Relaxed);
        assert_eq!(c.expired(&l, t0 + 199), None);
        assert_eq!(c.expired(&l, t0 + 200), Some(Expiry::Idle));
        // A request's first byte: the header clock runs instead.
        c.head_since.store(t0 + 150, Ordering::Relaxed);
        assert_eq!(c.expired(&l, t0 + 249), None);
        assert_eq!(c.expired(&l, t0 + 250), Some(Expiry::Header));
        // A request in flight stops both; a stalled write does not.
        let g = InFlight::new(c.clone());
        assert_eq!(c.expired(&l, t0 + 10_000), None);
        c.write_blocked_since.store(t0 + 1000, Ordering::Relaxed);
        assert_eq!(c.expired(&l, t0 + 1299), None);
        assert_eq!(c.expired(&l, t0 + 1300), Some(Expiry::Write));
        c.write_blocked_since.store(NONE, Ordering::Relaxed);
        drop(g);
        let idle = c.idle_since.load(Ordering::Relaxed);
        assert_eq!(c.expired(&l, idle + 199), None);
        assert_eq!(c.expired(&l, idle + 200), Some(Expiry::Idle));
    }
}
