//! `decide`: the scheduler. Walks the steps in dependency order and moves each one as far as the status and
//! the time allow, then derives the run's phase, conditions, progress, queued tasks and next wake-up.
//!
//! A step starts when every step it depends on Succeeded, was Skipped, or Failed with `continueOnFailure`,
//! and its `when` (if any) is true; a false `when` Skips it and its dependents still evaluate. Because the walk
//! follows the topological order, a chain of steps that finish at once (skips, signals already delivered,
//! zero sleeps) settles in one decision.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

use super::attempt::{Slot, fail_attempt};
use super::budget::{
    Breakdown, MAX_FOR_EACH_ITEMS, STATUS_TOO_LARGE, TOO_MANY_ITEMS, json_len, status_bytes,
    too_large, too_many_items,
};
use super::child::child_spec;
use super::concurrency::{self, Admission};
use super::decision::{AttemptRef, ChildFlowRequest, Decision, Note, RunningAttempt, Task};
use super::expr::{self, Vars};
use super::foreach;
use super::output::{INVALID_INPUT, TIMEOUT, check_output, step_error, stored};
use super::rerun::{RetryAction, apply_retry_request, child_name_for};
use super::timers::{after, ceil_second, earliest, is_due, parse_duration, parse_time, past};
use super::validate::{StepKind, step_kind, validate};
use super::{Ctx, FlowRunInput, exit};
use crate::api::{ConcurrencyStatus, FlowPhase, FlowRunStatus, MainOutcome, StepPhase, StepStatus};

/// The attempts the status shows Running on workers (plain handler steps and forEach instances).
pub fn running_attempts(flow: &FlowRunInput<'_>) -> Vec<RunningAttempt> {
    let scheduled = exit::scheduled(flow.spec);
    let declared = flow.spec;
    let flow = &FlowRunInput {
        spec: &scheduled,
        ..*flow
    };
    let ctx = Ctx::new(flow, declared, Timestamp::UNIX_EPOCH);
    let mut out = Vec::new();
    for step in &flow.spec.steps {
        let (Some(handler), Some(st)) = (&step.handler, flow.status.steps.get(&step.name)) else {
            continue;
        };
        let mut push = |attempt: AttemptRef, worker: &Option<String>, deadline: &Option<Time>| {
            out.push(RunningAttempt {
                task: Task {
                    attempt,
                    pool: ctx.pool(step),
                    handler: handler.clone(),
                    input: Value::Null,
                    timeout: ctx.timeout(step),
                    heartbeat_timeout: ctx.heartbeat_timeout(step),
                    fresh: false,
                },
                worker: worker.clone(),
                deadline: deadline.as_ref().map(|t| t.0),
            });
        };
        match &st.instances {
            Some(inst) if step.for_each.is_some() => {
                let mut keys: Vec<(u32, &String)> = inst
                    .active
                    .keys()
                    .filter_map(|k| Some((k.parse().ok()?, k)))
                    .collect();
                keys.sort();
                for (index, k) in keys {
                    let one = &inst.active[k];
                    if one.phase == StepPhase::Running {
                        push(
                            AttemptRef::instance(&step.name, index, one.attempts),
                            &one.worker,
                            &one.deadline,
                        );
                    }
                }
            }
            _ if step.for_each.is_none() && st.phase == StepPhase::Running => {
                push(
                    AttemptRef::step(&step.name, st.attempts),
                    &st.worker,
                    &st.deadline,
                );
            }
            _ => {}
        }
    }
    out
}

/// Side effects gathered while deciding.
#[derive(Default)]
pub(crate) struct Effects {
    pub notes: Vec<Note>,
    pub cancel_workers: Vec<AttemptRef>,
    pub create_children: Vec<ChildFlowRequest>,
    /// Children of forEach instances this decision cancelled (those of whole steps are found in `finish`).
    pub cancel_children: Vec<String>,
}

/// Why a run ended other than Succeeded, for its conditions.
struct Ending {
    reason: &'static str,
    message: String,
}

/// Decides what happens next for a FlowRun. Pure: the same input and `now` give the same decision.
pub fn decide(flow: &FlowRunInput<'_>, now: Timestamp) -> Decision {
    let scheduled = exit::scheduled(flow.spec);
    let declared = flow.spec;
    let flow = &FlowRunInput {
        spec: &scheduled,
        ..*flow
    };
    let mut s = Scheduler {
        ctx: Ctx::new(flow, declared, now),
        old: flow.status,
        status: flow.status.clone(),
        fx: Effects::default(),
        inputs: HashMap::new(),
        ending: None,
        retried: false,
        admission: flow.admission,
        waiting: None,
    };
    s.run();
    s.finish()
}

struct Scheduler<'a> {
    ctx: Ctx<'a>,
    old: &'a FlowRunStatus,
    status: FlowRunStatus,
    fx: Effects,
    /// Inputs resolved while starting steps, reused for their tasks.
    inputs: HashMap<String, Value>,
    ending: Option<Ending>,
    /// A retry request reset this Failed run in this decision.
    retried: bool,
    /// The shell's verdict on a concurrency slot, for a run that holds none.
    admission: &'a Admission,
    /// Why the run waits for a concurrency slot, while it does.
    waiting: Option<String>,
}

/// Whether a run may start its steps, as far as its concurrency limit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// No limit, or the run holds a slot (taken now or before).
    Open,
    /// The run waits for a slot (or is cancelled before it got one).
    Closed,
    /// The key does not resolve: the run failed.
    Failed,
}

