//! Scenario tests of `decide` and `apply_event` together: one rule per test.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::api::{FlowPhase, FlowRunStatus, Signal, StepPhase};

struct H {
    meta: FlowMeta,
    spec: FlowRunSpec,
    status: FlowRunStatus,
    now: Timestamp,
    limits: Limits,
    admission: Admission,
}

fn t0() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

impl H {
    fn new(spec: Value) -> Self {
        Self {
            meta: FlowMeta {
                uid: "uid-1".into(),
                name: "order-1".into(),
                namespace: "default".into(),
                generation: Some(1),
            },
            spec: serde_json::from_value(spec).unwrap(),
            status: FlowRunStatus::default(),
            now: t0(),
            limits: Limits::default(),
            admission: Admission::NotAsked,
        }
    }

    fn input(&self) -> FlowRunInput<'_> {
        FlowRunInput {
            meta: &self.meta,
            spec: &self.spec,
            status: &self.status,
            limits: self.limits,
            admission: &self.admission,
        }
    }

    fn decide(&mut self) -> Decision {
        let d = decide(&self.input(), self.now);
        assert!(
            d.wake_at.is_none_or(|w| w > self.now),
            "wake_at must be in the future"
        );
        assert_eq!(
            d.status.signals, self.status.signals,
            "signals are the users'"
        );
        self.status = d.status.clone();
        d
    }

    fn event(&mut self, e: Event) -> Result<EventOutcome, Refusal> {
        let out = apply_event(&self.input(), &e, self.now);
        if let Ok(EventOutcome::Applied { status, .. }) = &out {
            self.status = (**status).clone();
        }
        out
    }

    fn ok(&mut self, e: Event) {
        let r = self.event(e.clone());
        assert!(
            matches!(r, Ok(EventOutcome::Applied { .. })),
            "{e:?} → {r:?}"
        );
    }

    fn claim(&mut self, step: &str, attempt: u32) {
        self.ok(Event::Claimed {
            attempt: AttemptRef::step(step, attempt),
            worker: "w1".into(),
            at: self.now,
        });
    }

    fn complete(&mut self, step: &str, attempt: u32, output: Value) {
        self.ok(Event::Completed {
            attempt: AttemptRef::step(step, attempt),
            output,
        });
    }

    fn fail(&mut self, step: &str, attempt: u32, t: &str, retryable: bool) {
        self.ok(failed(AttemptRef::step(step, attempt), t, retryable));
    }

    fn advance(&mut self, secs: i64) {
        self.now = self
            .now
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap();
    }

    fn phase(&self, step: &str) -> StepPhase {
        self.status.steps[step].phase
    }

    fn flow_phase(&self) -> FlowPhase {
        self.status.phase.unwrap()
    }

    fn condition(&self, t: &str) -> (String, String, String) {
        let c = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no condition {t}"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }
}

fn failed(attempt: AttemptRef, t: &str, retryable: bool) -> Event {
    Event::Failed {
        attempt,
        error: TaskFailure {
            error_type: t.into(),
            message: format!("{t} happened"),
            exit_code: None,
        },
        retryable,
    }
}

fn names(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.attempt.to_string()).collect()
}

fn linear() -> Value {
    json!({
        "pool": "orders",
        "input": {"orderId": "1234", "amount": 99.5},
        "steps": [
            {"name": "charge", "handler": "charge_payment",
             "input": {"orderId": "${{ input.orderId }}", "amount": "${{ input.amount }}"}},
            {"name": "ship", "handler": "ship_order", "dependsOn": ["charge"],
             "input": {"charge": "${{ steps.charge.output.id }}"}},
        ],
        "output": {"tracking": "${{ steps.ship.output.tracking }}", "charged": "${{ steps.charge.output.id }}"},
    })
}

#[test]
fn a_linear_flow_runs_to_success() {
    let mut h = H::new(linear());
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Running);
    assert_eq!(h.status.progress.as_deref(), Some("0/2"));
    assert_eq!(h.status.observed_generation, Some(1));
    assert_eq!(names(&d.tasks), ["charge attempt 1"]);
    let t = &d.tasks[0];
    assert!(t.fresh);
    assert_eq!(t.pool, "orders");
    assert_eq!(t.handler, "charge_payment");
    assert_eq!(t.input, json!({"orderId": "1234", "amount": 99.5}));
    assert_eq!(t.heartbeat_timeout, DEFAULT_HEARTBEAT_TIMEOUT);
    assert_eq!(h.phase("charge"), StepPhase::Ready);
    assert_eq!(
        h.status.steps["charge"].attempts, 1,
        "attempt reserved with the task"
    );
    assert_eq!(h.phase("ship"), StepPhase::Pending);
    assert_eq!(h.condition("Succeeded").0, "Unknown");
    assert_eq!(h.condition("Ready").0, "False");

    // Deciding again lists the same task as not fresh (the broker rebuilds its queue from any decision).
    let again = h.decide();
    assert_eq!(names(&again.tasks), ["charge attempt 1"]);
    assert!(!again.tasks[0].fresh);

    h.claim("charge", 1);
    assert_eq!(h.phase("charge"), StepPhase::Running);
    assert_eq!(h.status.steps["charge"].worker.as_deref(), Some("w1"));
    assert!(h.decide().tasks.is_empty());

    h.advance(3);
    h.complete("charge", 1, json!({"id": "ch_1"}));
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["ship attempt 1"]);
    assert_eq!(d.tasks[0].input, json!({"charge": "ch_1"}));
    assert_eq!(h.status.progress.as_deref(), Some("1/2"));

    h.claim("ship", 1);
    h.complete("ship", 1, json!({"tracking": "TRK"}));
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert_eq!(
        h.status.output,
        Some(json!({"tracking": "TRK", "charged": "ch_1"}))
    );
    assert_eq!(h.status.progress.as_deref(), Some("2/2"));
    assert!(h.status.finished_at.is_some() && h.status.started_at.is_some());
    assert_eq!(h.condition("Succeeded").0, "True");
    assert_eq!(h.condition("Ready").0, "True");
    assert_eq!(h.condition("Invalid").0, "False");
    assert!(d.notes.iter().any(|n| n.reason == "FlowSucceeded"));
    assert!(d.tasks.is_empty() && d.wake_at.is_none());
    assert!(
        h.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
}

