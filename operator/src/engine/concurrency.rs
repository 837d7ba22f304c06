//! Concurrency limits across runs (`spec.concurrency`): the key a run is counted under, whether its status
//! holds a slot, and what the shell tells the engine about the slots before it decides.
//!
//! Counting slots needs every run of a namespace, which a pure decision about one run cannot see. So the
//! shell (the status writer, with the operator's cache of all runs) counts them and hands the verdict in as
//! [`Admission`]; the engine records it in `status.concurrency`, from which the shell counts again after a
//! restart. A run holds a slot from the decision that records `admittedAt` until it ends.

use std::time::Duration;

use serde_json::Value;

use super::expr::{self, Vars};
use crate::api::{Concurrency, FlowPhase, FlowRunSpec, FlowRunStatus};

/// Longest resolved key (the length of a Kubernetes object name).
pub const MAX_KEY: usize = 253;

/// How often a waiting run looks at the slots again on its own. A slot normally frees by a run ending, which
/// wakes the oldest waiters at once; this catches the rest (a holder deleted while it ran).
pub const RECHECK: Duration = Duration::from_secs(15);

/// What the shell found out about the slots of a run's key before the engine decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// Nobody counted: a run with a limit that holds no slot yet keeps waiting, unchanged.
    #[default]
    NotAsked,
    /// A slot is free for this run: it takes it in this decision.
    Granted,
    /// Every slot is taken, or older runs wait for the free ones first.
    Waiting {
        /// The runs holding the key's slots, by name.
        holders: Vec<String>,
        /// How many waiting runs come first.
        ahead: usize,
    },
}

/// The key `concurrency.key` resolves to with the run's `input`: the string itself, or the value of its one
/// expression (a string, or a number written as JSON).
pub fn resolve_key(concurrency: &Concurrency, input: Option<&Value>) -> Result<String, String> {
    let key = &concurrency.key;
    let resolved = if expr::has_placeholder(key) {
        let Some(e) = expr::single_expression(key) else {
            return Err(format!(
                "spec.concurrency.key {key:?} must be a fixed string or exactly one expression ${{{{ ... }}}}"
            ));
        };
        let vars = Vars::new(input.unwrap_or(&Value::Null), &serde_json::Map::new());
        match expr::eval(e, &vars) {
            Ok(Value::String(s)) => s,
            Ok(Value::Number(n)) => n.to_string(),
            Ok(other) => {
                return Err(format!(
                    "spec.concurrency.key `{e}` must yield a string or a number, not {other}"
                ));
            }
            Err(err) => return Err(format!("spec.concurrency.key: {err}")),
        }
    } else {
        key.clone()
    };
    if resolved.is_empty() {
        return Err(format!(
            "spec.concurrency.key `{key}` resolved to an empty key"
        ));
    }
    if resolved.len() > MAX_KEY {
        return Err(format!(
            "spec.concurrency.key resolved to {} characters; at most {MAX_KEY} are allowed",
            resolved.len()
        ));
    }
    Ok(resolved)
}

/// Whether a run with this status holds a slot of its key: admitted, and not finished.
pub fn holds_slot(status: &FlowRunStatus) -> bool {
    status
        .concurrency
        .as_ref()
        .is_some_and(|c| c.admitted_at.is_some())
        && !status.phase.is_some_and(FlowPhase::is_terminal)
}

/// Whether the shell must count the slots before deciding on this run: it has a limit, holds no slot, and
/// either has not finished or is asked to retry (a retried run takes a slot again).
pub fn needs_admission(spec: &FlowRunSpec, status: Option<&FlowRunStatus>) -> bool {
    if spec.concurrency.is_none() {
        return false;
    }
    let Some(status) = status else {
        return true;
    };
    let admitted = status
        .concurrency
        .as_ref()
        .is_some_and(|c| c.admitted_at.is_some());
    let finished = status.phase.is_some_and(FlowPhase::is_terminal);
    if !finished {
        return !admitted;
    }
    status.phase == Some(FlowPhase::Failed)
        && spec.retry_request.as_deref().is_some_and(|token| {
            status
                .retry
                .as_ref()
                .is_none_or(|r| r.request.as_str() != token)
        })
}

