//! A bounded admission queue: at most `max_running` requests run at once,
//! at most `max_queued` more wait; the rest are refused with 429 at once,
//! so that overload never grows memory or latency without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// The admission queue.
#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    max_running: usize,
    queued: AtomicUsize,
    max_queued: usize,
}

/// A running request's place; dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slots: Option<crate::ensemble::SlotReservation>,
}

impl Admitted {
    /// Keep `slots` for as long as the request runs.
    pub fn hold(&mut self, slots: crate::ensemble::SlotReservation) {
        self._slots = Some(slots);
    }
}

impl Admission {
    /// Room for `max_running` running and `max_queued` waiting requests.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        let max_running = max_running.max(1);
        Admission {
            running: Arc::new(Semaphore::new(max_running)),
            max_running,
            queued: AtomicUsize::new(0),
            max_queued,
        }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.max_running - self.running.available_permits()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Wait for a place, or refuse at once when the queue is full.
    pub async fn admit(&self) -> Result<Admitted, ApiError> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(Admitted {
                _permit: permit,
                _slots: None,
            });
        }
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        // Decrement on every path, including the future being dropped
        // because the client went away while queued.
        let _slot = QueueSlot(&self.queued);
        if queued >= self.max_queued {
            return Err(ApiError::overloaded(
                self.running(),
                queued,
                RETRY_AFTER_SECS,
            ));
        }
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the admission semaphore is never closed");
        Ok(Admitted {
            _permit: permit,
            _slots: None,
        })
    }
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_the_queue_and_admits_in_turn() {
        let admission = Arc::new(Admission::new(1, 1));
        let first = admission.admit().await.unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.map(|_| ()) }
        });
        while admission.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = admission.admit().await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after, Some(RETRY_AFTER_SECS));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!((admission.running(), admission.queued()), (0, 0));
    }
}