#[test]
fn running_attempts_are_listed_for_the_broker() {
    let mut h = H::new(
        json!({"pool": "p", "defaults": {"timeout": "1m"}, "steps": [
            {"name": "a", "handler": "h"},
            {"name": "b", "handler": "h2", "pool": "other", "forEach": [1, 2, 3]},
        ]}),
    );
    h.decide();
    assert!(running_attempts(&h.input()).is_empty());
    h.claim("a", 1);
    h.ok(Event::Claimed {
        attempt: AttemptRef::instance("b", 2, 1),
        worker: "w2".into(),
        at: h.now,
    });
    let running = running_attempts(&h.input());
    let got: Vec<_> = running
        .iter()
        .map(|r| {
            (
                r.task.attempt.to_string(),
                r.task.pool.clone(),
                r.worker.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a attempt 1".to_owned(), "p".to_owned(), "w1".to_owned()),
            (
                "b[2] attempt 1".to_owned(),
                "other".to_owned(),
                "w2".to_owned()
            )
        ]
    );
    assert_eq!(
        running[0].deadline,
        Some(h.now + jiff::SignedDuration::from_secs(60))
    );
}

#[test]
fn decide_is_pure_and_reaches_a_fixpoint() {
    let mut h = H::new(linear());
    let a = decide(&h.input(), h.now);
    let b = decide(&h.input(), h.now);
    assert_eq!(a, b);
    h.decide();
    let before = h.status.clone();
    h.decide();
    assert_eq!(h.status, before, "deciding twice changes nothing more");
}

#[test]
fn status_bytes_is_reported_in_every_decision_and_event() {
    let mut h = H::new(linear());
    h.decide();
    let real = serde_json::to_vec(&h.status).unwrap().len() as u64;
    assert_eq!(h.status.status_bytes, Some(real));
    h.claim("charge", 1);
    let real = serde_json::to_vec(&h.status).unwrap().len() as u64;
    assert_eq!(h.status.status_bytes, Some(real));
}

#[test]
fn when_false_skips_and_dependents_still_run() {
    let mut h = H::new(json!({
        "pool": "p", "input": {"go": false},
        "steps": [
            {"name": "check", "handler": "h"},
            {"name": "maybe", "handler": "h", "dependsOn": ["check"], "when": "${{ steps.check.output.ok && input.go }}"},
            {"name": "after", "handler": "h", "dependsOn": ["maybe"], "input": "${{ steps.maybe.phase }}"},
        ],
    }));
    h.decide();
    h.complete("check", 1, json!({"ok": true}));
    let d = h.decide();
    assert_eq!(h.phase("maybe"), StepPhase::Skipped);
    assert_eq!(
        h.status.steps["maybe"].message.as_deref(),
        Some("skipped: `when` was false")
    );
    assert_eq!(names(&d.tasks), ["after attempt 1"]);
    assert_eq!(d.tasks[0].input, json!("Skipped"));
    h.complete("after", 1, json!(null));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

#[test]
fn a_failed_step_fails_the_run_and_cancels_the_rest() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [
            {"name": "a", "handler": "h", "retry": {"maxAttempts": 1}},
            {"name": "b", "handler": "h"},
            {"name": "c", "handler": "h", "dependsOn": ["a"]},
        ],
    }));
    h.decide();
    h.claim("b", 1);
    h.fail("a", 1, "boom", true);
    assert_eq!(h.phase("a"), StepPhase::Failed);
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(h.phase("b"), StepPhase::Cancelled);
    assert_eq!(h.phase("c"), StepPhase::Cancelled);
    assert_eq!(d.cancel_workers, [AttemptRef::step("b", 1)]);
    assert!(d.tasks.is_empty());
    let (status, reason, message) = h.condition("Succeeded");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "StepFailed"));
    assert!(
        message.contains("step \"a\" failed: boom: boom happened"),
        "{message}"
    );
    // The cancelled attempt's late completion is refused.
    let r = h.event(Event::Completed {
        attempt: AttemptRef::step("b", 1),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");
    // A terminal run stays as it is.
    let before = h.status.clone();
    h.advance(100);
    let d = h.decide();
    assert_eq!(h.status, before);
    assert!(d.notes.is_empty() && d.tasks.is_empty());
}

#[test]
fn continue_on_failure_lets_dependents_run() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [
            {"name": "a", "handler": "h", "continueOnFailure": true},
            {"name": "b", "handler": "h", "dependsOn": ["a"], "input": "${{ steps.a.phase }}"},
        ],
    }));
    h.decide();
    h.fail("a", 1, "bad", false);
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["b attempt 1"]);
    assert_eq!(d.tasks[0].input, json!("Failed"));
    h.complete("b", 1, json!(1));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

#[test]
fn retries_with_backoff_then_fail_with_the_last_error() {
    let mut h = H::new(json!({
        "pool": "p",
        "defaults": {"retry": {"maxAttempts": 3, "initialBackoff": "10s", "maxBackoff": "1m"}},
        "steps": [{"name": "a", "handler": "h"}],
    }));
    h.decide();
    h.claim("a", 1);
    let out = h
        .event(failed(AttemptRef::step("a", 1), "flaky", true))
        .unwrap();
    let EventOutcome::Applied { notes, .. } = out else {
        panic!()
    };
    assert_eq!(notes[0].reason, "RetryScheduled");
    let st = &h.status.steps["a"];
    assert_eq!(st.phase, StepPhase::Retrying);
    assert_eq!(st.error.as_ref().unwrap().attempt, 1);
    let wake = st.wake_at.clone().unwrap().0;
    assert!(wake >= h.now && wake <= h.now + jiff::SignedDuration::from_secs(10));

    // Before the backoff ends nothing is dispatched, and the decision asks to wake at the backoff's end.
    if wake > h.now {
        let d = h.decide();
        assert!(d.tasks.is_empty());
        assert_eq!(d.wake_at, Some(wake));
    }
    h.now = wake;
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["a attempt 2"]);
    h.claim("a", 2);
    h.fail("a", 2, "flaky", true);
    h.now = h.status.steps["a"].wake_at.clone().unwrap().0;
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["a attempt 3"]);
    h.claim("a", 3);
    let out = h
        .event(failed(AttemptRef::step("a", 3), "last", true))
        .unwrap();
    let EventOutcome::Applied { notes, .. } = out else {
        panic!()
    };
    assert_eq!(notes[0].reason, "StepFailed");
    assert!(
        notes[0].message.contains("all 3 attempts failed"),
        "{}",
        notes[0].message
    );
    let st = &h.status.steps["a"];
    assert_eq!((st.phase, st.attempts), (StepPhase::Failed, 3));
    assert_eq!(st.error.as_ref().unwrap().type_, "last");
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
}

#[test]
fn non_retryable_failures_fail_at_once() {
    for (event, why) in [
        (
            failed(AttemptRef::step("a", 1), "card_declined", true),
            "nonRetryableErrors",
        ),
        (
            failed(AttemptRef::step("a", 1), "other", false),
            "not retryable",
        ),
        (
            Event::Failed {
                attempt: AttemptRef::step("a", 1),
                error: TaskFailure {
                    error_type: "NonZeroExit".into(),
                    message: "exit 42".into(),
                    exit_code: Some(42),
                },
                retryable: true,
            },
            "nonRetryableExitCodes",
        ),
    ] {
        let mut h = H::new(json!({"pool": "p", "steps": [{"name": "a", "handler": "h",
            "retry": {"maxAttempts": 5, "nonRetryableErrors": ["card_declined"], "nonRetryableExitCodes": [42]}}]}));
        h.decide();
        let Ok(EventOutcome::Applied { notes, .. }) = h.event(event) else {
            panic!()
        };
        assert_eq!(h.phase("a"), StepPhase::Failed, "{why}");
        assert!(notes[0].message.contains(why), "{}", notes[0].message);
    }
}

