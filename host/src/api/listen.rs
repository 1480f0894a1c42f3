//! Accepting connections: the part of HTTP that happens before a request
//! reaches a route.
//!
//! Every connection costs a file descriptor, so none may be held for free:
//! - a connection must send a complete request head within `header_timeout`,
//!   whether it is new or idle between requests (keep-alive), or it is closed
//!   (hyper's header-read timer starts whenever it waits for a request head);
//! - request bodies must arrive within `Limits::body_timeout` (`request::body`);
//! - a response write that makes no progress for `write_timeout` (a client
//!   that stopped reading, a subscriber included) ends the connection
//!   (`StallGuard`);
//! - at most `max_connections` are open at once; one more is answered `503
//!   too_many_connections` (problem+json, `Retry-After`) and closed, rather than
//!   left in the kernel's backlog or failing `accept` for everyone;
//! - `accept` errors (out of file descriptors) pause accepting briefly instead
//!   of spinning, and the process raises its soft file limit to the hard one at
//!   start (`raise_file_limit`).
//!
//! Shutdown stops accepting, closes idle connections and lets requests in
//! flight finish (subscriptions end on the app's shutdown signal), for at most
//! `shutdown_grace`; connections still open then are dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Bounds on connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once (subscriptions included).
    pub max_connections: usize,
    /// Time a connection has to send a request head, new or idle.
    pub header_timeout: Duration,
    /// Time a response write may make no progress before the connection ends.
    pub write_timeout: Duration,
    /// Time requests in flight get to finish after a shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Refusals being written at once; past this, an extra connection is closed
/// without an answer (a flood must not turn refusals into the new leak).
const MAX_REFUSING: usize = 256;

/// Serves `router` on `listener` until `shutdown` becomes true, then waits for
/// the connections' requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors (or memory): others' requests
                        // may free some; try again shortly rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed; pausing accepts for 50 ms");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = stopping(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, limits.max_connections).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let io = TokioIo::new(StallGuard::new(stream, limits.write_timeout));
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad bytes).
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace period are dropped"
        );
    }
}

/// A connection whose writes fail once one has been pending (the client's
/// receive window shut) for longer than `timeout`: hyper then closes it.
struct StallGuard {
    stream: TcpStream,
    timeout: Duration,
    /// Armed when a write first returns pending; disarmed by progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(stream: TcpStream, timeout: Duration) -> StallGuard {
        StallGuard {
            stream,
            timeout,
            stalled: None,
        }
    }

    /// What a write did: progress disarms the timer; pending arms it, or
    /// fails once it has run out.
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client has not read for the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl tokio::io::AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel means nobody can stop the server any more: stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Answers one connection over the cap with a 503 and closes it. The request
/// is read (briefly, boundedly) after the answer, so closing does not reset
/// the connection under a client still sending and lose the answer.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        concat!(
            r#"{{"type":"https://refold.dev/problems/too-many-connections","title":"Service Unavailable","#,
            r#""status":503,"detail":"the server holds its maximum of {} connections; retry shortly","code":"too_many_connections"}}"#
        ),
        max
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        body
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Errors that concern one connection only (it went away before `accept`).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Raises the soft limit on open files to the hard limit (a default soft
/// limit of 1024 is a few hundred clients). Returns the soft limit in force,
/// raised or not.
pub fn raise_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            // Still answer the limit in force: the connection cap must fit it.
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                soft = limit.rlim_cur,
                "could not raise the open-file limit"
            );
        }
    }
    Ok(limit.rlim_cur)
}
