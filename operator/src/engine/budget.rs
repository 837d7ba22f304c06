//! The status budget: how large a FlowRun's status may grow, and who pays when it would grow further.
//!
//! etcd refuses objects over 1.5 MiB, and a status write the API server refuses would leave the run Running
//! for good. So the engine keeps every status it writes within a budget (default 1 MiB, the operator's
//! `--max-status-bytes`), well below that limit, and fails the step that would grow it past the budget with a
//! `StatusTooLarge` error naming what grew. The run then fails as for any other failed step.
//!
//! The budget is enforced at two points:
//! * [`super::apply_event`] refuses growth at its source, before anything is recorded: an output (of a step,
//!   a forEach instance or a child flow), or an error message, that would take the status past the budget
//!   fails its attempt for good instead, so a Succeeded step never has to be taken back. It checks against a
//!   running estimate (`statusBytes` of the status it starts from, plus what the event changes), so an event
//!   costs no serialization of the whole status.
//! * [`super::decide`] measures the status it decided exactly, once per decision (signals written by users
//!   since the last write are only known here), and when it is over the budget fails the step that grew it in
//!   this decision (new forEach instances, a consumed signal), or else the largest step still going, so the
//!   run never stays Running above the budget.
//!
//! The failure's own messages (the error, the run's conditions) come on top of a status at its budget: a few
//! KB, for which the budget's distance to etcd's limit leaves room.
//!
//! forEach is bounded too: at most [`MAX_FOR_EACH_ITEMS`] items, and [`DEFAULT_MAX_PARALLEL`] instances at
//! once unless the step says otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::Serialize;
use serde_json::Value;

use crate::api::packed;
use crate::api::{FlowRunStatus, StepStatus};

/// Default budget of a FlowRun's status, in bytes of compact JSON.
pub const DEFAULT_MAX_STATUS_BYTES: u64 = 1024 * 1024;

/// Most items a forEach may fan out over; more fail the step with [`TOO_MANY_ITEMS`]. Each item is an
/// instance the status counts and the broker queues, and their outputs add up in the step's output.
pub const MAX_FOR_EACH_ITEMS: usize = 10_000;

/// Instances of a forEach that run at once when the step sets no `maxParallel`: enough to keep a pool busy,
/// few enough that the instances in flight stay a small part of the status.
pub const DEFAULT_MAX_PARALLEL: u32 = 64;

/// Error type of a step that would grow the status past the budget.
pub const STATUS_TOO_LARGE: &str = "StatusTooLarge";

/// Error type of a forEach over more than [`MAX_FOR_EACH_ITEMS`] items.
pub const TOO_MANY_ITEMS: &str = "TooManyItems";

/// What the operator bounds in every run it decides on, beyond what the CRD bounds in one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest status, in bytes of compact JSON, a decision may leave a running flow with.
    pub max_status_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_status_bytes: DEFAULT_MAX_STATUS_BYTES,
        }
    }
}

/// An `io::Write` that only counts, so that sizes are measured without building the JSON.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Size of a value as compact JSON.
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, v) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Size of a forEach step's `instances.outputs` as stored: one JSON string holding the map.
pub fn packed_len(outputs: &BTreeMap<String, Value>) -> usize {
    json_len(&packed::pack(outputs))
}

