//! Worker configuration, from the environment or built in code.

use std::path::PathBuf;
use std::time::Duration;

use sluice_wire::{MAX_WAIT_SECONDS, env};

use crate::error::Error;

/// Default shutdown grace period (Kubernetes' default termination grace period is 30 s).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// How a worker connects to the broker and runs its tasks.
///
/// Built by [`Config::from_env`] (what a worker pod uses) or [`Config::new`] and the `with_*` setters.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the broker (`SLUICE_BROKER_URL`), without a trailing path.
    pub broker_url: String,
    /// The WorkerPool served (`SLUICE_POOL`).
    pub pool: String,
    /// Namespace of the pool (`POD_NAMESPACE`); the broker takes it from the token when it authenticates.
    pub namespace: Option<String>,
    /// This worker's name (`SLUICE_WORKER_NAME`, else `POD_NAME`, else the host name).
    pub worker_name: String,
    /// File with the bearer token, re-read for every request (`SLUICE_TOKEN_PATH`); `None`: no auth header.
    pub token_path: Option<PathBuf>,
    /// Tasks run at once (`SLUICE_CONCURRENCY`, ≥ 1, default 1).
    pub concurrency: usize,
    /// After a shutdown request: how long in-flight handlers may take before they are failed as retryable
    /// (`SLUICE_SHUTDOWN_GRACE_SECONDS`, default 25 s).
    pub shutdown_grace: Duration,
    /// After the grace period: how long the final failure reports may take before the worker gives up.
    pub report_grace: Duration,
    /// After a cancel (heartbeat answer or deadline): how long the handler may take to return on its own before
    /// it is dropped.
    pub cancel_grace: Duration,
    /// Long-poll duration of a claim, in seconds (≤ [`MAX_WAIT_SECONDS`]).
    pub wait_seconds: u32,
    /// Timeout of heartbeats and reports (a claim gets `wait_seconds` on top).
    pub request_timeout: Duration,
    /// First delay after a broker error; doubles up to [`Config::backoff_max`].
    pub backoff_initial: Duration,
    /// Largest delay between retries after broker errors.
    pub backoff_max: Duration,
}

impl Config {
    /// A configuration with defaults for everything but the broker, pool and worker name.
    pub fn new(
        broker_url: impl Into<String>,
        pool: impl Into<String>,
        worker_name: impl Into<String>,
    ) -> Self {
        Self {
            broker_url: broker_url.into(),
            pool: pool.into(),
            namespace: None,
            worker_name: worker_name.into(),
            token_path: None,
            concurrency: 1,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            report_grace: Duration::from_secs(4),
            cancel_grace: Duration::from_secs(5),
            wait_seconds: MAX_WAIT_SECONDS,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }

    /// Reads the configuration from the process environment (see [`sluice_wire::env`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
    }

