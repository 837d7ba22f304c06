//! The schedule logic with an injected clock: unit tests of each rule, property tests of the invariants over
//! random histories (operator restarts, lost status writes, runs finishing at random), and daylight saving.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::api::{ConcurrencyPolicy, CronFlowSpec, FlowPhase, MissedSchedulePolicy};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn secs(n: i64) -> Timestamp {
    Timestamp::from_second(n).unwrap()
}

fn spec(schedule: &str) -> CronFlowSpec {
    CronFlowSpec {
        schedule: schedule.to_owned(),
        ..CronFlowSpec::default()
    }
}

fn run(name: &str, slot: Option<i64>, phase: Option<FlowPhase>, finished: Option<i64>) -> RunInfo {
    RunInfo {
        name: name.to_owned(),
        slot: slot.map(secs),
        phase,
        cancel_requested: false,
        created: slot.map(secs),
        finished: finished.map(secs),
        deleting: false,
    }
}

fn observed<'a>(spec: &'a CronFlowSpec, runs: &'a [RunInfo], now: i64) -> Observed<'a> {
    Observed {
        name: "nightly",
        spec,
        created: secs(0),
        last_schedule: None,
        remembered: None,
        last_successful: None,
        runs,
        now: secs(now),
        online_since: secs(0),
    }
}

#[test]
fn five_and_six_fields_and_nicknames_parse() {
    let every_ten = Schedule::parse("*/10 * * * * *", None).unwrap();
    assert_eq!(every_ten.next_after(secs(95)), Some(secs(100)));
    assert_eq!(every_ten.latest_at_or_before(secs(100)), Some(secs(100)));
    assert_eq!(every_ten.latest_at_or_before(secs(99)), Some(secs(90)));
    let hourly = Schedule::parse("0 * * * *", None).unwrap();
    assert_eq!(hourly.next_after(secs(1)), Some(secs(3600)));
    let nickname = Schedule::parse("@hourly", None).unwrap();
    assert_eq!(nickname.next_after(secs(1)), Some(secs(3600)));
    assert_eq!(every_ten.count_between(secs(0), secs(60), 1000), 5);
    assert_eq!(every_ten.count_between(secs(0), secs(60), 3), 3);
}

#[test]
fn bad_schedules_and_zones_are_refused_with_the_field() {
    for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "0 0 30 2 *"] {
        let e = Schedule::parse(bad, None).unwrap_err();
        assert!(e.to_string().contains("spec.schedule"), "{bad}: {e}");
    }
    assert!(matches!(
        Schedule::parse("0 0 30 2 *", None),
        Err(ScheduleError::NeverMatches(_))
    ));
    let e = Schedule::parse("0 3 * * *", Some("Mars/Olympus_Mons")).unwrap_err();
    assert_eq!(e, ScheduleError::TimeZone("Mars/Olympus_Mons".into()));
    assert!(e.to_string().contains("spec.timeZone"));
    Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
}

#[test]
fn a_due_slot_starts_once_under_its_deterministic_name() {
    let spec = spec("*/10 * * * * *");
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let plan = decide(&observed(&spec, &[], 101), &s);
    let slot = plan.slot.clone().unwrap();
    assert_eq!(slot.action, SlotAction::Start);
    assert_eq!(slot.run, "nightly-100");
    assert_eq!(plan.last_schedule, Some(secs(100)));
    assert_eq!(plan.active, ["nightly-100"]);
    assert_eq!(plan.next, Some(secs(110)));

    // Its run exists, status not written yet (a crash in between): recorded, not started again.
    let runs = [run("nightly-100", Some(100), None, None)];
    let plan = decide(&observed(&spec, &runs, 102), &s);
    assert_eq!(plan.slot.unwrap().action, SlotAction::AlreadyStarted);
    assert_eq!(plan.last_schedule, Some(secs(100)));

    // Recorded: nothing is due until the next slot.
    let mut o = observed(&spec, &runs, 105);
    o.last_schedule = Some(secs(100));
    assert_eq!(decide(&o, &s).slot, None);
}

#[test]
fn slots_before_the_cronflow_existed_never_run() {
    let spec = spec("*/10 * * * * *");
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let mut o = observed(&spec, &[], 105);
    o.created = secs(103);
    assert_eq!(decide(&o, &s).slot, None);
    o.now = secs(110);
    assert_eq!(decide(&o, &s).slot.unwrap().run, "nightly-110");
}

