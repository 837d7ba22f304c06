//! What a CronFlow should do now, as a pure function of its spec, its status, its runs and the time: which slot
//! to start (or why not), which runs to cancel (`Replace`) and to delete (history limits), the status to
//! record and when to look again. No I/O; the controller is the shell that carries the plan out.
//!
//! The rules, and why:
//! - **One run per slot.** A slot's run has a deterministic name (`<cronflow>-<unix seconds>`); a slot whose
//!   run exists is never started again, and only slots after `lastScheduleTime` are considered. The API server
//!   refuses a second create of the same name, which covers a status write lost in a crash.
//! - **At most one catch-up.** Only the latest due slot is ever started; earlier ones that never ran are
//!   reported as missed. After downtime that is one run at most (`RunOnce`), or none (`Skip`): a slot counts as
//!   missed while down when it came due before this operator started leading.
//! - **Starting deadline.** A slot is started only within `startingDeadlineSeconds` of its time.
//! - **Forbid** holds a due slot back while any run is active; the slot starts when the run ends, if its
//!   deadline allows (as a CronJob). **Replace** cancels the active runs and starts the new one.
//! - **Time zones.** Slots are computed in the CronFlow's IANA time zone by the cron parser, which follows
//!   Vixie cron across daylight saving changes (see `spec.timeZone`).

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

use crate::api::{
    CRONFLOW_LABEL, ConcurrencyPolicy, CronFlowSpec, FlowPhase, FlowRun, MissedSchedulePolicy,
    SCHEDULED_AT_ANNOTATION, scheduled_run_name,
};

/// Most earlier slots counted when reporting missed ones (a seconds schedule after a day of downtime would
/// otherwise be walked slot by slot).
pub const MISSED_COUNT_CAP: usize = 1000;

/// A schedule or time zone the operator cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "spec.schedule {schedule:?} is not a valid cron schedule ({reason}): use five fields (minute hour day-of-month month day-of-week) or six with leading seconds"
    )]
    Syntax {
        /// The schedule as written.
        schedule: String,
        /// What the parser said.
        reason: String,
    },
    /// The cron expression parses but no time ever matches it (e.g. February 30).
    #[error("spec.schedule {0:?} never matches any time: fix the day and month fields")]
    NeverMatches(String),
    /// The time zone is not in the time zone database.
    #[error(
        "spec.timeZone {0:?} is not a known IANA time zone: use a name such as Europe/Berlin, America/New_York or UTC"
    )]
    TimeZone(String),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses `schedule` (five fields, or six with leading seconds, or a `@daily`-style nickname) in
    /// `time_zone` (an IANA name; `None` is UTC).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))?
            }
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            // Six fields are seconds first, never a trailing year: the cluster's CronJobs have no year either.
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| ScheduleError::Syntax {
                schedule: schedule.to_owned(),
                reason: e.to_string(),
            })?;
        let this = Self { cron, tz };
        // Without a year field a schedule that matches once matches again within 28 years (the calendar
        // repeats), so one search from a fixed instant tells whether it ever does.
        if this.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(ScheduleError::NeverMatches(schedule.to_owned()));
        }
        Ok(this)
    }

    fn zoned(&self, t: Timestamp) -> Zoned {
        // Slots are whole seconds; the parser works on whole seconds too.
        let whole = Timestamp::from_second(t.as_second()).unwrap_or(t);
        whole.to_zoned(self.tz.clone())
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&self.zoned(t), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&self.zoned(t), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// How many slots lie strictly between `after` and `before`, counting at most `cap`.
    pub fn count_between(&self, after: Timestamp, before: Timestamp, cap: usize) -> usize {
        let mut n = 0;
        let mut t = after;
        while n < cap {
            match self.next_after(t) {
                Some(next) if next < before => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }
}

/// What the schedule logic needs to know of one run of the CronFlow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The FlowRun's name.
    pub name: String,
    /// The slot it was started for; `None` for a run started by hand.
    pub slot: Option<Timestamp>,
    /// Its phase (`None`: not picked up by the operator yet).
    pub phase: Option<FlowPhase>,
    /// Whether `spec.cancel` is set already.
    pub cancel_requested: bool,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// Whether it is being deleted.
    pub deleting: bool,
}

impl RunInfo {
    /// What matters of `fr`.
    pub fn of(fr: &FlowRun) -> Self {
        let status = fr.status.as_ref();
        Self {
            name: fr.metadata.name.clone().unwrap_or_default(),
            slot: fr
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_AT_ANNOTATION))
                .and_then(|s| s.parse().ok()),
            phase: status.and_then(|s| s.phase),
            cancel_requested: fr.spec.cancel,
            created: fr.metadata.creation_timestamp.as_ref().map(|t| t.0),
            finished: status.and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
            deleting: fr.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Whether `fr` was started by the CronFlow `cronflow`.
    pub fn belongs_to(fr: &FlowRun, cronflow: &str) -> bool {
        fr.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CRONFLOW_LABEL))
            .is_some_and(|c| c == cronflow)
    }

    fn is_active(&self) -> bool {
        !self.deleting && !self.phase.is_some_and(FlowPhase::is_terminal)
    }

    fn finished_as(&self, phases: &[FlowPhase]) -> bool {
        !self.deleting && self.phase.is_some_and(|p| phases.contains(&p))
    }

    /// Newest first: by end, then start, then name (names of scheduled runs grow with their slot).
    fn recency(
        &self,
    ) -> (
        Option<Timestamp>,
        Option<Timestamp>,
        Option<Timestamp>,
        &str,
    ) {
        (self.finished, self.slot, self.created, &self.name)
    }
}

