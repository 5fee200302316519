//! The accept loop: every connection under a cap, with time limits, so that clients
//! that connect and then say nothing (or trickle bytes) cannot lock others out.
//!
//! # Limits
//!
//! - **Header timeout** (`--header-timeout`): the whole request head must arrive within
//!   this time of the connection becoming ready for a request (its accept, or the end of
//!   the previous response); hyper enforces it and closes the connection.
//! - **Keep-alive timeout** (`--keep-alive-timeout`): a connection on which no byte of a
//!   next request has arrived this long after it became ready is closed. (Zero turns
//!   keep-alive off: one request per connection.) Since the header timeout runs from
//!   the same moment, an idle connection goes after the shorter of the two.
//! - **Write timeout** (`--write-timeout`): a response the client stops reading, so that
//!   a write makes no progress for this long, closes its connection.
//! - (The request body has its own limit, `--body-timeout`, applied where the body is
//!   read, and generation has `--request-timeout`.)
//!
//! # The connection cap (`--max-connections`)
//!
//! Connections are always accepted promptly (so that the kernel's backlog never fills
//! with clients nobody looks at), and each one is *busy* while a request on it is being
//! answered (from a complete head to the last byte of its response) and *idle*
//! otherwise: waiting for a next request, or still receiving a head. When a new
//! connection would pass the cap:
//!
//! 1. the idle connection that has been waiting longest is told to close (hyper's
//!    graceful shutdown: an idle connection closes at once; one that just turned busy
//!    finishes its response first), and the new connection is served straight away.
//!    Idle and half-sent connections, which is what a lock-out attack holds, therefore
//!    make room for new clients instead of starving them; a well-behaved client whose
//!    idle keep-alive connection is closed simply opens a new one, as HTTP clients do.
//! 2. when every connection is busy, the new one is answered `503` with
//!    `Retry-After: 1` and closed, at once rather than left waiting. Busy connections
//!    are bounded in time by the body, write and request timeouts and in number by the
//!    generation queue (`--max-queue`, 429 beyond it).
//!
//! The cap is also kept below the process's open-file limit (Linux): a cap of 256 is
//! lowered when `ulimit -n` leaves fewer descriptors, so that the cap, not a failing
//! `accept`, decides. Should `accept` still fail for want of descriptors, the oldest
//! idle connection is closed and `accept` retried.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

use crate::api::ApiError;

/// The connection limits of [`serve`](crate::serve); see the module notes.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    /// Zero: no keep-alive.
    pub keep_alive_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

/// How long an evicted idle connection may take over its graceful close before it is
/// dropped outright. Hyper closes an idle connection at once but lets one that is
/// receiving a head go on reading it; the grace also lets the last bytes of a response
/// that just ended be flushed.
const EVICT_GRACE: Duration = Duration::from_millis(100);

/// What one connection shares with the accept loop and its own service. Times are
/// microseconds on the registry's clock, starting at 1 (0 means "never").
struct Conn {
    id: u64,
    epoch: Instant,
    /// Requests whose response has not been sent to the end.
    in_flight: AtomicUsize,
    /// When it last became ready for a request: accepted, or a response finished.
    idle_since: AtomicU64,
    /// When a byte last arrived.
    last_read: AtomicU64,
    /// Since when a write has been waiting for the client to read (0: not waiting).
    write_blocked_since: AtomicU64,
    /// Asked to close to make room.
    evicting: AtomicBool,
    evict: tokio::sync::Notify,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// Marks a request in flight on its connection until dropped (with the response body).
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(c: Arc<Conn>) -> Self {
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Strictly after the last byte read, which belonged to this request.
            let after_read = self.0.last_read.load(Ordering::SeqCst) + 1;
            let now = self.0.now().max(after_read);
            self.0.idle_since.store(now, Ordering::SeqCst);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped:
/// hyper drops it once the last frame is written (or the connection is gone), which for
/// a server-sent-event stream is the end of the generation.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes arrive and when writes wait for the client.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl Tracked {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => {
                let _ = self.conn.write_blocked_since.compare_exchange(
                    0,
                    self.conn.now(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.conn.write_blocked_since.store(0, Ordering::SeqCst)
            }
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.last_read.store(self.conn.now(), Ordering::SeqCst);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The live connections.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// The number of live connections, for waiting on closes.
    count: watch::Sender<usize>,
}

enum Admit {
    Yes(Arc<Conn>),
    Full,
}

impl Registry {
    fn new() -> Self {
        Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            count: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tell the `n` idle connections that have waited longest to close; false if none
    /// is idle.
    fn evict_oldest_idle(map: &HashMap<u64, Arc<Conn>>, n: usize) -> bool {
        let mut idle: Vec<&Arc<Conn>> = map
            .values()
            .filter(|c| !c.busy() && !c.evicting.load(Ordering::SeqCst))
            .collect();
        idle.sort_by_key(|c| c.idle_since.load(Ordering::SeqCst));
        for c in idle.iter().take(n) {
            c.evicting.store(true, Ordering::SeqCst);
            c.evict.notify_one();
        }
        !idle.is_empty()
    }

    /// Register a new connection, making room under `cap` by closing an idle one.
    fn admit(&self, cap: usize) -> Admit {
        let mut map = self.lock();
        let live = map
            .values()
            .filter(|c| !c.evicting.load(Ordering::SeqCst))
            .count();
        if live >= cap && !Self::evict_oldest_idle(&map, 1) {
            return Admit::Full;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.epoch.elapsed().as_micros() as u64 + 1),
            last_read: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        });
        map.insert(id, conn.clone());
        self.count.send_replace(map.len());
        Admit::Yes(conn)
    }

    fn remove(&self, id: u64) {
        let mut map = self.lock();
        map.remove(&id);
        self.count.send_replace(map.len());
    }
}

/// Removes its connection from the registry when the connection's task ends.
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// How many connections the open-file limit leaves room for, if there is a limit.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn descriptor_headroom() -> Option<usize> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((r.rlim_cur as usize).saturating_sub(open))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn descriptor_headroom() -> Option<usize> {
    None
}

