//! Retry policy: merging, backoff with deterministic full jitter, and the retry-or-give-up verdict.
//!
//! The engine must stay pure (same inputs, same decision), so the "random" jitter is derived from a hash of
//! the FlowRun uid, the step, the instance and the attempt: different runs and steps spread out like with real
//! randomness, yet re-running `decide` on the same status gives the same wake-up time.

use std::time::Duration;

use jiff::Timestamp;

use super::timers::{after, parse_duration};
use crate::api::RetryPolicy;

/// Default total number of attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default backoff before the second attempt.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Default growth factor of the backoff.
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;
/// Default cap of the backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A retry policy with every field decided: the step's policy merged over `spec.defaults.retry` over the
/// built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectivePolicy {
    /// Total number of attempts, at least 1.
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Growth factor, at least 1.
    pub backoff_factor: f64,
    /// Cap of the backoff.
    pub max_backoff: Duration,
    /// Budget of the retries, from the step's start.
    pub max_duration: Option<Duration>,
    /// Error types that are never retried.
    pub non_retryable_errors: Vec<String>,
    /// Exit codes that are never retried.
    pub non_retryable_exit_codes: Vec<i32>,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            backoff_factor: DEFAULT_BACKOFF_FACTOR,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_duration: None,
            non_retryable_errors: Vec::new(),
            non_retryable_exit_codes: Vec::new(),
        }
    }
}

/// Merges the step's policy over the defaults, field by field: a field the step sets wins, a field it leaves
/// out comes from `spec.defaults.retry`, then from the built-in defaults. Lists count as set when not empty.
/// Invalid values (validation reports them) fall back to the next level so the engine never panics.
pub fn effective_policy(
    defaults: Option<&RetryPolicy>,
    step: Option<&RetryPolicy>,
) -> EffectivePolicy {
    let mut policy = EffectivePolicy::default();
    for layer in [defaults, step].into_iter().flatten() {
        if let Some(n) = layer.max_attempts {
            policy.max_attempts = n.max(1);
        }
        if let Some(d) = layer
            .initial_backoff
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
        {
            policy.initial_backoff = d;
        }
        if let Some(f) = layer.backoff_factor.filter(|f| f.is_finite() && *f >= 1.0) {
            policy.backoff_factor = f;
        }
        if let Some(d) = layer
            .max_backoff
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
        {
            policy.max_backoff = d;
        }
        if let Some(d) = layer
            .max_duration
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .filter(|d| !d.is_zero())
        {
            policy.max_duration = Some(d);
        }
        if !layer.non_retryable_errors.is_empty() {
            policy.non_retryable_errors = layer.non_retryable_errors.clone();
        }
        if !layer.non_retryable_exit_codes.is_empty() {
            policy.non_retryable_exit_codes = layer.non_retryable_exit_codes.clone();
        }
    }
    policy
}

/// What an attempt's failure is, as far as the retry decision is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureKind<'a> {
    /// The error type (`card_declined`, `Timeout`, ...).
    pub error_type: &'a str,
    /// The process exit code, if any.
    pub exit_code: Option<i32>,
    /// The worker's (or the engine's) opinion; `false` always ends the step.
    pub retryable: bool,
}

/// Why a failed attempt is not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The worker reported the failure as non-retryable.
    NotRetryable,
    /// The error type is listed in `nonRetryableErrors`.
    NonRetryableError,
    /// The exit code is listed in `nonRetryableExitCodes`.
    NonRetryableExitCode,
    /// This was the last allowed attempt.
    MaxAttempts,
    /// The next attempt would begin after `maxDuration` from the step's start.
    MaxDuration,
}

impl GiveUp {
    /// A short human explanation, for messages and events.
    pub fn explain(self, policy: &EffectivePolicy) -> String {
        let max_attempts = policy.max_attempts;
        match self {
            GiveUp::NotRetryable => "the error is not retryable".to_owned(),
            GiveUp::NonRetryableError => {
                "the error type is listed in nonRetryableErrors".to_owned()
            }
            GiveUp::NonRetryableExitCode => {
                "the exit code is listed in nonRetryableExitCodes".to_owned()
            }
            GiveUp::MaxAttempts => format!("all {max_attempts} attempts failed"),
            GiveUp::MaxDuration => format!(
                "its retry budget (maxDuration {}s) leaves no time for another attempt",
                policy.max_duration.unwrap_or_default().as_secs()
            ),
        }
    }
}