/// Compact JSON of one output, as it appears inside the packed `outputs`.
fn pack_value(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Bytes `text` takes inside a JSON string: its escapes counted, without the quotes around it.
fn escaped_len(text: &str) -> usize {
    json_len(text) - 2
}

/// Bytes `"statusBytes":N` takes in a status object besides its other fields: the key, the digits and the
/// comma (none when it is the only field).
fn own_field_bytes(n: u64, only_field: bool) -> usize {
    14 + n.to_string().len() + usize::from(!only_field)
}

/// The `statusBytes` of a status whose other fields take `rest` bytes of JSON (`{}` included): the smallest
/// fixpoint, since the field counts its own digits.
fn with_own_field(rest: usize) -> u64 {
    let only = rest <= 2;
    let mut n = rest as u64 + 15;
    loop {
        let next = (rest + own_field_bytes(n, only)) as u64;
        if next == n {
            return n;
        }
        n = next;
    }
}

/// Exact size of the status in bytes of JSON once its `statusBytes` is set to the value returned.
pub fn status_bytes(status: &FlowRunStatus) -> u64 {
    let all = json_len(status);
    let rest = match status.status_bytes {
        // Counted as it stands; the field with its old value is taken back out.
        Some(old) => all - own_field_bytes(old, all <= 2 + own_field_bytes(old, true)),
        None => all,
    };
    with_own_field(rest)
}

/// `statusBytes` after the other fields of a status measured at `before` grew by `delta` bytes (negative when
/// they shrank): the running estimate of events.
pub fn grown_by(before: u64, delta: i64) -> u64 {
    let rest = before as i64 - own_field_bytes(before, false) as i64;
    with_own_field((rest + delta).max(2) as usize)
}

/// Where the bytes of a status (or of one step's entry) are, by what grows with use: what the messages of
/// `StatusTooLarge` name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Outputs: of steps, of forEach instances, and of the flow.
    pub outputs: usize,
    /// forEach instances in flight or failed, without their errors.
    pub instances: usize,
    /// Errors of steps and of forEach instances.
    pub errors: usize,
    /// Signals written by users.
    pub signals: usize,
}

impl Breakdown {
    /// The breakdown of a whole status.
    pub fn of_status(status: &FlowRunStatus) -> Self {
        let mut b = status
            .steps
            .values()
            .map(Self::of_step)
            .fold(Self::default(), |a, s| a + s);
        b.outputs += status.output.as_ref().map_or(0, json_len);
        b.signals = json_len(&status.signals);
        b
    }

    /// The breakdown of one step's entry (no signals: those belong to the run).
    pub fn of_step(st: &StepStatus) -> Self {
        let mut b = Self {
            outputs: st.output.as_ref().map_or(0, json_len),
            errors: st.error.as_ref().map_or(0, json_len),
            ..Self::default()
        };
        if let Some(inst) = &st.instances {
            b.outputs += packed_len(&inst.outputs);
            let errors: usize = inst
                .active
                .values()
                .filter_map(|one| one.error.as_ref())
                .map(json_len)
                .sum();
            b.errors += errors;
            b.instances += json_len(&inst.active).saturating_sub(errors);
        }
        b
    }

    /// What `self` holds beyond `earlier`, part by part (nothing for a part that shrank).
    pub fn minus(&self, earlier: &Self) -> Self {
        Self {
            outputs: self.outputs.saturating_sub(earlier.outputs),
            instances: self.instances.saturating_sub(earlier.instances),
            errors: self.errors.saturating_sub(earlier.errors),
            signals: self.signals.saturating_sub(earlier.signals),
        }
    }

    /// The largest part other than signals, by name, for saying what grew.
    pub fn largest(&self) -> &'static str {
        let parts = [
            (self.outputs, "outputs"),
            (self.instances, "forEach instances"),
            (self.errors, "errors"),
        ];
        parts
            .iter()
            .max_by_key(|(n, _)| *n)
            .map_or("outputs", |(_, name)| name)
    }
}

impl std::ops::Add for Breakdown {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            outputs: self.outputs + o.outputs,
            instances: self.instances + o.instances,
            errors: self.errors + o.errors,
            signals: self.signals + o.signals,
        }
    }
}

impl fmt::Display for Breakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outputs {} bytes, forEach instances {} bytes, errors {} bytes, signals {} bytes",
            self.outputs, self.instances, self.errors, self.signals
        )
    }
}

/// The message of a `StatusTooLarge` failure: `grew` says what grew and by how much, then the size the
/// status would reach, the budget, and where the status's bytes are.
pub fn too_large(grew: &str, would_be: u64, limit: u64, held: &Breakdown) -> String {
    format!(
        "{grew}: the status would be {would_be} bytes of JSON, over the budget of {limit} bytes (operator \
         flag --max-status-bytes), and holds {held}; keep large data elsewhere (an object store, a volume) and \
         pass references, or split the work into child flows"
    )
}