#[test]
fn after_downtime_the_latest_slot_runs_once_or_none() {
    let spec = spec("*/10 * * * * *");
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    // Last run at 100, the operator was down until 165: 110..160 came due meanwhile.
    let mut o = observed(&spec, &[], 165);
    o.last_schedule = Some(secs(100));
    o.online_since = secs(164);
    let slot = decide(&o, &s).slot.unwrap();
    assert_eq!(
        (slot.run.as_str(), slot.while_down, slot.skipped_before),
        ("nightly-160", true, 5)
    );
    assert_eq!(slot.action, SlotAction::Start);

    let skip = CronFlowSpec {
        missed_schedule_policy: MissedSchedulePolicy::Skip,
        ..spec.clone()
    };
    o.spec = &skip;
    let plan = decide(&o, &s);
    assert_eq!(plan.slot.unwrap().action, SlotAction::SkippedWhileDown);
    assert_eq!(plan.last_schedule, Some(secs(100)));
    // The next slot, due after the operator came back, runs as usual.
    o.now = secs(170);
    assert_eq!(decide(&o, &s).slot.unwrap().action, SlotAction::Start);
}

#[test]
fn the_starting_deadline_is_honoured() {
    let mut spec = spec("*/10 * * * * *");
    spec.starting_deadline_seconds = Some(3);
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    assert_eq!(
        decide(&observed(&spec, &[], 103), &s).slot.unwrap().action,
        SlotAction::Start
    );
    assert_eq!(
        decide(&observed(&spec, &[], 104), &s).slot.unwrap().action,
        SlotAction::TooLate {
            deadline_seconds: 3
        }
    );
}

#[test]
fn forbid_holds_the_slot_back_and_replace_cancels() {
    let mut spec = spec("*/10 * * * * *");
    spec.concurrency_policy = ConcurrencyPolicy::Forbid;
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let runs = [run("nightly-90", Some(90), Some(FlowPhase::Running), None)];
    let mut o = observed(&spec, &runs, 101);
    o.last_schedule = Some(secs(90));
    let plan = decide(&o, &s);
    assert_eq!(
        plan.slot.unwrap().action,
        SlotAction::Blocked {
            active: vec!["nightly-90".into()]
        }
    );
    assert_eq!(plan.last_schedule, Some(secs(90)));
    assert_eq!(plan.active, ["nightly-90"]);

    // It finished: the held slot starts, late.
    let done = [run(
        "nightly-90",
        Some(90),
        Some(FlowPhase::Succeeded),
        Some(104),
    )];
    o.runs = &done;
    o.now = secs(105);
    let plan = decide(&o, &s);
    assert_eq!(plan.slot.unwrap().run, "nightly-100");
    assert_eq!(plan.last_successful, Some(secs(104)));

    spec.concurrency_policy = ConcurrencyPolicy::Replace;
    let mut o = observed(&spec, &runs, 101);
    o.last_schedule = Some(secs(90));
    let plan = decide(&o, &s);
    assert_eq!(plan.slot.unwrap().action, SlotAction::Start);
    assert_eq!(plan.cancel, ["nightly-90"]);
    assert_eq!(plan.active, ["nightly-90", "nightly-100"]);
}

#[test]
fn history_limits_keep_the_newest_finished_runs() {
    let spec = spec("*/10 * * * * *");
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let runs: Vec<RunInfo> = (1..=6)
        .map(|i| {
            let phase = if i % 2 == 0 {
                FlowPhase::Succeeded
            } else {
                FlowPhase::Failed
            };
            run(
                &format!("nightly-{}", i * 10),
                Some(i * 10),
                Some(phase),
                Some(i * 10 + 5),
            )
        })
        .chain([run("nightly-70", Some(70), Some(FlowPhase::Running), None)])
        .collect();
    let mut o = observed(&spec, &runs, 75);
    o.last_schedule = Some(secs(70));
    let plan = decide(&o, &s);
    // Succeeded: 20, 40, 60 kept (3). Failed: 50 kept (1); 10 and 30 go, oldest first.
    assert_eq!(plan.delete, ["nightly-10", "nightly-30"]);
    assert_eq!(plan.active, ["nightly-70"]);
    assert_eq!(plan.last_successful, Some(secs(65)));
}

