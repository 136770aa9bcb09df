//! Per-backend connection limits (`max_conns`): the slots a request holds while it is in
//! flight, and the FIFO queue of requests waiting for one (`queue_timeout`, `max_queue`).
//!
//! A [`BackendQueue`] lives in the backend's long-lived state, so a reload keeps its slots
//! and waiters. The request path only touches it when the backend has a limit: the
//! snapshot's `max_conns` is checked first, and 0 costs a branch.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

/// Upper bounds (seconds) of the queue wait histogram.
pub const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// It waited `queue_timeout` in the queue.
    #[error("waited queue_timeout for a slot on the backend")]
    Timeout { retry_after: u64 },
    /// The queue already held `max_queue` requests.
    #[error("the backend's queue is full")]
    Full { retry_after: u64 },
}

impl QueueError {
    /// `Retry-After` in whole seconds.
    pub fn retry_after(self) -> u64 {
        match self {
            QueueError::Timeout { retry_after } | QueueError::Full { retry_after } => retry_after,
        }
    }
}

/// What a request asks of the queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue_timeout: Duration,
    /// 0 = no bound on waiters.
    pub max_queue: u32,
}

impl Limits {
    /// `Retry-After` for a refused request: the queue timeout in whole seconds (rounded
    /// up), at least 1 — about when the requests ahead of it have been served or refused.
    fn retry_after(&self) -> u64 {
        let ms = self.queue_timeout.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// Slots and waiters for one backend.
#[derive(Debug)]
pub struct BackendQueue {
    /// Free slots. FIFO: tokio's semaphore serves waiters in the order they asked.
    slots: Semaphore,
    /// The configured `max_conns` (0 = no limit).
    limit: AtomicU32,
    /// Slots to swallow as they come back, after a reload lowered the limit below what was
    /// in use.
    debt: AtomicU32,
    /// Wakes waiters when the limit changes (a reload that removes the limit lets them go).
    changed: Notify,
    queued: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
    wait_sum_us: AtomicU64,
}

impl Default for BackendQueue {
    fn default() -> Self {
        BackendQueue {
            slots: Semaphore::new(0),
            limit: AtomicU32::new(0),
            debt: AtomicU32::new(0),
            changed: Notify::new(),
            queued: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            wait_buckets: Default::default(),
            wait_sum_us: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// Set when a request starts waiting in a queue, during the poll of its future; the
    /// connection loop that polled it reads it right after (same thread, same poll).
    static STARTED_WAITING: Cell<bool> = const { Cell::new(false) };
}

/// For a connection loop, after polling a request that is not finished: did it just start
/// waiting in a backend's queue? (Then the loop watches for its client leaving.) Clears the
/// mark. Costs a thread-local read, so requests that never queue pay next to nothing.
pub fn take_started_waiting() -> bool {
    STARTED_WAITING.with(|w| {
        let set = w.get();
        if set {
            w.set(false);
        }
        set
    })
}

/// Something that owns a [`BackendQueue`] and can be kept alive by the slot it hands out.
pub trait HasQueue: Send + Sync + 'static {
    fn queue(&self) -> &BackendQueue;
}

impl BackendQueue {
    /// Applies a (re)loaded `max_conns`. Raising it frees slots at once; lowering it takes
    /// free slots away and the rest as requests finish. Requests already in flight when a
    /// limit is first set hold no slot (they finish as they were).
    pub fn set_limit(&self, n: u32) {
        let old = self.limit.swap(n, Ordering::AcqRel);
        if n > old {
            let mut add = n - old;
            // Pay back what a lower limit still owes first.
            let _ = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    let paid = d.min(add);
                    add -= paid;
                    Some(d - paid)
                });
            if add > 0 {
                self.slots.add_permits(add as usize);
            }
        } else if n < old {
            let remove = old - n;
            let taken = self.slots.forget_permits(remove as usize) as u32;
            if taken < remove {
                self.debt.fetch_add(remove - taken, Ordering::AcqRel);
            }
        }
        if n != old {
            self.changed.notify_waiters();
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Every slot taken (always false without a limit).
    pub fn is_full(&self) -> bool {
        self.limit() > 0 && self.slots.available_permits() == 0
    }

    /// Requests waiting now.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// (sum in seconds, count, per-bucket counts with upper bounds; the last is +Inf).
    pub fn waits(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets = Vec::with_capacity(WAIT_BUCKETS.len() + 1);
        let mut count = 0;
        for (i, c) in self.wait_buckets.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((WAIT_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        (
            self.wait_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count,
            buckets,
        )
    }

    fn observe_wait(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = WAIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.wait_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// A free slot now, if there is one (or no limit: `Some(None)`).
    fn try_take(&self) -> Option<bool> {
        if self.limit() == 0 {
            return Some(false);
        }
        match self.slots.try_acquire() {
            Ok(p) => {
                p.forget();
                Some(true)
            }
            Err(_) => None,
        }
    }

    /// Gives a slot back (or swallows it while a lowered limit is still owed): for holders
    /// that took one with [`Slot::hand_over`].
    pub fn give_back(&self) {
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if !owed {
            self.slots.add_permits(1);
        }
    }
}

/// A held slot; given back when dropped. `None` inside = taken while the backend had no
/// limit (nothing to give back).
pub struct Slot {
    owner: Option<Arc<dyn HasQueue>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("held", &self.owner.is_some())
            .finish()
    }
}

impl Slot {
    /// Ends this guard without giving the slot back; true when there was one, which the
    /// caller now gives back with [`BackendQueue::give_back`] on the same backend. Lets a
    /// holder that already keeps the backend around carry a flag instead of this guard.
    pub fn hand_over(mut self) -> bool {
        self.owner.take().is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(o) = self.owner.take() {
            o.queue().give_back();
        }
    }
}

/// Takes a slot on `owner`'s backend, waiting in its FIFO queue when every slot is taken:
/// at most `queue_timeout`, and not at all when `max_queue` requests already wait. A
/// request whose future is dropped while waiting (its client went away) leaves the queue.
pub async fn acquire<T: HasQueue>(owner: &Arc<T>, limits: Limits) -> Result<Slot, QueueError> {
    let q = owner.queue();
    let held = |taken: bool| Slot {
        owner: taken.then(|| owner.clone() as Arc<dyn HasQueue>),
    };
    if let Some(taken) = q.try_take() {
        return Ok(held(taken));
    }
    // Join the queue, unless it is full.
    let max = u64::from(limits.max_queue);
    let joined = q
        .queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (max == 0 || n < max).then_some(n + 1)
        })
        .is_ok();
    if !joined {
        q.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(QueueError::Full {
            retry_after: limits.retry_after(),
        });
    }
    let _waiting = Waiting(q);
    STARTED_WAITING.with(|w| w.set(true));
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limits.queue_timeout;
    loop {
        let changed = q.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // The limit may have been lifted between the first try and `enable`.
        if q.limit() == 0 {
            return Ok(held(false));
        }
        tokio::select! {
            biased;
            p = q.slots.acquire() => {
                if let Ok(p) = p {
                    p.forget();
                    q.observe_wait(start.elapsed());
                    return Ok(held(true));
                }
                // The semaphore is never closed; treat it as no limit rather than fail.
                return Ok(held(false));
            }
            _ = &mut changed => continue,
            _ = tokio::time::sleep_until(deadline) => {
                q.timeouts.fetch_add(1, Ordering::Relaxed);
                q.observe_wait(start.elapsed());
                return Err(QueueError::Timeout {
                    retry_after: limits.retry_after(),
                });
            }
        }
    }
}

/// Counts a request as queued for as long as it waits (however the wait ends).
struct Waiting<'a>(&'a BackendQueue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owner(BackendQueue);
    impl HasQueue for Owner {
        fn queue(&self) -> &BackendQueue {
            &self.0
        }
    }

    fn owner(limit: u32) -> Arc<Owner> {
        let o = Arc::new(Owner(BackendQueue::default()));
        o.0.set_limit(limit);
        o
    }

    const LIMITS: Limits = Limits {
        queue_timeout: Duration::from_secs(5),
        max_queue: 0,
    };

    #[tokio::test]
    async fn no_limit_never_waits() {
        let o = owner(0);
        let slots: Vec<_> = futures_lite(&o, 100).await;
        assert_eq!(slots.len(), 100);
        assert!(!o.0.is_full());
    }

    async fn futures_lite(o: &Arc<Owner>, n: usize) -> Vec<Slot> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(acquire(o, LIMITS).await.expect("no limit"));
        }
        v
    }

