//! Errors: [`StepError`] (a handler's failure, reported to the broker) and [`Error`] (the SDK's own).

use std::fmt;
use std::path::PathBuf;

use sluice_wire::{ErrorCode, MAX_ERROR_MESSAGE_BYTES, TaskError, error_types, truncate_message};

/// Why a step handler failed; reported to the broker as a `fail` with an error type and a retryable flag.
///
/// * [`StepError::retryable`] — a transient problem: the step's retry policy decides whether to try again.
/// * [`StepError::fatal`] — a permanent problem with a type (e.g. `"CardDeclined"`): the step fails at once.
///
/// Any error that converts into `Box<dyn std::error::Error + Send + Sync>` (every `std::error::Error`, an
/// `anyhow::Error`, a `String`) converts into a *retryable* `StepError` of type [`error_types::ERROR`], so `?`
/// works in handlers. The message is the error's chain of causes joined with `": "`. (This is why `StepError`
/// itself does not implement `std::error::Error`.)
///
/// The engine has the last word: the step's `nonRetryableErrors` (by type) and `nonRetryableExitCodes` apply on
/// top of the flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    error_type: String,
    message: String,
    exit_code: Option<i32>,
    retryable: bool,
}

impl StepError {
    /// A transient failure of type [`error_types::ERROR`]: the retry policy decides.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(error_types::ERROR, message, true)
    }

    /// A permanent failure of the given type: the step fails without another attempt.
    pub fn fatal(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(error_type, message, false)
    }

    /// A failure with every field chosen.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            exit_code: None,
            retryable,
        }
    }

    /// Sets the error type (keeps the retryable flag), e.g. `StepError::retryable("timeout").with_type("Upstream")`.
    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = error_type.into();
        self
    }

    /// Attaches a process exit code (matched by the retry policy's `nonRetryableExitCodes`).
    pub fn with_exit_code(mut self, exit_code: i32) -> Self {
        self.exit_code = Some(exit_code);
        self
    }

    /// The error type.
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The process exit code, if any.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// Whether the worker considers the failure retryable.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The wire form of the error (message truncated to [`MAX_ERROR_MESSAGE_BYTES`], keeping its end).
    pub fn to_task_error(&self) -> TaskError {
        TaskError {
            error_type: self.error_type.clone(),
            message: truncate_message(&self.message, MAX_ERROR_MESSAGE_BYTES),
            exit_code: self.exit_code,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        if let Some(code) = self.exit_code {
            write!(f, " (exit code {code})")?;
        }
        Ok(())
    }
}

impl<E> From<E> for StepError
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn from(error: E) -> Self {
        let error: Box<dyn std::error::Error + Send + Sync + 'static> = error.into();
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // anyhow and friends sometimes repeat the cause in the outer message.
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self::retryable(message)
    }
}

/// Errors of the SDK itself: configuration, and talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// A configuration value is out of bounds or unparsable.
    #[error("invalid configuration {name}: {reason}")]
    InvalidConfig {
        /// The setting (or environment variable).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `run` was called with no handler registered.
    #[error("no handler registered")]
    NoHandlers,
    /// Two handlers were registered under one name.
    #[error("handler {0:?} is registered twice")]
    DuplicateHandler(String),
    /// The token file could not be read.
    #[error("reading the token file {path}: {source}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not get an HTTP answer (connection refused, timeout, unreadable body, …).
    #[error("POST {path}: {source}")]
    Transport {
        /// The endpoint path.
        path: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The broker answered with a non-200 status.
    #[error("POST {path}: broker answered {status}{}: {message}", code.map(|c| format!(" ({c:?})")).unwrap_or_default())]
    Broker {
        /// The endpoint path.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// The error code of the body, when it was an [`sluice_wire::ErrorBody`].
        code: Option<ErrorCode>,
        /// The message of the body (or the raw body).
        message: String,
    },
    /// The signal handlers could not be installed.
    #[error("installing the signal handlers: {0}")]
    Signal(#[source] std::io::Error),
}

impl Error {
    /// The HTTP status of a [`Error::Broker`] answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Broker { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// `true` for a 409: the attempt is fenced (stale or unknown), so retrying is pointless.
    pub fn is_fenced(&self) -> bool {
        self.status() == Some(409)
    }
}

/// An error and its causes joined with `": "`, for logs (reqwest puts the useful part, such as "connection
/// refused", in the causes).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_failure() -> Result<(), std::io::Error> {
        Err(std::io::Error::other("disk on fire"))
    }

    fn question_mark_io() -> Result<(), StepError> {
        io_failure()?;
        Ok(())
    }

    fn question_mark_anyhow() -> Result<(), StepError> {
        let error =
            anyhow::Error::new(std::io::Error::other("root cause")).context("charging the card");
        Err(error)?;
        Ok(())
    }

    #[test]
    fn question_mark_makes_retryable_errors() {
        let error = question_mark_io().unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.error_type(), error_types::ERROR);
        assert_eq!(error.message(), "disk on fire");

        let error = question_mark_anyhow().unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.message(), "charging the card: root cause");

        let error: StepError = "plain text".into();
        assert_eq!(error.message(), "plain text");
    }

    #[test]
    fn constructors_and_wire_form() {
        let error = StepError::fatal("CardDeclined", "insufficient funds");
        assert!(!error.is_retryable());
        assert_eq!(error.to_string(), "CardDeclined: insufficient funds");
        let wire = StepError::retryable("x".repeat(5000))
            .with_type("Flaky")
            .with_exit_code(3)
            .to_task_error();
        assert_eq!(wire.error_type, "Flaky");
        assert_eq!(wire.exit_code, Some(3));
        assert!(wire.message.len() <= MAX_ERROR_MESSAGE_BYTES);
    }

    #[test]
    fn fenced_is_409() {
        let error = Error::Broker {
            path: sluice_wire::COMPLETE_PATH,
            status: 409,
            code: Some(ErrorCode::StaleAttempt),
            message: "attempt 1 is stale".into(),
        };
        assert!(error.is_fenced());
        assert!(error.to_string().contains("409 (StaleAttempt)"));
    }
}