#[test]
fn suspended_nothing_starts_and_history_is_still_kept() {
    let mut spec = spec("*/10 * * * * *");
    spec.suspend = true;
    spec.successful_runs_history_limit = Some(0);
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let runs = [run(
        "nightly-10",
        Some(10),
        Some(FlowPhase::Succeeded),
        Some(12),
    )];
    let mut o = observed(&spec, &runs, 101);
    // Not deleted before the stored status records its slot.
    assert_eq!(decide(&o, &s).delete, Vec::<String>::new());
    o.last_schedule = Some(secs(10));
    let plan = decide(&o, &s);
    assert_eq!(plan.slot, None);
    assert_eq!(plan.next, None);
    assert_eq!(plan.delete, ["nightly-10"]);
}

#[test]
fn on_resume_the_latest_slot_missed_while_suspended_starts_once_within_its_deadline() {
    // Suspended from 105 to 163 with the operator up: on resume only 160 starts (as a CronJob would).
    let spec = spec("*/10 * * * * *");
    let s = Schedule::parse(&spec.schedule, None).unwrap();
    let mut o = observed(&spec, &[], 163);
    o.last_schedule = Some(secs(100));
    let slot = decide(&o, &s).slot.unwrap();
    assert_eq!((slot.run.as_str(), slot.skipped_before), ("nightly-160", 5));
    assert_eq!(slot.action, SlotAction::Start);
    // With a deadline shorter than the wait, it does not.
    let with_deadline = CronFlowSpec {
        starting_deadline_seconds: Some(2),
        ..spec.clone()
    };
    o.spec = &with_deadline;
    assert_eq!(
        decide(&o, &s).slot.unwrap().action,
        SlotAction::TooLate {
            deadline_seconds: 2
        }
    );
}

#[test]
fn daylight_saving_in_a_time_zone() {
    // Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST; 2026-10-25 03:00 CEST → 02:00 CET.
    let daily = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
    // 02:30 does not exist on the 29th of March: it runs right after the gap, at 03:00 CEST (01:00 UTC).
    assert_eq!(
        daily.next_after(t("2026-03-28T12:00:00Z")),
        Some(t("2026-03-29T01:00:00Z"))
    );
    // The day before and after, 02:30 local.
    assert_eq!(
        daily.next_after(t("2026-03-27T12:00:00Z")),
        Some(t("2026-03-28T01:30:00Z"))
    );
    assert_eq!(
        daily.next_after(t("2026-03-29T12:00:00Z")),
        Some(t("2026-03-30T00:30:00Z"))
    );
    // 02:30 happens twice on the 25th of October: it runs once, at the first (00:30 UTC).
    let first = daily.next_after(t("2026-10-24T12:00:00Z")).unwrap();
    assert_eq!(first, t("2026-10-25T00:30:00Z"));
    assert_eq!(daily.next_after(first), Some(t("2026-10-26T01:30:00Z")));
    // A fixed time in a time zone, outside the changes.
    let ny = Schedule::parse("0 9 * * MON-FRI", Some("America/New_York")).unwrap();
    assert_eq!(
        ny.next_after(t("2026-07-03T14:00:00Z")),
        Some(t("2026-07-06T13:00:00Z"))
    );
    // An hourly schedule across the autumn change: every real hour, one slot, 25 in that day.
    let hourly = Schedule::parse("0 * * * *", Some("Europe/Berlin")).unwrap();
    assert_eq!(
        hourly.count_between(t("2026-10-24T21:59:00Z"), t("2026-10-25T23:00:00Z"), 100),
        25
    );
}

// ---- Property tests: random histories against the invariants. ----

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes (milliseconds) and the controller reconciles.
    Tick(u32),
    /// The operator is down for this long (milliseconds), then starts again: its memory is lost.
    Down(u32),
    /// An active run finishes (which one: index modulo the active runs), Succeeded or Failed.
    Finish(usize, bool),
    /// The next status write is lost (the object the controller sees stays stale).
    LoseStatusWrite,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u32..25_000).prop_map(Step::Tick),
        1 => (1u32..120_000).prop_map(Step::Down),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::Finish(i, ok)),
        1 => Just(Step::LoseStatusWrite),
    ]
}

