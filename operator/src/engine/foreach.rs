//! forEach: one step expanded into indexed instances, at most `maxParallel` at a time (64 when the step does
//! not say, see [`DEFAULT_MAX_PARALLEL`]).
//!
//! The instances live in a compact [`InstancesStatus`]: counts, the outputs of Succeeded instances keyed by
//! index, and detail only for instances that started and have not Succeeded. When every instance Succeeded,
//! the step's output becomes the array of instance outputs in index order and the per-instance outputs are
//! dropped, so the data is stored once. An instance that fails for good fails the step; the other instances
//! still queued or running are cancelled.

use serde_json::Value;

use super::Ctx;
use super::attempt::{Slot, fail_attempt};
use super::budget::DEFAULT_MAX_PARALLEL;
use super::child::child_spec;
use super::decision::ChildFlowRequest;
use super::decision::{AttemptRef, Note};
use super::expr::{self, ExprError, Vars};
use super::output::{INVALID_INPUT, TIMEOUT, step_error};
use super::rerun::child_name_for;
use super::schedule::Effects;
use super::timers::{is_due, past};
use crate::api::{ChildFlow, InstanceStatus, InstancesStatus, Step, StepPhase, StepStatus};

/// Evaluates a step's `forEach` into its items.
pub fn items(step: &Step, vars: &Vars) -> Result<Vec<Value>, String> {
    let Some(fe) = &step.for_each else {
        return Ok(Vec::new());
    };
    match expr::resolve(fe, vars) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(other) => Err(format!(
            "forEach must give an array, but gave {}",
            expr::short_json(&other)
        )),
        Err(e) => Err(format!("forEach: {e}")),
    }
}

/// The input of instance `index`: the step's `input` resolved with `item` and `index`, or the item itself
/// when the step has no `input`.
pub fn instance_input(
    step: &Step,
    vars: &Vars,
    item: &Value,
    index: u32,
) -> Result<Value, ExprError> {
    match &step.input {
        Some(input) => expr::resolve(input, &vars.with_item(item, index)),
        None => Ok(item.clone()),
    }
}

