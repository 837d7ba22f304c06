//! Property tests of the flow engine: random DAGs driven by random event sequences.
//!
//! Every case builds a random flow (random dependencies, step kinds, retry policies, forEach fan-outs,
//! `when` conditions, continueOnFailure) and plays a random sequence of actions against it, as the
//! controller and broker would: claims, completions, failures (retryable or not), heartbeat loss, duplicate
//! and stale reports, time passing, signals arriving, children finishing, suspend and cancel. After every
//! step it checks the engine's invariants; at the end it drives the run to completion and checks it ends.
//!
//! Invariants checked:
//! 1. No step leaves Pending (other than to be Cancelled) before all its dependencies Succeeded, were
//!    Skipped, or Failed with continueOnFailure; every queued task belongs to such a step.
//! 2. A terminal step (Succeeded above all) never changes again, and neither does a terminal run; the output
//!    of a Succeeded forEach instance never changes.
//! 3. Attempts never exceed the step's maxAttempts (steps and forEach instances).
//! 4. Late events never change state: a replayed event is a Duplicate or refused, an event for an attempt
//!    older than the current one is refused, and neither changes the status.
//! 5. Queued tasks are exactly the Ready attempts in status; wake-ups are in the future; the engine never
//!    touches `status.signals`; `statusBytes` is the real size.
//!    The status merge patch of every change, applied as the API server would, gives back the new status.
//! 6. `decide` is a fixpoint: deciding again at the same time changes nothing and repeats no note.
//! 7. Progress: a run that is not terminal always has a way forward (a task, a running attempt, a timer, a
//!    signal or child to wait for, or suspension), and the run ends once the world answers everything.
//! 8. Retry (`spec.retryRequest`) of a run that Failed: Succeeded steps keep their outputs and attempts,
//!    re-run steps get attempt numbers above their previous ones, late reports of the old attempts are
//!    refused, and the run then Succeeds once the world answers everything.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_operator::api::{FlowPhase, FlowRunSpec, FlowRunStatus, Signal, StepPhase, StepStatus};
use sluice_operator::engine::{
    AttemptRef, ChildOutcome, Decision, Event, EventOutcome, FlowMeta, FlowRunInput, Folded,
    Limits, Refusal, TaskFailure, apply_event, apply_event_in_place, decide,
    patch::apply_merge_patch, status_patch,
};

#[derive(Debug, Clone)]
enum Kind {
    Handler {
        for_each: Option<(usize, Option<u32>)>,
        timeout: Option<u64>,
    },
    Sleep(u64),
    Signal {
        name: usize,
        timeout: Option<u64>,
    },
    Flow,
}

#[derive(Debug, Clone)]
struct StepGen {
    deps: Vec<usize>,
    kind: Kind,
    max_attempts: u32,
    continue_on_failure: bool,
    when: Option<bool>,
}

#[derive(Debug, Clone)]
enum Action {
    Claim(usize),
    Complete(usize, bool),
    Fail(usize, bool, bool),
    HeartbeatLost(usize),
    TimedOut(usize),
    Replay(usize),
    Stale(usize),
    Advance(u64),
    Signal(usize),
    ChildDone(usize, bool),
    Suspend,
    Cancel,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (
            proptest::option::weighted(0.3, (0usize..4, proptest::option::of(1u32..3))),
            proptest::option::weighted(0.3, 5u64..40),
        )
            .prop_map(|(for_each, timeout)| Kind::Handler { for_each, timeout }),
        1 => (0u64..20).prop_map(Kind::Sleep),
        1 => (0usize..2, proptest::option::weighted(0.3, 20u64..300))
            .prop_map(|(name, timeout)| Kind::Signal { name, timeout }),
        1 => Just(Kind::Flow),
    ]
}