/// What happens after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Run attempt `attempt + 1` at `wake_at` (after `backoff`).
    Retry {
        /// The backoff drawn for this attempt.
        backoff: Duration,
        /// When the next attempt becomes ready (rounded up to a whole second).
        wake_at: Timestamp,
    },
    /// The step (or instance) fails for good.
    GiveUp(GiveUp),
}

/// Identifies one attempt for the jitter hash.
#[derive(Clone, Copy, Debug)]
pub struct JitterKey<'a> {
    /// The FlowRun's uid.
    pub uid: &'a str,
    /// The step name.
    pub step: &'a str,
    /// The forEach instance, if any.
    pub instance: Option<u32>,
    /// The attempt that failed.
    pub attempt: u32,
}

/// Decides whether failed attempt `key.attempt` is retried, and when; `started` is when the step began,
/// which the retry budget (`maxDuration`) counts from.
pub fn verdict(
    policy: &EffectivePolicy,
    failure: &FailureKind<'_>,
    key: JitterKey<'_>,
    now: Timestamp,
    started: Option<Timestamp>,
) -> Verdict {
    if !failure.retryable {
        return Verdict::GiveUp(GiveUp::NotRetryable);
    }
    if policy
        .non_retryable_errors
        .iter()
        .any(|t| t == failure.error_type)
    {
        return Verdict::GiveUp(GiveUp::NonRetryableError);
    }
    if failure
        .exit_code
        .is_some_and(|c| policy.non_retryable_exit_codes.contains(&c))
    {
        return Verdict::GiveUp(GiveUp::NonRetryableExitCode);
    }
    if key.attempt >= policy.max_attempts {
        return Verdict::GiveUp(GiveUp::MaxAttempts);
    }
    let backoff = backoff(policy, key);
    let wake_at = after(now, backoff);
    if let (Some(budget), Some(started)) = (policy.max_duration, started)
        && wake_at > after(started, budget)
    {
        return Verdict::GiveUp(GiveUp::MaxDuration);
    }
    Verdict::Retry { backoff, wake_at }
}

/// The backoff after failed attempt `key.attempt` (1-based): a uniform draw ("full jitter") in
/// `[0, min(maxBackoff, initialBackoff × factor^(attempt-1))]`, with the draw derived from [`jitter_fraction`].
pub fn backoff(policy: &EffectivePolicy, key: JitterKey<'_>) -> Duration {
    let exponent = key.attempt.saturating_sub(1).min(1000) as i32;
    let ceiling = policy.initial_backoff.as_secs_f64() * policy.backoff_factor.powi(exponent);
    let cap = policy.max_backoff.as_secs_f64();
    let ceiling = if ceiling.is_finite() {
        ceiling.min(cap)
    } else {
        cap
    };
    Duration::from_secs_f64((ceiling * jitter_fraction(key)).max(0.0))
}