/// The step output: instance outputs in index order.
pub fn aggregate_output(inst: &InstancesStatus) -> Value {
    Value::Array(
        (0..inst.total)
            .map(|i| {
                inst.outputs
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect(),
    )
}

/// Active instance keys in numeric order.
fn active_keys(inst: &InstancesStatus) -> Vec<String> {
    let mut keys: Vec<String> = inst.active.keys().cloned().collect();
    keys.sort_by_key(|k| k.parse::<u32>().unwrap_or(u32::MAX));
    keys
}

/// Starts a forEach step with `n` items.
pub(crate) fn start(st: &mut StepStatus, n: usize, ctx: &Ctx<'_>) {
    st.instances = Some(InstancesStatus {
        total: u32::try_from(n).unwrap_or(u32::MAX),
        ..Default::default()
    });
    st.started_at = Some(past(ctx.now));
    st.phase = StepPhase::Running;
}

/// Moves a running forEach step along: instance timeouts and retries, failure or success of the step, and
/// new instances up to `maxParallel` unless `hold` (suspended, or the run is failing).
pub(crate) fn advance(
    ctx: &Ctx<'_>,
    step: &Step,
    st: &mut StepStatus,
    items: &[Value],
    vars: &Vars,
    hold: bool,
    fx: &mut Effects,
) {
    let started = st.started_at.as_ref().map(|t| t.0);
    let Some(inst) = st.instances.as_mut() else {
        return;
    };
    for key in active_keys(inst) {
        let index = key.parse::<u32>().unwrap_or(u32::MAX);
        let Some(one) = inst.active.get_mut(&key) else {
            continue;
        };
        if one.phase == StepPhase::Running && is_due(&one.deadline, ctx.now) {
            let attempt = one.attempts;
            fx.cancel_workers
                .push(AttemptRef::instance(&step.name, index, attempt));
            let err = step_error(
                TIMEOUT,
                &format!("attempt {attempt} did not finish before its deadline"),
                None,
                attempt,
            );
            let note = fail_attempt(
                ctx,
                step,
                Some(index),
                &mut Slot::of_instance(one, started),
                err,
                true,
            );
            fx.notes.push(note);
            if one.phase == StepPhase::Failed {
                inst.failed += 1;
            }
        } else if one.phase == StepPhase::Retrying && !hold && is_due(&one.wake_at, ctx.now) {
            Slot::of_instance(one, started).reserve_next();
        }
    }
    if settle(ctx, step, st, fx) || hold {
        return;
    }
    let Some(inst) = st.instances.as_mut() else {
        return;
    };
    for index in to_start(step, inst) {
        let item = items.get(index as usize).cloned().unwrap_or(Value::Null);
        let one = match instance_input(step, vars, &item, index) {
            Ok(_) => InstanceStatus {
                phase: StepPhase::Ready,
                attempts: 1,
                ..Default::default()
            },
            Err(e) => {
                inst.failed += 1;
                InstanceStatus {
                    phase: StepPhase::Failed,
                    error: Some(step_error(INVALID_INPUT, &e.to_string(), None, 0)),
                    ..Default::default()
                }
            }
        };
        inst.active.insert(index.to_string(), one);
    }
    settle(ctx, step, st, fx);
}

/// A forEach step being moved along, with its items and the variables its expressions see.
pub(crate) struct FanOut<'a> {
    pub ctx: &'a Ctx<'a>,
    pub step: &'a Step,
    pub items: &'a [Value],
    pub vars: &'a Vars,
}

impl FanOut<'_> {
    /// Moves a running forEach over a `flow` step along: each instance is a child FlowRun, started up to
    /// `maxParallel` at a time unless `hold`; the step fails when an instance's child failed (the other
    /// children are cancelled) and succeeds when every child Succeeded. The children of running instances
    /// are asked for again at every decision, like a plain `flow` step's: creating one is idempotent, and a
    /// child deleted by hand comes back.
    pub(crate) fn advance_children(
        &self,
        flow: &ChildFlow,
        st: &mut StepStatus,
        hold: bool,
        fx: &mut Effects,
    ) {
        let (ctx, step) = (self.ctx, self.step);
        if settle(ctx, step, st, fx) {
            return;
        }
        let runs = st.retry_base;
        let Some(inst) = st.instances.as_mut() else {
            return;
        };
        for key in active_keys(inst) {
            let index = key.parse::<u32>().unwrap_or(u32::MAX);
            if let Some(one) = inst.active.get_mut(&key)
                && one.phase == StepPhase::Running
                && let Some(name) = one.child.clone()
                && let Err(e) = self.request_child(flow, index, name, fx)
            {
                fail_instance(one, &e);
                inst.failed += 1;
            }
        }
        let starting = if hold {
            Vec::new()
        } else {
            to_start(step, inst)
        };
        for index in starting {
            let name = instance_child_name(&ctx.meta.name, &step.name, index, runs);
            let mut one = InstanceStatus {
                phase: StepPhase::Running,
                attempts: 1,
                child: Some(name.clone()),
                ..Default::default()
            };
            if let Err(e) = self.request_child(flow, index, name, fx) {
                fail_instance(&mut one, &e);
                inst.failed += 1;
            }
            inst.active.insert(index.to_string(), one);
        }
        settle(ctx, step, st, fx);
    }

    /// Asks for the child FlowRun `name` of instance `index`, its input resolved with the instance's item.
    fn request_child(
        &self,
        flow: &ChildFlow,
        index: u32,
        name: String,
        fx: &mut Effects,
    ) -> Result<(), String> {
        let item = self
            .items
            .get(index as usize)
            .cloned()
            .unwrap_or(Value::Null);
        let vars = self.vars.with_item(&item, index);
        let spec = child_spec(flow, self.ctx.spec, &vars)?;
        fx.create_children.push(ChildFlowRequest {
            step: self.step.name.clone(),
            name,
            spec,
        });
        Ok(())
    }
}

/// The instances to start now, lowest index first: those not started yet, as many as `maxParallel` leaves
/// room for beside the instances still going.
fn to_start(step: &Step, inst: &InstancesStatus) -> Vec<u32> {
    let limit = step.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL).max(1) as usize;
    let in_flight = inst
        .active
        .values()
        .filter(|i| !i.phase.is_terminal())
        .count();
    (0..inst.total)
        .filter(|index| {
            let key = index.to_string();
            !inst.outputs.contains_key(&key) && !inst.active.contains_key(&key)
        })
        .take(limit.saturating_sub(in_flight))
        .collect()
}

