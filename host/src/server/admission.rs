//! Fair, bounded admission: at most `max_running` requests run at once and
//! at most `max_queued` more wait; the rest are refused with 429 at once,
//! so that overload never grows memory or latency without bound.
//!
//! Requests are admitted per *model* (the canonical id of the base model,
//! the embedder, an expert or a `tessera/auto` strategy). One model may hold
//! at most [`share`] of the running places and of the waiting places, so a
//! flood of requests for one model always leaves room for the others: a
//! trivial expert is not queued behind a thousand base-model streams. When
//! a place frees, the models with waiting requests take turns (round robin);
//! within one model requests are admitted in arrival order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::error::ApiError;

/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// The places of `total` one model may hold: three quarters, at least one.
/// The quarter left over is what other models always find free.
pub fn share(total: usize) -> usize {
    (total - total / 4).max(1.min(total))
}

/// The admission queue.
#[derive(Debug)]
pub struct Admission {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    max_running: usize,
    max_queued: usize,
    running: usize,
    queued: usize,
    models: HashMap<Arc<str>, Model>,
    /// Models with waiting requests, in the order they get their next turn.
    turns: VecDeque<Arc<str>>,
    /// Waiters given a place that have not yet taken it.
    granted: HashSet<u64>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Model {
    running: usize,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

/// A running request's place; dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<Mutex<State>>,
    model: Arc<str>,
    _slots: Option<crate::ensemble::SlotReservation>,
}

impl Admitted {
    /// Keep `slots` for as long as the request runs.
    pub fn hold(&mut self, slots: crate::ensemble::SlotReservation) {
        self._slots = Some(slots);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.state).release(&self.model);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state's invariants hold between statements that cannot panic, so
    // a poisoned lock (a panic elsewhere while it was held) is still sound.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn max_running_per_model(&self) -> usize {
        share(self.max_running)
    }

    fn max_queued_per_model(&self) -> usize {
        share(self.max_queued)
    }

    /// Give free places to waiting requests, one model at a time in turn,
    /// skipping models at their share.
    fn fill(&mut self) {
        let cap = self.max_running_per_model();
        let mut skipped = 0;
        while self.running < self.max_running && skipped < self.turns.len() {
            let name = self.turns.pop_front().expect("turns is not empty");
            let model = self.models.get_mut(&name).expect("a model in turns");
            if model.running >= cap {
                self.turns.push_back(name);
                skipped += 1;
                continue;
            }
            skipped = 0;
            let waiter = model.waiting.pop_front().expect("a model in turns waits");
            model.running += 1;
            let more = !model.waiting.is_empty();
            self.running += 1;
            self.queued -= 1;
            self.granted.insert(waiter.id);
            // A closed receiver is a client that left while waiting: its
            // guard, dropping now or soon, finds the grant and hands the
            // place on.
            let _ = waiter.wake.send(());
            if more {
                self.turns.push_back(name);
            }
        }
    }

    fn release(&mut self, name: &Arc<str>) {
        self.running -= 1;
        if let Some(model) = self.models.get_mut(name) {
            model.running -= 1;
            if model.running == 0 && model.waiting.is_empty() {
                self.models.remove(name);
            }
        }
        self.fill();
    }

    /// Forget waiter `id` of `name`, which stopped waiting.
    fn abandon(&mut self, name: &Arc<str>, id: u64) {
        if self.granted.remove(&id) {
            self.release(name);
            return;
        }
        let Some(model) = self.models.get_mut(name) else {
            return;
        };
        if let Some(at) = model.waiting.iter().position(|w| w.id == id) {
            model.waiting.remove(at);
            self.queued -= 1;
        }
        if model.waiting.is_empty() {
            self.turns.retain(|n| n != name);
            if model.running == 0 {
                self.models.remove(name);
            }
        }
    }
}

impl Admission {
    /// Room for `max_running` running and `max_queued` waiting requests.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Admission {
            state: Arc::new(Mutex::new(State {
                max_running: max_running.max(1),
                max_queued,
                running: 0,
                queued: 0,
                models: HashMap::new(),
                turns: VecDeque::new(),
                granted: HashSet::new(),
                next_id: 0,
            })),
        }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        lock(&self.state).running
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        lock(&self.state).queued
    }

    /// Wait for a place for a request to `model` (its canonical id), or
    /// refuse at once when the queue, or this model's share of it, is full.
    pub async fn admit(&self, model: &str) -> Result<Admitted, ApiError> {
        let (name, id, woken) = {
            let mut state = lock(&self.state);
            let name: Arc<str> = match state.models.get_key_value(model) {
                Some((name, _)) => name.clone(),
                None => model.into(),
            };
            let running_cap = state.max_running_per_model();
            let queued_cap = state.max_queued_per_model();
            let (running, queued) = (state.running, state.queued);
            let (max_running, max_queued) = (state.max_running, state.max_queued);
            let entry = state.models.entry(name.clone()).or_default();
            // After every change, no waiter could take a free place (see
            // `fill`), so a free place under this model's share is free to
            // take now without passing anyone.
            if running < max_running && entry.running < running_cap {
                entry.running += 1;
                state.running += 1;
                return Ok(Admitted {
                    state: self.state.clone(),
                    model: name,
                    _slots: None,
                });
            }
            if queued >= max_queued || entry.waiting.len() >= queued_cap {
                let model_queued = entry.waiting.len();
                let model_running = entry.running;
                if model_running == 0 && model_queued == 0 {
                    state.models.remove(&name);
                }
                return Err(if queued >= max_queued {
                    ApiError::overloaded(running, queued, RETRY_AFTER_SECS)
                } else {
                    ApiError::overloaded_model(model, model_running, model_queued, RETRY_AFTER_SECS)
                });
            }
            let id = state.next_id;
            state.next_id += 1;
            let (wake, woken) = oneshot::channel();
            let entry = state.models.get_mut(&name).expect("entered above");
            entry.waiting.push_back(Waiter { id, wake });
            if entry.waiting.len() == 1 {
                state.turns.push_back(name.clone());
            }
            state.queued += 1;
            (name, id, woken)
        };
        // Forget the place in line on every path, including this future
        // being dropped because the client went away while queued.
        let mut line = Line {
            state: &self.state,
            name: &name,
            id,
            done: false,
        };
        woken
            .await
            .expect("a waiter's sender is dropped only after it is woken or removed by its guard");
        let mut state = lock(&self.state);
        state.granted.remove(&id);
        line.done = true;
        drop(state);
        Ok(Admitted {
            state: self.state.clone(),
            model: name.clone(),
            _slots: None,
        })
    }
}

