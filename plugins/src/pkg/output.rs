//! Bounded, non-blocking output for the process's standard output and
//! standard error.
//!
//! Query-path code (`log`, `errors`) and `tracing` hand complete lines to
//! an [`Output`]; a writer thread per stream writes them. Handing a line
//! over never waits: when the queue is full (in lines or bytes) the line is
//! dropped and counted in `nodedns_output_lines_dropped_total{stream}`, and
//! the writer prints `[WARNING] nodedns: N lines dropped …` once it can
//! (at most every [`REPORT_EVERY`]). A reader that stalls (a supervisor
//! that does not drain its pipe) therefore costs log lines, never DNS.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Most lines queued per stream.
pub const MAX_LINES: usize = 8 * 1024;
/// Most bytes queued per stream.
pub const MAX_BYTES: usize = 2 << 20;
/// Least time between two "lines dropped" reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

static DROPPED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    super::metrics::counter_vec(
        "nodedns_output_lines_dropped_total",
        "Log lines dropped because the stream's reader was too slow and the output queue was full.",
        &["stream"],
    )
});

static STDOUT: OnceLock<Output> = OnceLock::new();
static STDERR: OnceLock<Output> = OnceLock::new();

/// The process's standard output, bounded.
pub fn stdout() -> &'static Output {
    STDOUT.get_or_init(|| Output::spawn("stdout", Box::new(std::io::stdout()), Limits::default()))
}

/// The process's standard error, bounded.
pub fn stderr() -> &'static Output {
    STDERR.get_or_init(|| Output::spawn("stderr", Box::new(std::io::stderr()), Limits::default()))
}

/// Flushes both standard streams, waiting at most `within` in all (before
/// the process exits).
pub fn flush_all(within: Duration) {
    let deadline = Instant::now() + within;
    // Only streams that were used have a writer to wait for.
    if let Some(out) = STDOUT.get() {
        out.flush(deadline.saturating_duration_since(Instant::now()));
    }
    if let Some(err) = STDERR.get() {
        err.flush(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Queue bounds and report pacing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most lines queued.
    pub lines: usize,
    /// Most bytes queued.
    pub bytes: usize,
    /// Least time between two "lines dropped" reports.
    pub report_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lines: MAX_LINES,
            bytes: MAX_BYTES,
            report_every: REPORT_EVERY,
        }
    }
}

/// One stream's queue; cloning shares it.
#[derive(Clone)]
pub struct Output {
    tx: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("stream", &self.shared.stream)
            .field("dropped", &self.dropped())
            .finish()
    }
}

struct Shared {
    stream: &'static str,
    max_bytes: usize,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Lines accepted so far.
    accepted: AtomicU64,
    /// Lines dropped so far.
    dropped: AtomicU64,
    dropped_metric: IntCounter,
    /// Lines written and flushed so far (the writer's progress).
    written: Mutex<u64>,
    progress: Condvar,
}

impl Output {
    /// Starts a writer thread that writes to `sink`. If the thread cannot
    /// start, lines are dropped and counted.
    pub fn spawn(stream: &'static str, sink: Box<dyn Write + Send>, limits: Limits) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.lines.max(1));
        let shared = Arc::new(Shared {
            stream,
            max_bytes: limits.bytes.max(1),
            queued: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_metric: DROPPED.with_label_values(&[stream]),
            written: Mutex::new(0),
            progress: Condvar::new(),
        });
        let writer = Writer {
            rx,
            sink: std::io::BufWriter::with_capacity(64 << 10, sink),
            shared: Arc::clone(&shared),
            report_every: limits.report_every,
        };
        if let Err(e) = std::thread::Builder::new()
            .name(format!("output-{stream}"))
            .spawn(move || writer.run())
        {
            // Nothing receives: every line counts as dropped. Say so once,
            // on the other stream's raw handle, without waiting on it.
            let _ = std::io::stderr().write_all(
                format!("[ERROR] nodedns: cannot start the {stream} writer: {e}\n").as_bytes(),
            );
        }
        Self { tx, shared }
    }