/// What an event may still add to a status: the budget, and the running estimate of the status it applies to.
pub(crate) struct Room<'a> {
    /// The status the event applies to (or, when events are folded in place, the status as last written),
    /// for the breakdown of a refusal.
    pub status: &'a FlowRunStatus,
    /// Its size, as its `statusBytes` says (or measured when it has none).
    pub used: u64,
    /// The budget.
    pub limit: u64,
}

impl<'a> Room<'a> {
    /// The room left in `status` under `limits`.
    pub fn new(status: &'a FlowRunStatus, limits: Limits) -> Self {
        Self {
            status,
            used: status.status_bytes.unwrap_or_else(|| status_bytes(status)),
            limit: limits.max_status_bytes,
        }
    }

    /// The room left in `current` under `limits`, a refusal's breakdown measuring `written` (a status being
    /// changed in place cannot be read meanwhile).
    pub fn sized(written: &'a FlowRunStatus, current: &FlowRunStatus, limits: Limits) -> Self {
        Self {
            status: written,
            used: current
                .status_bytes
                .unwrap_or_else(|| status_bytes(current)),
            limit: limits.max_status_bytes,
        }
    }

    /// Whether `bytes` more fit; the error is the `StatusTooLarge` message, `what` naming what would grow
    /// (`"the output"`).
    pub fn admit(&self, what: &str, bytes: usize) -> Result<(), String> {
        let would_be = self.used.saturating_add(bytes as u64);
        if would_be <= self.limit {
            return Ok(());
        }
        Err(too_large(
            &format!("{what} ({bytes} bytes) does not fit in the status"),
            would_be,
            self.limit,
            &Breakdown::of_status(self.status),
        ))
    }
}

/// Bytes of the part of a step's entry an event changes, to keep the running estimate without measuring the
/// whole status: the whole entry of a plain step, and for a forEach instance its entry in `active` or
/// `outputs` (the other instances' outputs are most of the step), the counters and the start time.
pub fn touched_bytes(st: &StepStatus, instance: Option<u32>) -> usize {
    let (Some(index), Some(inst)) = (instance, &st.instances) else {
        return json_len(st);
    };
    let key = index.to_string();
    // A map member is `"key":value` and a comma; a map field is its name, the braces and a comma, and the
    // comma of its last member is not written. The packed `outputs` is the same inside a string: its quotes
    // escaped (`\"key\":`, the value's JSON escaped) and two quotes around the braces.
    let member = |len: Option<usize>| len.map_or(0, |n| key.len() + 4 + n);
    let packed_member =
        |value: Option<&Value>| value.map_or(0, |v| key.len() + 6 + escaped_len(&pack_value(v)));
    let field = |empty: bool, name: &str| if empty { 0 } else { name.len() + 6 - 1 };
    member(inst.active.get(&key).map(json_len))
        + field(inst.active.is_empty(), "active")
        + packed_member(inst.outputs.get(&key))
        + field(inst.outputs.is_empty(), "outputs")
        + 2 * usize::from(!inst.outputs.is_empty())
        + json_len(&inst.succeeded)
        + json_len(&inst.failed)
        + st.started_at
            .as_ref()
            .map_or(0, |t| "startedAt".len() + 4 + json_len(t))
}