#[test]
fn fencing_of_stale_duplicate_and_unknown_events() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "a", "handler": "h", "retry": {"maxAttempts": 3, "initialBackoff": "1s"}},
        {"name": "s", "sleep": "1h"},
    ]}));
    h.decide();
    h.claim("a", 1);
    h.ok(Event::HeartbeatLost {
        attempt: AttemptRef::step("a", 1),
    });
    assert_eq!(
        h.status.steps["a"].error.as_ref().unwrap().type_,
        "HeartbeatLost"
    );
    // The lost worker's repeated failure report is a duplicate of what is recorded... (same type)
    assert_eq!(
        h.event(Event::HeartbeatLost {
            attempt: AttemptRef::step("a", 1)
        }),
        Ok(EventOutcome::Duplicate)
    );
    // ...and its late completion is stale: attempt 1 already failed.
    let r = h.event(Event::Completed {
        attempt: AttemptRef::step("a", 1),
        output: json!(1),
    });
    assert!(
        matches!(
            r,
            Err(Refusal::Stale {
                current: 1,
                phase: StepPhase::Retrying,
                ..
            })
        ),
        "{r:?}"
    );
    h.advance(5);
    h.decide();
    assert_eq!(h.status.steps["a"].attempts, 2);
    let r = h.event(Event::Claimed {
        attempt: AttemptRef::step("a", 1),
        worker: "w".into(),
        at: h.now,
    });
    assert!(matches!(r, Err(Refusal::Stale { current: 2, .. })), "{r:?}");
    let r = h.event(Event::Completed {
        attempt: AttemptRef::step("a", 3),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::NotDispatched { .. })), "{r:?}");

    // A completion before the claim was persisted (phase Ready) is accepted.
    h.complete("a", 2, json!({"v": 1}));
    let snapshot = h.status.clone();
    assert_eq!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("a", 2),
            output: json!({"v": "different"})
        }),
        Ok(EventOutcome::Duplicate)
    );
    let r = h.event(failed(AttemptRef::step("a", 2), "x", true));
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");
    assert_eq!(h.status, snapshot, "a Succeeded step never changes");

    assert!(matches!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("nope", 1),
            output: json!(1)
        }),
        Err(Refusal::UnknownStep { .. })
    ));
    assert!(matches!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("s", 1),
            output: json!(1)
        }),
        Err(Refusal::WrongKind { .. })
    ));
    assert!(matches!(
        h.event(Event::Completed {
            attempt: AttemptRef::instance("a", 0, 1),
            output: json!(1)
        }),
        Err(Refusal::UnknownInstance { .. })
    ));
}

#[test]
fn attempt_timeout_is_a_retryable_failure_and_stops_the_worker() {
    let mut h = H::new(
        json!({"pool": "p", "defaults": {"timeout": "30s", "heartbeatTimeout": "10s"},
        "steps": [{"name": "a", "handler": "h"}]}),
    );
    let d = h.decide();
    assert_eq!(d.tasks[0].timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(
        d.tasks[0].heartbeat_timeout,
        std::time::Duration::from_secs(10)
    );
    let expected = d.tasks[0].deadline_if_claimed_at(h.now).unwrap();
    h.claim("a", 1);
    let deadline = h.status.steps["a"].deadline.clone().unwrap().0;
    assert_eq!(deadline, expected);
    assert_eq!(deadline, h.now + jiff::SignedDuration::from_secs(30));
    assert_eq!(h.decide().wake_at, Some(deadline));
    h.advance(29);
    assert_eq!(h.decide().status.steps["a"].phase, StepPhase::Running);
    h.advance(1);
    let d = h.decide();
    assert_eq!(d.cancel_workers, [AttemptRef::step("a", 1)]);
    let st = &h.status.steps["a"];
    assert!(
        matches!(st.phase, StepPhase::Retrying | StepPhase::Ready),
        "{:?}",
        st.phase
    );
    assert_eq!(st.error.as_ref().unwrap().type_, "Timeout");
    // The broker may report the same timeout: it is a duplicate.
    assert_eq!(
        h.event(Event::TimedOut {
            attempt: AttemptRef::step("a", 1)
        }),
        Ok(EventOutcome::Duplicate)
    );
}

#[test]
fn sleep_and_until() {
    let mut h = H::new(json!({"input": {"at": "2026-03-01T12:00:10.5Z"}, "steps": [
        {"name": "nap", "sleep": "30s"},
        {"name": "past", "until": "2020-01-01T00:00:00Z"},
        {"name": "later", "until": "${{ input.at }}"},
    ]}));
    let d = h.decide();
    assert_eq!(
        h.phase("past"),
        StepPhase::Succeeded,
        "a time in the past ends at once"
    );
    let nap = &h.status.steps["nap"];
    assert_eq!(nap.phase, StepPhase::Sleeping);
    assert_eq!(
        nap.wake_at.clone().unwrap().0,
        h.now + jiff::SignedDuration::from_secs(30)
    );
    let later = h.status.steps["later"].wake_at.clone().unwrap().0;
    assert_eq!(
        later,
        "2026-03-01T12:00:11Z".parse::<Timestamp>().unwrap(),
        "rounded up"
    );
    assert_eq!(d.wake_at, Some(later));
    h.advance(29);
    h.decide();
    assert_eq!(h.phase("nap"), StepPhase::Sleeping);
    assert_eq!(h.phase("later"), StepPhase::Succeeded);
    h.advance(1);
    h.decide();
    assert_eq!(h.phase("nap"), StepPhase::Succeeded);
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

#[test]
fn sleeps_never_end_early_with_sub_second_clocks() {
    let mut h = H::new(json!({"steps": [{"name": "nap", "sleep": "30s"}]}));
    h.now = "2026-03-01T12:00:00.7Z".parse().unwrap();
    h.decide();
    let wake = h.status.steps["nap"].wake_at.clone().unwrap().0;
    assert!(wake >= h.now + jiff::SignedDuration::from_secs(30));
    assert_eq!(wake.subsec_nanosecond(), 0);
}

#[test]
fn signals_before_and_after_the_wait() {
    let spec = json!({"steps": [
        {"name": "approval", "waitForSignal": {"name": "manager-approval", "timeout": "72h"}},
        {"name": "after", "sleep": "0s", "dependsOn": ["approval"], "when": "${{ steps.approval.output.approved }}"},
    ]});
    // Sent after the wait started.
    let mut h = H::new(spec.clone());
    let d = h.decide();
    let st = &h.status.steps["approval"];
    assert_eq!(st.phase, StepPhase::Waiting);
    assert_eq!(st.signal.as_deref(), Some("manager-approval"));
    let deadline = st.deadline.clone().unwrap().0;
    assert_eq!(d.wake_at, Some(deadline));
    h.advance(60);
    h.status.signals.insert(
        "manager-approval".into(),
        Signal {
            payload: Some(json!({"approved": true})),
        },
    );
    let d = h.decide();
    assert!(d.notes.iter().any(|n| n.reason == "SignalReceived"));
    assert_eq!(
        h.status.steps["approval"].output,
        Some(json!({"approved": true}))
    );
    assert_eq!(h.phase("after"), StepPhase::Succeeded);
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert!(
        h.status.signals.contains_key("manager-approval"),
        "signals are never removed"
    );

    // Sent before the wait started: consumed at once.
    let mut h = H::new(spec);
    h.status.signals.insert(
        "manager-approval".into(),
        Signal {
            payload: Some(json!({"approved": false})),
        },
    );
    h.decide();
    assert_eq!(h.phase("approval"), StepPhase::Succeeded);
    assert_eq!(h.phase("after"), StepPhase::Skipped);
}

#[test]
fn signal_wait_times_out() {
    let mut h =
        H::new(json!({"steps": [{"name": "w", "waitForSignal": {"name": "go", "timeout": "1m"}}]}));
    h.decide();
    h.advance(60);
    h.decide();
    let st = &h.status.steps["w"];
    assert_eq!(st.phase, StepPhase::Failed);
    assert_eq!(st.error.as_ref().unwrap().type_, "Timeout");
    assert!(
        st.error
            .as_ref()
            .unwrap()
            .message
            .contains("no signal \"go\" arrived within 1m")
    );
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
}

#[test]
fn foreach_respects_max_parallel_and_keeps_index_order() {
    let mut h = H::new(
        json!({"pool": "p", "input": {"items": ["a", "b", "c", "d", "e"]}, "steps": [
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}", "maxParallel": 2,
             "input": {"sku": "${{ item }}", "i": "${{ index }}"}},
            {"name": "join", "handler": "h", "dependsOn": ["fan"], "input": "${{ steps.fan.output }}"},
        ]}),
    );
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["fan[0] attempt 1", "fan[1] attempt 1"]);
    assert_eq!(d.tasks[1].input, json!({"sku": "b", "i": 1}));
    assert_eq!(h.phase("fan"), StepPhase::Running);
    let inst = |h: &H| h.status.steps["fan"].instances.clone().unwrap();
    assert_eq!(inst(&h).total, 5);
    // Finish out of order.
    h.ok(Event::Completed {
        attempt: AttemptRef::instance("fan", 1, 1),
        output: json!("B"),
    });
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["fan[0] attempt 1", "fan[2] attempt 1"]);
    assert!(!d.tasks[0].fresh && d.tasks[1].fresh);
    for i in [0, 2, 3, 4] {
        h.decide();
        h.ok(Event::Completed {
            attempt: AttemptRef::instance("fan", i, 1),
            output: json!(["A", "B", "C", "D", "E"][i as usize]),
        });
        assert!(inst(&h).active.len() <= 2);
    }
    // A repeated completion of a Succeeded instance is a duplicate.
    assert_eq!(
        h.event(Event::Completed {
            attempt: AttemptRef::instance("fan", 1, 1),
            output: json!("B")
        }),
        Ok(EventOutcome::Duplicate)
    );
    let d = h.decide();
    let st = &h.status.steps["fan"];
    assert_eq!(st.phase, StepPhase::Succeeded);
    assert_eq!(st.output, Some(json!(["A", "B", "C", "D", "E"])));
    let i = st.instances.clone().unwrap();
    assert_eq!((i.total, i.succeeded, i.failed), (5, 5, 0));
    assert!(
        i.outputs.is_empty() && i.active.is_empty(),
        "outputs are stored once"
    );
    assert_eq!(d.tasks[0].input, json!(["A", "B", "C", "D", "E"]));
}