/// A waiter's place in line, given up on drop unless it was admitted.
struct Line<'a> {
    state: &'a Mutex<State>,
    name: &'a Arc<str>,
    id: u64,
    done: bool,
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.state).abandon(self.name, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(admission: &Admission, queued: usize) {
        while admission.queued() != queued {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn refuses_past_the_queue_and_admits_in_turn() {
        let admission = Arc::new(Admission::new(1, 1));
        let first = admission.admit("m").await.unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit("m").await.map(|_| ()) }
        });
        until(&admission, 1).await;
        let refused = admission.admit("m").await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after, Some(RETRY_AFTER_SECS));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!((admission.running(), admission.queued()), (0, 0));
    }

    #[test]
    fn a_share_is_three_quarters_and_at_least_one() {
        assert_eq!(
            [0, 1, 2, 4, 64, 256].map(share),
            [0, 1, 2, 3, 48, 192],
            "places per model for totals 0, 1, 2, 4, 64, 256"
        );
    }

    /// The load bench's failure before fair admission: a trivial expert's
    /// request waited behind every queued base-model stream.
    #[tokio::test]
    async fn a_flooded_model_leaves_room_for_others() {
        let admission = Admission::new(4, 8);
        let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| admission.admit("base")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // The base model is at its share (3 of 4): its next request waits
        // although a place is free, and that place goes to another model.
        let queued_base = admission.admit("base");
        tokio::pin!(queued_base);
        assert!(futures_util::poll!(&mut queued_base).is_pending());
        assert_eq!(admission.queued(), 1);
        let echo = admission
            .admit("echo")
            .await
            .expect("echo finds the free place");
        assert_eq!(admission.running(), 4);
        // Its share of the queue (6 of 8) full, the base model is refused
        // while others may still queue.
        let mut more_base: Vec<_> = (0..5).map(|_| Box::pin(admission.admit("base"))).collect();
        for f in &mut more_base {
            assert!(futures_util::poll!(f).is_pending());
        }
        let refused = admission.admit("base").await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("overloaded"));
        assert!(refused.message.contains("`base`"), "{}", refused.message);
        let other = admission.admit("other");
        tokio::pin!(other);
        assert!(futures_util::poll!(&mut other).is_pending());
        assert_eq!(admission.queued(), 7);
        // The freed place goes to the model whose turn it is: base queued
        // first, but it is at its share, so `other` is admitted.
        drop(echo);
        assert_eq!(admission.queued(), 6);
        assert!(futures_util::poll!(&mut other).is_ready());
        assert!(futures_util::poll!(&mut queued_base).is_pending());
        drop(held);
        drop(more_base);
        assert!(futures_util::poll!(&mut queued_base).is_ready());
    }

    #[tokio::test]
    async fn models_take_turns_for_freed_places() {
        let admission = Arc::new(Admission::new(2, 16));
        let a = admission.admit("a").await.unwrap();
        let b = admission.admit("b").await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three of `a` queue before one of `c`; `c` still gets the second
        // freed place.
        for (i, model) in ["a", "a", "a", "c"].into_iter().enumerate() {
            let (shared, order) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let admitted = shared.admit(model).await.unwrap();
                order.lock().unwrap().push(model);
                tokio::task::yield_now().await;
                drop(admitted);
            }));
            until(&admission, i + 1).await;
        }
        drop(a);
        drop(b);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[..2], ["a", "c"], "{order:?}");
        assert_eq!((admission.running(), admission.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_client_leaving_the_line_loses_nothing() {
        let admission = Admission::new(1, 4);
        let first = admission.admit("m").await.unwrap();
        {
            let leaving = admission.admit("m");
            tokio::pin!(leaving);
            assert!(futures_util::poll!(&mut leaving).is_pending());
            assert_eq!(admission.queued(), 1);
        }
        assert_eq!(admission.queued(), 0);
        // Granted, then dropped before it was polled again: the place
        // passes on instead of leaking.
        let mut granted_then_gone = Box::pin(admission.admit("m"));
        let next = admission.admit("m");
        tokio::pin!(next);
        assert!(futures_util::poll!(&mut granted_then_gone).is_pending());
        assert!(futures_util::poll!(&mut next).is_pending());
        drop(first);
        assert_eq!((admission.running(), admission.queued()), (1, 1));
        drop(granted_then_gone);
        let next = next.await.expect("the abandoned grant passed on");
        assert_eq!((admission.running(), admission.queued()), (1, 0));
        drop(next);
        assert_eq!(admission.running(), 0);
        assert!(lock(&admission.state).models.is_empty());
    }
}
