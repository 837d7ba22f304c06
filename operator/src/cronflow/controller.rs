//! The CronFlow controller: for every CronFlow, list its runs → [`decide`] → create, cancel, delete → write
//! the status, and look again at the next slot (or when one of its runs finishes).
//!
//! Writes, and why each is safe to repeat:
//! - a run is created under its slot's deterministic name; `AlreadyExists` means it was created before (by this
//!   process or one that crashed before recording it), so a slot never starts twice;
//! - `spec.cancel: true` on the active runs when `Replace` starts a new one (a merge patch, idempotent);
//! - deletes of finished runs past the history limits, on their UID;
//! - the status, by server-side apply under the operator's field manager, only when it changed;
//! - Events: `Scheduled`, `MissedSchedule`, `RunStillActive`, `Replaced`, `DeletedRun`, `InvalidSchedule`.
//!
//! Runs are listed from the API server on every reconcile rather than read from a cache: a run created a
//! moment ago must be seen by the next decision (`Forbid` would otherwise overlap it). That is one list per
//! slot per CronFlow. The controller also remembers the last slot it started per CronFlow, so a reconcile on
//! a cached CronFlow whose status does not show that slot yet never starts it again after its run was
//! deleted by the history limit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::Error;
use super::schedule::{Observed, Plan, RunInfo, Schedule, SlotAction, decide};
use crate::api::{CRONFLOW_LABEL, CronFlow, CronFlowStatus, FlowRun, Trigger};
use crate::context::{FIELD_MANAGER, Scope, event_recorder};
use crate::telemetry::Metrics;

/// Longest wait between two looks at a CronFlow, whatever its schedule says: a wall clock that jumps (the
/// timers count monotonic time) is noticed within this.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The runs that wake their CronFlow: finished ones (a `Forbid` slot may start, history may be trimmed). The API
/// server filters, so the status writes of running flows never reach this controller.
const FINISHED_SELECTOR: &str = "status.phase!=,status.phase!=Pending,status.phase!=Running";

/// The condition type this controller reports.
pub const READY: &str = "Ready";

/// Starts FlowRuns on the schedules of CronFlows. Run it only while leading, like every other writer.
pub struct CronFlowController {
    client: Client,
    scope: Scope,
    metrics: Metrics,
    instance: Option<String>,
}

impl CronFlowController {
    /// A controller over the CronFlows of `scope`, reporting Events from `instance` (the pod name).
    pub fn new(client: Client, scope: Scope, metrics: Metrics, instance: Option<String>) -> Self {
        Self {
            client,
            scope,
            metrics,
            instance,
        }
    }

    /// Runs until `shutdown`. Slots that came due before this call count as missed while the operator was
    /// down (`missedSchedulePolicy`).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        let ctx = Arc::new(Context {
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            recorder: event_recorder(self.client.clone(), self.instance.clone()),
            online_since: Timestamp::now(),
            memory: Mutex::default(),
        });
        let controllers = self
            .scope
            .apis::<CronFlow>(&self.client)
            .into_iter()
            .zip(self.scope.apis::<FlowRun>(&self.client))
            .map(|(cronflows, runs)| {
                let finished_runs = watcher::Config::default()
                    .labels(CRONFLOW_LABEL)
                    .fields(FINISHED_SELECTOR)
                    .any_semantic();
                Controller::new(cronflows, watcher::Config::default().any_semantic())
                    .watches(runs, finished_runs, |run: FlowRun| {
                        let namespace = run.namespace().unwrap_or_default();
                        run.labels()
                            .get(CRONFLOW_LABEL)
                            .map(|cf| ObjectRef::new(cf).within(&namespace))
                    })
                    .graceful_shutdown_on(shutdown.clone())
                    .run(reconcile, error_policy, ctx.clone())
                    .for_each(|result| async move {
                        if let Err(e) = result {
                            debug!(error = %e, "CronFlow reconcile failed");
                        }
                    })
            });
        join_all(controllers).await;
        info!("CronFlow controller stopped");
    }
}

/// What reconcile needs.
struct Context {
    client: Client,
    metrics: Metrics,
    recorder: Recorder,
    online_since: Timestamp,
    memory: Mutex<HashMap<(String, String), Memory>>,
}

/// What the controller remembers of one CronFlow (lost on restart; the API server has what matters).
#[derive(Default)]
struct Memory {
    uid: String,
    /// The last slot this process started or found started.
    last_schedule: Option<Timestamp>,
    /// The last slot reported missed or held back, so that a reconcile per second does not repeat the Event.
    reported: Option<Timestamp>,
    /// The generation whose invalid schedule was reported.
    invalid_reported: Option<i64>,
}