#[test]
fn foreach_instance_retries_and_failure_fails_the_step() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "fan", "handler": "h", "forEach": [1, 2, 3], "retry": {"maxAttempts": 2, "initialBackoff": "1s"}},
    ]}));
    h.decide();
    h.ok(failed(AttemptRef::instance("fan", 0, 1), "flaky", true));
    h.advance(2);
    let d = h.decide();
    assert!(
        names(&d.tasks).contains(&"fan[0] attempt 2".to_owned()),
        "{:?}",
        names(&d.tasks)
    );
    h.ok(Event::Claimed {
        attempt: AttemptRef::instance("fan", 1, 1),
        worker: "w".into(),
        at: h.now,
    });
    h.ok(failed(AttemptRef::instance("fan", 0, 2), "flaky", true));
    let d = h.decide();
    let st = &h.status.steps["fan"];
    assert_eq!(st.phase, StepPhase::Failed);
    assert!(
        st.error
            .as_ref()
            .unwrap()
            .message
            .starts_with("instance 0: ")
    );
    assert_eq!(st.error.as_ref().unwrap().attempt, 2);
    assert!(
        d.cancel_workers
            .contains(&AttemptRef::instance("fan", 1, 1))
    );
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let r = h.event(Event::Completed {
        attempt: AttemptRef::instance("fan", 1, 1),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");
}

#[test]
fn empty_foreach_succeeds_with_an_empty_array() {
    let mut h = H::new(json!({"pool": "p", "input": {"items": []}, "steps": [
        {"name": "fan", "handler": "h", "forEach": "${{ input.items }}"},
    ]}));
    h.decide();
    assert_eq!(h.status.steps["fan"].output, Some(json!([])));
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

#[test]
fn large_foreach_status_stays_small() {
    let items: Vec<u32> = (0..500).collect();
    let mut h = H::new(json!({"pool": "p", "input": {"items": items}, "steps": [
        {"name": "fan", "handler": "h", "forEach": "${{ input.items }}", "maxParallel": 20},
    ]}));
    let mut rounds = 0;
    while h.flow_phase_or_pending() != FlowPhase::Succeeded {
        let d = h.decide();
        assert!(d.tasks.len() <= 20);
        for t in d.tasks {
            h.ok(Event::Completed {
                attempt: t.attempt,
                output: json!({"n": 1, "pad": "x".repeat(100)}),
            });
        }
        rounds += 1;
        assert!(rounds < 100);
        let bytes = serde_json::to_vec(&h.status).unwrap().len();
        assert!(bytes < 1024 * 1024, "{bytes}");
    }
    assert_eq!(
        h.status.steps["fan"]
            .output
            .as_ref()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        500
    );
}

impl H {
    fn flow_phase_or_pending(&self) -> FlowPhase {
        self.status.phase.unwrap_or_default()
    }
}

#[test]
fn child_flows() {
    let spec = json!({"pool": "p", "input": {"t": "TRK"}, "steps": [
        {"name": "invoice", "flow": {"spec": {"input": {"tracking": "${{ input.t }}"},
            "steps": [{"name": "bill", "handler": "bill", "input": "${{ input.tracking }}"}]}}},
    ]});
    let mut h = H::new(spec.clone());
    let d = h.decide();
    assert_eq!(
        h.phase("invoice"),
        StepPhase::Running,
        "{:?}",
        h.status.steps["invoice"]
    );
    assert_eq!(d.create_children.len(), 1);
    let c = &d.create_children[0];
    assert_eq!(c.name, "order-1-invoice");
    assert_eq!(c.spec.input, Some(json!({"tracking": "TRK"})));
    assert_eq!(c.spec.pool.as_deref(), Some("p"));
    assert_eq!(
        h.status.steps["invoice"].child.as_deref(),
        Some("order-1-invoice")
    );
    assert!(d.notes.iter().any(|n| n.reason == "ChildStarted"));
    // Listed again while the step runs (creation is idempotent).
    assert_eq!(h.decide().create_children.len(), 1);
    let r = h.event(Event::ChildFinished {
        step: "invoice".into(),
        child: "someone-else".into(),
        outcome: ChildOutcome::Cancelled,
    });
    assert!(matches!(r, Err(Refusal::UnknownChild { .. })));
    h.ok(Event::ChildFinished {
        step: "invoice".into(),
        child: "order-1-invoice".into(),
        outcome: ChildOutcome::Succeeded(Some(json!({"invoice": 7}))),
    });
    assert_eq!(
        h.event(Event::ChildFinished {
            step: "invoice".into(),
            child: "order-1-invoice".into(),
            outcome: ChildOutcome::Succeeded(Some(json!({"invoice": 7}))),
        }),
        Ok(EventOutcome::Duplicate)
    );
    h.decide();
    assert_eq!(
        h.status.steps["invoice"].output,
        Some(json!({"invoice": 7}))
    );
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);

    // A failed child fails the step with ChildFailed.
    let mut h = H::new(spec.clone());
    h.decide();
    h.ok(Event::ChildFinished {
        step: "invoice".into(),
        child: "order-1-invoice".into(),
        outcome: ChildOutcome::Failed("step bill failed".into()),
    });
    assert_eq!(
        h.status.steps["invoice"].error.as_ref().unwrap().type_,
        "ChildFailed"
    );

    // Cancelling the parent cancels the child, in every later decision too.
    let mut h = H::new(spec);
    h.decide();
    h.spec.cancel = true;
    let d = h.decide();
    assert_eq!(d.cancel_children, ["order-1-invoice"]);
    assert_eq!(h.decide().cancel_children, ["order-1-invoice"]);
}

#[test]
fn suspend_holds_dispatch_and_resume_releases_it() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "a", "handler": "h"},
        {"name": "b", "handler": "h", "dependsOn": ["a"]},
        {"name": "nap", "sleep": "10s"},
    ]}));
    h.decide();
    h.spec.suspend = true;
    let d = h.decide();
    assert!(d.tasks.is_empty(), "queued attempts are withheld");
    assert_eq!(h.condition("Suspended").0, "True");
    assert!(d.notes.iter().any(|n| n.reason == "Suspended"));
    h.complete("a", 1, json!(1));
    h.advance(10);
    let d = h.decide();
    assert_eq!(h.phase("b"), StepPhase::Pending, "no new step starts");
    assert_eq!(h.phase("nap"), StepPhase::Succeeded, "timers keep going");
    assert!(d.tasks.is_empty() && d.wake_at.is_none());
    h.spec.suspend = false;
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["b attempt 1"]);
    assert_eq!(h.condition("Suspended").0, "False");
    assert!(d.notes.iter().any(|n| n.reason == "Resumed"));
}

