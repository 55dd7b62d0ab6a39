//! Reads that may block, run with a deadline.
//!
//! Reading `/proc/PID/cmdline` takes the target's memory-map lock: a process stuck in a page
//! fault behind a hung mount (NFS, FUSE) holds it, and the read sleeps until it is released —
//! possibly forever. A scan must not stop behind one such process, so these reads go to a worker
//! thread and the caller waits at most `deadline`. A worker that does not answer in time is left
//! behind (nothing can interrupt that read) and a fresh one takes the next request; at most
//! `max_stuck` workers may be stuck at once, after which reads fail at once with
//! [`ReadError::Blocked`] until one comes back. A stuck worker that finally returns exits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{read_bounded, ReadError};

const PENDING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// One request: what to read, and where the answer goes. `state` settles the race between the
/// worker finishing and the caller giving up: whoever moves it away from `PENDING` first wins.
struct Job {
    path: PathBuf,
    cap: usize,
    state: Arc<AtomicU8>,
    reply: SyncSender<std::io::Result<Vec<u8>>>,
}

/// A reader with a deadline per read. Cheap to clone (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Guarded {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    deadline: Duration,
    max_stuck: usize,
    stuck: Arc<AtomicUsize>,
    worker: Mutex<Option<SyncSender<Job>>>,
}

impl Guarded {
    pub fn new(deadline: Duration, max_stuck: usize) -> Self {
        Guarded {
            inner: Arc::new(Inner {
                deadline,
                max_stuck: max_stuck.max(1),
                stuck: Arc::new(AtomicUsize::new(0)),
                worker: Mutex::new(None),
            }),
        }
    }

    /// Workers currently stuck in a read.
    pub fn stuck(&self) -> usize {
        self.inner.stuck.load(Ordering::Acquire)
    }

    /// Read at most `cap` bytes of `path`, giving up after the deadline.
    pub fn read(&self, path: PathBuf, cap: usize) -> Result<Vec<u8>, ReadError> {
        let inner = &self.inner;
        let mut slot = inner.worker.lock().unwrap_or_else(|p| p.into_inner());
        let state = Arc::new(AtomicU8::new(PENDING));
        let (reply, answer) = mpsc::sync_channel(1);
        let mut job = Job {
            path,
            cap,
            state: state.clone(),
            reply,
        };
        // Hand the job to the worker, starting one if there is none (or it is gone).
        for _ in 0..2 {
            if slot.is_none() {
                if inner.stuck.load(Ordering::Acquire) >= inner.max_stuck {
                    return Err(ReadError::Blocked);
                }
                *slot = Some(spawn_worker(inner.stuck.clone())?);
            }
            let Some(w) = slot.as_ref() else { continue };
            match w.send(job) {
                Ok(()) => {
                    return wait(answer, &state, inner, &mut slot);
                }
                Err(mpsc::SendError(j)) => {
                    job = j;
                    *slot = None;
                }
            }
        }
        Err(ReadError::Io(std::io::Error::other(
            "cannot start a reader thread",
        )))
    }
}

fn wait(
    answer: Receiver<std::io::Result<Vec<u8>>>,
    state: &AtomicU8,
    inner: &Inner,
    slot: &mut Option<SyncSender<Job>>,
) -> Result<Vec<u8>, ReadError> {
    match answer.recv_timeout(inner.deadline) {
        Ok(r) => r.map_err(ReadError::from),
        Err(RecvTimeoutError::Timeout) => {
            if state
                .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The worker is stuck in the read: leave it behind; it counts itself out when
                // (if ever) the read returns.
                inner.stuck.fetch_add(1, Ordering::AcqRel);
                *slot = None;
                Err(ReadError::Blocked)
            } else {
                // It finished just now: the answer is on its way.
                answer
                    .recv()
                    .map_err(|_| ReadError::Io(std::io::Error::other("reader thread gone")))?
                    .map_err(ReadError::from)
            }
        }
        Err(RecvTimeoutError::Disconnected) => {
            *slot = None;
            Err(ReadError::Io(std::io::Error::other("reader thread gone")))
        }
    }
}

fn spawn_worker(stuck: Arc<AtomicUsize>) -> Result<SyncSender<Job>, ReadError> {
    let (tx, rx) = mpsc::sync_channel::<Job>(0);
    std::thread::Builder::new()
        .name("lw-proc-read".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let mut buf = Vec::new();
                let r = read_bounded(&job.path, &mut buf, job.cap).map(|()| buf);
                if job
                    .state
                    .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let _ = job.reply.send(r);
                } else {
                    // Abandoned while reading: we were counted stuck; we are not any more, and
                    // our caller has a new worker.
                    stuck.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
        })
        .map_err(ReadError::Io)?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_within_the_deadline() {
        let g = Guarded::new(Duration::from_secs(2), 2);
        let me = format!("/proc/{}/cmdline", std::process::id());
        let b = g.read(me.into(), 1 << 20).expect("read own cmdline");
        assert!(!b.is_empty());
        assert!(matches!(
            g.read("/nonexistent/x".into(), 10),
            Err(ReadError::Gone)
        ));
        assert_eq!(g.stuck(), 0);
    }

    #[test]
    fn a_read_that_blocks_is_given_up_and_the_next_read_still_works() {
        // A FIFO nobody writes to: open() blocks, the way a read behind a hung mount does.
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        let g = Guarded::new(Duration::from_millis(200), 1);
        let t = std::time::Instant::now();
        assert!(matches!(g.read(fifo.clone(), 10), Err(ReadError::Blocked)));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(g.stuck(), 1);
        // The one stuck worker is the limit: the next read fails at once.
        assert!(matches!(
            g.read("/proc/self/stat".into(), 4096),
            Err(ReadError::Blocked)
        ));
        // Release the stuck reader (a writer opens the FIFO): it counts itself out, and reads
        // work again.
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open writer");
        drop(w);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while g.stuck() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(g.stuck(), 0);
        assert!(g.read("/proc/self/stat".into(), 4096).is_ok());
    }
}