    /// Reads the configuration through `lookup` (the environment in [`Config::from_env`]; a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let broker_url = lookup(env::BROKER_URL).ok_or(Error::MissingEnv(env::BROKER_URL))?;
        let pool = lookup(env::POOL).ok_or(Error::MissingEnv(env::POOL))?;
        let worker_name = lookup(env::WORKER_NAME).unwrap_or_else(|| worker_name_from(&lookup));
        let mut config = Self::new(broker_url, pool, worker_name);
        config.token_path = lookup(env::TOKEN_PATH).map(PathBuf::from);
        config.namespace = lookup(env::POD_NAMESPACE);
        if let Some(value) = lookup(env::CONCURRENCY) {
            config.concurrency = parse(env::CONCURRENCY, &value)?;
        }
        if let Some(value) = lookup(env::SHUTDOWN_GRACE_SECONDS) {
            config.shutdown_grace =
                Duration::from_secs(parse(env::SHUTDOWN_GRACE_SECONDS, &value)?);
        }
        config.validate()?;
        Ok(config)
    }

    /// The default worker name: `POD_NAME`, else the host name, else `sluice-worker-<pid>`.
    pub fn default_worker_name() -> String {
        worker_name_from(&|name: &str| std::env::var(name).ok().filter(|value| !value.is_empty()))
    }

    /// Sets the token file.
    pub fn with_token_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_path = Some(path.into());
        self
    }

    /// Sets how many tasks run at once.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the shutdown grace period.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Checks the bounds of every setting.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |name, reason: &str| {
            Err(Error::InvalidConfig {
                name,
                reason: reason.to_owned(),
            })
        };
        if !(self.broker_url.starts_with("http://") || self.broker_url.starts_with("https://")) {
            return invalid(env::BROKER_URL, "must be an http:// or https:// URL");
        }
        if self.pool.is_empty() {
            return invalid(env::POOL, "must not be empty");
        }
        if self.worker_name.is_empty() {
            return invalid(env::WORKER_NAME, "must not be empty");
        }
        if self.concurrency == 0 {
            return invalid(env::CONCURRENCY, "must be at least 1");
        }
        if u32::try_from(self.concurrency).is_err() {
            return invalid(env::CONCURRENCY, "is too large");
        }
        if self.wait_seconds > MAX_WAIT_SECONDS {
            return invalid("wait_seconds", "must be at most 30");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid("backoff", "needs 0 < backoff_initial <= backoff_max");
        }
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|error: T::Err| Error::InvalidConfig {
            name,
            reason: format!("{value:?}: {error}"),
        })
}

/// `POD_NAME`, else the host name (`HOSTNAME`, else the kernel's), else `sluice-worker-<pid>`.
fn worker_name_from(lookup: &impl Fn(&str) -> Option<String>) -> String {
    lookup(env::POD_NAME)
        .or_else(|| lookup("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| format!("sluice-worker-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn reads_every_variable() {
        let config = Config::from_lookup(lookup(&[
            (env::BROKER_URL, "http://broker:8081"),
            (env::POOL, "payments"),
            (env::TOKEN_PATH, "/var/run/secrets/sluice/token"),
            (env::WORKER_NAME, "w-1"),
            (env::POD_NAME, "pod-1"),
            (env::CONCURRENCY, "4"),
            (env::SHUTDOWN_GRACE_SECONDS, "7"),
        ]))
        .unwrap();
        assert_eq!(config.broker_url, "http://broker:8081");
        assert_eq!(config.pool, "payments");
        assert_eq!(config.worker_name, "w-1");
        assert_eq!(
            config.token_path.as_deref(),
            Some(std::path::Path::new("/var/run/secrets/sluice/token"))
        );
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.shutdown_grace, Duration::from_secs(7));
    }

    #[test]
    fn worker_name_falls_back_to_pod_name_then_host() {
        let config = Config::from_lookup(lookup(&[
            (env::BROKER_URL, "http://b"),
            (env::POOL, "p"),
            (env::POD_NAME, "pod-1"),
        ]))
        .unwrap();
        assert_eq!(config.worker_name, "pod-1");
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(config.token_path.is_none());
        let config = Config::from_lookup(lookup(&[
            (env::BROKER_URL, "http://b"),
            (env::POOL, "p"),
            ("HOSTNAME", "host-1"),
        ]))
        .unwrap();
        assert_eq!(config.worker_name, "host-1");
    }

    #[test]
    fn missing_and_invalid_values_are_errors() {
        let error = Config::from_lookup(lookup(&[(env::POOL, "p")])).unwrap_err();
        assert!(matches!(error, Error::MissingEnv(env::BROKER_URL)));
        let error = Config::from_lookup(lookup(&[
            (env::BROKER_URL, "http://b"),
            (env::POOL, "p"),
            (env::CONCURRENCY, "zero"),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains(env::CONCURRENCY), "{error}");
        let error = Config::from_lookup(lookup(&[
            (env::BROKER_URL, "http://b"),
            (env::POOL, "p"),
            (env::CONCURRENCY, "0"),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("at least 1"), "{error}");
        let error =
            Config::from_lookup(lookup(&[(env::BROKER_URL, "broker:80"), (env::POOL, "p")]))
                .unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
    }
}