fn policy() -> impl Strategy<Value = ConcurrencyPolicy> {
    prop_oneof![
        Just(ConcurrencyPolicy::Allow),
        Just(ConcurrencyPolicy::Forbid),
        Just(ConcurrencyPolicy::Replace)
    ]
}

/// What a simulated cluster recorded.
#[derive(Default, Debug)]
struct History {
    /// Every run ever created: name → slot.
    created: BTreeMap<String, i64>,
    /// For each start: (slot, time it started, runs active then).
    starts: Vec<(i64, Timestamp, usize)>,
    /// Per operator life (after a downtime): slots started that came due before it started.
    caught_up: Vec<usize>,
}

/// Runs a random history against [`decide`], carrying plans out the way the controller does (a create of an
/// existing name is refused; a status write can be lost; a restart loses memory).
fn simulate(spec: &CronFlowSpec, steps: &[Step]) -> History {
    let schedule = Schedule::parse(&spec.schedule, None).unwrap();
    let mut now = secs(1_000_000) + SignedDuration::from_millis(300);
    let created = secs(1_000_000);
    let mut runs: Vec<RunInfo> = vec![];
    let mut status_last: Option<Timestamp> = None;
    let mut memory_last: Option<Timestamp> = None;
    let mut online_since = created;
    let mut lose_next = false;
    let mut history = History {
        caught_up: vec![0],
        ..History::default()
    };
    let reconcile = |now: Timestamp,
                     runs: &mut Vec<RunInfo>,
                     status_last: &mut Option<Timestamp>,
                     memory_last: &mut Option<Timestamp>,
                     online_since: Timestamp,
                     lose: bool,
                     history: &mut History| {
        let o = Observed {
            name: "cf",
            spec,
            created,
            last_schedule: *status_last,
            remembered: *memory_last,
            last_successful: None,
            runs,
            now,
            online_since,
        };
        let plan = decide(&o, &schedule);
        for name in &plan.cancel {
            if let Some(r) = runs.iter_mut().find(|r| &r.name == name) {
                r.cancel_requested = true;
            }
        }
        if let Some(slot) = &plan.slot {
            if slot.action == SlotAction::Start {
                let active = runs.iter().filter(|r| r.is_active()).count();
                // The API server refuses a second create of a name; the simulated one records attempts.
                assert!(
                    !runs.iter().any(|r| r.name == slot.run),
                    "asked to create {} which exists",
                    slot.run
                );
                runs.push(RunInfo {
                    name: slot.run.clone(),
                    slot: Some(slot.slot),
                    phase: Some(FlowPhase::Running),
                    cancel_requested: false,
                    created: Some(now),
                    finished: None,
                    deleting: false,
                });
                let dup = history
                    .created
                    .insert(slot.run.clone(), slot.slot.as_second());
                assert!(dup.is_none(), "slot {} started twice", slot.run);
                history.starts.push((slot.slot.as_second(), now, active));
                if slot.slot < online_since {
                    *history.caught_up.last_mut().unwrap() += 1;
                }
            }
            if matches!(slot.action, SlotAction::Start | SlotAction::AlreadyStarted) {
                *memory_last = (*memory_last).max(Some(slot.slot));
            }
        }
        runs.retain(|r| !plan.delete.contains(&r.name));
        if !lose {
            *status_last = plan.last_schedule;
        }
    };
    for step in steps {
        match step {
            Step::Tick(ms) => {
                now += SignedDuration::from_millis(i64::from(*ms));
                reconcile(
                    now,
                    &mut runs,
                    &mut status_last,
                    &mut memory_last,
                    online_since,
                    std::mem::take(&mut lose_next),
                    &mut history,
                );
            }
            Step::Down(ms) => {
                now += SignedDuration::from_millis(i64::from(*ms));
                memory_last = None;
                online_since = now;
                history.caught_up.push(0);
                reconcile(
                    now,
                    &mut runs,
                    &mut status_last,
                    &mut memory_last,
                    online_since,
                    std::mem::take(&mut lose_next),
                    &mut history,
                );
            }
            Step::Finish(i, ok) => {
                let active: Vec<usize> = runs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_active())
                    .map(|(i, _)| i)
                    .collect();
                if !active.is_empty() {
                    let r = &mut runs[active[i % active.len()]];
                    r.phase = Some(if r.cancel_requested {
                        FlowPhase::Cancelled
                    } else if *ok {
                        FlowPhase::Succeeded
                    } else {
                        FlowPhase::Failed
                    });
                    r.finished = Some(now);
                }
            }
            Step::LoseStatusWrite => lose_next = true,
        }
    }
    history
}

