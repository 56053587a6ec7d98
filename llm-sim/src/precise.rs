//! A precise timer for the simulator's writes. tokio's timer wheel ticks
//! every millisecond and rounds deadlines up, so every chunk would leave
//! ~1 ms late on average; that lateness is the simulator's, yet a client
//! would measure it as its own error. One thread keeps a heap of deadlines
//! and sleeps on a condvar (high-resolution timers), waking each task when
//! its deadline passes: ~0.1 ms instead of ~1 ms, for one cheap thread.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct Timer {
    heap: Mutex<Heap>,
    changed: Condvar,
}

static TIMER: LazyLock<Arc<Timer>> = LazyLock::new(|| {
    let t = Arc::new(Timer {
        heap: Mutex::new(Heap::default()),
        changed: Condvar::new(),
    });
    let me = Arc::clone(&t);
    let spawned = std::thread::Builder::new()
        .name("llm-sim-timer".into())
        .spawn(move || me.run());
    if let Err(e) = spawned {
        tracing::error!("cannot start the precise timer thread: {e}");
    }
    t
});

impl Timer {
    fn run(&self) {
        let mut heap = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        loop {
            let now = Instant::now();
            while heap.entries.peek().is_some_and(|Reverse(e)| e.at <= now) {
                if let Some(Reverse(e)) = heap.entries.pop() {
                    due.push(e.waker);
                }
            }
            if !due.is_empty() {
                drop(heap);
                due.drain(..).for_each(Waker::wake);
                heap = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            heap = match heap.entries.peek().map(|Reverse(e)| e.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(heap, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(heap)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    fn register(&self, at: Instant, waker: Waker) {
        let mut heap = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = heap.entries.peek().is_none_or(|Reverse(e)| at < e.at);
        heap.seq += 1;
        let seq = heap.seq;
        heap.entries.push(Reverse(Entry { at, seq, waker }));
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
    }
}

/// Completes at `at` (never before), within about 0.1 ms after it.
pub(crate) fn sleep_until(at: tokio::time::Instant) -> PreciseSleep {
    PreciseSleep {
        at: at.into_std(),
        registered: None,
    }
}

pub(crate) struct PreciseSleep {
    at: Instant,
    registered: Option<Waker>,
}

impl Future for PreciseSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        // Register once per waker; a spurious wake just polls again.
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            TIMER.register(self.at, cx.waker().clone());
            self.registered = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_after_the_deadline_and_close_to_it() {
        let mut late = Vec::new();
        for i in 0..20u64 {
            let at = tokio::time::Instant::now() + Duration::from_micros(1500 + i * 100);
            sleep_until(at).await;
            let l = tokio::time::Instant::now().duration_since(at);
            late.push(l);
        }
        late.sort();
        // Lateness, sorted: the median sits well under tokio's 1 ms tick.
        assert!(
            late[10] < Duration::from_millis(1),
            "median lateness {:?}",
            late[10]
        );
    }

    #[tokio::test]
    async fn many_sleepers_all_wake_in_order() {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                tokio::spawn(async move {
                    let at = start + Duration::from_micros(2000 + (i % 37) * 50);
                    sleep_until(at).await;
                    assert!(tokio::time::Instant::now() >= at);
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("woke")
                .expect("no panic");
        }
    }
}