/// The cap actually used, and how many refused connections may be answered at once.
fn effective_cap(max_connections: usize) -> (usize, usize) {
    match descriptor_headroom() {
        None => (max_connections, 64),
        Some(free) => {
            // A quarter of what is left (at least 16) stays free for refusals and for
            // the rest of the process.
            let cap = max_connections.min((free.saturating_sub(16) * 3 / 4).max(1));
            if cap < max_connections {
                eprintln!(
                    "attn-serve: at most {cap} connections (not --max-connections {max_connections}): the open-file limit (ulimit -n) leaves {free} descriptors"
                );
            }
            (cap, 64.min(free.saturating_sub(cap) / 2))
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE (Linux and the BSDs agree), and ENOBUFS/ENOMEM.
    matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105))
}

fn per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// `503` for a connection past the cap when no connection is idle.
fn busy_response() -> Vec<u8> {
    let body = ApiError::new(
        503,
        "server_error",
        "The server has as many connections as it accepts (--max-connections), all of them busy; retry shortly.",
    )
    .with_code("too_many_connections")
    .body()
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answer 503 and close, reading what the client sent meanwhile so that the close does
/// not turn into a reset that loses the answer; at most `limit` at a time, each within
/// a second.
fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>, refusing: Arc<AtomicUsize>, limit: usize) {
    if refusing.fetch_add(1, Ordering::SeqCst) >= limit {
        refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut sent = 0;
            while sent < answer.len() {
                stream.writable().await?;
                match stream.try_write(&answer[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx)).await?;
            let mut sink = [0u8; 4096];
            let mut total = 0;
            while total < (64 << 10) {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Serve `app` on `listener` under `limits` until `shutdown` completes, then stop
/// accepting, let requests in flight finish, and return once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (cap, refuse_limit) = effective_cap(limits.max_connections.max(1));
    let registry = Arc::new(Registry::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(!limits.keep_alive_timeout.is_zero());
    let builder = Arc::new(builder);
    let answer = Arc::new(busy_response());
    let refusing = Arc::new(AtomicUsize::new(0));
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if out_of_descriptors(&e) => {
                // Close the oldest idle connections (a few: more are likely waiting in
                // the backlog) and give them a moment to go.
                let mut count = registry.count.subscribe();
                if Registry::evict_oldest_idle(&registry.lock(), 8) {
                    let _ = tokio::time::timeout(Duration::from_millis(100), count.changed()).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            Err(e) if per_connection_error(&e) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = match registry.admit(cap) {
            Admit::Yes(c) => c,
            Admit::Full => {
                refuse(stream, answer.clone(), refusing.clone(), refuse_limit);
                continue;
            }
        };
        tokio::spawn(run_connection(
            stream,
            conn,
            registry.clone(),
            builder.clone(),
            app.clone(),
            limits.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let mut count = registry.count.subscribe();
    let _ = count.wait_for(|&n| n == 0).await;
    Ok(())
}

/// One connection: hyper serves it while a watchdog applies the keep-alive and write
/// timeouts and the requests to close (eviction, shutdown).
async fn run_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    builder: Arc<http1::Builder>,
    app: axum::Router,
    limits: Arc<ConnLimits>,
    mut stop: watch::Receiver<bool>,
) {
    let _registered = Registered(registry, conn.id);
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let c2 = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = InFlight::new(c2.clone());
        let mut app = app.clone();
        async move {
            let resp = match app.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let us = |d: Duration| d.as_micros().min(u64::MAX as u128) as u64;
    let keep_alive = us(limits.keep_alive_timeout);
    let write_timeout = us(limits.write_timeout);
    // Check often enough to close within about a tenth of the shortest limit.
    let shortest = [limits.keep_alive_timeout, limits.write_timeout]
        .into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(1));
    let tick = (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut closing: Option<Instant> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = served.as_mut() => return,
            _ = conn.evict.notified(), if closing.is_none() => {
                served.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_err() || *stop.borrow() {
                    // As for an eviction: a connection still receiving a head is not
                    // waited for (past the grace), one answering a request is.
                    served.as_mut().graceful_shutdown();
                    closing = closing.or(Some(Instant::now()));
                }
            }
            _ = tokio::time::sleep(match closing {
                // Wake right at the end of the grace after a request to close.
                Some(t) if t.elapsed() < EVICT_GRACE => tick.min(EVICT_GRACE - t.elapsed()),
                _ => tick,
            }) => {
                let now = conn.now();
                let busy = conn.busy();
                let idle_since = conn.idle_since.load(Ordering::SeqCst);
                let waiting = !busy && conn.last_read.load(Ordering::SeqCst) < idle_since;
                if keep_alive > 0 && waiting && now.saturating_sub(idle_since) >= keep_alive {
                    return;
                }
                let blocked = conn.write_blocked_since.load(Ordering::SeqCst);
                if write_timeout > 0 && blocked > 0 && now.saturating_sub(blocked) >= write_timeout {
                    return;
                }
                if closing.is_some_and(|t| t.elapsed() >= EVICT_GRACE) && !busy {
                    return;
                }
            }
        }
    }
}