fn cron_spec(
    policy: ConcurrencyPolicy,
    missed: MissedSchedulePolicy,
    deadline: Option<u32>,
    keep: (u32, u32),
) -> CronFlowSpec {
    CronFlowSpec {
        concurrency_policy: policy,
        missed_schedule_policy: missed,
        starting_deadline_seconds: deadline,
        successful_runs_history_limit: Some(keep.0),
        failed_runs_history_limit: Some(keep.1),
        ..spec("*/10 * * * * *")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Never two runs for one slot — also when status writes are lost and finished runs are deleted by the
    /// history limits — and only slots of the schedule, each started no earlier than its time.
    #[test]
    fn never_two_runs_for_one_slot(
        policy in policy(),
        deadline in proptest::option::of(0u32..30),
        keep in (0u32..3, 0u32..3),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let spec = cron_spec(policy, MissedSchedulePolicy::RunOnce, deadline, keep);
        let h = simulate(&spec, &steps);
        let slots: BTreeSet<i64> = h.starts.iter().map(|s| s.0).collect();
        prop_assert_eq!(slots.len(), h.starts.len());
        for (slot, at, _) in &h.starts {
            prop_assert_eq!(slot % 10, 0);
            prop_assert!(secs(*slot) <= *at);
        }
        // Started in slot order.
        prop_assert!(h.starts.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// With Forbid a run starts only when no other run is active.
    #[test]
    fn forbid_never_overlaps(
        deadline in proptest::option::of(0u32..30),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let spec = cron_spec(ConcurrencyPolicy::Forbid, MissedSchedulePolicy::RunOnce, deadline, (3, 1));
        for (slot, _, active) in simulate(&spec, &steps).starts {
            prop_assert_eq!(active, 0, "slot {} started beside an active run", slot);
        }
    }

    /// After each downtime at most one slot that came due meanwhile runs (RunOnce), or none (Skip).
    #[test]
    fn catch_up_at_most_once_after_downtime(
        policy in policy(),
        skip in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let missed = if skip { MissedSchedulePolicy::Skip } else { MissedSchedulePolicy::RunOnce };
        let spec = cron_spec(policy, missed, None, (3, 1));
        let h = simulate(&spec, &steps);
        for n in &h.caught_up {
            prop_assert!(*n <= if skip { 0 } else { 1 }, "caught up {} slots: {:?}", n, h.caught_up);
        }
    }

    /// No run starts later than startingDeadlineSeconds after its slot.
    #[test]
    fn starting_deadline_honoured(
        policy in policy(),
        deadline in 0u32..30,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let spec = cron_spec(policy, MissedSchedulePolicy::RunOnce, Some(deadline), (3, 1));
        for (slot, at, _) in simulate(&spec, &steps).starts {
            prop_assert!(at.duration_since(secs(slot)) <= SignedDuration::from_secs(i64::from(deadline)));
        }
    }

    /// In any time zone, slots strictly increase and agree between next_after and latest_at_or_before, across
    /// the daylight saving changes of a whole year.
    #[test]
    fn slots_are_consistent_in_time_zones(
        zone in prop_oneof![
            Just("Europe/Berlin"), Just("America/New_York"), Just("Australia/Lord_Howe"),
            Just("Asia/Kolkata"), Just("UTC")
        ],
        schedule in prop_oneof![Just("30 2 * * *"), Just("0 * * * *"), Just("*/20 1-3 * * *"), Just("15 0 1 * *")],
        start in 1_767_225_600i64..1_798_761_600,
    ) {
        let s = Schedule::parse(schedule, Some(zone)).unwrap();
        let mut at = secs(start);
        for _ in 0..30 {
            let next = s.next_after(at).unwrap();
            prop_assert!(next > at);
            prop_assert_eq!(s.latest_at_or_before(next), Some(next));
            // No slot in between.
            let before = next - SignedDuration::from_secs(1);
            prop_assert!(s.latest_at_or_before(before).is_none_or(|p| p <= at));
            at = next;
        }
    }
}