fn flow() -> impl Strategy<Value = (Vec<StepGen>, bool)> {
    let steps = proptest::collection::vec(
        (
            proptest::collection::vec(any::<usize>(), 0..3),
            kind(),
            prop_oneof![1 => Just(1u32), 4 => 2u32..5],
            proptest::bool::weighted(0.2),
            proptest::option::weighted(0.2, any::<bool>()),
        ),
        1..9,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(
                |(i, (deps, kind, max_attempts, continue_on_failure, when))| {
                    let mut deps: Vec<usize> = if i == 0 {
                        Vec::new()
                    } else {
                        deps.into_iter().map(|d| d % i).collect()
                    };
                    deps.sort_unstable();
                    deps.dedup();
                    StepGen {
                        deps,
                        kind,
                        max_attempts,
                        continue_on_failure,
                        when,
                    }
                },
            )
            .collect::<Vec<_>>()
    });
    (steps, proptest::bool::weighted(0.2))
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => any::<usize>().prop_map(Action::Claim),
        8 => (any::<usize>(), proptest::bool::weighted(0.05)).prop_map(|(i, big)| Action::Complete(i, big)),
        4 => (any::<usize>(), proptest::bool::weighted(0.92), proptest::bool::weighted(0.05))
            .prop_map(|(i, r, fatal)| Action::Fail(i, r, fatal)),
        1 => any::<usize>().prop_map(Action::HeartbeatLost),
        1 => any::<usize>().prop_map(Action::TimedOut),
        3 => any::<usize>().prop_map(Action::Replay),
        2 => any::<usize>().prop_map(Action::Stale),
        3 => (0u64..20).prop_map(Action::Advance),
        2 => (0usize..2).prop_map(Action::Signal),
        1 => (any::<usize>(), proptest::bool::weighted(0.7)).prop_map(|(i, ok)| Action::ChildDone(i, ok)),
        1 => Just(Action::Suspend),
        1 => prop_oneof![19 => Just(None), 1 => Just(Some(Action::Cancel))]
            .prop_map(|a| a.unwrap_or(Action::Advance(1))),
    ]
}

fn name(i: usize) -> String {
    format!("step-{i}")
}

fn build_spec(steps: &[StepGen], small_outputs: bool) -> FlowRunSpec {
    let mut defaults = json!({"retry": {"initialBackoff": "1s", "maxBackoff": "5s", "nonRetryableErrors": ["fatal"]}});
    if small_outputs {
        defaults["maxOutputBytes"] = json!(300);
    }
    let steps: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = json!({"name": name(i), "dependsOn": s.deps.iter().map(|&d| name(d)).collect::<Vec<_>>()});
            match &s.kind {
                Kind::Handler { for_each, timeout } => {
                    v["handler"] = json!("h");
                    let from: Vec<String> = s
                        .deps
                        .iter()
                        .map(|&d| format!("${{{{ steps['{}'].phase }}}}", name(d)))
                        .collect();
                    v["input"] = json!({"from": from});
                    v["retry"] = json!({"maxAttempts": s.max_attempts});
                    if let Some((n, mp)) = for_each {
                        v["forEach"] = json!((0..*n).collect::<Vec<_>>());
                        v["input"]["item"] = json!("${{ item }}");
                        if let Some(mp) = mp {
                            v["maxParallel"] = json!(mp);
                        }
                    }
                    if let Some(t) = timeout {
                        v["timeout"] = json!(format!("{t}s"));
                    }
                }
                Kind::Sleep(secs) => v["sleep"] = json!(format!("{secs}s")),
                Kind::Signal { name, timeout } => {
                    v["waitForSignal"] = json!({"name": format!("sig-{name}")});
                    if let Some(t) = timeout {
                        v["waitForSignal"]["timeout"] = json!(format!("{t}s"));
                    }
                }
                Kind::Flow => {
                    v["flow"] = json!({"spec": {"input": {"n": "${{ input.n }}"}, "steps": [{"name": "x", "sleep": "1s"}]}})
                }
            }
            if s.continue_on_failure {
                v["continueOnFailure"] = json!(true);
            }
            if let Some(w) = s.when {
                v["when"] = json!(if w { "${{ input.yes }}" } else { "${{ !input.yes }}" });
            }
            v
        })
        .collect();
    serde_json::from_value(json!({
        "pool": "p",
        "input": {"yes": true, "n": 1},
        "defaults": defaults,
        "steps": steps,
        "output": {"n": "${{ input.n }}"},
    }))
    .expect("generated spec")
}