#[test]
fn cancel_stops_everything() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "a", "handler": "h"},
        {"name": "b", "handler": "h", "forEach": [1, 2]},
        {"name": "w", "waitForSignal": {"name": "x"}},
        {"name": "c", "handler": "h", "dependsOn": ["a"]},
    ]}));
    h.decide();
    h.claim("a", 1);
    h.spec.cancel = true;
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Cancelled);
    for s in ["a", "b", "w", "c"] {
        assert_eq!(h.phase(s), StepPhase::Cancelled, "{s}");
    }
    let mut cw = d.cancel_workers.clone();
    cw.sort();
    assert_eq!(
        cw,
        [
            AttemptRef::step("a", 1),
            AttemptRef::instance("b", 0, 1),
            AttemptRef::instance("b", 1, 1)
        ]
    );
    assert_eq!(h.condition("Succeeded").1, "Cancelled");
    assert!(d.notes.iter().any(|n| n.reason == "FlowCancelled"));
    let r = h.event(Event::Completed {
        attempt: AttemptRef::step("a", 1),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::Stale { .. })));
}

#[test]
fn outputs_over_the_limit_fail_without_retry() {
    let spec = json!({"pool": "p", "defaults": {"maxOutputBytes": 100, "retry": {"maxAttempts": 5}},
        "steps": [{"name": "a", "handler": "h"}, {"name": "w", "waitForSignal": {"name": "s"}}]});
    let mut h = H::new(spec.clone());
    h.decide();
    h.complete("a", 1, json!("x".repeat(200)));
    let st = h.status.steps["a"].clone();
    assert_eq!(st.phase, StepPhase::Failed, "not retried");
    assert_eq!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("a", 1),
            output: json!("x".repeat(200))
        }),
        Ok(EventOutcome::Duplicate),
        "the worker repeating its refused completion gets the same answer"
    );
    let e = st.error.as_ref().unwrap();
    assert_eq!(e.type_, "OutputTooLarge");
    assert!(
        e.message.contains("202 bytes") && e.message.contains("limit of 100 bytes"),
        "{}",
        e.message
    );
    let mut h = H::new(spec);
    h.status.signals.insert(
        "s".into(),
        Signal {
            payload: Some(json!("y".repeat(200))),
        },
    );
    h.decide();
    assert_eq!(
        h.status.steps["w"].error.as_ref().unwrap().type_,
        "OutputTooLarge"
    );
}

/// A value nested `depth` levels deep (alternating arrays and objects).
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for i in 0..depth {
        v = if i % 2 == 0 {
            json!([v])
        } else {
            json!({"k": v})
        };
    }
    v
}

#[test]
fn outputs_nested_too_deep_fail_without_retry() {
    use crate::api::MAX_JSON_DEPTH;
    let spec = json!({"pool": "p", "defaults": {"retry": {"maxAttempts": 5}}, "steps": [
        {"name": "a", "handler": "h"},
        {"name": "w", "waitForSignal": {"name": "s"}},
        {"name": "kid", "flow": {"spec": {"steps": [{"name": "x", "sleep": "1s"}]}}},
    ]});
    let deep = nested(MAX_JSON_DEPTH + 1);

    // A worker's output: the attempt fails for good, and the repeated report is a duplicate.
    let mut h = H::new(spec.clone());
    h.decide();
    h.complete("a", 1, nested(MAX_JSON_DEPTH));
    assert_eq!(h.phase("a"), StepPhase::Succeeded, "32 levels are fine");
    let mut h = H::new(spec.clone());
    h.decide();
    h.complete("a", 1, deep.clone());
    let st = h.status.steps["a"].clone();
    assert_eq!(st.phase, StepPhase::Failed, "not retried");
    assert_eq!(st.output, None);
    let e = st.error.unwrap();
    assert_eq!(e.type_, "OutputTooDeep");
    assert!(e.message.contains("deeper than 32 levels"), "{}", e.message);
    assert_eq!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("a", 1),
            output: deep.clone(),
        }),
        Ok(EventOutcome::Duplicate)
    );
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert!(
        d.notes
            .iter()
            .any(|n| n.message.contains("\"a\"") && n.message.contains("OutputTooDeep")),
        "the run's notes name the step: {:?}",
        d.notes
    );

    // A signal payload (written before the admission policy, or with it off).
    let mut h = H::new(spec.clone());
    h.status.signals.insert(
        "s".into(),
        Signal {
            payload: Some(deep.clone()),
        },
    );
    h.decide();
    let e = h.status.steps["w"].error.clone().unwrap();
    assert_eq!(e.type_, "OutputTooDeep");
    assert!(e.message.starts_with("signal payload: "), "{}", e.message);
    assert_eq!(h.status.steps["w"].output, None);

    // A child flow's output.
    let mut h = H::new(spec.clone());
    h.decide();
    h.ok(Event::ChildFinished {
        step: "kid".into(),
        child: "order-1-kid".into(),
        outcome: ChildOutcome::Succeeded(Some(deep.clone())),
    });
    let st = &h.status.steps["kid"];
    assert_eq!(st.phase, StepPhase::Failed);
    assert_eq!(st.error.as_ref().unwrap().type_, "OutputTooDeep");

    // A child's input built from a deep value: the child is never created.
    let mut h = H::new(json!({"input": nested(MAX_JSON_DEPTH), "steps": [
        {"name": "kid", "flow": {"spec": {"input": {"wrapped": "${{ input }}"},
            "steps": [{"name": "x", "sleep": "1s"}]}}},
    ]}));
    let d = h.decide();
    assert!(d.create_children.is_empty());
    let e = h.status.steps["kid"].error.clone().unwrap();
    assert_eq!(e.type_, "InvalidInput");
    assert!(
        e.message
            .contains("child input nests JSON objects and arrays deeper than 32 levels"),
        "{}",
        e.message
    );

    // The flow's output, built from outputs that fit, nested one level too deep.
    let mut h = H::new(
        json!({"pool": "p", "steps": [{"name": "a", "handler": "h"}],
        "output": {"wrapped": "${{ steps.a.output }}"}}),
    );
    h.decide();
    h.complete("a", 1, nested(MAX_JSON_DEPTH));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(h.status.output, None);
    let (_, reason, message) = h.condition("Succeeded");
    assert_eq!(reason, "OutputFailed");
    assert!(message.contains("deeper than 32 levels"), "{message}");
}