/// The child FlowRun of instance `index` of a forEach over a `flow` step: `<run>-<step>-<index>`, with the
/// run's retry count after it once the run was retried (see [`child_name_for`]).
pub fn instance_child_name(parent: &str, step: &str, index: u32, runs: u32) -> String {
    child_name_for(parent, &format!("{step}-{index}"), runs)
}

fn fail_instance(one: &mut InstanceStatus, message: &str) {
    one.phase = StepPhase::Failed;
    one.error = Some(step_error(INVALID_INPUT, message, None, one.attempts));
}

/// Ends the step when an instance failed for good or every instance Succeeded. Returns whether it ended.
fn settle(ctx: &Ctx<'_>, step: &Step, st: &mut StepStatus, fx: &mut Effects) -> bool {
    let Some(inst) = st.instances.as_mut() else {
        return false;
    };
    let failed = active_keys(inst)
        .into_iter()
        .find(|k| inst.active[k].phase == StepPhase::Failed);
    if let Some(key) = failed {
        let cause = inst.active[&key].error.clone().unwrap_or_default();
        for (k, one) in inst.active.iter_mut() {
            if step.handler.is_some() && matches!(one.phase, StepPhase::Ready | StepPhase::Running)
            {
                let index = k.parse::<u32>().unwrap_or(u32::MAX);
                fx.cancel_workers
                    .push(AttemptRef::instance(&step.name, index, one.attempts));
            }
            if let Some(child) = one.child.as_ref().filter(|_| !one.phase.is_terminal()) {
                fx.cancel_children.push(child.clone());
            }
            if !one.phase.is_terminal() {
                one.phase = StepPhase::Cancelled;
                one.worker = None;
                one.deadline = None;
                one.wake_at = None;
            }
        }
        let message = format!("instance {key}: {}", cause.message);
        st.error = Some(step_error(
            &cause.type_,
            &message,
            cause.exit_code,
            cause.attempt,
        ));
        st.phase = StepPhase::Failed;
        st.finished_at = Some(past(ctx.now));
        fx.notes.push(Note::warning(
            "StepFailed",
            Some(&step.name),
            format!(
                "step {:?} failed: instance {key} failed ({})",
                step.name, cause.type_
            ),
        ));
        return true;
    }
    if inst.succeeded >= inst.total {
        st.output = Some(aggregate_output(inst));
        inst.outputs.clear();
        inst.active.clear();
        st.phase = StepPhase::Succeeded;
        st.finished_at = Some(past(ctx.now));
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn items_from_expressions_and_literals() {
        let vars = Vars::new(&json!({"items": [1, 2]}), &serde_json::Map::new());
        let step = |fe: Value| Step {
            for_each: Some(fe),
            ..Default::default()
        };
        assert_eq!(
            items(&step(json!("${{ input.items }}")), &vars).unwrap(),
            [json!(1), json!(2)]
        );
        assert_eq!(
            items(&step(json!(["a", "${{ input.items[1] }}"])), &vars).unwrap(),
            [json!("a"), json!(2)]
        );
        let e = items(&step(json!("${{ input }}")), &vars).unwrap_err();
        assert!(e.contains("must give an array"), "{e}");
        let e = items(&step(json!("${{ input.nope }}")), &vars).unwrap_err();
        assert!(e.starts_with("forEach: "), "{e}");
    }

    #[test]
    fn instance_input_defaults_to_the_item() {
        let vars = Vars::new(&json!({"k": "v"}), &serde_json::Map::new());
        let plain = Step::default();
        assert_eq!(
            instance_input(&plain, &vars, &json!({"a": 1}), 0).unwrap(),
            json!({"a": 1})
        );
        let with_input = Step {
            input: Some(json!({"x": "${{ item }}", "i": "${{ index }}", "k": "${{ input.k }}"})),
            ..Default::default()
        };
        assert_eq!(
            instance_input(&with_input, &vars, &json!("z"), 4).unwrap(),
            json!({"x": "z", "i": 4, "k": "v"})
        );
    }

    #[test]
    fn aggregates_in_index_order() {
        let mut inst = InstancesStatus {
            total: 12,
            ..Default::default()
        };
        for i in (0..12).rev() {
            inst.outputs.insert(i.to_string(), json!(i));
        }
        assert_eq!(
            aggregate_output(&inst),
            json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        );
    }
}