    /// Queues `line`, adding a newline when it has none. Never waits: a
    /// full queue drops the line and counts it.
    pub fn line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            buf.push(b'\n');
        }
        self.bytes(buf);
    }

    /// Queues bytes as they are (the caller ends them with a newline).
    pub fn bytes(&self, buf: Vec<u8>) {
        let len = buf.len();
        let s = &self.shared;
        if s.queued.fetch_add(len, Ordering::AcqRel) + len > s.max_bytes {
            s.queued.fetch_sub(len, Ordering::AcqRel);
            self.drop_one();
            return;
        }
        match self.tx.try_send(buf) {
            Ok(()) => {
                s.accepted.fetch_add(1, Ordering::AcqRel);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                s.queued.fetch_sub(len, Ordering::AcqRel);
                self.drop_one();
            }
        }
    }

    fn drop_one(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        self.shared.dropped_metric.inc();
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued before this call is written and
    /// flushed, at most `within`. Returns whether it was.
    pub fn flush(&self, within: Duration) -> bool {
        let target = self.shared.accepted.load(Ordering::Acquire);
        let deadline = Instant::now() + within;
        let mut written = self
            .shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            written = self
                .shared
                .progress
                .wait_timeout(written, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// A `tracing_subscriber` writer over this stream: each event is one
    /// queued line.
    pub fn writer(&self) -> LineWriter {
        LineWriter {
            out: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event and queues it on drop (or flush).
#[derive(Debug)]
pub struct LineWriter {
    out: Output,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // An event larger than the whole queue could never be queued.
        let room = self.out.shared.max_bytes.saturating_sub(self.buf.len());
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.out.bytes(std::mem::take(&mut self.buf));
        }
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The thread that writes a stream.
struct Writer {
    rx: Receiver<Vec<u8>>,
    sink: std::io::BufWriter<Box<dyn Write + Send>>,
    shared: Arc<Shared>,
    report_every: Duration,
}

impl Writer {
    fn run(mut self) {
        let mut done = 0u64;
        let mut reported = 0u64;
        let mut last_report: Option<Instant> = None;
        let mut batch: VecDeque<Vec<u8>> = VecDeque::new();
        loop {
            // Take what is queued; with nothing queued, flush and wait.
            match self.rx.try_recv() {
                Ok(line) => batch.push_back(line),
                Err(TryRecvError::Empty) => {
                    let _ = self.sink.flush();
                    self.progress(done);
                    match self
                        .rx
                        .recv_timeout(self.report_every.max(Duration::from_millis(100)))
                    {
                        Ok(line) => batch.push_back(line),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                Err(TryRecvError::Disconnected) => {
                    let _ = self.sink.flush();
                    self.progress(done);
                    return;
                }
            }
            while let Some(line) = batch.pop_front() {
                self.shared.queued.fetch_sub(line.len(), Ordering::AcqRel);
                // A failed write (a closed pipe) loses the line; the next
                // may still go through.
                let _ = self.sink.write_all(&line);
                done += 1;
            }
            let dropped = self.shared.dropped.load(Ordering::Relaxed);
            let due = last_report.is_none_or(|t| t.elapsed() >= self.report_every);
            if dropped > reported && due {
                let n = dropped - reported;
                let _ = writeln!(
                    self.sink,
                    "[WARNING] nodedns: {n} lines dropped: {} is not read fast enough",
                    self.shared.stream
                );
                reported = dropped;
                last_report = Some(Instant::now());
            }
        }
    }

    fn progress(&self, done: u64) {
        let mut written = self
            .shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *written = done;
        self.shared.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the gate is open, and what went through.
    type GateState = Mutex<(bool, Vec<u8>)>;

    /// A sink that blocks every write until opened, recording what it got.
    #[derive(Clone, Default)]
    struct Gate {
        state: Arc<(GateState, Condvar)>,
    }

    impl Gate {
        fn open(&self) {
            let (m, c) = &*self.state;
            m.lock().unwrap().0 = true;
            c.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.state.0.lock().unwrap().1).into_owned()
        }
    }

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.state;
            let mut g = m.lock().unwrap();
            while !g.0 {
                g = c.wait(g).unwrap();
            }
            g.1.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn limits(lines: usize, bytes: usize) -> Limits {
        Limits {
            lines,
            bytes,
            report_every: Duration::ZERO,
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_instead_of_blocking() {
        let gate = Gate::default();
        let out = Output::spawn("test-stall", Box::new(gate.clone()), limits(4, 1 << 20));
        // The sink blocks every write; queuing must not.
        let n = 100_000;
        for i in 0..n {
            out.line(&format!("line {i}"));
        }
        // At most the queue and the writer's 64 KiB buffer get through.
        assert!(out.dropped() >= n - 10_000, "dropped {}", out.dropped());
        assert!(!out.flush(Duration::from_millis(50)), "nothing written yet");
        gate.open();
        assert!(out.flush(Duration::from_secs(10)), "flushed once open");
        out.line("after");
        assert!(out.flush(Duration::from_secs(10)));
        let text = gate.text();
        assert!(text.starts_with("line 0\n"), "{text}");
        // The reports add up to what was dropped.
        let reported: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("[WARNING] nodedns: "))
            .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(reported, out.dropped(), "{text}");
        assert!(text.ends_with("after\n"), "{text}");
        assert_eq!(
            DROPPED.with_label_values(&["test-stall"]).get(),
            out.dropped()
        );
    }

    #[test]
    fn the_byte_bound_drops_large_lines() {
        let gate = Gate::default();
        let out = Output::spawn("test-bytes", Box::new(gate.clone()), limits(1000, 64));
        out.line(&"x".repeat(100));
        assert_eq!(out.dropped(), 1, "a line over the byte bound is dropped");
        out.line("small");
        gate.open();
        assert!(out.flush(Duration::from_secs(10)));
        assert!(gate.text().starts_with("small\n"), "{}", gate.text());
    }

    #[test]
    fn writer_queues_one_line_per_event() {
        let gate = Gate::default();
        gate.open();
        let out = Output::spawn("test-writer", Box::new(gate.clone()), limits(16, 1 << 20));
        {
            let mut w = out.writer();
            write!(w, "part one, ").unwrap();
            writeln!(w, "part two").unwrap();
        }
        assert!(out.flush(Duration::from_secs(10)));
        assert_eq!(gate.text(), "part one, part two\n");
    }
}
