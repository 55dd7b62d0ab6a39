//! Session admission: at most `max` sessions at once, then a FIFO queue of `queue` connections
//! that wait until a slot frees or their deadline passes; beyond the queue, an immediate
//! rejection (HTTP 429 with `Retry-After`, answered by `http.rs`).
//!
//! A freed slot is handed to the queue's head directly (never released and grabbed again), so
//! the order is first come, first served even when many slots free at once. A waiter that gives
//! up — its deadline passed, or its connection went away and its future was dropped — leaves the
//! queue; if a slot had already been handed to it in that instant, the slot goes on to the next.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("every session slot is taken and the queue is full")]
    QueueFull,
    #[error("no session slot freed before the queue deadline")]
    QueueTimeout,
    #[error("the service is shutting down")]
    Closed,
}

struct Inner {
    active: usize,
    waiters: VecDeque<(u64, oneshot::Sender<u64>)>,
    next: u64,
    /// Slots granted so far: the next one's sequence number.
    granted: u64,
    closed: bool,
    /// Connections that reached the gate (admitted, queued or turned away), for `/readyz`.
    arrivals: u64,
}

pub struct Gate {
    max: usize,
    queue: usize,
    inner: Mutex<Inner>,
}

/// A session slot; dropping it frees the slot (to the queue's head first).
pub struct Slot {
    gate: Arc<Gate>,
    seq: u64,
}

impl Slot {
    /// The order in which this slot was granted (1, 2, …): first come, first served means
    /// connections get increasing numbers in their arrival order.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        release(&mut g);
    }
}

fn release(g: &mut Inner) {
    while let Some((_, tx)) = g.waiters.pop_front() {
        g.granted += 1;
        if tx.send(g.granted).is_ok() {
            // The slot moved to that waiter: `active` stays.
            return;
        }
    }
    g.active = g.active.saturating_sub(1);
}

/// Removes a queued waiter whose future ends without a slot.
struct Queued {
    gate: Arc<Gate>,
    id: u64,
    rx: oneshot::Receiver<u64>,
    done: bool,
}

impl Queued {
    /// Leave the queue. `Some(seq)` if a slot had been handed over meanwhile (the caller owns
    /// it).
    fn leave(&mut self) -> Option<u64> {
        self.done = true;
        let mut g = self.gate.lock();
        if let Some(i) = g.waiters.iter().position(|(id, _)| *id == self.id) {
            g.waiters.remove(i);
            return None;
        }
        self.rx.try_recv().ok()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.done && self.leave().is_some() {
            let mut g = self.gate.lock();
            release(&mut g);
        }
    }
}

impl Gate {
    pub fn new(max: usize, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            queue,
            inner: Mutex::new(Inner {
                active: 0,
                waiters: VecDeque::new(),
                next: 0,
                granted: 0,
                closed: false,
                arrivals: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue
    }

    /// (sessions holding a slot, connections queued).
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.active, g.waiters.len())
    }

    /// How many connections have reached the gate so far (admitted, queued or turned away).
    pub fn arrivals(&self) -> u64 {
        self.lock().arrivals
    }

    /// A slot now, or a place in the queue until `deadline`. Cancel-safe.
    pub async fn enter(self: &Arc<Self>, deadline: Instant) -> Result<Slot, Rejected> {
        let mut queued = {
            let mut g = self.lock();
            g.arrivals += 1;
            if g.closed {
                return Err(Rejected::Closed);
            }
            if g.active < self.max && g.waiters.is_empty() {
                g.active += 1;
                g.granted += 1;
                return Ok(Slot {
                    gate: self.clone(),
                    seq: g.granted,
                });
            }
            if g.waiters.len() >= self.queue {
                return Err(Rejected::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = g.next;
            g.next += 1;
            g.waiters.push_back((id, tx));
            Queued {
                gate: self.clone(),
                id,
                rx,
                done: false,
            }
        };
        tokio::select! {
            r = &mut queued.rx => {
                queued.done = true;
                match r {
                    Ok(seq) => Ok(Slot { gate: self.clone(), seq }),
                    Err(_) => Err(Rejected::Closed),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                match queued.leave() {
                    Some(seq) => Ok(Slot { gate: self.clone(), seq }),
                    None => Err(Rejected::QueueTimeout),
                }
            }
        }
    }

    /// Refuse everyone from now on; queued connections are turned away at once.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.waiters.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn slots_then_queue_then_rejection() {
        let g = Gate::new(2, 1);
        let a = g.enter(soon(10)).await.unwrap();
        let _b = g.enter(soon(10)).await.unwrap();
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.enter(soon(5000)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(g.counts(), (2, 1));
        assert_eq!(g.enter(soon(10)).await.err(), Some(Rejected::QueueFull));
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // The waiter's slot was dropped at the end of its task.
        assert_eq!(g.counts(), (1, 0));
        // Every connection that reached the gate is counted: 2 admitted, 1 queued, 1 refused.
        assert_eq!(g.arrivals(), 4);
    }

    #[tokio::test]
    async fn queue_is_first_come_first_served() {
        let g = Gate::new(1, 8);
        let first = g.enter(soon(10)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (g, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = g.enter(soon(5000)).await.unwrap();
                order.lock().unwrap().push((i, slot.seq()));
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            }));
            // Arrival order is the spawn order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
        );
        assert_eq!(g.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue_and_frees_nothing_twice() {
        let g = Gate::new(1, 4);
        let held = g.enter(soon(10)).await.unwrap();
        assert_eq!(g.enter(soon(30)).await.err(), Some(Rejected::QueueTimeout));
        // A dropped future (a client that went away) leaves the queue too.
        let fut = g.enter(soon(5000));
        let _ = tokio::time::timeout(Duration::from_millis(20), fut).await;
        assert_eq!(g.counts(), (1, 0));
        drop(held);
        assert_eq!(g.counts(), (0, 0));
        let _again = g.enter(soon(10)).await.unwrap();
        assert_eq!(g.counts(), (1, 0));
    }

    #[tokio::test]
    async fn close_turns_the_queue_away() {
        let g = Gate::new(1, 4);
        let _held = g.enter(soon(10)).await.unwrap();
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.enter(soon(5000)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.close();
        assert_eq!(waiter.await.unwrap(), Err(Rejected::Closed));
        assert_eq!(g.enter(soon(10)).await.err(), Some(Rejected::Closed));
    }
}
