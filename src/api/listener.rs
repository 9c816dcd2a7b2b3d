//! The API's listener: at most `Limits::max_connections` connections at once, and a connection
//! closed when a request head does not come in time (`Limits::header_timeout`). `server.rs`
//! hands it to `axum::serve`, which runs the connections (HTTP/1, graceful shutdown) as before.
//!
//! Why not hyper's own `header_read_timeout`: `axum::serve` builds hyper's connection without a
//! timer, so hyper's timeout (30 s by default) never runs, and axum offers no knob; the crate
//! does not depend on hyper or hyper-util itself. The clock here has hyper's meaning: it runs
//! from accept, and from each response, until the next request reaches the router; while a
//! request is in service it is stopped. The router tells it when (`in_service`, through the
//! connection's `HeadClock` that axum hands each request as `ConnectInfo`), so nothing here
//! parses HTTP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How long a client has for a request head (request line and headers): from accept, and from
/// each response on a kept-alive connection. A client that sends part of one, or nothing, is
/// disconnected then, so it cannot hold a connection (and, at the cap, everyone's) for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// What the listener enforces. The service uses the defaults (`HEADER_TIMEOUT`,
/// `MAX_CONNECTIONS`); tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// At most a year.
    pub header_timeout: Duration,
    /// At least 1.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: HEADER_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// A TCP listener that accepts only while a connection slot is free.
///
/// At the cap it waits for a slot instead of accepting and closing at once: the connections
/// waiting stay in the kernel's accept queue (beyond its backlog the kernel drops or refuses
/// them), so a client sees a slow connect rather than a reset it would retry at once, and no
/// connection is accepted that the service would not serve. A slot frees when a connection
/// closes; an idle or stalled one closes within the header timeout, so waiting clients wait at
/// most that long behind them.
pub(crate) struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    header_timeout: Duration,
    /// Whether the latest accept had to wait for a slot (logged once per episode).
    at_cap: bool,
}

impl Capped {
    pub(crate) fn new(inner: TcpListener, limits: Limits) -> Self {
        let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        // (A year at most: the deadline is an `Instant`, which must not overflow.)
        let header_timeout = limits.header_timeout.min(Duration::from_secs(365 * 86_400));
        Capped { inner, slots: Arc::new(Semaphore::new(max)), max, header_timeout, at_cap: false }
    }

    /// A free slot, waiting for one at the cap.
    async fn slot(&mut self) -> OwnedSemaphorePermit {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            self.at_cap = false;
            return slot;
        }
        if !self.at_cap {
            self.at_cap = true;
            tracing::warn!(max_connections = self.max, "the HTTP API is at its connection cap: new connections wait until one closes");
        }
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("nothing closes the connection semaphore"),
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let slot = self.slot().await;
        // axum's accept: retries, and sleeps a second on errors such as EMFILE.
        let (io, peer) = axum::serve::Listener::accept(&mut self.inner).await;
        let conn = Conn {
            io,
            _slot: slot,
            peer,
            clock: HeadClock::default(),
            timeout: self.header_timeout,
            due: Box::pin(tokio::time::sleep(self.header_timeout)),
            due_for: 0,
        };
        (conn, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: its slot, held until it is dropped, and its request-head clock.
pub(crate) struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    peer: SocketAddr,
    clock: HeadClock,
    timeout: Duration,
    /// When the request head awaited is due: `timeout` after accept, or after the latest response.
    due: Pin<Box<Sleep>>,
    /// The response count (`ClockState::responses`) `due` was set for.
    due_for: u64,
}

impl Conn {
    /// Whether a request head is awaited and overdue; otherwise `cx` is woken when it will be.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let state = &self.clock.0;
        if state.serving.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let responses = state.responses.load(Ordering::SeqCst);
        if responses != self.due_for {
            self.due_for = responses;
            self.due.as_mut().reset(Instant::now() + self.timeout);
        }
        self.due.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bytes that came are read even past the deadline: it is checked when the connection
        // would wait, so a client trickling its head one byte at a time gains nothing.
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.overdue(cx) => {
                tracing::debug!(peer = %this.peer, timeout_s = this.timeout.as_secs_f64(), "no request head in time: connection closed");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request head within the header timeout")))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// One connection's request-head clock, shared with the requests it carries: axum puts it in
/// each request as `ConnectInfo`, and `in_service` stops it while the request is served.
#[derive(Clone, Default)]
pub(crate) struct HeadClock(Arc<ClockState>);

#[derive(Default)]
struct ClockState {
    /// Requests in service (HTTP/1: none or one).
    serving: AtomicUsize,
    /// Responses returned: each restarts the clock.
    responses: AtomicU64,
}

impl Connected<IncomingStream<'_, Capped>> for HeadClock {
    fn connect_info(stream: IncomingStream<'_, Capped>) -> Self {
        stream.io().clock.clone()
    }
}

/// A request in service; its drop (the response returned, or the request dropped) restarts the
/// clock.
struct Serving(HeadClock);

impl Drop for Serving {
    fn drop(&mut self) {
        let state = &(self.0).0;
        state.responses.fetch_add(1, Ordering::SeqCst);
        state.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Middleware: the connection's head clock stops while the request is in service (its body
/// included) and restarts when the response is returned. A request without a clock (a router
/// served some other way) passes as it is.
pub(crate) async fn in_service(mut req: Request, next: Next) -> Response {
    let _serving = req.extensions_mut().remove::<ConnectInfo<HeadClock>>().map(|ConnectInfo(clock)| {
        clock.0.serving.fetch_add(1, Ordering::SeqCst);
        Serving(clock)
    });
    next.run(req).await
}
