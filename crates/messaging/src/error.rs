use std::time::Duration;

/// Errors of both faces. `is_transient` tells a caller whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached or the connection broke; retry after a backoff.
    #[error("{backend}: broker unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// A mandatory publish matched no queue.
    #[error(
        "{backend}: message to exchange `{exchange}` with routing key `{routing_key}` is unroutable"
    )]
    Unroutable {
        backend: &'static str,
        exchange: String,
        routing_key: String,
    },
    /// The broker refused the message (publisher confirm nack).
    #[error("{backend}: broker refused the message: {detail}")]
    Refused {
        backend: &'static str,
        detail: String,
    },
    /// Waited too long for the broker.
    #[error("{backend}: timed out after {after:?} waiting for {what}")]
    Timeout {
        backend: &'static str,
        what: &'static str,
        after: Duration,
    },
    /// The named exchange, queue or topic does not exist.
    #[error("{backend}: {kind} `{name}` does not exist")]
    NotFound {
        backend: &'static str,
        kind: &'static str,
        name: String,
    },
    /// An ack/commit for a delivery or partition this consumer no longer owns (after a
    /// reconnect or rebalance); the broker redelivers the message.
    #[error("{backend}: stale {what}: {detail}")]
    Stale {
        backend: &'static str,
        what: &'static str,
        detail: String,
    },
    /// Invalid arguments or configuration; retrying will not help.
    #[error("{backend}: {detail}")]
    Invalid {
        backend: &'static str,
        detail: String,
    },
    /// The consumer or broker was closed.
    #[error("{backend}: closed")]
    Closed { backend: &'static str },
    /// Local journal I/O of the in-process broker.
    #[error("in-process broker journal: {0}")]
    Journal(#[from] std::io::Error),
}

impl Error {
    /// Retrying after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout { .. }
                | Error::Refused { .. }
                | Error::Journal(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
