//! The one way the host calls into a guest: a fresh store over the
//! invocation's state, instantiate and call under its deadline, and every
//! failure classified into the error callers see.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use wasmtime::{Store, Trap};

use super::{Ensemble, InvokeError, InvokeErrorKind};
use crate::audit::Ledger;
use crate::bindings::types::Error as GuestError;
use crate::bundle::Capabilities;
use crate::caps::{ExpertsCtx, Invoker, ModelCtx};
use crate::sandbox::{DeadlineExceeded, InvocationState, Limits};

/// What a guest call returns inside the store: a trap or host error, the
/// guest's own error, or its value.
pub(crate) type GuestResult<T> = wasmtime::Result<Result<T, GuestError>>;

/// What a guest call left behind.
pub(crate) struct GuestCall<T> {
    /// Its value, or why there is none.
    pub result: Result<T, InvokeError>,
    /// The store's data: its ledger, stdio and memory figures.
    pub state: InvocationState,
    /// Fuel it did not burn.
    pub fuel_left: u64,
}

impl Ensemble {
    /// The store data of one invocation: the stack of experts from the
    /// outermost caller to this one, granted `capabilities` under
    /// `limits`, due by `deadline`. Nested invocations share the request's
    /// `trace_budget`; an outermost one gets a fresh one.
    pub(crate) fn invocation_state(
        self: &Arc<Self>,
        stack: Vec<String>,
        capabilities: &Capabilities,
        limits: Limits,
        deadline: Instant,
        trace_budget: Option<Arc<AtomicUsize>>,
    ) -> InvocationState {
        let policy = self.sandbox().policy();
        let expert = stack.last().cloned().unwrap_or_default();
        let trace_budget =
            trace_budget.unwrap_or_else(|| Arc::new(AtomicUsize::new(policy.max_trace_entries)));
        let invoker: Arc<dyn Invoker> = self.clone();
        InvocationState::new(
            ModelCtx::new(self.engine_for(capabilities), capabilities),
            ExpertsCtx::new(
                invoker,
                capabilities.clone(),
                stack,
                policy.max_call_depth,
                deadline,
            ),
            Ledger::new(&expert, limits, trace_budget),
            deadline,
            policy,
        )
    }

    /// Call a guest: a fresh store over `state`, `call` under the state's
    /// deadline (epoch interruption stops a guest that computes past it;
    /// the timeout one that waits past it, on the model say), then the
    /// failure classified with what the store recorded.
    pub(crate) async fn call_guest<T>(
        &self,
        state: InvocationState,
        call: impl AsyncFnOnce(&mut Store<InvocationState>) -> GuestResult<T>,
    ) -> GuestCall<T> {
        let deadline = state.deadline;
        let mut store = self.sandbox().new_store(state);
        let outcome = tokio::time::timeout_at(deadline.into(), call(&mut store)).await;
        let fuel_left = store.get_fuel().unwrap_or(0);
        let result = match outcome {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(guest))) => Err(InvokeError::from_guest(guest)),
            Ok(Err(e)) => Err(classify(e, store.data())),
            Err(_) => Err(deadline_error(store.data().ledger.limits.deadline_ms)),
        };
        GuestCall {
            result,
            state: store.into_data(),
            fuel_left,
        }
    }
}

fn deadline_error(deadline_ms: u64) -> InvokeError {
    InvokeError::new(
        InvokeErrorKind::Deadline,
        format!("deadline of {deadline_ms} ms exceeded (limits.deadline-ms)"),
    )
}

/// Turn a trap or host error into the error a caller sees, using what the
/// store recorded (a refused memory growth, a panic message).
fn classify(error: wasmtime::Error, state: &InvocationState) -> InvokeError {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return deadline_error(state.ledger.limits.deadline_ms);
    }
    if let Some(refused) = state.limiter.refused() {
        return InvokeError::new(
            InvokeErrorKind::MemoryLimit,
            format!(
                "memory limit of {} MiB exceeded: the expert tried to grow its memory to {} MiB (limits.memory-mib)",
                state.ledger.limits.memory_bytes / (1024 * 1024),
                refused / (1024 * 1024)
            ),
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => InvokeError::new(
            InvokeErrorKind::OutOfFuel,
            format!(
                "fuel limit of {} exhausted (limits.fuel)",
                state.ledger.limits.fuel
            ),
        ),
        Some(Trap::StackOverflow) => InvokeError::new(
            InvokeErrorKind::StackOverflow,
            "the expert overflowed its stack (unbounded recursion?)".to_string(),
        ),
        Some(Trap::Interrupt) => deadline_error(state.ledger.limits.deadline_ms),
        Some(Trap::MemoryOutOfBounds) if state.ledger.panic_message.is_none() => InvokeError::new(
            InvokeErrorKind::Trap,
            "the expert trapped: out-of-bounds memory access (in Rust guests this is usually a stack overflow: their stack lives in linear memory)",
        ),
        Some(trap) => match &state.ledger.panic_message {
            Some(message) => InvokeError::new(
                InvokeErrorKind::Panic,
                format!("the expert panicked: {message}"),
            ),
            None => InvokeError::new(InvokeErrorKind::Trap, format!("the expert trapped: {trap}")),
        },
        None => InvokeError::new(
            InvokeErrorKind::Trap,
            format!("the expert failed: {error:#}"),
        ),
    }
}