/// Everything the decision is made on.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The CronFlow's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a CronFlowSpec,
    /// When it was created: slots before are never started.
    pub created: Timestamp,
    /// `status.lastScheduleTime` as stored.
    pub last_schedule: Option<Timestamp>,
    /// A later slot this process started or found started, which the stored status may not show yet (a
    /// cached CronFlow, or a status write that failed).
    pub remembered: Option<Timestamp>,
    /// `status.lastSuccessfulTime`.
    pub last_successful: Option<Timestamp>,
    /// Every run of the CronFlow that exists.
    pub runs: &'a [RunInfo],
    /// The time.
    pub now: Timestamp,
    /// Since when this operator leads: slots due before came due while no operator was running.
    pub online_since: Timestamp,
}

/// The latest slot that is due and not started yet, and what is done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDecision {
    /// The slot.
    pub slot: Timestamp,
    /// The name of its run.
    pub run: String,
    /// Earlier due slots after `lastScheduleTime` that will never run (capped at [`MISSED_COUNT_CAP`]).
    pub skipped_before: usize,
    /// Whether the slot came due before this operator started leading.
    pub while_down: bool,
    /// What is done.
    pub action: SlotAction,
}

/// What is done about a due slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// Create its run.
    Start,
    /// Its run exists already (created before a restart or a lost status write): only record it.
    AlreadyStarted,
    /// Not started: it came due while the operator was down and `missedSchedulePolicy` is `Skip`.
    SkippedWhileDown,
    /// Not started: `startingDeadlineSeconds` passed.
    TooLate {
        /// The deadline.
        deadline_seconds: u32,
    },
    /// Not started yet: `Forbid` and these runs are active. It starts when they end, deadline permitting.
    Blocked {
        /// The active runs.
        active: Vec<String>,
    },
}

/// What the CronFlow should do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The due slot, if any, and what is done about it.
    pub slot: Option<SlotDecision>,
    /// Runs to cancel (`Replace`).
    pub cancel: Vec<String>,
    /// Finished runs to delete, past the history limits.
    pub delete: Vec<String>,
    /// `status.lastScheduleTime` to record.
    pub last_schedule: Option<Timestamp>,
    /// `status.lastSuccessfulTime` to record.
    pub last_successful: Option<Timestamp>,
    /// Runs that have not finished (after the plan's starts), oldest first.
    pub active: Vec<String>,
    /// The next slot after now, unless suspended: when to look again at the latest.
    pub next: Option<Timestamp>,
}