#[test]
fn runtime_expression_errors_fail_the_step_with_invalid_input() {
    let mut h = H::new(json!({"pool": "p", "input": {}, "steps": [
        {"name": "a", "handler": "h", "input": "${{ input.missing.deeper }}", "retry": {"maxAttempts": 3}},
    ]}));
    let d = h.decide();
    assert!(d.tasks.is_empty());
    let e = h.status.steps["a"].error.clone().unwrap();
    assert_eq!(e.type_, "InvalidInput");
    assert!(e.message.contains("input.missing.deeper"), "{}", e.message);
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
}

#[test]
fn invalid_flows_fail_with_a_condition_naming_every_problem() {
    let mut h = H::new(json!({"steps": [
        {"name": "a", "handler": "h", "dependsOn": ["b"]},
        {"name": "b", "sleep": "soon", "dependsOn": ["a"]},
    ]}));
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (status, reason, message) = h.condition("Invalid");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Invalid"));
    assert!(message.contains("spec.steps[0].pool"), "{message}");
    assert!(message.contains("spec.steps[1].sleep"), "{message}");
    assert!(message.contains("dependency cycle"), "{message}");
    assert!(d.notes.iter().any(|n| n.reason == "FlowInvalid"));
    assert!(d.tasks.is_empty());
}

#[test]
fn patches_from_decisions_never_touch_signals() {
    let mut h = H::new(linear());
    h.status.signals.insert("x".into(), Signal::default());
    let old = h.status.clone();
    let d = h.decide();
    let patch = status_patch(&old, &d.status);
    assert!(patch["status"].get("signals").is_none());
    assert!(patch["status"]["steps"]["charge"].is_object());
}

#[test]
fn retry_request_reruns_failed_and_cancelled_steps_and_keeps_succeeded_ones() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [
            {"name": "a", "handler": "h"},
            {"name": "b", "handler": "h", "dependsOn": ["a"], "retry": {"maxAttempts": 2, "initialBackoff": "1s"}},
            {"name": "c", "handler": "h", "dependsOn": ["a"]},
            {"name": "d", "handler": "h", "dependsOn": ["b"]},
            {"name": "e", "waitForSignal": {"name": "go"}},
        ],
    }));
    h.decide();
    h.claim("a", 1);
    h.complete("a", 1, json!({"a": 1}));
    h.decide();
    h.claim("b", 1);
    h.claim("c", 1);
    h.fail("b", 1, "flaky", true);
    h.advance(2);
    h.decide();
    h.fail("b", 2, "flaky", true);
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(h.phase("c"), StepPhase::Cancelled);
    assert_eq!(h.phase("d"), StepPhase::Cancelled);
    assert_eq!(h.phase("e"), StepPhase::Cancelled);
    assert!(d.cancel_workers.contains(&AttemptRef::step("c", 1)));
    let a_before = h.status.steps["a"].clone();

    h.advance(60);
    h.spec.retry_request = Some("r1".into());
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Running);
    assert_eq!(h.status.finished_at, None);
    // Succeeded steps are untouched.
    assert_eq!(h.status.steps["a"], a_before);
    // Failed and cancelled handler steps get their next attempt at once; the others wait or start.
    assert_eq!(h.phase("b"), StepPhase::Ready);
    assert_eq!(h.status.steps["b"].attempts, 3);
    assert_eq!(h.status.steps["b"].retry_base, 2);
    assert_eq!(h.phase("c"), StepPhase::Ready);
    assert_eq!(h.status.steps["c"].attempts, 2);
    assert_eq!(h.phase("d"), StepPhase::Pending);
    assert_eq!(h.status.steps["d"].attempts, 0);
    assert_eq!(h.phase("e"), StepPhase::Waiting);
    assert_eq!(names(&d.tasks), ["b attempt 3", "c attempt 2"]);
    assert!(d.tasks.iter().all(|t| t.fresh));
    let retry = h.status.retry.clone().unwrap();
    assert_eq!(retry.request, "r1");
    assert_eq!(retry.outcome, crate::api::RetryOutcome::Retried);
    assert_eq!(retry.count, 1);
    assert!(retry.message.contains("b, c, d, e"), "{}", retry.message);
    assert!(d.notes.iter().any(|n| n.reason == "RetryRequested"));
    // The failure condition is cleared.
    let (status, reason, _) = h.condition("Succeeded");
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "Running"));
    let (status, reason, _) = h.condition("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Running"));
    assert_eq!(h.status.progress.as_deref(), Some("1/5"));
    // Deciding again changes nothing: the token was acted on.
    let again = h.decide();
    assert!(again.notes.is_empty(), "{:?}", again.notes);
    assert!(again.tasks.iter().all(|t| !t.fresh));

    // Late reports of the old attempts are refused.
    let r = h.event(Event::Completed {
        attempt: AttemptRef::step("c", 1),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");
    let r = h.event(failed(AttemptRef::step("b", 1), "other", true));
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");

    // The retry policy counts afresh: b gets two attempts again.
    h.claim("b", 3);
    h.fail("b", 3, "flaky", true);
    assert_eq!(h.phase("b"), StepPhase::Retrying);
    h.advance(2);
    h.decide();
    assert_eq!(h.status.steps["b"].attempts, 4);
    h.complete("b", 4, json!({"b": 4}));
    h.complete("c", 2, json!({"c": 2}));
    h.decide();
    h.complete("d", 1, json!({"d": 1}));
    h.status.signals.insert("go".into(), Signal::default());
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert_eq!(h.status.steps["a"], a_before);
    let (status, _, _) = h.condition("Succeeded");
    assert_eq!(status, "True");
}

#[test]
fn retry_request_on_a_run_that_has_not_failed_is_recorded_and_ignored() {
    let mut h = H::new(linear());
    h.spec.retry_request = Some("early".into());
    let d = h.decide();
    let retry = h.status.retry.clone().unwrap();
    assert_eq!(retry.outcome, crate::api::RetryOutcome::Ignored);
    assert_eq!(retry.request, "early");
    assert_eq!(retry.count, 0);
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "RetryIgnored" && n.kind == NoteKind::Warning)
    );
    assert_eq!(h.phase("charge"), StepPhase::Ready);
    assert!(h.decide().notes.is_empty());

    // Finish the run; a retry of a Succeeded run changes nothing but the record.
    h.claim("charge", 1);
    h.complete("charge", 1, json!({"id": "c"}));
    h.decide();
    h.complete("ship", 1, json!({"tracking": "t"}));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    let before = h.status.clone();
    h.spec.retry_request = Some("late".into());
    let d = h.decide();
    assert!(d.tasks.is_empty());
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert_eq!(h.status.steps, before.steps);
    assert_eq!(h.status.conditions, before.conditions);
    assert_eq!(
        h.status.retry.as_ref().map(|r| r.outcome),
        Some(crate::api::RetryOutcome::Ignored)
    );
    assert!(d.notes.iter().any(|n| n.reason == "RetryIgnored"));
}

