use crate::bindings::types::Error as GuestError;

/// Why an invocation produced no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvokeError {
    /// What kind of failure.
    pub kind: InvokeErrorKind,
    /// What went wrong, for a person.
    pub message: String,
}

/// The kinds of invocation failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvokeErrorKind {
    /// No expert of that name is loaded.
    UnknownExpert,
    /// The bundle is a router or adapter, not an expert.
    NotAnExpert,
    /// The expert refused the request as malformed.
    InvalidInput,
    /// The expert was denied something (a grant, a cycle).
    Denied,
    /// The expert reported a limit it hit (model calls, tokens, depth).
    LimitExceeded,
    /// The model failed or is not loaded.
    Model,
    /// The expert reported an internal error.
    ExpertError,
    /// The wall-clock deadline passed.
    Deadline,
    /// The fuel ran out.
    OutOfFuel,
    /// The expert asked for more memory than its limit.
    MemoryLimit,
    /// The expert overflowed its stack.
    StackOverflow,
    /// The expert panicked.
    Panic,
    /// The expert trapped for another reason.
    Trap,
    /// The answer is larger than the host accepts.
    ResponseTooLarge,
    /// The audit store could not record the answer, so it is withheld:
    /// the host acknowledges nothing it has not recorded.
    Unrecorded,
}

impl InvokeErrorKind {
    /// A stable snake_case name, for traces and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeErrorKind::UnknownExpert => "unknown_expert",
            InvokeErrorKind::NotAnExpert => "not_an_expert",
            InvokeErrorKind::InvalidInput => "invalid_input",
            InvokeErrorKind::Denied => "denied",
            InvokeErrorKind::LimitExceeded => "limit_exceeded",
            InvokeErrorKind::Model => "model",
            InvokeErrorKind::ExpertError => "expert_error",
            InvokeErrorKind::Deadline => "deadline",
            InvokeErrorKind::OutOfFuel => "out_of_fuel",
            InvokeErrorKind::MemoryLimit => "memory_limit",
            InvokeErrorKind::StackOverflow => "stack_overflow",
            InvokeErrorKind::Panic => "panic",
            InvokeErrorKind::Trap => "trap",
            InvokeErrorKind::ResponseTooLarge => "response_too_large",
            InvokeErrorKind::Unrecorded => "unrecorded",
        }
    }
}

impl InvokeError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: InvokeErrorKind, message: impl Into<String>) -> Self {
        InvokeError {
            kind,
            message: message.into(),
        }
    }

    /// The error an expert returned.
    pub fn from_guest(error: GuestError) -> Self {
        let (kind, message) = match error {
            GuestError::InvalidInput(m) => (InvokeErrorKind::InvalidInput, m),
            GuestError::Denied(m) => (InvokeErrorKind::Denied, m),
            GuestError::LimitExceeded(m) => (InvokeErrorKind::LimitExceeded, m),
            GuestError::Model(m) => (InvokeErrorKind::Model, m),
            GuestError::Internal(m) => (InvokeErrorKind::ExpertError, m),
        };
        InvokeError { kind, message }
    }

    /// The error a calling expert sees for this failure.
    pub fn to_guest(&self) -> GuestError {
        let message = self.message.clone();
        match self.kind {
            InvokeErrorKind::UnknownExpert
            | InvokeErrorKind::NotAnExpert
            | InvokeErrorKind::InvalidInput => GuestError::InvalidInput(message),
            InvokeErrorKind::Denied => GuestError::Denied(message),
            InvokeErrorKind::LimitExceeded
            | InvokeErrorKind::Deadline
            | InvokeErrorKind::OutOfFuel
            | InvokeErrorKind::MemoryLimit
            | InvokeErrorKind::ResponseTooLarge => GuestError::LimitExceeded(message),
            InvokeErrorKind::Model => GuestError::Model(message),
            InvokeErrorKind::ExpertError
            | InvokeErrorKind::StackOverflow
            | InvokeErrorKind::Panic
            | InvokeErrorKind::Trap
            | InvokeErrorKind::Unrecorded => GuestError::Internal(message),
        }
    }
}