/// The merge patch from `old` to `new`, applied to `old` as the API server would, gives back `new`.
fn check_patch(old: &FlowRunStatus, new: &FlowRunStatus) {
    let patch = status_patch(old, new);
    assert!(
        patch["status"].get("signals").is_none(),
        "patches never touch signals"
    );
    let mut server = serde_json::to_value(old).unwrap();
    apply_merge_patch(&mut server, &patch["status"]);
    assert_eq!(
        server,
        serde_json::to_value(new).unwrap(),
        "patch round trip"
    );
    let read_back: FlowRunStatus = serde_json::from_value(server).unwrap();
    assert_eq!(&read_back, new, "what is read back is what was decided");
}

struct Sim {
    meta: FlowMeta,
    spec: FlowRunSpec,
    gens: Vec<StepGen>,
    status: FlowRunStatus,
    now: Timestamp,
    history: Vec<Event>,
    /// Terminal steps as first seen.
    terminal: BTreeMap<String, StepStatus>,
    /// Outputs of Succeeded forEach instances as first seen.
    instance_outputs: BTreeMap<(String, String), Value>,
    terminal_run: Option<FlowRunStatus>,
    /// Whether `spec.cancel` was set while the run had not ended.
    cancelled_while_running: bool,
}

impl Sim {
    fn new(gens: Vec<StepGen>, small_outputs: bool) -> Self {
        Self {
            meta: FlowMeta {
                uid: "uid-prop".into(),
                name: "prop".into(),
                namespace: "ns".into(),
                generation: Some(1),
            },
            spec: build_spec(&gens, small_outputs),
            gens,
            status: FlowRunStatus::default(),
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
            history: Vec::new(),
            terminal: BTreeMap::new(),
            instance_outputs: BTreeMap::new(),
            terminal_run: None,
            cancelled_while_running: false,
        }
    }

