//! The HTTP/1.1 front end of both programs (`/metrics`, probes, the runner's site), hardened
//! against clients that connect and then send nothing, or send a byte a second:
//!
//! - the accept loop never waits for a free slot: a scrape or a kubelet probe is accepted at once
//!   however many connections are open (a semaphore in front of `accept` let 64 idle clients hold
//!   every slot while the scrape waited in the kernel's backlog);
//! - the request line and headers must arrive within [`Config::header_timeout`] — of the first
//!   request and of every later one on a kept-alive connection — or the connection is closed;
//! - at most [`Config::max_connections`] are open, sized from `RLIMIT_NOFILE`; at the cap the
//!   connection that has been quiet longest and has no request in flight is closed to make room
//!   (idle ones first), and only when every connection is busy is the newcomer turned away;
//! - `accept` failing for lack of descriptors (EMFILE/ENFILE) closes the quietest connection and
//!   backs off (up to 1 s) instead of spinning;
//! - an optional whole-connection deadline bounds a response nobody reads;
//! - every connection is a task in a `JoinSet` this loop owns; on shutdown each gets a graceful
//!   close, bounded, then the rest are aborted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;

/// How the front end treats its clients.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_connections: usize,
    /// Request line and headers must arrive within this (also bounds a kept-alive idle wait).
    pub header_timeout: Duration,
    /// A connection ends after this long whatever it does (`None`: never; long polls, sockets).
    pub connection_deadline: Option<Duration>,
    /// How long shutdown waits for connections to finish their responses.
    pub drain: Duration,
}

impl Config {
    /// Defaults for a scrape endpoint: a quarter of the soft `RLIMIT_NOFILE` for connections
    /// (64…1024), 3 s for headers, 30 s per connection.
    pub fn scrape_endpoint() -> Self {
        Config {
            max_connections: crate::limits::budget(0.25, 64, 1024),
            header_timeout: Duration::from_secs(3),
            connection_deadline: Some(Duration::from_secs(30)),
            drain: Duration::from_secs(2),
        }
    }
}

/// Counters of what the front end did, for the programs' metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Quiet connections closed to make room at the cap.
    pub evicted: AtomicU64,
    /// Newcomers turned away because every connection was busy.
    pub refused: AtomicU64,
    /// `accept` errors (EMFILE and friends).
    pub accept_errors: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// Bind (so a bad address fails at start-up, before any work).
pub async fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

struct Slot {
    /// Milliseconds after the server's start of the last byte read or written.
    last: Arc<AtomicU64>,
    /// Requests whose handler is running.
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// Serve until `shutdown` is cancelled. `handler` answers each request.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    cfg: Config,
    stats: Arc<Stats>,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let t0 = Instant::now();
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    // Which slot each connection task holds, by task id: a task that panicked returns no value,
    // only its id, and its slot must still be given back.
    let mut tasks: HashMap<task::Id, u64> = HashMap::new();
    let mut next_id = 0u64;
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                release(&mut slots, &mut tasks, done);
                stats.open.store(slots.len(), Ordering::Relaxed);
                continue;
            }
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if out_of_descriptors(&e) {
                    // Make room, then give the kernel a moment; never spin.
                    evict_quietest(&slots, &stats);
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of descriptors");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                continue;
            }
        };
        // Finished connections first, so the cap counts only live ones.
        while let Some(done) = conns.try_join_next_with_id() {
            release(&mut slots, &mut tasks, done);
        }
        if slots.len() >= cfg.max_connections && !evict_quietest(&slots, &stats) {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        let id = next_id;
        let slot = Slot {
            last: Arc::new(AtomicU64::new(t0.elapsed().as_millis() as u64)),
            busy: Arc::new(AtomicUsize::new(0)),
            evict: CancellationToken::new(),
        };
        let io = TokioIo::new(Tracked {
            inner: stream,
            last: slot.last.clone(),
            t0,
        });
        let busy = slot.busy.clone();
        let evict = slot.evict.clone();
        slots.insert(id, slot);
        stats.open.store(slots.len(), Ordering::Relaxed);
        let handler = handler.clone();
        let stop = shutdown.clone();
        let cfg = cfg.clone();
        let task = conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                let busy = busy.clone();
                async move {
                    busy.fetch_add(1, Ordering::AcqRel);
                    let _done = Decrement(busy);
                    Ok::<_, Infallible>(handler(req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.header_timeout)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            let deadline = async {
                match cfg.connection_deadline {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = deadline => {}
                _ = evict.cancelled() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(cfg.drain, conn).await;
                }
            }
        });
        tasks.insert(task.id(), id);
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.drain + Duration::from_millis(500), drain)
        .await
        .is_err()
    {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    stats.open.store(0, Ordering::Relaxed);
}

/// Give back the slot of a finished connection task, whether it returned or panicked.
fn release(
    slots: &mut HashMap<u64, Slot>,
    tasks: &mut HashMap<task::Id, u64>,
    done: Result<(task::Id, ()), task::JoinError>,
) {
    let tid = match done {
        Ok((tid, ())) => tid,
        Err(e) => {
            if e.is_panic() {
                tracing::error!(error = %e, "a connection task panicked");
            }
            e.id()
        }
    };
    if let Some(id) = tasks.remove(&tid) {
        slots.remove(&id);
    }
}

/// Close the connection that has been quiet longest among those with no request in flight.
/// Returns whether one was closed.
fn evict_quietest(slots: &HashMap<u64, Slot>, stats: &Stats) -> bool {
    let victim = slots
        .values()
        .filter(|s| s.busy.load(Ordering::Acquire) == 0 && !s.evict.is_cancelled())
        .min_by_key(|s| s.last.load(Ordering::Relaxed));
    match victim {
        Some(s) => {
            s.evict.cancel();
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that notes when a byte last moved, so the quietest connection can be found.
struct Tracked {
    inner: TcpStream,
    last: Arc<AtomicU64>,
    t0: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.last
            .store(self.t0.elapsed().as_millis() as u64, Ordering::Relaxed);
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
            self.touch();
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
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