/// The message of a forEach over too many items.
pub fn too_many_items(n: usize) -> String {
    format!(
        "forEach gave {n} items, more than the limit of {MAX_FOR_EACH_ITEMS}: fan out over batches of items, \
         or over child flows that each fan out over a part"
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{InstanceStatus, InstancesStatus, Signal, StepError};

    fn real(st: &FlowRunStatus) -> u64 {
        serde_json::to_vec(st).unwrap().len() as u64
    }

    #[test]
    fn status_bytes_is_the_serialized_size_including_itself() {
        let mut st = FlowRunStatus::default();
        for pad in [0, 1, 70, 985, 9_985, 99_985, 1_000_000] {
            st.output = (pad > 0).then(|| json!("x".repeat(pad)));
            // Measured with no statusBytes, then again with a stale one: the same answer.
            st.status_bytes = None;
            let n = status_bytes(&st);
            st.status_bytes = Some(7);
            assert_eq!(status_bytes(&st), n, "pad {pad}");
            st.status_bytes = Some(n);
            assert_eq!(real(&st), n, "pad {pad}");
            assert_eq!(status_bytes(&st), n, "pad {pad}: measuring again");
        }
    }

    #[test]
    fn the_running_estimate_follows_growth_exactly() {
        let mut st = FlowRunStatus {
            output: Some(json!("x".repeat(90))),
            ..Default::default()
        };
        st.status_bytes = Some(status_bytes(&st));
        let before = st.status_bytes.unwrap();
        for (grow, delta) in [(10, 10), (900, 890), (9_000, 8_100), (50, -8_950)] {
            st.output = Some(json!("x".repeat(90 + grow)));
            let estimate = grown_by(st.status_bytes.unwrap(), delta);
            st.status_bytes = Some(estimate);
            assert_eq!(real(&st), estimate, "grown by {grow}");
        }
        assert!(st.status_bytes.unwrap() < before + 100);
    }

    #[test]
    fn the_running_estimate_follows_packed_instance_outputs_exactly() {
        let mut st = FlowRunStatus::default();
        st.steps.insert(
            "fan".into(),
            StepStatus {
                instances: Some(InstancesStatus {
                    total: 40,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        st.status_bytes = Some(status_bytes(&st));
        // The first output opens the field; later ones hold quotes, a backslash, control and non-ASCII
        // characters, which take more bytes escaped inside the string than in a map.
        let outputs = [
            json!({"ok": true}),
            json!("say \"hi\"\n\tthen \\ go"),
            json!({"nested": ["\u{1}", "é", 3.5, null]}),
            json!(12),
        ];
        for (index, output) in [0u32, 17, 3, 39].into_iter().zip(outputs) {
            let before = touched_bytes(&st.steps["fan"], Some(index));
            let fan = st.steps.get_mut("fan").unwrap();
            let inst = fan.instances.as_mut().unwrap();
            inst.outputs.insert(index.to_string(), output);
            inst.succeeded += 1;
            let delta = touched_bytes(&st.steps["fan"], Some(index)) as i64 - before as i64;
            let estimate = grown_by(st.status_bytes.unwrap(), delta);
            st.status_bytes = Some(estimate);
            assert_eq!(real(&st), estimate, "after instance {index}");
        }
        // The step ends: its instance outputs go, and the estimate shrinks back with them.
        let before = touched_bytes(&st.steps["fan"], Some(39));
        let fan = st.steps.get_mut("fan").unwrap();
        fan.instances.as_mut().unwrap().outputs.remove("39");
        let delta = touched_bytes(&st.steps["fan"], Some(39)) as i64 - before as i64;
        st.status_bytes = Some(grown_by(st.status_bytes.unwrap(), delta));
        assert_eq!(real(&st), st.status_bytes.unwrap());
    }

    #[test]
    fn breakdown_names_outputs_instances_errors_and_signals() {
        let mut st = FlowRunStatus {
            output: Some(json!("abc")),
            ..Default::default()
        };
        st.signals.insert(
            "go".into(),
            Signal {
                payload: Some(json!(1)),
            },
        );
        let error = StepError {
            type_: "E".into(),
            message: "m".into(),
            ..Default::default()
        };
        let mut inst = InstancesStatus {
            total: 3,
            ..Default::default()
        };
        inst.outputs.insert("0".into(), json!("0123456789"));
        inst.active.insert(
            "1".into(),
            InstanceStatus {
                error: Some(error.clone()),
                ..Default::default()
            },
        );
        st.steps.insert(
            "fan".into(),
            StepStatus {
                instances: Some(inst),
                error: Some(error.clone()),
                ..Default::default()
            },
        );
        let b = Breakdown::of_status(&st);
        let error_bytes = json_len(&error);
        // The instance outputs count as stored: one string holding their JSON.
        assert_eq!(b.outputs, 5 + json_len(r#"{"0":"0123456789"}"#));
        assert_eq!(b.errors, 2 * error_bytes);
        assert_eq!(b.signals, json_len(&json!({"go": {"payload": 1}})));
        assert_eq!(
            b.instances,
            json_len(&json!({"1": {"phase": "Pending", "error": {"type": "E", "message": "m"}}}))
                - error_bytes
        );
        assert_eq!(b.largest(), "errors");
        let text = b.to_string();
        assert!(text.contains("signals 20 bytes"), "{text}");
    }
}