/// What a waiting run's conditions say.
pub fn waiting_message(key: &str, limit: u32, holders: &[String], ahead: usize) -> String {
    let mut message = format!(
        "waiting for a slot of concurrency key {key:?}: {} of {limit} held",
        holders.len()
    );
    if !holders.is_empty() {
        message.push_str(" by ");
        message.push_str(&holders.join(", "));
    }
    if ahead > 0 {
        message.push_str(&format!(
            "; {ahead} older run{} wait{} first",
            if ahead == 1 { "" } else { "s" },
            if ahead == 1 { "s" } else { "" }
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{ConcurrencyStatus, RetryStatus};

    fn limit(key: &str) -> Concurrency {
        Concurrency {
            key: key.into(),
            limit: 2,
        }
    }

    #[test]
    fn a_key_is_a_fixed_string_or_one_expression_over_the_input() {
        let input = json!({"tenant": "acme", "shard": 7});
        assert_eq!(
            resolve_key(&limit("reports"), Some(&input)).unwrap(),
            "reports"
        );
        assert_eq!(
            resolve_key(&limit("${{ input.tenant }}"), Some(&input)).unwrap(),
            "acme"
        );
        assert_eq!(
            resolve_key(&limit("${{ input.shard }}"), Some(&input)).unwrap(),
            "7"
        );
        let err = resolve_key(&limit("t-${{ input.tenant }}"), Some(&input)).unwrap_err();
        assert!(err.contains("exactly one expression"), "{err}");
        let err = resolve_key(&limit("${{ input.missing }}"), Some(&input)).unwrap_err();
        assert!(err.starts_with("spec.concurrency.key"), "{err}");
        let err = resolve_key(&limit("${{ input }}"), Some(&input)).unwrap_err();
        assert!(err.contains("string or a number"), "{err}");
        let long = json!({"tenant": "x".repeat(MAX_KEY + 1)});
        let err = resolve_key(&limit("${{ input.tenant }}"), Some(&long)).unwrap_err();
        assert!(err.contains("at most 253"), "{err}");
    }

    #[test]
    fn a_run_holds_a_slot_from_its_admission_until_it_ends() {
        let mut status = FlowRunStatus {
            phase: Some(FlowPhase::Pending),
            concurrency: Some(ConcurrencyStatus {
                key: "k".into(),
                admitted_at: None,
            }),
            ..FlowRunStatus::default()
        };
        assert!(!holds_slot(&status));
        status.concurrency.as_mut().unwrap().admitted_at = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        status.phase = Some(FlowPhase::Running);
        assert!(holds_slot(&status));
        status.phase = Some(FlowPhase::Failed);
        assert!(!holds_slot(&status));
    }

    #[test]
    fn only_runs_without_a_slot_that_may_start_are_counted_for() {
        let spec = FlowRunSpec {
            concurrency: Some(limit("k")),
            ..FlowRunSpec::default()
        };
        assert!(needs_admission(&spec, None));
        assert!(!needs_admission(&FlowRunSpec::default(), None));
        let admitted = FlowRunStatus {
            phase: Some(FlowPhase::Running),
            concurrency: Some(ConcurrencyStatus {
                key: "k".into(),
                admitted_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                )),
            }),
            ..FlowRunStatus::default()
        };
        assert!(!needs_admission(&spec, Some(&admitted)));
        let failed = FlowRunStatus {
            phase: Some(FlowPhase::Failed),
            ..admitted.clone()
        };
        assert!(!needs_admission(&spec, Some(&failed)), "a finished run");
        let retried = FlowRunSpec {
            retry_request: Some("t1".into()),
            ..spec.clone()
        };
        assert!(needs_admission(&retried, Some(&failed)), "a retry request");
        let acted_on = FlowRunStatus {
            retry: Some(RetryStatus {
                request: "t1".into(),
                ..RetryStatus::default()
            }),
            ..failed
        };
        assert!(!needs_admission(&retried, Some(&acted_on)));
    }

    #[test]
    fn the_waiting_message_names_the_holders_and_the_queue() {
        let m = waiting_message("acme", 2, &["a".into(), "b".into()], 1);
        assert_eq!(
            m,
            "waiting for a slot of concurrency key \"acme\": 2 of 2 held by a, b; 1 older run waits first"
        );
        let m = waiting_message("acme", 2, &[], 3);
        assert!(m.ends_with("0 of 2 held; 3 older runs wait first"), "{m}");
    }
}
