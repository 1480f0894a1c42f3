//! A guest's stdout and stderr: captured per call with a cap, and forwarded to
//! the host's log under a per-module rate limit.
//!
//! What a guest observes never depends on either bound: writes always succeed
//! (past the cap the bytes are counted and dropped), so a call's result is the
//! same whether its output was logged, truncated or rate-limited. The capture
//! keeps the head and the tail of the output, because a panic message comes last.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of one stream (stdout or stderr) kept per call: the first
/// `OUTPUT_HEAD` and the last `OUTPUT_TAIL`.
pub const OUTPUT_HEAD: usize = 12 * 1024;
pub const OUTPUT_TAIL: usize = 4 * 1024;
/// The most a guest may hand over in one `write`, which bounds what the host
/// allocates for `write-zeroes`.
const WRITE_PERMIT: usize = 64 * 1024;

/// What one stream of one call wrote, head and tail, and how much was dropped between.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl Captured {
    fn push(&mut self, mut bytes: &[u8]) {
        let room = OUTPUT_HEAD - self.head.len();
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if bytes.len() > OUTPUT_TAIL {
            let skip = bytes.len() - OUTPUT_TAIL;
            self.dropped += (self.tail.len() + skip) as u64;
            self.tail.clear();
            bytes = &bytes[skip..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(OUTPUT_TAIL);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(bytes);
    }

    /// Counts `n` zero bytes without allocating (or looping over) what the guest asks for.
    fn push_zeroes(&mut self, n: usize) {
        let take = (OUTPUT_HEAD - self.head.len()).min(n);
        self.head.resize(self.head.len() + take, 0);
        let left = n - take;
        if left >= OUTPUT_TAIL {
            self.dropped += (self.tail.len() + (left - OUTPUT_TAIL)) as u64;
            self.tail.clear();
            self.tail.resize(OUTPUT_TAIL, 0);
        } else {
            self.push(&[0u8; OUTPUT_TAIL][..left]);
        }
    }

    fn text(&self) -> CapturedText {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n[... {} bytes of guest output truncated ...]\n",
                self.dropped
            ));
        }
        let (a, b) = self.tail.as_slices();
        let tail = [a, b].concat();
        text.push_str(&String::from_utf8_lossy(&tail));
        CapturedText { text }
    }
}

/// One call's output of one stream, as text with a truncation marker.
pub struct CapturedText {
    pub text: String,
}

/// A WASI output stream that never blocks and never fails.
#[derive(Clone, Default)]
pub struct CappedOutput {
    captured: Arc<Mutex<Captured>>,
}

impl CappedOutput {
    pub fn contents(&self) -> CapturedText {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Captured) -> R) -> R {
        f(&mut self.captured.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.with(|c| c.push(&bytes));
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.with(|c| c.push_zeroes(nelem));
        Ok(())
    }
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|c| c.push(buf));
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Bytes of guest output a module may send to the log per second, and in a burst.
pub const LOG_BYTES_PER_SECOND: f64 = 32.0 * 1024.0;
pub const LOG_BURST_BYTES: f64 = 128.0 * 1024.0;

/// A token bucket per module: how much of its guests' output reaches the log.
pub struct OutputBudget {
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Bytes withheld since the last line that made it to the log.
    withheld: u64,
}

/// What to log for one call's output.
pub enum LogDecision {
    /// Log this text; `withheld` bytes of earlier output were dropped before it.
    Log { withheld: u64 },
    /// Over the module's rate: drop it (counted, and reported with the next line logged).
    Drop,
}

impl Default for OutputBudget {
    fn default() -> Self {
        OutputBudget {
            state: Mutex::new(Bucket {
                tokens: LOG_BURST_BYTES,
                refilled: Instant::now(),
                withheld: 0,
            }),
        }
    }
}

impl OutputBudget {
    pub fn admit(&self, bytes: usize) -> LogDecision {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(b.refilled).as_secs_f64() * LOG_BYTES_PER_SECOND;
        b.tokens = (b.tokens + earned).min(LOG_BURST_BYTES);
        b.refilled = now;
        if b.tokens >= bytes as f64 {
            b.tokens -= bytes as f64;
            LogDecision::Log {
                withheld: std::mem::take(&mut b.withheld),
            }
        } else {
            b.withheld += bytes as u64;
            LogDecision::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_and_counts_the_rest() {
        let mut c = Captured::default();
        c.push(&vec![b'a'; OUTPUT_HEAD]);
        c.push(&vec![b'b'; 100_000]);
        c.push(b"the end");
        let text = c.text();
        assert_eq!(c.dropped, (100_000 + 7 - OUTPUT_TAIL) as u64);
        assert!(text.text.starts_with(&"a".repeat(OUTPUT_HEAD)));
        assert!(text.text.ends_with("bbbthe end"), "the tail is kept");
        assert!(text.text.contains(&format!(
            "[... {} bytes of guest output truncated ...]",
            100_000 + 7 - OUTPUT_TAIL
        )));
    }

    #[test]
    fn zeroes_are_counted_without_allocating_them() {
        let mut c = Captured::default();
        c.push_zeroes(10 << 20);
        assert_eq!(
            c.dropped,
            (10 << 20) as u64 - (OUTPUT_HEAD + OUTPUT_TAIL) as u64
        );
        assert_eq!(c.head.len() + c.tail.len(), OUTPUT_HEAD + OUTPUT_TAIL);
    }

    #[test]
    fn the_budget_drops_a_flood_and_reports_it() {
        let budget = OutputBudget::default();
        assert!(matches!(
            budget.admit(100_000),
            LogDecision::Log { withheld: 0 }
        ));
        assert!(matches!(budget.admit(100_000), LogDecision::Drop));
        assert!(matches!(budget.admit(100_000), LogDecision::Drop));
        std::thread::sleep(std::time::Duration::from_millis(50));
        match budget.admit(100) {
            LogDecision::Log { withheld } => assert_eq!(withheld, 200_000),
            LogDecision::Drop => panic!("a small line after a pause is logged"),
        }
    }
}