    #[tokio::test]
    async fn waiters_are_served_in_order() {
        let o = owner(1);
        let first = acquire(&o, LIMITS).await.expect("free slot");
        assert!(o.0.is_full());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (o2, tx) = (o.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let s = acquire(&o2, LIMITS).await;
                tx.send(i).expect("receiver alive");
                tokio::time::sleep(Duration::from_millis(2)).await;
                drop(s);
            }));
            // Let each one join the queue before the next.
            while o.0.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        let mut order = Vec::new();
        while let Ok(i) = rx.try_recv() {
            order.push(i);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(o.0.queued(), 0);
        assert!(!o.0.is_full());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_wait_times_out() {
        let o = owner(1);
        let _held = acquire(&o, LIMITS).await.expect("free slot");
        let limits = Limits {
            queue_timeout: Duration::from_millis(50),
            max_queue: 1,
        };
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { acquire(&o2, limits).await.map(|_| ()) });
        while o.0.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let refused = acquire(&o, limits).await.map(|_| ());
        assert_eq!(refused, Err(QueueError::Full { retry_after: 1 }));
        assert_eq!(o.0.rejected(), 1);
        let waited = waiter.await.expect("task");
        assert_eq!(waited, Err(QueueError::Timeout { retry_after: 1 }));
        assert_eq!(o.0.timeouts(), 1);
        assert_eq!(o.0.queued(), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let o = owner(1);
        let held = acquire(&o, LIMITS).await.expect("free slot");
        let o2 = o.clone();
        let gone = tokio::spawn(async move { acquire(&o2, LIMITS).await.map(|_| ()) });
        while o.0.queued() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(o.0.queued(), 0);
        drop(held);
        // The slot went back to the semaphore, not to the departed waiter.
        let again = acquire(&o, LIMITS).await.expect("slot is free");
        assert!(o.0.is_full());
        drop(again);
        assert!(!o.0.is_full());
    }

    #[tokio::test]
    async fn a_lowered_limit_is_reached_as_slots_come_back_and_lifting_it_frees_waiters() {
        let o = owner(3);
        let a = acquire(&o, LIMITS).await.expect("slot");
        let b = acquire(&o, LIMITS).await.expect("slot");
        o.0.set_limit(1); // one free slot taken away, one owed
        assert!(o.0.is_full());
        drop(a); // swallowed: still 1 in use (b), limit 1
        assert!(o.0.is_full());
        drop(b);
        assert!(!o.0.is_full());
        let c = acquire(&o, LIMITS).await.expect("slot");
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { acquire(&o2, LIMITS).await.map(|_| ()) });
        while o.0.queued() < 1 {
            tokio::task::yield_now().await;
        }
        o.0.set_limit(0);
        assert_eq!(waiter.await.expect("task"), Ok(()));
        drop(c);
        o.0.set_limit(2);
        let _x = acquire(&o, LIMITS).await.expect("slot");
        let _y = acquire(&o, LIMITS).await.expect("slot");
        assert!(o.0.is_full(), "exactly two slots after 0 -> 2");
    }
}