impl Context {
    fn with_memory<T>(&self, cf: &CronFlow, f: impl FnOnce(&mut Memory) -> T) -> T {
        let key = (cf.namespace().unwrap_or_default(), cf.name_any());
        let uid = cf.uid().unwrap_or_default();
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let entry = memory.entry(key).or_default();
        if entry.uid != uid {
            // A CronFlow re-created under the same name starts afresh.
            *entry = Memory {
                uid,
                ..Memory::default()
            };
        }
        f(entry)
    }

    fn forget(&self, cf: &CronFlow) {
        let key = (cf.namespace().unwrap_or_default(), cf.name_any());
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    async fn publish(&self, cf: &CronFlow, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Schedule".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &cf.object_ref(&())).await {
            warn!(reason, error = %e, "cannot publish Event");
        }
    }
}

#[instrument(skip_all, fields(namespace = cf.namespace().unwrap_or_default(), cronflow = %cf.name_any()))]
async fn reconcile(cf: Arc<CronFlow>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cf.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes its runs through their owner references.
        ctx.forget(&cf);
        return Ok(Action::await_change());
    }
    let namespace = cf.namespace().unwrap_or_default();
    let name = cf.name_any();
    let now = Timestamp::now();

    let schedule = match Schedule::parse(&cf.spec.schedule, cf.spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let generation = cf.metadata.generation;
            if ctx.with_memory(&cf, |m| {
                std::mem::replace(&mut m.invalid_reported, generation) != generation
            }) {
                warn!(error = %e, "invalid schedule");
                ctx.publish(&cf, EventType::Warning, "InvalidSchedule", e.to_string())
                    .await;
            }
            let mut status = cf.status.clone().unwrap_or_default();
            status.observed_generation = generation;
            status.next_schedule_time = None;
            status.conditions = vec![ready(&cf, false, "InvalidSchedule", e.to_string())];
            write_status(&ctx, &cf, status).await?;
            // Nothing changes until the spec does.
            return Ok(Action::await_change());
        }
    };

    // Every run of this CronFlow, fresh from the API server (see the module docs).
    let runs_api: Api<FlowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = cf.uid().unwrap_or_default();
    let runs: Vec<RunInfo> = runs_api
        .list(&ListParams::default().labels(&format!("{CRONFLOW_LABEL}={name}")))
        .await?
        .items
        .iter()
        .filter(|fr| fr.owner_references().iter().any(|o| o.uid == uid))
        .map(RunInfo::of)
        .collect();

    let status = cf.status.clone().unwrap_or_default();
    let remembered = ctx.with_memory(&cf, |m| m.last_schedule);
    let observed = Observed {
        name: &name,
        spec: &cf.spec,
        created: cf.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
        last_schedule: status.last_schedule_time.as_ref().map(|t| t.0),
        remembered,
        last_successful: status.last_successful_time.as_ref().map(|t| t.0),
        runs: &runs,
        now,
        online_since: ctx.online_since,
    };
    let plan = decide(&observed, &schedule);
    carry_out(&ctx, &cf, &runs_api, &plan).await?;

    let next = CronFlowStatus {
        observed_generation: cf.metadata.generation,
        last_schedule_time: plan.last_schedule.map(Time),
        last_successful_time: plan.last_successful.map(Time),
        active_count: u32::try_from(plan.active.len()).unwrap_or(u32::MAX),
        active: plan.active.clone(),
        next_schedule_time: plan.next.map(Time),
        conditions: vec![if cf.spec.suspend {
            ready(
                &cf,
                true,
                "Suspended",
                "spec.suspend is true: no run starts until it is set back to false".to_owned(),
            )
        } else {
            ready(
                &cf,
                true,
                "Scheduling",
                "the schedule is valid: a run starts at every slot".to_owned(),
            )
        }],
    };
    write_status(&ctx, &cf, next).await?;

    // A slot that passed while this reconcile ran (a slow API server) is due at once, not in MAX_WAIT.
    let wait = plan.next.map_or(MAX_WAIT, |n| {
        Duration::try_from(n.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
    });
    let wait = wait.min(MAX_WAIT);
    // Timers may fire a hair early; the slot must be due when we look.
    Ok(Action::requeue(wait + Duration::from_millis(5)))
}