/// A number in `[0, 1)` derived from the attempt's identity: FNV-1a over the fields, then the SplitMix64
/// finalizer to spread the bits. Stable across Rust versions (unlike `DefaultHasher`).
pub fn jitter_fraction(key: JitterKey<'_>) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(key.uid.as_bytes());
    eat(key.step.as_bytes());
    eat(&key.instance.map_or(u64::MAX, u64::from).to_le_bytes());
    eat(&key.attempt.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(attempt: u32) -> JitterKey<'static> {
        JitterKey {
            uid: "uid-1",
            step: "charge",
            instance: None,
            attempt,
        }
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn merges_step_over_defaults_field_by_field() {
        let defaults = RetryPolicy {
            max_attempts: Some(5),
            initial_backoff: Some("2s".into()),
            non_retryable_errors: vec!["a".into()],
            ..Default::default()
        };
        let step = RetryPolicy {
            max_attempts: Some(7),
            max_backoff: Some("10s".into()),
            ..Default::default()
        };
        let p = effective_policy(Some(&defaults), Some(&step));
        assert_eq!(p.max_attempts, 7);
        assert_eq!(p.initial_backoff, Duration::from_secs(2));
        assert_eq!(p.max_backoff, Duration::from_secs(10));
        assert_eq!(p.backoff_factor, DEFAULT_BACKOFF_FACTOR);
        assert_eq!(p.non_retryable_errors, vec!["a".to_owned()]);
        assert_eq!(effective_policy(None, None), EffectivePolicy::default());
    }

    #[test]
    fn invalid_values_fall_back() {
        let step = RetryPolicy {
            max_attempts: Some(0),
            initial_backoff: Some("nonsense".into()),
            backoff_factor: Some(0.5),
            ..Default::default()
        };
        let p = effective_policy(None, Some(&step));
        assert_eq!(p.max_attempts, 1);
        assert_eq!(p.initial_backoff, DEFAULT_INITIAL_BACKOFF);
        assert_eq!(p.backoff_factor, DEFAULT_BACKOFF_FACTOR);
    }

    #[test]
    fn backoff_is_full_jitter_capped_and_deterministic() {
        let p = EffectivePolicy {
            initial_backoff: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_backoff: Duration::from_secs(10),
            ..Default::default()
        };
        for attempt in 1..40 {
            let b = backoff(&p, key(attempt));
            let ceiling = (2f64.powi(attempt as i32 - 1)).min(10.0);
            assert!(b.as_secs_f64() <= ceiling, "attempt {attempt}: {b:?}");
            assert_eq!(b, backoff(&p, key(attempt)), "deterministic");
        }
        // Different steps draw differently.
        let other = JitterKey {
            step: "ship",
            ..key(3)
        };
        assert_ne!(backoff(&p, key(3)), backoff(&p, other));
    }

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let n = 2000;
        let mut sum = 0.0;
        let mut low = 0;
        for i in 0..n {
            let uid = format!("uid-{i}");
            let f = jitter_fraction(JitterKey {
                uid: &uid,
                step: "s",
                instance: Some(i),
                attempt: 1,
            });
            assert!((0.0..1.0).contains(&f));
            sum += f;
            if f < 0.1 {
                low += 1;
            }
        }
        let mean = sum / f64::from(n);
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        assert!((140..260).contains(&low), "{low} of {n} below 0.1");
    }

    #[test]
    fn verdicts() {
        let p = EffectivePolicy {
            max_attempts: 3,
            non_retryable_errors: vec!["card_declined".into()],
            non_retryable_exit_codes: vec![42],
            ..Default::default()
        };
        let f = |t: &'static str, code, retryable| FailureKind {
            error_type: t,
            exit_code: code,
            retryable,
        };
        assert!(matches!(
            verdict(&p, &f("x", None, true), key(1), now(), None),
            Verdict::Retry { .. }
        ));
        assert_eq!(
            verdict(&p, &f("x", None, false), key(1), now(), None),
            Verdict::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            verdict(&p, &f("card_declined", None, true), key(1), now(), None),
            Verdict::GiveUp(GiveUp::NonRetryableError)
        );
        assert_eq!(
            verdict(&p, &f("NonZeroExit", Some(42), true), key(1), now(), None),
            Verdict::GiveUp(GiveUp::NonRetryableExitCode)
        );
        assert!(matches!(
            verdict(&p, &f("NonZeroExit", Some(1), true), key(2), now(), None),
            Verdict::Retry { .. }
        ));
        assert_eq!(
            verdict(&p, &f("x", None, true), key(3), now(), None),
            Verdict::GiveUp(GiveUp::MaxAttempts)
        );
        if let Verdict::Retry { backoff, wake_at } =
            verdict(&p, &f("x", None, true), key(2), now(), None)
        {
            assert!(wake_at >= now().saturating_add(backoff).unwrap());
            assert!(backoff <= Duration::from_secs(2));
        }
    }
}