    fn input(&self) -> FlowRunInput<'_> {
        FlowRunInput {
            meta: &self.meta,
            spec: &self.spec,
            status: &self.status,
            limits: Limits::default(),
            admission: &sluice_operator::engine::NOT_ASKED,
        }
    }

    /// Ready or Running attempts, from status.
    fn live(&self, phases: &[StepPhase]) -> Vec<AttemptRef> {
        let mut out = Vec::new();
        for (step, st) in &self.status.steps {
            if let Some(inst) = &st.instances {
                for (k, one) in &inst.active {
                    if phases.contains(&one.phase) {
                        out.push(AttemptRef::instance(step, k.parse().unwrap(), one.attempts));
                    }
                }
            } else if st.child.is_none() && phases.contains(&st.phase) && st.attempts > 0 {
                out.push(AttemptRef::step(step, st.attempts));
            }
        }
        out
    }

    fn pick(list: &[AttemptRef], i: usize) -> Option<AttemptRef> {
        (!list.is_empty()).then(|| list[i % list.len()].clone())
    }

    /// `apply_event` on the current status, checked against folding the event in place (what the status
    /// writer does for a batch): the same answer and status, and no change when it refuses or finds a
    /// duplicate.
    fn apply(&self, e: &Event) -> Result<EventOutcome, Refusal> {
        let out = apply_event(&self.input(), e, self.now);
        let mut in_place = self.status.clone();
        let folded = apply_event_in_place(&self.input(), &mut in_place, e, self.now);
        match (&out, folded) {
            (Ok(EventOutcome::Applied { status, notes }), Ok(Folded::Applied(folded_notes))) => {
                assert_eq!(**status, in_place, "in place: {e:?}");
                assert_eq!(*notes, folded_notes, "in place: {e:?}");
            }
            (Ok(EventOutcome::Duplicate), Ok(Folded::Duplicate)) => {
                assert_eq!(
                    in_place, self.status,
                    "a duplicate in place changed the status: {e:?}"
                );
            }
            (Err(refusal), Err(folded_refusal)) => {
                assert_eq!(*refusal, folded_refusal);
                assert_eq!(
                    in_place, self.status,
                    "a refusal in place changed the status: {e:?}"
                );
            }
            (out, folded) => panic!("in place {folded:?} where a copy gave {out:?}: {e:?}"),
        }
        out
    }

    fn event(&mut self, e: Event) -> Result<EventOutcome, String> {
        let before = self.status.clone();
        let out = self.apply(&e);
        match &out {
            Ok(EventOutcome::Applied { status, .. }) => {
                assert_eq!(status.signals, before.signals, "events never touch signals");
                check_patch(&before, status);
                self.status = (**status).clone();
                self.history.push(e);
            }
            Ok(EventOutcome::Duplicate) | Err(_) => {
                assert_eq!(self.status, before);
            }
        }
        self.check();
        out.map_err(|r| r.to_string())
    }

    fn decide(&mut self) -> Decision {
        let d = decide(&self.input(), self.now);
        check_patch(&self.status, &d.status);
        assert_eq!(
            d.status.signals, self.status.signals,
            "decide never touches signals"
        );
        assert_eq!(
            d.status.status_bytes,
            Some(serde_json::to_vec(&d.status).unwrap().len() as u64)
        );
        if let Some(w) = d.wake_at {
            assert!(w > self.now, "wake_at {w} is not after now {}", self.now);
        }
        self.status = d.status.clone();
        // Deciding again at the same time changes nothing and reports nothing new (the controller re-decides
        // freely); queued tasks come back as not fresh.
        let again = decide(&self.input(), self.now);
        assert_eq!(again.status, d.status, "decide is a fixpoint");
        assert!(again.notes.is_empty(), "repeated notes: {:?}", again.notes);
        assert!(again.cancel_workers.is_empty());
        assert!(again.tasks.iter().all(|t| !t.fresh));
        assert_eq!(again.tasks.len(), d.tasks.len());
        assert_eq!(again.wake_at, d.wake_at);
        // Tasks are exactly the Ready attempts (unless suspended or ended).
        let phase = self.status.phase.unwrap_or_default();
        let mut tasks: Vec<AttemptRef> = d.tasks.iter().map(|t| t.attempt.clone()).collect();
        tasks.sort();
        if self.spec.suspend || phase.is_terminal() {
            assert!(tasks.is_empty(), "no task while suspended or ended");
        } else {
            let mut ready = self.live(&[StepPhase::Ready]);
            ready.sort();
            assert_eq!(tasks, ready, "tasks are the Ready attempts");
        }
        for t in &d.tasks {
            let (i, _) = self.step_index(&t.attempt.step);
            assert!(
                self.deps_done(i),
                "task {} dispatched before its dependencies",
                t.attempt
            );
        }
        self.check();
        d
    }

    fn step_index(&self, step: &str) -> (usize, &StepGen) {
        let i: usize = step.trim_start_matches("step-").parse().unwrap();
        (i, &self.gens[i])
    }

    fn phase(&self, i: usize) -> StepPhase {
        self.status
            .steps
            .get(&name(i))
            .map(|s| s.phase)
            .unwrap_or_default()
    }

    fn deps_done(&self, i: usize) -> bool {
        self.gens[i].deps.iter().all(|&d| match self.phase(d) {
            StepPhase::Succeeded | StepPhase::Skipped => true,
            StepPhase::Failed => self.gens[d].continue_on_failure,
            _ => false,
        })
    }

    /// Invariants 1–3 and the stability of terminal runs.
    fn check(&mut self) {
        if let Some(done) = &self.terminal_run {
            // Users may still write signals, which changes the size estimate; nothing else changes.
            let mut now = self.status.clone();
            now.signals.clone_from(&done.signals);
            now.status_bytes = done.status_bytes;
            assert_eq!(&now, done, "a terminal run never changes");
        }
        for (i, g) in self.gens.iter().enumerate() {
            let Some(st) = self.status.steps.get(&name(i)) else {
                continue;
            };
            // 1. Leaving Pending needs the dependencies done (being Cancelled does not).
            if !matches!(st.phase, StepPhase::Pending | StepPhase::Cancelled) {
                assert!(
                    self.deps_done(i),
                    "{} is {:?} before its dependencies",
                    name(i),
                    st.phase
                );
            }
            // 2. Terminal steps never change.
            if st.phase.is_terminal() {
                match self.terminal.get(&name(i)) {
                    Some(first) => assert_eq!(first, st, "terminal step {} changed", name(i)),
                    None => {
                        self.terminal.insert(name(i), st.clone());
                    }
                }
            } else {
                assert!(
                    !self.terminal.contains_key(&name(i)),
                    "{} left a terminal phase",
                    name(i)
                );
            }
            // 3. Attempts never exceed maxAttempts (counted from the last retry of the run).
            if matches!(g.kind, Kind::Handler { .. }) {
                assert!(
                    st.attempts - st.retry_base <= g.max_attempts,
                    "{}: {} attempts",
                    name(i),
                    st.attempts
                );
                if let Some(inst) = &st.instances {
                    for (k, one) in &inst.active {
                        assert!(
                            one.attempts - one.retry_base <= g.max_attempts,
                            "{}[{k}]: {} attempts",
                            name(i),
                            one.attempts
                        );
                    }
                    for (k, out) in &inst.outputs {
                        let key = (name(i), k.clone());
                        match self.instance_outputs.get(&key) {
                            Some(first) => assert_eq!(first, out, "instance output changed"),
                            None => {
                                self.instance_outputs.insert(key, out.clone());
                            }
                        }
                        assert!(
                            !inst.active.contains_key(k),
                            "a Succeeded instance is not active"
                        );
                    }
                    if st.phase == StepPhase::Succeeded {
                        let arr = st.output.as_ref().unwrap().as_array().unwrap().clone();
                        assert_eq!(arr.len() as u32, inst.total);
                        for ((step, k), out) in &self.instance_outputs {
                            if step == &name(i) {
                                assert_eq!(
                                    &arr[k.parse::<usize>().unwrap()],
                                    out,
                                    "output in index order"
                                );
                            }
                        }
                    }
                }
            }
        }
        if self.status.phase.is_some_and(FlowPhase::is_terminal) && self.terminal_run.is_none() {
            for (step, st) in &self.status.steps {
                assert!(
                    st.phase.is_terminal(),
                    "run ended with {step} {:?}",
                    st.phase
                );
            }
            self.terminal_run = Some(self.status.clone());
        }
    }

    fn output(big: bool) -> Value {
        if big {
            json!({"pad": "x".repeat(1000)})
        } else {
            json!({"ok": 1})
        }
    }

    fn act(&mut self, a: &Action) {
        let ready_or_running = [StepPhase::Ready, StepPhase::Running];
        match a {
            Action::Claim(i) => {
                if let Some(att) = Self::pick(&self.live(&[StepPhase::Ready]), *i) {
                    let _ = self.event(Event::Claimed {
                        attempt: att,
                        worker: format!("w{}", i % 3),
                        at: self.now,
                    });
                }
            }
            Action::Complete(i, big) => {
                if let Some(att) = Self::pick(&self.live(&ready_or_running), *i) {
                    let _ = self.event(Event::Completed {
                        attempt: att,
                        output: Self::output(*big),
                    });
                }
            }
            Action::Fail(i, retryable, fatal) => {
                if let Some(att) = Self::pick(&self.live(&ready_or_running), *i) {
                    let _ = self.event(Event::Failed {
                        attempt: att,
                        error: TaskFailure {
                            error_type: if *fatal { "fatal" } else { "flaky" }.into(),
                            message: "it broke".into(),
                            exit_code: Some(1),
                        },
                        retryable: *retryable,
                    });
                }
            }
            Action::HeartbeatLost(i) => {
                if let Some(att) = Self::pick(&self.live(&[StepPhase::Running]), *i) {
                    let _ = self.event(Event::HeartbeatLost { attempt: att });
                }
            }
            Action::TimedOut(i) => {
                if let Some(att) = Self::pick(&self.live(&[StepPhase::Running]), *i) {
                    let _ = self.event(Event::TimedOut { attempt: att });
                }
            }
            Action::Replay(i) => {
                if !self.history.is_empty() {
                    let e = self.history[i % self.history.len()].clone();
                    // 4. A replayed event never applies again (claims may, when re-dispatched: the same
                    // attempt claimed anew by the same worker is a duplicate, by another one is not a replay).
                    let before = self.status.clone();
                    let out = self.apply(&e);
                    assert!(
                        !matches!(out, Ok(EventOutcome::Applied { .. }))
                            || matches!(e, Event::Claimed { .. }),
                        "replayed {e:?} applied again"
                    );
                    if let Ok(EventOutcome::Applied { status, .. }) = out {
                        self.status = *status;
                    } else {
                        assert_eq!(self.status, before);
                    }
                    self.check();
                }
            }
            Action::Stale(i) => {
                let live = self.live(&ready_or_running);
                if let Some(mut att) = Self::pick(&live, *i)
                    && att.attempt > 1
                {
                    att.attempt -= 1;
                    let before = self.status.clone();
                    for e in [
                        Event::Completed {
                            attempt: att.clone(),
                            output: json!(1),
                        },
                        Event::Claimed {
                            attempt: att.clone(),
                            worker: "late".into(),
                            at: self.now,
                        },
                        Event::HeartbeatLost {
                            attempt: att.clone(),
                        },
                    ] {
                        let out = self.apply(&e);
                        assert!(
                            !matches!(out, Ok(EventOutcome::Applied { .. })),
                            "stale {e:?} applied: {out:?}"
                        );
                    }
                    assert_eq!(self.status, before);
                }
            }
            Action::Advance(secs) => {
                self.now = self
                    .now
                    .checked_add(SignedDuration::from_secs(*secs as i64))
                    .unwrap();
            }
            Action::Signal(k) => {
                self.status.signals.insert(
                    format!("sig-{k}"),
                    Signal {
                        payload: Some(json!({"k": k})),
                    },
                );
            }
            Action::ChildDone(i, ok) => {
                let running: Vec<(String, String)> = self
                    .status
                    .steps
                    .iter()
                    .filter(|(_, st)| st.phase == StepPhase::Running)
                    .filter_map(|(n, st)| Some((n.clone(), st.child.clone()?)))
                    .collect();
                if !running.is_empty() {
                    let (step, child) = running[i % running.len()].clone();
                    let outcome = if *ok {
                        ChildOutcome::Succeeded(Some(json!({"child": true})))
                    } else {
                        ChildOutcome::Failed("child step failed".into())
                    };
                    let _ = self.event(Event::ChildFinished {
                        step,
                        child,
                        outcome,
                    });
                }
            }
            Action::Suspend => self.spec.suspend = !self.spec.suspend,
            Action::Cancel => {
                self.cancelled_while_running |= self.terminal_run.is_none();
                self.spec.cancel = true;
            }
        }
    }

    /// Answers everything the run waits for until it ends; panics if it is stuck.
    fn drive_to_end(&mut self) {
        self.spec.suspend = false;
        for _ in 0..300 {
            let d = self.decide();
            if self.status.phase.is_some_and(FlowPhase::is_terminal) {
                assert!(d.tasks.is_empty() && d.wake_at.is_none());
                return;
            }
            let mut progressed = false;
            for att in self.live(&[StepPhase::Ready, StepPhase::Running]) {
                let _ = self.event(Event::Completed {
                    attempt: att,
                    output: json!({"ok": 1}),
                });
                progressed = true;
            }
            let waiting: Vec<String> = self
                .status
                .steps
                .values()
                .filter(|st| st.phase == StepPhase::Waiting)
                .filter_map(|st| st.signal.clone())
                .collect();
            for s in waiting {
                if let std::collections::btree_map::Entry::Vacant(e) = self.status.signals.entry(s)
                {
                    e.insert(Signal::default());
                    progressed = true;
                }
            }
            let children: Vec<(String, String)> = self
                .status
                .steps
                .iter()
                .filter(|(_, st)| st.phase == StepPhase::Running)
                .filter_map(|(n, st)| Some((n.clone(), st.child.clone()?)))
                .collect();
            for (step, child) in children {
                let _ = self.event(Event::ChildFinished {
                    step,
                    child,
                    outcome: ChildOutcome::Succeeded(None),
                });
                progressed = true;
            }
            if !progressed {
                // 6. Nothing external is pending: only time can move the run, so there must be a timer.
                let wake = d.wake_at.unwrap_or_else(|| {
                    panic!(
                        "stuck: not terminal, nothing pending and no wake-up\n{:#?}",
                        self.status
                    )
                });
                self.now = wake;
            }
        }
        panic!("the run did not end within 300 rounds: {:#?}", self.status);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_flows_keep_the_invariants_and_terminate(
        (gens, small_outputs) in flow(),
        actions in proptest::collection::vec(action(), 0..100),
    ) {
        let mut sim = Sim::new(gens, small_outputs);
        sim.decide();
        for a in &actions {
            sim.act(a);
            sim.decide();
        }
        sim.drive_to_end();
        let phase = sim.status.phase.unwrap();
        prop_assert!(phase.is_terminal());
        if sim.cancelled_while_running {
            prop_assert_eq!(phase, FlowPhase::Cancelled);
        }
        if phase == FlowPhase::Succeeded {
            prop_assert_eq!(sim.status.output.clone(), Some(json!({"n": 1})));
        }
    }

    /// 8. A random run that Failed, retried through `spec.retryRequest`, keeps what Succeeded and then Succeeds.
    #[test]
    fn a_failed_run_retried_keeps_succeeded_steps_and_succeeds(
        (gens, small_outputs) in flow(),
        actions in proptest::collection::vec(action(), 0..100),
    ) {
        let mut sim = Sim::new(gens, small_outputs);
        sim.decide();
        for a in actions.iter().filter(|a| !matches!(a, Action::Cancel)) {
            sim.act(a);
            sim.decide();
        }
        sim.drive_to_end();
        prop_assume!(sim.status.phase == Some(FlowPhase::Failed));
        let before = sim.status.clone();
        // The re-run steps leave their terminal phase: that is the point of a retry.
        let gens = sim.gens.clone();
        sim.terminal.retain(|step, st| {
            let i: usize = step.trim_start_matches("step-").parse().unwrap();
            matches!(st.phase, StepPhase::Succeeded | StepPhase::Skipped)
                || (st.phase == StepPhase::Failed && gens[i].continue_on_failure)
        });
        sim.terminal_run = None;
        sim.spec.retry_request = Some("retry-1".into());
        sim.decide();
        let phase = sim.status.phase.unwrap();
        prop_assert!(matches!(phase, FlowPhase::Running | FlowPhase::Succeeded), "{:?}", phase);
        let retry = sim.status.retry.clone().unwrap();
        prop_assert_eq!(retry.request.as_str(), "retry-1");
        prop_assert_eq!(retry.count, 1);

        // Late reports of the attempts before the retry change nothing.
        for (step, old) in &before.steps {
            if old.attempts == 0 || old.child.is_some() || old.instances.is_some() {
                continue;
            }
            let snapshot = sim.status.clone();
            let out = apply_event(&sim.input(), &Event::Completed {
                attempt: AttemptRef::step(step, old.attempts),
                output: json!({"late": true}),
            }, sim.now);
            prop_assert!(!matches!(out, Ok(EventOutcome::Applied { .. })), "late report of {} applied", step);
            prop_assert_eq!(&sim.status, &snapshot);
        }

        sim.drive_to_end();
        prop_assert_eq!(sim.status.phase, Some(FlowPhase::Succeeded));
        for (step, old) in &before.steps {
            let new = &sim.status.steps[step];
            match old.phase {
                StepPhase::Succeeded | StepPhase::Skipped => {
                    prop_assert_eq!(old, new, "{} changed after the retry", step);
                }
                StepPhase::Failed | StepPhase::Cancelled if old != new => {
                    if old.attempts > 0 && old.child.is_none() && old.instances.is_none() {
                        prop_assert!(new.attempts > old.attempts,
                            "{} re-ran with attempt {} after {}", step, new.attempts, old.attempts);
                        prop_assert_eq!(new.retry_base, old.attempts);
                    }
                    if let (Some(oi), Some(ni)) = (&old.instances, &new.instances) {
                        prop_assert_eq!(oi.total, ni.total);
                        for (k, out) in &oi.outputs {
                            prop_assert_eq!(Some(out), ni.outputs.get(k).or_else(|| {
                                new.output.as_ref()?.as_array()?.get(k.parse::<usize>().ok()?)
                            }), "instance {}[{}] output changed", step, k);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// With no failures and every task completed, a random flow always Succeeds.
    #[test]
    fn random_flows_succeed_when_nothing_fails((gens, _) in flow()) {
        let gens: Vec<StepGen> = gens.into_iter().map(|mut g| { g.when = g.when.map(|_| true); g }).collect();
        let mut sim = Sim::new(gens, false);
        sim.drive_to_end();
        prop_assert_eq!(sim.status.phase, Some(FlowPhase::Succeeded));
        for st in sim.status.steps.values() {
            prop_assert_eq!(st.phase, StepPhase::Succeeded);
            prop_assert!(st.attempts <= 1);
        }
    }
}