/// Decides what the CronFlow described by `o` should do at `o.now`, with its schedule parsed as `schedule`.
pub fn decide(o: &Observed<'_>, schedule: &Schedule) -> Plan {
    let mut active: Vec<&RunInfo> = o.runs.iter().filter(|r| r.is_active()).collect();
    active.sort_by(|a, b| (a.slot.or(a.created), &a.name).cmp(&(b.slot.or(b.created), &b.name)));
    let mut plan = Plan {
        last_schedule: o.last_schedule.max(o.remembered),
        last_successful: o
            .runs
            .iter()
            .filter(|r| r.phase == Some(FlowPhase::Succeeded))
            .filter_map(|r| r.finished)
            .chain(o.last_successful)
            .max(),
        active: active.iter().map(|r| r.name.clone()).collect(),
        delete: over_history(o),
        ..Plan::default()
    };
    if o.spec.suspend {
        return plan;
    }
    plan.next = schedule.next_after(o.now);

    // Only slots after the last one started, and after the CronFlow was created, are due.
    let recorded = o.last_schedule.max(o.remembered);
    let floor = recorded.map_or(o.created, |l| l.max(o.created));
    let Some(slot) = schedule
        .latest_at_or_before(o.now)
        .filter(|slot| *slot > floor)
    else {
        return plan;
    };
    let run = scheduled_run_name(o.name, slot.as_second());
    let while_down = slot < o.online_since;
    let action = if o.runs.iter().any(|r| r.name == run) {
        SlotAction::AlreadyStarted
    } else if while_down && o.spec.missed_schedule_policy == MissedSchedulePolicy::Skip {
        SlotAction::SkippedWhileDown
    } else if let Some(deadline) = o.spec.starting_deadline_seconds
        && o.now.duration_since(slot) > SignedDuration::from_secs(i64::from(deadline))
    {
        SlotAction::TooLate {
            deadline_seconds: deadline,
        }
    } else if o.spec.concurrency_policy == ConcurrencyPolicy::Forbid && !active.is_empty() {
        SlotAction::Blocked {
            active: plan.active.clone(),
        }
    } else {
        SlotAction::Start
    };
    match action {
        SlotAction::Start => {
            if o.spec.concurrency_policy == ConcurrencyPolicy::Replace {
                plan.cancel = active
                    .iter()
                    .filter(|r| !r.cancel_requested)
                    .map(|r| r.name.clone())
                    .collect();
            }
            plan.active.push(run.clone());
            plan.last_schedule = Some(slot);
        }
        SlotAction::AlreadyStarted => plan.last_schedule = Some(slot),
        _ => {}
    }
    plan.slot = Some(SlotDecision {
        slot,
        run,
        skipped_before: schedule.count_between(floor, slot, MISSED_COUNT_CAP),
        while_down,
        action,
    });
    plan
}

/// Finished runs past the history limits, oldest first among each kind. A scheduled run is deleted only once
/// the stored status records its slot: deleted before, a crash could leave no trace that the slot ran, and it
/// would start again.
fn over_history(o: &Observed<'_>) -> Vec<String> {
    let mut delete = vec![];
    for (phases, keep) in [
        (&[FlowPhase::Succeeded][..], o.spec.successful_history()),
        (
            &[FlowPhase::Failed, FlowPhase::Cancelled][..],
            o.spec.failed_history(),
        ),
    ] {
        let mut finished: Vec<&RunInfo> = o.runs.iter().filter(|r| r.finished_as(phases)).collect();
        finished.sort_by(|a, b| b.recency().cmp(&a.recency()));
        delete.extend(
            finished
                .into_iter()
                .skip(usize::try_from(keep).unwrap_or(usize::MAX))
                .filter(|r| r.slot.is_none_or(|slot| Some(slot) <= o.last_schedule))
                .rev()
                .map(|r| r.name.clone()),
        );
    }
    delete
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// A schedule in UTC.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, None)
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