impl Scheduler<'_> {
    fn phase(&self) -> FlowPhase {
        self.status.phase.unwrap_or_default()
    }

    fn st(&mut self, i: usize) -> &mut StepStatus {
        let name = &self.ctx.spec.steps[i].name;
        self.status.steps.entry(name.clone()).or_default()
    }

    fn step_phase(&self, i: usize) -> StepPhase {
        self.status
            .steps
            .get(&self.ctx.spec.steps[i].name)
            .map(|s| s.phase)
            .unwrap_or_default()
    }

    /// The first main step (in spec order) that failed without `continueOnFailure`: it fails the run.
    fn failed_step(&self) -> Option<usize> {
        self.first_failed(0..self.ctx.main)
    }

    /// The first exit step that failed without `continueOnFailure`: it fails the run after the others.
    fn failed_exit_step(&self) -> Option<usize> {
        self.first_failed(self.ctx.main..self.ctx.spec.steps.len())
    }

    fn first_failed(&self, mut steps: std::ops::Range<usize>) -> Option<usize> {
        steps.find(|&i| {
            self.step_phase(i) == StepPhase::Failed && !self.ctx.spec.steps[i].continue_on_failure
        })
    }

    fn has_exit_steps(&self) -> bool {
        self.ctx.main < self.ctx.spec.steps.len()
    }

    /// Whether every main step has ended.
    fn main_ended(&self) -> bool {
        (0..self.ctx.main).all(|i| self.step_phase(i).is_terminal())
    }

    /// Ends the main steps of a run with exit steps (those still going are cancelled) and records how, once:
    /// the exit steps start from this.
    fn end_main(&mut self, phase: FlowPhase, reason: &str, message: String) {
        if self.status.main_outcome.is_some() {
            return;
        }
        self.cancel_steps(0..self.ctx.main, &format!("cancelled: {message}"));
        self.fx.notes.push(Note::normal(
            "ExitStepsStarted",
            None,
            format!("the main steps ended {phase:?} ({reason}): running the exit steps"),
        ));
        self.status.main_outcome = Some(MainOutcome {
            phase,
            reason: reason.to_owned(),
            message,
        });
    }

    fn run(&mut self) {
        if let Some(g) = self.ctx.meta.generation {
            self.status.observed_generation = Some(g);
        }
        let action = apply_retry_request(
            self.ctx.spec,
            &mut self.status,
            self.ctx.now,
            &mut self.fx.notes,
        );
        self.retried = action == RetryAction::Retried;
        if self.retried {
            // The main steps run again; the exit steps that did not succeed run again after them.
            self.status.main_outcome = None;
            // A retried run takes a concurrency slot again.
            if let Some(c) = &mut self.status.concurrency {
                c.admitted_at = None;
            }
        }
        if self.phase().is_terminal() {
            return;
        }
        if let Err(errors) = validate(self.ctx.declared) {
            self.fail_invalid(errors.to_string());
            return;
        }
        if self.status.phase.is_none() {
            self.status.phase = Some(FlowPhase::Pending);
        }
        for step in &self.ctx.spec.steps {
            self.status.steps.entry(step.name.clone()).or_default();
        }

        let gate = self.admit();
        if gate == Gate::Failed {
            return;
        }
        if self.ctx.spec.cancel && self.has_exit_steps() && gate == Gate::Open {
            // The exit steps still run (a cancel after the main steps ended changes nothing).
            self.end_main(
                FlowPhase::Cancelled,
                "Cancelled",
                "the run was cancelled (spec.cancel)".into(),
            );
        } else if self.ctx.spec.cancel {
            self.cancel_all("cancelled: the run was cancelled (spec.cancel)");
            self.status.phase = Some(FlowPhase::Cancelled);
            self.fx.notes.push(Note::normal(
                "FlowCancelled",
                None,
                "the run was cancelled".into(),
            ));
            self.ending = Some(Ending {
                reason: "Cancelled",
                message: "the run was cancelled (spec.cancel)".into(),
            });
            return;
        }
        if gate == Gate::Closed {
            return;
        }

        if let Some(deadline) = exit::deadline(self.ctx.spec, &self.status)
            && deadline <= self.ctx.now
            && self.status.main_outcome.is_none()
            && !self.main_ended()
        {
            let limit = self.ctx.spec.active_deadline.clone().unwrap_or_default();
            let message = format!("the run passed its activeDeadline of {limit}");
            self.fx
                .notes
                .push(Note::warning("DeadlineExceeded", None, message.clone()));
            if self.has_exit_steps() {
                self.end_main(FlowPhase::Failed, "DeadlineExceeded", message);
            } else {
                self.cancel_all(&format!("cancelled: {message}"));
                self.status.phase = Some(FlowPhase::Failed);
                self.ending = Some(Ending {
                    reason: "DeadlineExceeded",
                    message,
                });
                return;
            }
        }

        let order = self.ctx.dag.order.clone();
        for i in order {
            self.settle(i);
        }

        self.conclude();
    }

    /// Takes a concurrency slot for a run with a limit that holds none, if the shell granted one; otherwise
    /// records the key and why the run waits (the run stays Pending). A run cancelled before it got a slot
    /// never takes one.
    fn admit(&mut self) -> Gate {
        let Some(limit) = &self.ctx.spec.concurrency else {
            return Gate::Open;
        };
        if self
            .status
            .concurrency
            .as_ref()
            .is_some_and(|c| c.admitted_at.is_some())
        {
            return Gate::Open;
        }
        let key = match concurrency::resolve_key(limit, self.ctx.spec.input.as_ref()) {
            Ok(key) => key,
            Err(message) => {
                self.fail_invalid(message);
                return Gate::Failed;
            }
        };
        if self.ctx.spec.cancel {
            return Gate::Closed;
        }
        let first_look = self.status.concurrency.is_none();
        let granted = self.admission == &Admission::Granted;
        self.status.concurrency = Some(ConcurrencyStatus {
            key: key.clone(),
            admitted_at: granted.then(|| past(self.ctx.now)),
        });
        if granted {
            self.fx.notes.push(Note::normal(
                "Admitted",
                None,
                format!(
                    "took a slot of concurrency key {key:?} (limit {})",
                    limit.limit
                ),
            ));
            return Gate::Open;
        }
        let message = match self.admission {
            Admission::Waiting { holders, ahead } => {
                concurrency::waiting_message(&key, limit.limit, holders, *ahead)
            }
            _ => format!("waiting for a slot of concurrency key {key:?}"),
        };
        if first_look {
            self.fx
                .notes
                .push(Note::normal("WaitingForSlot", None, message.clone()));
        }
        self.status.phase = Some(FlowPhase::Pending);
        self.waiting = Some(message);
        Gate::Closed
    }

    /// Derives the run's phase from its steps: Failed when a step failed it (the rest are cancelled),
    /// Succeeded when every step ended, Running once a step started.
    fn conclude(&mut self) {
        if self.has_exit_steps() {
            self.conclude_with_exit_steps();
        } else if let Some(i) = self.failed_step() {
            let name = self.ctx.spec.steps[i].name.clone();
            self.cancel_all(&format!("cancelled: step {name:?} failed"));
            let message = self.failure_message(i);
            self.fail_run("StepFailed", message);
        } else if self
            .ctx
            .spec
            .steps
            .iter()
            .enumerate()
            .all(|(i, _)| self.step_phase(i).is_terminal())
        {
            self.succeed();
        } else if self
            .ctx
            .spec
            .steps
            .iter()
            .enumerate()
            .any(|(i, _)| self.step_phase(i) != StepPhase::Pending)
        {
            self.status.phase = Some(FlowPhase::Running);
        }
        if self.phase() != FlowPhase::Pending && self.status.started_at.is_none() {
            self.status.started_at = Some(past(self.ctx.now));
        }
    }

    /// Ends the run Failed as Invalid (the spec cannot run as written), with a Warning note.
    fn fail_invalid(&mut self, message: String) {
        self.fx.notes.push(Note::warning(
            "FlowInvalid",
            None,
            format!("the flow is invalid: {message}"),
        ));
        self.status.phase = Some(FlowPhase::Failed);
        self.ending = Some(Ending {
            reason: "Invalid",
            message,
        });
    }

    /// Ends the run Failed for `reason`, with a Warning note.
    fn fail_run(&mut self, reason: &'static str, message: String) {
        self.fx
            .notes
            .push(Note::warning("FlowFailed", None, message.clone()));
        self.status.phase = Some(FlowPhase::Failed);
        self.ending = Some(Ending { reason, message });
    }

    /// Moves step `i` as far as it goes now: each pass moves it one phase, a few settle instant transitions.
    fn settle(&mut self, i: usize) {
        for _ in 0..4 {
            let before = self.step_phase(i);
            self.advance(i);
            if self.step_phase(i) == before {
                break;
            }
        }
    }

    /// What a step's failure says, for the run's condition.
    fn failure_message(&self, i: usize) -> String {
        let name = &self.ctx.spec.steps[i].name;
        let error = self
            .status
            .steps
            .get(name)
            .and_then(|st| st.error.clone())
            .unwrap_or_default();
        if error.message.is_empty() {
            format!("step {name:?} failed: {}", error.type_)
        } else {
            format!("step {name:?} failed: {}: {}", error.type_, error.message)
        }
    }

    /// [`Self::conclude`] for a run with exit steps: the main steps end first (their outcome recorded), then
    /// the exit steps run, then the run ends with the main steps' outcome — or Failed if an exit step failed.
    fn conclude_with_exit_steps(&mut self) {
        if self.status.main_outcome.is_none() {
            if let Some(i) = self.failed_step() {
                let message = self.failure_message(i);
                self.end_main(FlowPhase::Failed, "StepFailed", message);
            } else if self.main_ended() {
                self.end_main(
                    FlowPhase::Succeeded,
                    "Succeeded",
                    "the main steps succeeded".into(),
                );
            }
        }
        let Some(outcome) = self.status.main_outcome.clone() else {
            if (0..self.ctx.main).any(|i| self.step_phase(i) != StepPhase::Pending) {
                self.status.phase = Some(FlowPhase::Running);
            }
            return;
        };
        // Exit steps the main steps' end let start in this same decision.
        let exits: Vec<usize> = (self.ctx.dag.order.iter().copied())
            .filter(|&i| self.ctx.is_exit(i))
            .collect();
        for i in exits {
            self.settle(i);
        }
        let all = self.ctx.spec.steps.len();
        if let Some(i) = self.failed_exit_step() {
            let name = self.ctx.spec.steps[i].name.clone();
            self.cancel_steps(
                self.ctx.main..all,
                &format!("cancelled: exit step {name:?} failed"),
            );
            let message = format!(
                "{} (after the main steps ended {:?}: {})",
                self.failure_message(i),
                outcome.phase,
                outcome.reason
            );
            self.fail_run("ExitStepFailed", message);
        } else if (self.ctx.main..all).all(|i| self.step_phase(i).is_terminal()) {
            match outcome.phase {
                FlowPhase::Succeeded => self.succeed(),
                phase => {
                    let (event, reason) = match outcome.reason.as_str() {
                        "Cancelled" => ("FlowCancelled", "Cancelled"),
                        "DeadlineExceeded" => ("FlowFailed", "DeadlineExceeded"),
                        _ => ("FlowFailed", "StepFailed"),
                    };
                    self.fx.notes.push(if phase == FlowPhase::Cancelled {
                        Note::normal(event, None, "the run was cancelled".into())
                    } else {
                        Note::warning(event, None, outcome.message.clone())
                    });
                    self.status.phase = Some(phase);
                    self.ending = Some(Ending {
                        reason,
                        message: outcome.message,
                    });
                }
            }
        } else {
            self.status.phase = Some(FlowPhase::Running);
        }
    }

    /// The variables step `i` sees: the flow input and its upstream steps.
    fn vars_for(&self, i: Option<usize>) -> Vars {
        let mut steps = serde_json::Map::new();
        let all: Vec<usize> = match i {
            Some(i) => self.ctx.dag.upstream[i].iter().copied().collect(),
            None => (0..self.ctx.spec.steps.len()).collect(),
        };
        for j in all {
            let name = &self.ctx.spec.steps[j].name;
            let st = self.status.steps.get(name);
            let mut view = serde_json::Map::new();
            view.insert(
                "output".into(),
                st.and_then(|s| s.output.clone()).unwrap_or(Value::Null),
            );
            view.insert(
                "phase".into(),
                serde_json::to_value(st.map(|s| s.phase).unwrap_or_default())
                    .unwrap_or(Value::Null),
            );
            steps.insert(name.clone(), Value::Object(view));
        }
        let input = self.ctx.spec.input.clone().unwrap_or(Value::Null);
        let vars = Vars::new(&input, &steps);
        match (&self.status.main_outcome, i) {
            (Some(outcome), Some(i)) if self.ctx.is_exit(i) => vars.with_flow(
                &exit::flow_variable(outcome, self.ctx.declared, &self.status),
            ),
            _ => vars,
        }
    }

    fn deps_satisfied(&self, i: usize) -> bool {
        // An exit step waits for the main steps' outcome; a main step it depends on then counts as done,
        // whatever its phase.
        if self.ctx.is_exit(i) && self.status.main_outcome.is_none() {
            return false;
        }
        self.ctx.dag.deps[i]
            .iter()
            .all(|&d| match self.step_phase(d) {
                _ if self.ctx.is_exit(i) && !self.ctx.is_exit(d) => true,
                StepPhase::Succeeded | StepPhase::Skipped => true,
                StepPhase::Failed => self.ctx.spec.steps[d].continue_on_failure,
                _ => false,
            })
    }

    /// Moves step `i` one phase if it can.
    fn advance(&mut self, i: usize) {
        let spec = self.ctx.spec;
        let step = &spec.steps[i];
        let suspended = spec.suspend;
        let failing = if self.ctx.is_exit(i) {
            self.failed_exit_step().is_some()
        } else {
            self.failed_step().is_some()
        };
        let now = self.ctx.now;
        let Ok(kind) = step_kind(step) else { return };
        match self.step_phase(i) {
            StepPhase::Pending if !failing && !suspended && self.deps_satisfied(i) => {
                self.start(i, kind);
            }
            StepPhase::Running => match kind {
                StepKind::Handler(_) if step.for_each.is_some() => {
                    let vars = self.vars_for(Some(i));
                    match foreach::items(step, &vars) {
                        Ok(items) => {
                            let (ctx, fx) = (&self.ctx, &mut self.fx);
                            let st = self.status.steps.entry(step.name.clone()).or_default();
                            foreach::advance(
                                ctx,
                                step,
                                st,
                                &items,
                                &vars,
                                suspended || failing,
                                fx,
                            );
                        }
                        Err(e) => self.fail_step(i, INVALID_INPUT, &e),
                    }
                }
                StepKind::Handler(_) => {
                    let st = self.status.steps.entry(step.name.clone()).or_default();
                    if is_due(&st.deadline, now) {
                        let attempt = st.attempts;
                        self.fx
                            .cancel_workers
                            .push(AttemptRef::step(&step.name, attempt));
                        let err = step_error(
                            TIMEOUT,
                            &format!("attempt {attempt} did not finish before its deadline"),
                            None,
                            attempt,
                        );
                        let note =
                            fail_attempt(&self.ctx, step, None, &mut Slot::of_step(st), err, true);
                        if st.phase == StepPhase::Failed {
                            st.finished_at = Some(past(now));
                        }
                        self.fx.notes.push(note);
                    }
                }
                StepKind::Flow(flow) if step.for_each.is_some() => {
                    let vars = self.vars_for(Some(i));
                    match foreach::items(step, &vars) {
                        Ok(items) => {
                            let (ctx, fx) = (&self.ctx, &mut self.fx);
                            let st = self.status.steps.entry(step.name.clone()).or_default();
                            let fan_out = foreach::FanOut {
                                ctx,
                                step,
                                items: &items,
                                vars: &vars,
                            };
                            fan_out.advance_children(flow, st, suspended || failing, fx);
                        }
                        Err(e) => self.fail_step(i, INVALID_INPUT, &e),
                    }
                }
                StepKind::Flow(flow) => {
                    let vars = self.vars_for(Some(i));
                    match child_spec(flow, spec, &vars) {
                        Ok(child) => {
                            let st = self.st(i);
                            let runs = st.retry_base;
                            let name = st.child.clone().unwrap_or_else(|| {
                                child_name_for(&self.ctx.meta.name, &step.name, runs)
                            });
                            self.fx.create_children.push(ChildFlowRequest {
                                step: step.name.clone(),
                                name,
                                spec: child,
                            });
                        }
                        Err(e) => self.fail_step(i, INVALID_INPUT, &e),
                    }
                }
                _ => {}
            },
            StepPhase::Retrying if !suspended && !failing => {
                let st = self.st(i);
                if is_due(&st.wake_at, now) {
                    Slot::of_step(st).reserve_next();
                }
            }
            StepPhase::Sleeping => {
                let st = self.st(i);
                if is_due(&st.wake_at, now) {
                    st.phase = StepPhase::Succeeded;
                    st.wake_at = None;
                    st.finished_at = Some(past(now));
                }
            }
            StepPhase::Waiting => {
                let StepKind::Signal(wait) = kind else { return };
                if let Some(signal) = self.status.signals.get(&wait.name) {
                    let payload = signal.payload.clone().unwrap_or(Value::Null);
                    if let Err(refused) = check_output(&payload, self.ctx.max_output()) {
                        let message = format!("signal payload: {}", refused.message);
                        self.fail_step(i, refused.type_, &message);
                        return;
                    }
                    let st = self.st(i);
                    st.phase = StepPhase::Succeeded;
                    st.output = stored(payload);
                    st.deadline = None;
                    st.finished_at = Some(past(now));
                    self.fx.notes.push(Note::normal(
                        "SignalReceived",
                        Some(&step.name),
                        format!("step {:?} received signal {:?}", step.name, wait.name),
                    ));
                } else if is_due(&self.st(i).deadline, now) {
                    let timeout = wait.timeout.clone().unwrap_or_default();
                    self.fail_step(
                        i,
                        TIMEOUT,
                        &format!("no signal {:?} arrived within {timeout}", wait.name),
                    );
                }
            }
            _ => {}
        }
    }

    /// Starts step `i` (its dependencies are satisfied).
    fn start(&mut self, i: usize, kind: StepKind<'_>) {
        let spec = self.ctx.spec;
        let step = &spec.steps[i];
        let now = self.ctx.now;
        let vars = self.vars_for(Some(i));
        if let Some(when) = &step.when {
            match expr::eval_condition(when, &vars) {
                Err(e) => return self.fail_step(i, INVALID_INPUT, &format!("when: {e}")),
                Ok(false) => {
                    let st = self.st(i);
                    st.phase = StepPhase::Skipped;
                    st.message = Some("skipped: `when` was false".into());
                    st.finished_at = Some(past(now));
                    return;
                }
                Ok(true) => {}
            }
        }
        match kind {
            StepKind::Handler(_) | StepKind::Flow(_) if step.for_each.is_some() => {
                match foreach::items(step, &vars) {
                    Ok(items) if items.len() > MAX_FOR_EACH_ITEMS => {
                        self.fail_step(i, TOO_MANY_ITEMS, &too_many_items(items.len()));
                    }
                    Ok(items) => {
                        let ctx = &self.ctx;
                        let st = self.status.steps.entry(step.name.clone()).or_default();
                        foreach::start(st, items.len(), ctx);
                    }
                    Err(e) => self.fail_step(i, INVALID_INPUT, &e),
                }
            }
            StepKind::Handler(_) => {
                let input = step.input.as_ref().map(|v| expr::resolve(v, &vars));
                match input.transpose() {
                    Ok(v) => {
                        self.inputs
                            .insert(step.name.clone(), v.unwrap_or(Value::Null));
                        Slot::of_step(self.st(i)).reserve_next();
                    }
                    Err(e) => self.fail_step(i, INVALID_INPUT, &format!("input: {e}")),
                }
            }
            StepKind::Sleep(d) => {
                let d = parse_duration(d).unwrap_or_default();
                let st = self.st(i);
                st.phase = StepPhase::Sleeping;
                st.started_at = Some(past(now));
                st.wake_at = Some(Time(after(now, d)));
            }
            StepKind::Until(u) => {
                let at = expr::resolve_str(u, &vars)
                    .map_err(|e| e.to_string())
                    .and_then(|v| match v {
                        Value::String(s) => parse_time(&s),
                        other => Err(format!(
                            "until must give an RFC 3339 time, but gave {}",
                            expr::short_json(&other)
                        )),
                    });
                match at {
                    Ok(at) => {
                        let st = self.st(i);
                        st.phase = StepPhase::Sleeping;
                        st.started_at = Some(past(now));
                        st.wake_at = Some(Time(ceil_second(at)));
                    }
                    Err(e) => self.fail_step(i, INVALID_INPUT, &format!("until: {e}")),
                }
            }
            StepKind::Signal(wait) => {
                let deadline = wait
                    .timeout
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .map(|t| Time(after(now, t)));
                let st = self.st(i);
                st.phase = StepPhase::Waiting;
                st.signal = Some(wait.name.clone());
                st.started_at = Some(past(now));
                st.deadline = deadline;
            }
            StepKind::Flow(flow) => match child_spec(flow, spec, &vars) {
                Ok(_) => {
                    let runs = self.st(i).retry_base;
                    let name = child_name_for(&self.ctx.meta.name, &step.name, runs);
                    self.fx.notes.push(Note::normal(
                        "ChildStarted",
                        Some(&step.name),
                        format!("step {:?} started child flow {name}", step.name),
                    ));
                    let st = self.st(i);
                    st.phase = StepPhase::Running;
                    st.started_at = Some(past(now));
                    st.child = Some(name);
                }
                Err(e) => self.fail_step(i, INVALID_INPUT, &e),
            },
        }
    }

    /// Fails step `i` for good (no retry: expression errors, signal timeouts, bad child specs ...).
    fn fail_step(&mut self, i: usize, type_: &str, message: &str) {
        let now = self.ctx.now;
        let name = self.ctx.spec.steps[i].name.clone();
        let st = self.st(i);
        st.phase = StepPhase::Failed;
        st.error = Some(step_error(type_, message, None, st.attempts));
        st.finished_at = Some(past(now));
        st.wake_at = None;
        st.deadline = None;
        self.fx.notes.push(Note::warning(
            "StepFailed",
            Some(&name),
            format!("step {name:?} failed: {type_}: {message}"),
        ));
    }

    /// Cancels every step that has not ended; their workers are asked to stop.
    fn cancel_all(&mut self, message: &str) {
        self.cancel_steps(0..self.ctx.spec.steps.len(), message);
    }

    /// Cancels the steps of `steps` that have not ended; their workers are asked to stop.
    fn cancel_steps(&mut self, steps: std::ops::Range<usize>, message: &str) {
        let now = self.ctx.now;
        for i in steps {
            if self.step_phase(i).is_terminal()
                || !self.status.steps.contains_key(&self.ctx.spec.steps[i].name)
            {
                continue;
            }
            self.stop_attempts(i);
            let st = self.st(i);
            st.phase = StepPhase::Cancelled;
            st.message = Some(message.to_owned());
            st.finished_at = Some(past(now));
            st.wake_at = None;
            st.deadline = None;
        }
    }

    /// Asks the workers of step `i`'s queued and running attempts to stop, and cancels its forEach instances
    /// that have not ended.
    fn stop_attempts(&mut self, i: usize) {
        let step = &self.ctx.spec.steps[i];
        let Some(st) = self.status.steps.get_mut(&step.name) else {
            return;
        };
        let handler = step.handler.is_some();
        if handler
            && step.for_each.is_none()
            && matches!(st.phase, StepPhase::Ready | StepPhase::Running)
        {
            self.fx
                .cancel_workers
                .push(AttemptRef::step(&step.name, st.attempts));
        }
        if let Some(inst) = st.instances.as_mut() {
            for (k, one) in inst.active.iter_mut() {
                if handler && matches!(one.phase, StepPhase::Ready | StepPhase::Running) {
                    let index = k.parse().unwrap_or(u32::MAX);
                    self.fx.cancel_workers.push(AttemptRef::instance(
                        &step.name,
                        index,
                        one.attempts,
                    ));
                }
                if let Some(child) = one.child.as_ref().filter(|_| !one.phase.is_terminal()) {
                    self.fx.cancel_children.push(child.clone());
                }
                if !one.phase.is_terminal() {
                    one.phase = StepPhase::Cancelled;
                    one.worker = None;
                    one.deadline = None;
                    one.wake_at = None;
                }
            }
        }
    }

    /// Keeps a running flow within its status budget (see [`super::budget`]): when the status measures
    /// `bytes`, over the budget, the step this decision grew the most fails with `StatusTooLarge` instead of
    /// growing (its entry goes back to what the decision started from), or, when no step grew, the step still
    /// going that holds the most; the run then ends as for any failed step. Returns whether a step failed.
    fn enforce_budget(&mut self, bytes: u64) -> bool {
        let limit = self.ctx.limits.max_status_bytes;
        // A run that ended keeps what it has: nothing it records grows any more.
        if bytes <= limit || self.phase().is_terminal() {
            return false;
        }
        let spec = self.ctx.spec;
        let held = Breakdown::of_status(&self.status);
        let grown = spec
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| {
                let new = self.status.steps.get(&step.name)?;
                let old = self.old.steps.get(&step.name);
                if old == Some(new) {
                    return None;
                }
                let growth = json_len(new) as i64 - old.map_or(0, json_len) as i64;
                (growth > 0).then_some((i, growth))
            })
            .max_by_key(|&(_, growth)| growth);
        let (i, grew) = match grown {
            Some((i, growth)) => {
                let name = &spec.steps[i].name;
                let old = self.old.steps.get(name).cloned().unwrap_or_default();
                let new = Breakdown::of_step(&self.status.steps[name]);
                let what = new.minus(&Breakdown::of_step(&old)).largest();
                // What this decision started or stored for the step is undone: it fails instead.
                self.status.steps.insert(name.clone(), old);
                self.fx.create_children.retain(|c| &c.step != name);
                (
                    i,
                    format!("step {name:?} grew it by {growth} bytes of {what}"),
                )
            }
            None => {
                let largest = spec
                    .steps
                    .iter()
                    .enumerate()
                    .filter_map(|(i, step)| {
                        let st = self.status.steps.get(&step.name)?;
                        (!st.phase.is_terminal()).then(|| (i, json_len(st)))
                    })
                    .max_by_key(|&(_, len)| len);
                let Some((i, len)) = largest else {
                    return false;
                };
                let name = &spec.steps[i].name;
                let of_step = Breakdown::of_step(&self.status.steps[name]);
                (
                    i,
                    format!(
                        "the status is over its budget, and step {name:?} holds the most of it of the steps \
                         still going ({len} bytes: {of_step})"
                    ),
                )
            }
        };
        let message = too_large(&grew, bytes, limit, &held);
        self.stop_attempts(i);
        let st = self.st(i);
        st.worker = None;
        self.fail_step(i, STATUS_TOO_LARGE, &message);
        self.conclude();
        true
    }

    /// Every step ended and none failed the run: resolve the flow output.
    fn succeed(&mut self) {
        let output = match &self.ctx.spec.output {
            None => Ok(None),
            Some(out) => expr::resolve(out, &self.vars_for(None))
                .map_err(|e| format!("spec.output: {e}"))
                .and_then(|v| {
                    check_output(&v, self.ctx.max_output())
                        .map(|()| Some(v))
                        .map_err(|refused| refused.message)
                })
                .map_err(|e| format!("the flow output could not be built: {e}")),
        };
        match output {
            Ok(output) => {
                self.status.output = output.and_then(stored);
                self.status.phase = Some(FlowPhase::Succeeded);
                self.fx.notes.push(Note::normal(
                    "FlowSucceeded",
                    None,
                    "the run succeeded".into(),
                ));
            }
            Err(message) => {
                self.fx
                    .notes
                    .push(Note::warning("FlowFailed", None, message.clone()));
                self.status.phase = Some(FlowPhase::Failed);
                self.ending = Some(Ending {
                    reason: "OutputFailed",
                    message,
                });
            }
        }
    }

    /// Derives progress, conditions, tasks and the wake-up time, and assembles the decision.
    fn finish(mut self) -> Decision {
        // A retried run is deciding afresh: its progress and conditions are recomputed.
        let was_terminal = self.old.phase.is_some_and(FlowPhase::is_terminal) && !self.retried;
        self.summarize(was_terminal);
        // Measured once per decision, exactly: the status as it will be written, signals included.
        let mut bytes = status_bytes(&self.status);
        if !was_terminal && self.enforce_budget(bytes) {
            self.summarize(was_terminal);
            bytes = status_bytes(&self.status);
        }
        let spec = self.ctx.spec;
        let phase = self.phase();

        let mut tasks = Vec::new();
        let mut wake_at = None;
        let mut cancel_children = Vec::new();
        // Children of cancelled steps: all of them once the run ended; while exit steps run, those of main
        // steps this decision cancelled.
        let ending = phase.is_terminal();
        for step in &spec.steps {
            if let Some(st) = self.status.steps.get(&step.name)
                && st.phase == StepPhase::Cancelled
                && let Some(child) = &st.child
                && (ending
                    || self
                        .old
                        .steps
                        .get(&step.name)
                        .is_none_or(|o| o.phase != StepPhase::Cancelled))
            {
                cancel_children.push(child.clone());
            }
        }
        cancel_children.append(&mut self.fx.cancel_children);
        if !ending {
            if !spec.suspend {
                tasks = self.tasks();
            }
            wake_at = self.wake_at();
        }
        self.status.status_bytes = Some(bytes);
        Decision {
            status: self.status,
            tasks,
            create_children: self.fx.create_children,
            cancel_children,
            cancel_workers: self.fx.cancel_workers,
            notes: self.fx.notes,
            wake_at,
        }
    }

    /// Derives the progress, the finish time and the conditions from the steps and the phase.
    fn summarize(&mut self, was_terminal: bool) {
        let spec = self.ctx.spec;
        let done = spec
            .steps
            .iter()
            .filter(|s| {
                self.status
                    .steps
                    .get(&s.name)
                    .is_some_and(|st| st.phase.is_terminal())
            })
            .count();
        if !(was_terminal && self.ending.is_none() && self.status.progress.is_some()) {
            self.status.progress = Some(format!("{done}/{}", spec.steps.len()));
        }
        if self.phase().is_terminal() && self.status.finished_at.is_none() {
            self.status.finished_at = Some(past(self.ctx.now));
        }
        self.conditions(was_terminal);
    }

    /// The queued attempts (phase Ready) with their resolved inputs.
    fn tasks(&self) -> Vec<Task> {
        let mut tasks = Vec::new();
        for &i in &self.ctx.dag.order {
            let step = &self.ctx.spec.steps[i];
            let Some(handler) = &step.handler else {
                continue;
            };
            let Some(st) = self.status.steps.get(&step.name) else {
                continue;
            };
            let old = self.old.steps.get(&step.name);
            let task = |attempt: AttemptRef, input: Value, fresh: bool| Task {
                attempt,
                pool: self.ctx.pool(step),
                handler: handler.clone(),
                input,
                timeout: self.ctx.timeout(step),
                heartbeat_timeout: self.ctx.heartbeat_timeout(step),
                fresh,
            };
            if step.for_each.is_none() {
                if st.phase != StepPhase::Ready {
                    continue;
                }
                let input = match self.inputs.get(&step.name) {
                    Some(v) => Ok(v.clone()),
                    None => step.input.as_ref().map_or(Ok(Value::Null), |v| {
                        expr::resolve(v, &self.vars_for(Some(i)))
                    }),
                };
                let Ok(input) = input else { continue };
                let fresh =
                    !old.is_some_and(|o| o.phase == StepPhase::Ready && o.attempts == st.attempts);
                tasks.push(task(
                    AttemptRef::step(&step.name, st.attempts),
                    input,
                    fresh,
                ));
            } else if st.phase == StepPhase::Running
                && let Some(inst) = &st.instances
            {
                let ready: Vec<(u32, u32)> = inst
                    .active
                    .iter()
                    .filter(|(_, one)| one.phase == StepPhase::Ready)
                    .filter_map(|(k, one)| Some((k.parse().ok()?, one.attempts)))
                    .collect();
                if ready.is_empty() {
                    continue;
                }
                let vars = self.vars_for(Some(i));
                let Ok(items) = foreach::items(step, &vars) else {
                    continue;
                };
                let mut ready = ready;
                ready.sort_unstable();
                for (index, attempts) in ready {
                    let item = items.get(index as usize).cloned().unwrap_or(Value::Null);
                    let Ok(input) = foreach::instance_input(step, &vars, &item, index) else {
                        continue;
                    };
                    let key = index.to_string();
                    let fresh = !old
                        .and_then(|o| o.instances.as_ref())
                        .and_then(|o| o.active.get(&key))
                        .is_some_and(|o| o.phase == StepPhase::Ready && o.attempts == attempts);
                    tasks.push(task(
                        AttemptRef::instance(&step.name, index, attempts),
                        input,
                        fresh,
                    ));
                }
            }
        }
        tasks
    }

    /// The earliest future time at which something would change by itself.
    fn wake_at(&self) -> Option<Timestamp> {
        let now = self.ctx.now;
        let hold = self.ctx.spec.suspend;
        let future = |t: &Option<Time>| t.as_ref().map(|t| t.0).filter(|t| *t > now);
        let mut wake = None;
        if self.waiting.is_some() {
            wake = Some(after(now, concurrency::RECHECK));
        }
        if self.status.main_outcome.is_none() && !self.main_ended() {
            wake = earliest(
                wake,
                exit::deadline(self.ctx.spec, &self.status).filter(|t| *t > now),
            );
        }
        for step in &self.ctx.spec.steps {
            let Some(st) = self.status.steps.get(&step.name) else {
                continue;
            };
            match st.phase {
                StepPhase::Sleeping => wake = earliest(wake, future(&st.wake_at)),
                StepPhase::Waiting | StepPhase::Running => {
                    wake = earliest(wake, future(&st.deadline))
                }
                StepPhase::Retrying if !hold => wake = earliest(wake, future(&st.wake_at)),
                _ => {}
            }
            if let Some(inst) = &st.instances {
                for one in inst.active.values() {
                    match one.phase {
                        StepPhase::Running => wake = earliest(wake, future(&one.deadline)),
                        StepPhase::Retrying if !hold => wake = earliest(wake, future(&one.wake_at)),
                        _ => {}
                    }
                }
            }
        }
        wake
    }

    /// Sets the conditions `Ready`, `Succeeded`, `Invalid` and `Suspended`.
    fn conditions(&mut self, was_terminal: bool) {
        let generation = self.ctx.meta.generation;
        let now = self.ctx.now;
        if was_terminal && self.ending.is_none() {
            // The run ended earlier: keep its conditions, only follow the generation.
            for c in &mut self.status.conditions {
                c.observed_generation = generation.or(c.observed_generation);
            }
            return;
        }
        let phase = self.phase();
        let phase_name = format!("{phase:?}");
        let suspended = self.ctx.spec.suspend && !phase.is_terminal();
        let (ending_reason, ending_message) = match &self.ending {
            Some(e) => (e.reason, e.message.clone()),
            None => ("", String::new()),
        };
        let invalid = ending_reason == "Invalid";
        let was_suspended = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True");
        if suspended != was_suspended {
            self.fx.notes.push(if suspended {
                Note::normal("Suspended", None, "dispatch of new steps is paused".into())
            } else {
                Note::normal("Resumed", None, "dispatch of new steps resumed".into())
            });
        }

        let (ready, ready_reason, ready_msg) = match phase {
            FlowPhase::Succeeded => ("True", "Succeeded", "the run succeeded".to_owned()),
            FlowPhase::Failed | FlowPhase::Cancelled => {
                ("False", ending_reason, ending_message.clone())
            }
            _ if suspended => (
                "False",
                "Suspended",
                "dispatch of new steps is paused".into(),
            ),
            _ if self.waiting.is_some() => (
                "False",
                "ConcurrencyLimit",
                self.waiting.clone().unwrap_or_default(),
            ),
            _ => (
                "False",
                phase_name.as_str(),
                self.status.progress.clone().unwrap_or_default(),
            ),
        };
        let ready_reason = ready_reason.to_owned();
        let (succ, succ_reason, succ_msg) = match phase {
            FlowPhase::Succeeded => (
                "True",
                "Succeeded".to_owned(),
                "the run succeeded".to_owned(),
            ),
            FlowPhase::Failed | FlowPhase::Cancelled => {
                ("False", ending_reason.to_owned(), ending_message.clone())
            }
            _ => (
                "Unknown",
                phase_name.clone(),
                "the run has not finished".to_owned(),
            ),
        };
        let conds = &mut self.status.conditions;
        set_condition(
            conds,
            "Ready",
            ready,
            &ready_reason,
            &ready_msg,
            generation,
            now,
        );
        set_condition(
            conds,
            "Succeeded",
            succ,
            &succ_reason,
            &succ_msg,
            generation,
            now,
        );
        if invalid {
            set_condition(
                conds,
                "Invalid",
                "True",
                "Invalid",
                &ending_message,
                generation,
                now,
            );
        } else {
            set_condition(
                conds,
                "Invalid",
                "False",
                "Valid",
                "the flow is valid",
                generation,
                now,
            );
        }
        if let (Some(limit), Some(slot)) = (&self.ctx.spec.concurrency, &self.status.concurrency) {
            let (status, reason, message) = match &self.waiting {
                Some(why) => ("False", "ConcurrencyLimit", why.clone()),
                None => (
                    "True",
                    "Admitted",
                    format!(
                        "admitted under concurrency key {:?} (limit {})",
                        slot.key, limit.limit
                    ),
                ),
            };
            set_condition(conds, "Admitted", status, reason, &message, generation, now);
        }
        if suspended {
            set_condition(
                conds,
                "Suspended",
                "True",
                "Suspended",
                "dispatch of new steps is paused (spec.suspend)",
                generation,
                now,
            );
        } else {
            set_condition(
                conds,
                "Suspended",
                "False",
                "NotSuspended",
                "",
                generation,
                now,
            );
        }
    }
}

/// Sets a condition; `lastTransitionTime` changes only when the status does.
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = sluice_wire::truncate_message(message, 32 * 1024);
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = past(now);
        }
        c.status = status.to_owned();
        c.reason = reason.to_owned();
        c.message = message;
        c.observed_generation = generation;
    } else {
        conds.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: past(now),
        });
    }
}