/// Carries out the plan: cancels, the slot's run, deletes; and the Events that go with them.
async fn carry_out(
    ctx: &Context,
    cf: &CronFlow,
    runs_api: &Api<FlowRun>,
    plan: &Plan,
) -> Result<(), Error> {
    for run in &plan.cancel {
        match runs_api
            .patch(
                run,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"cancel": true}})),
            )
            .await
        {
            Ok(_) => {}
            // Gone meanwhile: nothing left to cancel.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        info!(flowrun = %run, "cancelled an active run (concurrencyPolicy Replace)");
        ctx.publish(
            cf,
            EventType::Normal,
            "Replaced",
            format!("cancelled FlowRun {run}: concurrencyPolicy is Replace and a new run is due"),
        )
        .await;
    }

    if let Some(slot) = &plan.slot {
        let earlier = match slot.skipped_before {
            0 => String::new(),
            n => format!(
                "; {n}{} earlier slot{} did not run",
                if n >= super::schedule::MISSED_COUNT_CAP {
                    "+"
                } else {
                    ""
                },
                if n == 1 { "" } else { "s" }
            ),
        };
        match &slot.action {
            SlotAction::Start => {
                let run = cf.flow_run(Trigger::Scheduled(slot.slot.as_second()));
                match runs_api.create(&PostParams::default(), &run).await {
                    Ok(_) => {
                        ctx.metrics.cronflow_runs_started.inc();
                        let late = Timestamp::now().duration_since(slot.slot);
                        info!(flowrun = %slot.run, slot = %slot.slot, late_ms = late.as_millis(), caught_up = slot.while_down, "started a scheduled run");
                        let note = if slot.while_down {
                            format!(
                                "created FlowRun {} for the slot at {}, missed while the operator was down (caught up once){earlier}",
                                slot.run, slot.slot
                            )
                        } else {
                            format!(
                                "created FlowRun {} for the slot at {}{earlier}",
                                slot.run, slot.slot
                            )
                        };
                        ctx.publish(cf, EventType::Normal, "Scheduled", note).await;
                    }
                    // Created before: by this process a moment ago, or by one that crashed before recording it.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        debug!(flowrun = %slot.run, "the slot's run exists already");
                    }
                    Err(e) => return Err(e.into()),
                }
                ctx.with_memory(cf, |m| {
                    m.last_schedule = m.last_schedule.max(Some(slot.slot))
                });
            }
            SlotAction::AlreadyStarted => {
                ctx.with_memory(cf, |m| {
                    m.last_schedule = m.last_schedule.max(Some(slot.slot))
                });
            }
            other => {
                let first =
                    ctx.with_memory(cf, |m| m.reported.replace(slot.slot) != Some(slot.slot));
                if first {
                    let (type_, reason, why) = match other {
                        SlotAction::SkippedWhileDown => (
                            EventType::Warning,
                            "MissedSchedule",
                            "it came due while the operator was down and missedSchedulePolicy is Skip".to_owned(),
                        ),
                        SlotAction::TooLate { deadline_seconds } => (
                            EventType::Warning,
                            "MissedSchedule",
                            format!("its startingDeadlineSeconds ({deadline_seconds} s) passed"),
                        ),
                        SlotAction::Blocked { active } => (
                            EventType::Normal,
                            "RunStillActive",
                            format!(
                                "concurrencyPolicy is Forbid and {} still running; it starts when they finish, if its deadline allows",
                                active.join(", ")
                            ),
                        ),
                        SlotAction::Start | SlotAction::AlreadyStarted => unreachable!(),
                    };
                    info!(slot = %slot.slot, reason, "a due slot did not start");
                    ctx.publish(
                        cf,
                        type_,
                        reason,
                        format!("the slot at {} did not start: {why}{earlier}", slot.slot),
                    )
                    .await;
                }
            }
        }
    }

    for run in &plan.delete {
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match runs_api.delete(run, &params).await {
            Ok(_) => {
                debug!(flowrun = %run, "deleted a finished run past the history limit");
                ctx.publish(
                    cf,
                    EventType::Normal,
                    "DeletedRun",
                    format!("deleted finished FlowRun {run}: past the history limit"),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The `Ready` condition, keeping its transition time while its status stays the same.
fn ready(cf: &CronFlow, ok: bool, reason: &str, message: String) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = cf
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: cf.metadata.generation,
        last_transition_time,
    }
}

/// Writes `status` by server-side apply, unless it is what the CronFlow shows already.
async fn write_status(ctx: &Context, cf: &CronFlow, status: CronFlowStatus) -> Result<(), Error> {
    if cf.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<CronFlow> =
        Api::namespaced(ctx.client.clone(), &cf.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": CronFlow::api_version(&()),
        "kind": CronFlow::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            &cf.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to record.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(cf: Arc<CronFlow>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cronflow = %cf.name_any(), error = %error, "CronFlow reconcile failed");
    ctx.metrics
        .reconcile_error("cronflow", error.metric_label());
    Action::requeue(Duration::from_secs(2))
}