#[test]
fn retry_of_a_foreach_keeps_succeeded_instances() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "fan", "handler": "h", "forEach": [1, 2, 3, 4], "maxParallel": 2,
         "retry": {"maxAttempts": 1}},
    ]}));
    h.decide();
    h.ok(Event::Completed {
        attempt: AttemptRef::instance("fan", 0, 1),
        output: json!("zero"),
    });
    h.decide();
    // Instance 1 runs, instance 2 is queued; instance 1 fails for good, which cancels 2.
    h.ok(failed(AttemptRef::instance("fan", 1, 1), "boom", true));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let inst = h.status.steps["fan"].instances.clone().unwrap();
    assert_eq!(inst.active["2"].phase, StepPhase::Cancelled);
    assert!(!inst.active.contains_key("3"));

    h.spec.retry_request = Some("again".into());
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Running);
    let st = &h.status.steps["fan"];
    assert_eq!(st.phase, StepPhase::Running);
    let inst = st.instances.as_ref().unwrap();
    assert_eq!(inst.outputs["0"], json!("zero"));
    assert_eq!(inst.failed, 0);
    assert_eq!(inst.active["1"].attempts, 2);
    assert_eq!(inst.active["1"].retry_base, 1);
    assert_eq!(inst.active["2"].attempts, 2);
    assert_eq!(
        names(&d.tasks),
        ["fan[1] attempt 2", "fan[2] attempt 2"],
        "maxParallel still holds"
    );
    let r = h.event(Event::Completed {
        attempt: AttemptRef::instance("fan", 1, 1),
        output: json!(1),
    });
    assert!(matches!(r, Err(Refusal::Stale { .. })), "{r:?}");
    for i in [1, 2] {
        h.ok(Event::Completed {
            attempt: AttemptRef::instance("fan", i, 2),
            output: json!(i),
        });
    }
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["fan[3] attempt 1"]);
    h.ok(Event::Completed {
        attempt: AttemptRef::instance("fan", 3, 1),
        output: json!(3),
    });
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert_eq!(h.status.steps["fan"].output, Some(json!(["zero", 1, 2, 3])));
}

#[test]
fn retry_of_a_failed_child_flow_runs_a_new_child() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "invoice", "flow": {"spec": {"steps": [{"name": "bill", "handler": "bill"}]}}},
    ]}));
    h.decide();
    h.ok(Event::ChildFinished {
        step: "invoice".into(),
        child: "order-1-invoice".into(),
        outcome: ChildOutcome::Failed("step bill failed".into()),
    });
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    h.spec.retry_request = Some("1".into());
    let d = h.decide();
    assert_eq!(h.phase("invoice"), StepPhase::Running);
    assert_eq!(d.create_children.len(), 1);
    assert_eq!(d.create_children[0].name, "order-1-invoice-retry1");
    assert!(d.cancel_children.is_empty());
    // The old child's outcome no longer concerns the step.
    let r = h.event(Event::ChildFinished {
        step: "invoice".into(),
        child: "order-1-invoice".into(),
        outcome: ChildOutcome::Failed("again".into()),
    });
    assert!(matches!(r, Err(Refusal::UnknownChild { .. })), "{r:?}");
    h.ok(Event::ChildFinished {
        step: "invoice".into(),
        child: "order-1-invoice-retry1".into(),
        outcome: ChildOutcome::Succeeded(None),
    });
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

/// The status of `h` as the API server would store it, in bytes.
fn real_size(h: &H) -> u64 {
    serde_json::to_vec(&h.status).unwrap().len() as u64
}

fn error_of(h: &H, step: &str) -> crate::api::StepError {
    h.status.steps[step].error.clone().unwrap_or_default()
}

/// Nothing is queued, waiting on a worker or sleeping: the run holds no work.
fn nothing_left_running(h: &H, d: &Decision) {
    assert!(d.tasks.is_empty(), "tasks: {:?}", names(&d.tasks));
    for (name, st) in &h.status.steps {
        assert!(st.phase.is_terminal(), "{name} is {:?}", st.phase);
        if let Some(inst) = &st.instances {
            for (k, one) in &inst.active {
                assert!(one.phase.is_terminal(), "{name}[{k}] is {:?}", one.phase);
            }
        }
    }
}

#[test]
fn a_foreach_whose_outputs_would_pass_the_budget_fails_with_status_too_large_naming_outputs() {
    let mut h = H::new(
        json!({"pool": "p", "input": {"items": (0..20).collect::<Vec<u32>>()}, "steps": [
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}", "maxParallel": 4},
            {"name": "after", "handler": "h", "dependsOn": ["fan"]},
        ]}),
    );
    h.limits.max_status_bytes = 20_000;
    let big = json!({"blob": "x".repeat(3_000)});
    let mut refused = None;
    'rounds: for _ in 0..20 {
        let d = h.decide();
        assert!(h.status.status_bytes.unwrap() <= 20_000);
        for t in d.tasks {
            h.ok(Event::Completed {
                attempt: t.attempt.clone(),
                output: big.clone(),
            });
            let inst = h.status.steps["fan"].instances.clone().unwrap();
            if inst.failed > 0 {
                refused = Some(t.attempt);
                break 'rounds;
            }
        }
    }
    let refused = refused.expect("an output was refused");
    let inst = h.status.steps["fan"].instances.clone().unwrap();
    assert!(
        (5..=6).contains(&inst.succeeded),
        "outputs of 3 KB fill 20 KB after about six: {}",
        inst.succeeded
    );
    // The worker repeating its refused completion is acknowledged again, and nothing changes.
    let before = h.status.clone();
    assert_eq!(
        h.event(Event::Completed {
            attempt: refused.clone(),
            output: big.clone(),
        }),
        Ok(EventOutcome::Duplicate)
    );
    assert_eq!(h.status, before);

    let d = h.decide();
    assert_eq!(h.phase("fan"), StepPhase::Failed);
    let e = error_of(&h, "fan");
    assert_eq!(e.type_, "StatusTooLarge");
    let index = refused.instance.unwrap();
    for part in [
        format!("instance {index}: the output (3011 bytes) does not fit in the status"),
        "over the budget of 20000 bytes".into(),
        "--max-status-bytes".into(),
        "holds outputs ".into(),
    ] {
        assert!(e.message.contains(&part), "{part:?} in {}", e.message);
    }
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (_, reason, message) = h.condition("Ready");
    assert_eq!(reason, "StepFailed");
    assert!(message.contains("StatusTooLarge"), "{message}");
    assert_eq!(h.phase("after"), StepPhase::Cancelled);
    nothing_left_running(&h, &d);
    assert!(
        !d.cancel_workers.is_empty() && d.cancel_workers.iter().all(|a| a.step == "fan"),
        "the other instances in flight are stopped: {:?}",
        d.cancel_workers
    );
    // The failure's own messages (the instance's error, the step's, the conditions') are all it adds.
    assert!(h.status.status_bytes.unwrap() <= 20_000 + 4_096);
    assert_eq!(h.status.status_bytes, Some(real_size(&h)));
}

#[test]
fn an_error_that_would_pass_the_budget_fails_the_step_for_good_naming_errors_and_the_cause() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "a", "handler": "h", "retry": {"maxAttempts": 5}},
    ]}));
    h.decide();
    h.limits.max_status_bytes = h.status.status_bytes.unwrap() + 100;
    h.ok(Event::Failed {
        attempt: AttemptRef::step("a", 1),
        error: TaskFailure {
            error_type: "Boom".into(),
            message: format!("{}the cause", "x".repeat(1_000)),
            exit_code: Some(3),
        },
        retryable: true,
    });
    assert_eq!(h.phase("a"), StepPhase::Failed, "not retried");
    let e = error_of(&h, "a");
    assert_eq!((e.type_.as_str(), e.exit_code), ("StatusTooLarge", Some(3)));
    assert!(
        e.message.starts_with("the error (")
            && e.message.contains("(the attempt failed with Boom: ")
            && e.message.ends_with("the cause)"),
        "{}",
        e.message
    );
    // The worker repeating the report is acknowledged again.
    assert_eq!(
        h.event(failed(AttemptRef::step("a", 1), "Boom", true)),
        Ok(EventOutcome::Duplicate)
    );
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
}

#[test]
fn new_foreach_instances_that_would_pass_the_budget_fail_the_step_that_grew_it() {
    // The signals take most of the budget; starting 300 instances at once would take the rest.
    let mut h = H::new(
        json!({"pool": "p", "input": {"items": (0..300).collect::<Vec<u32>>()}, "steps": [
            {"name": "gate", "waitForSignal": {"name": "go"}},
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}", "maxParallel": 300, "dependsOn": ["gate"]},
        ]}),
    );
    h.limits.max_status_bytes = 20_000;
    h.status.signals.insert(
        "bulk".into(),
        Signal {
            payload: Some(json!("s".repeat(14_000))),
        },
    );
    h.decide();
    assert_eq!(h.phase("gate"), StepPhase::Waiting);
    let before = h.status.steps["fan"].clone();
    h.status
        .signals
        .insert("go".into(), Signal { payload: None });
    let d = h.decide();
    assert_eq!(h.phase("gate"), StepPhase::Succeeded);
    let st = &h.status.steps["fan"];
    assert_eq!(st.phase, StepPhase::Failed);
    assert_eq!(st.instances, before.instances, "no instance was started");
    let e = error_of(&h, "fan");
    assert_eq!(e.type_, "StatusTooLarge");
    for part in [
        "step \"fan\" grew it by ",
        "bytes of forEach instances",
        "over the budget of 20000 bytes",
        "signals 140",
    ] {
        assert!(e.message.contains(part), "{part:?} in {}", e.message);
    }
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    nothing_left_running(&h, &d);
    assert!(h.status.status_bytes.unwrap() <= 20_000);
    assert_eq!(h.status.status_bytes, Some(real_size(&h)));
    let again = decide(&h.input(), h.now);
    assert_eq!(again.status, h.status, "decide is a fixpoint");
}

#[test]
fn signals_alone_past_the_budget_fail_the_step_still_going() {
    let mut h = H::new(json!({"pool": "p", "steps": [
        {"name": "done", "sleep": "0s"},
        {"name": "wait", "waitForSignal": {"name": "go"}, "dependsOn": ["done"]},
    ]}));
    h.limits.max_status_bytes = 20_000;
    h.decide();
    assert_eq!(h.phase("wait"), StepPhase::Waiting);
    for i in 0..30 {
        h.status.signals.insert(
            format!("noise-{i}"),
            Signal {
                payload: Some(json!("n".repeat(1_000))),
            },
        );
    }
    let d = h.decide();
    assert_eq!(h.phase("wait"), StepPhase::Failed);
    let e = error_of(&h, "wait");
    assert_eq!(e.type_, "StatusTooLarge");
    assert!(
        e.message.contains("step \"wait\" holds the most of it")
            && e.message.contains("signals 30"),
        "{}",
        e.message
    );
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    nothing_left_running(&h, &d);
}

#[test]
fn a_foreach_over_more_items_than_the_cap_fails_naming_the_count_and_the_cap() {
    let spec = |n: u32| {
        json!({"pool": "p", "input": {"items": (0..n).collect::<Vec<u32>>()}, "steps": [
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}"},
        ]})
    };
    let mut h = H::new(spec(10_001));
    let d = h.decide();
    assert_eq!(h.phase("fan"), StepPhase::Failed);
    let e = error_of(&h, "fan");
    assert_eq!(e.type_, "TooManyItems");
    assert!(
        e.message.contains("10001 items") && e.message.contains("limit of 10000"),
        "{}",
        e.message
    );
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    nothing_left_running(&h, &d);

    let mut h = H::new(spec(10_000));
    h.decide();
    assert_eq!(
        h.phase("fan"),
        StepPhase::Running,
        "the cap itself is allowed"
    );
    assert_eq!(
        h.status.steps["fan"].instances.as_ref().unwrap().total,
        10_000
    );
}

#[test]
fn a_foreach_without_max_parallel_runs_64_instances_at_once() {
    let mut h = H::new(
        json!({"pool": "p", "input": {"items": (0..100).collect::<Vec<u32>>()}, "steps": [
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}"},
        ]}),
    );
    let d = h.decide();
    assert_eq!(d.tasks.len(), 64);
    assert_eq!(d.tasks[63].attempt, AttemptRef::instance("fan", 63, 1));
    h.ok(Event::Completed {
        attempt: AttemptRef::instance("fan", 0, 1),
        output: json!(0),
    });
    let d = h.decide();
    assert_eq!(d.tasks.len(), 64, "one finished, one more started");
    assert_eq!(d.tasks[63].attempt, AttemptRef::instance("fan", 64, 1));
}

#[test]
fn the_estimate_of_events_is_the_real_size() {
    let mut h = H::new(
        json!({"pool": "p", "input": {"items": [1, 2, 3]}, "steps": [
            {"name": "fan", "handler": "h", "forEach": "${{ input.items }}", "retry": {"maxAttempts": 2}},
            {"name": "one", "handler": "h"},
        ]}),
    );
    h.decide();
    let events = [
        Event::Claimed {
            attempt: AttemptRef::instance("fan", 0, 1),
            worker: "worker-0".into(),
            at: h.now,
        },
        Event::Claimed {
            attempt: AttemptRef::instance("fan", 1, 1),
            worker: "worker-1".into(),
            at: h.now,
        },
        Event::Completed {
            attempt: AttemptRef::instance("fan", 0, 1),
            output: json!({"a": [1, 2, null], "b": null}),
        },
        failed(AttemptRef::instance("fan", 1, 1), "flaky", true),
        Event::Completed {
            attempt: AttemptRef::instance("fan", 2, 1),
            output: json!("two"),
        },
        Event::Claimed {
            attempt: AttemptRef::step("one", 1),
            worker: "worker-2".into(),
            at: h.now,
        },
        Event::Completed {
            attempt: AttemptRef::step("one", 1),
            output: json!({"x": "y"}),
        },
    ];
    for e in events {
        h.ok(e.clone());
        assert_eq!(h.status.status_bytes, Some(real_size(&h)), "after {e:?}");
    }
}

#[path = "tests_exit.rs"]
mod exit_steps;

#[path = "tests_concurrency.rs"]
mod concurrency_limits;

#[path = "tests_fan_out_children.rs"]
mod fan_out_children;
