//! The text view of `kubectl sluice status`: a header, then the steps as a tree following `dependsOn`.
//!
//! Roots are the steps without dependencies; each step's children are the steps that depend on it. A step with
//! several parents is drawn in full once, under its first parent, with a note naming the others; under each
//! other parent a one-line reference points to it. forEach steps show counts and the instances that have not
//! Succeeded (the first few). Errors are cut to one line of [`ERROR_WIDTH`] characters.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::report::{ErrorReport, FlowRunReport, StepReport};
use crate::style::Style;

/// Longest error message shown, in characters.
pub const ERROR_WIDTH: usize = 100;
/// forEach instances listed before "... and N more".
pub const MAX_INSTANCES: usize = 5;

/// `s` on one line and at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A duration in seconds as `4s`, `2m05s` or `3h07m`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

fn error_text(e: &ErrorReport) -> String {
    let mut s = e.type_.clone();
    if !e.message.is_empty() {
        s.push_str(": ");
        s.push_str(&e.message);
    }
    if let Some(code) = e.exit_code {
        let _ = write!(s, " (exit code {code})");
    }
    if e.attempt > 0 {
        let _ = write!(s, " [attempt {}]", e.attempt);
    }
    truncate(&s, ERROR_WIDTH)
}

struct Row {
    label: String,
    step: usize,
    /// A reference to a step drawn elsewhere.
    reference: Option<String>,
    /// Lines under the row, already indented.
    details: Vec<String>,
}

struct Layout<'a> {
    report: &'a FlowRunReport,
    index: HashMap<&'a str, usize>,
    children: Vec<Vec<usize>>,
    rows: Vec<Row>,
}

impl<'a> Layout<'a> {
    fn new(report: &'a FlowRunReport) -> Self {
        let index: HashMap<&str, usize> = report
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut children = vec![Vec::new(); report.steps.len()];
        for (i, s) in report.steps.iter().enumerate() {
            for d in &s.depends_on {
                if let Some(&p) = index.get(d.as_str())
                    && !children[p].contains(&i)
                {
                    children[p].push(i);
                }
            }
        }
        Self {
            report,
            index,
            children,
            rows: Vec::new(),
        }
    }

    fn parents(&self, i: usize) -> Vec<&'a str> {
        self.report.steps[i]
            .depends_on
            .iter()
            .filter(|d| self.index.contains_key(d.as_str()))
            .map(String::as_str)
            .collect()
    }

    fn walk(&mut self, i: usize, parent: Option<usize>, prefix: &str, last: bool, root: bool) {
        let (branch, cont) = match (root, last) {
            (true, _) => ("", ""),
            (false, true) => ("└─ ", "   "),
            (false, false) => ("├─ ", "│  "),
        };
        let step = &self.report.steps[i];
        let parents = self.parents(i);
        let primary = parents.first().and_then(|p| self.index.get(p)).copied();
        if parent.is_some() && parent != primary {
            let first = primary
                .map(|p| self.report.steps[p].name.clone())
                .unwrap_or_default();
            self.rows.push(Row {
                label: format!("{prefix}{branch}{}", step.name),
                step: i,
                reference: Some(format!("↑ shown under {first}")),
                details: Vec::new(),
            });
            return;
        }
        let inner = format!("{prefix}{cont}");
        let kids = self.children[i].clone();
        let detail_prefix = if kids.is_empty() {
            format!("{inner}   ")
        } else {
            format!("{inner}│  ")
        };
        let mut details = Vec::new();
        if parents.len() > 1 {
            details.push(format!(
                "{detail_prefix}(also depends on {})",
                parents[1..].join(", ")
            ));
        }
        details.extend(step_details(step, &detail_prefix));
        self.rows.push(Row {
            label: format!("{prefix}{branch}{}", step.name),
            step: i,
            reference: None,
            details,
        });
        let n = kids.len();
        for (k, c) in kids.into_iter().enumerate() {
            self.walk(c, Some(i), &inner, k + 1 == n, false);
        }
    }
}

fn step_details(step: &StepReport, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(inst) = &step.instances {
        let mut counts = format!("instances: {}/{} succeeded", inst.succeeded, inst.total);
        if inst.failed > 0 {
            let _ = write!(counts, ", {} failed", inst.failed);
        }
        if inst.active > 0 {
            let _ = write!(counts, ", {} active", inst.active);
        }
        if inst.not_started > 0 {
            let _ = write!(counts, ", {} not started", inst.not_started);
        }
        out.push(format!("{prefix}{counts}"));
        for one in inst.not_succeeded.iter().take(MAX_INSTANCES) {
            let mut line = format!(
                "{prefix}  [{}] {:?} attempt {}",
                one.index, one.phase, one.attempts
            );
            if let Some(w) = &one.worker {
                let _ = write!(line, " on {w}");
            }
            if let Some(e) = &one.error {
                let _ = write!(line, ": {}", error_text(e));
            }
            out.push(line);
        }
        if inst.not_succeeded.len() > MAX_INSTANCES {
            out.push(format!(
                "{prefix}  ... and {} more",
                inst.not_succeeded.len() - MAX_INSTANCES
            ));
        }
    }
    if let Some(e) = &step.error {
        out.push(format!("{prefix}error: {}", error_text(e)));
    }
    if let Some(m) = &step.message {
        out.push(format!("{prefix}{}", truncate(m, ERROR_WIDTH)));
    }
    out
}

/// The status as text: a header and the tree.
pub fn render(report: &FlowRunReport, style: Style) -> String {
    let mut out = String::new();
    let mut header = format!(
        "FlowRun {}/{}: {}",
        report.namespace,
        style.bold(&report.name),
        style.flow_phase(report.phase, &format!("{:?}", report.phase))
    );
    if let Some(p) = &report.progress {
        let _ = write!(header, "  {p} steps");
    }
    if let Some(d) = report.duration_seconds {
        let _ = write!(header, "  {}", duration(d));
    }
    if report.suspended && !report.phase.is_terminal() {
        let _ = write!(header, "  (suspended)");
    }
    if report.cancel_requested && !report.phase.is_terminal() {
        let _ = write!(header, "  (cancel requested)");
    }
    out.push_str(&header);
    out.push('\n');
    if let Some(m) = &report.message {
        let _ = writeln!(out, "  {}", style.error(&truncate(m, ERROR_WIDTH)));
    }
    if let Some(o) = report
        .main_outcome
        .as_ref()
        .filter(|_| !report.phase.is_terminal())
    {
        let _ = writeln!(
            out,
            "  main steps ended {:?} ({}): running the exit steps",
            o.phase, o.reason
        );
    }
    if let Some(w) = &report.waiting_for_slot {
        let _ = writeln!(out, "  {}", truncate(w, ERROR_WIDTH));
    }
    if let Some(r) = &report.retry {
        let _ = writeln!(
            out,
            "  last retry request: {:?} ({} retries so far): {}",
            r.outcome,
            r.count,
            truncate(&r.message, ERROR_WIDTH)
        );
    }

    let mut layout = Layout::new(report);
    let roots: Vec<usize> = (0..report.steps.len())
        .filter(|&i| layout.parents(i).is_empty())
        .collect();
    for r in roots {
        layout.walk(r, None, "", true, true);
    }
    let width = layout
        .rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let phase_width = 9;
    for row in &layout.rows {
        let step = &report.steps[row.step];
        let pad = width - row.label.chars().count();
        let label = format!("{}{}", row.label, " ".repeat(pad));
        if let Some(reference) = &row.reference {
            let _ = writeln!(out, "{label}  {}", style.dim(reference));
            continue;
        }
        let phase = format!("{:<phase_width$}", format!("{:?}", step.phase));
        let mut line = format!("{label}  {}", style.step_phase(step.phase, &phase));
        if step.on_exit {
            let _ = write!(line, "  {}", style.dim("on exit"));
        }
        if step.attempts > 0 {
            let _ = write!(line, "  attempt {}", step.attempts);
        }
        if let Some(d) = step.duration_seconds {
            let _ = write!(line, "  {}", duration(d));
        }
        if let Some(w) = &step.worker {
            let _ = write!(line, "  on {w}");
        }
        if let Some(s) = &step.signal
            && step.phase == sluice_api::StepPhase::Waiting
        {
            let _ = write!(line, "  waiting for signal {s:?}");
        }
        if let Some(c) = &step.child {
            let _ = write!(line, "  child {c}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for d in &row.details {
            let styled = if d.contains("error: ") {
                style.error(d)
            } else {
                style.dim(d)
            };
            let _ = writeln!(out, "{styled}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::report::fixtures;

    fn report() -> FlowRunReport {
        FlowRunReport::new(
            &fixtures::order(),
            "2026-03-01T12:01:00Z".parse::<Timestamp>().unwrap(),
        )
    }

    #[test]
    fn the_tree_follows_depends_on_and_shows_a_shared_child_once() {
        let text = render(&report(), Style::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("FlowRun shop/order-1: Running  2/5 steps  1m00s"),
            "{text}"
        );
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{text}"))
        };
        let charge = at("charge ");
        let pack = at("└─ pack ");
        let ship = at("   └─ ship ");
        let reserve = at("reserve ");
        let reference = at("└─ ship ");
        let approve = at("approve ");
        assert!(charge < pack && pack < ship && ship < reserve && reserve < reference);
        assert!(reference < approve);
        // ship is drawn once, under its first parent, with a note; the other parent points to it.
        assert_eq!(text.matches("Pending").count(), 1, "{text}");
        assert!(
            lines[ship + 1].contains("(also depends on reserve)"),
            "{text}"
        );
        assert!(lines[reference].contains("↑ shown under pack"), "{text}");
        assert!(lines[charge].contains("Succeeded  attempt 1  4s"), "{text}");
        assert!(lines[pack].contains("Running    55s"), "{text}");
        assert!(
            lines[approve].contains("waiting for signal \"ok\""),
            "{text}"
        );
        // forEach: counts and the instances that have not Succeeded.
        assert!(
            text.contains("instances: 1/4 succeeded, 2 active, 1 not started"),
            "{text}"
        );
        assert!(text.contains("[1] Running attempt 1 on worker-a"), "{text}");
        assert!(
            text.contains("[2] Retrying attempt 1: flaky: try again [attempt 1]"),
            "{text}"
        );
        // No colour codes when not asked for.
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn exit_steps_come_last_and_say_so() {
        let mut fr = fixtures::order();
        fr.spec.on_exit = vec![
            serde_json::from_value(serde_json::json!({"name": "refund", "handler": "refund"}))
                .unwrap(),
        ];
        let report = FlowRunReport::new(&fr, "2026-03-01T12:01:00Z".parse::<Timestamp>().unwrap());
        let last = report.steps.last().unwrap();
        assert!(last.name == "refund" && last.on_exit, "{last:?}");
        let text = render(&report, Style::PLAIN);
        let line = text
            .lines()
            .find(|l| l.contains("refund"))
            .expect("the exit step is shown");
        assert!(
            line.contains("Pending") && line.contains("on exit"),
            "{line}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.contains("charge") && l.contains("on exit"))
        );
        assert!(!text.contains("running the exit steps"));

        // Once the main steps ended, the header says how while the exit steps run.
        let mut status = fr.status.clone().unwrap();
        status.main_outcome = Some(sluice_api::MainOutcome {
            phase: sluice_api::FlowPhase::Failed,
            reason: "StepFailed".into(),
            message: "step \"pack\" failed".into(),
        });
        fr.status = Some(status);
        let report = FlowRunReport::new(&fr, "2026-03-01T12:01:00Z".parse::<Timestamp>().unwrap());
        let text = render(&report, Style::PLAIN);
        assert!(
            text.contains("main steps ended Failed (StepFailed): running the exit steps"),
            "{text}"
        );
    }

    #[test]
    fn a_run_waiting_for_a_concurrency_slot_says_so_under_the_header() {
        let mut fr = fixtures::order();
        let mut status = fr.status.clone().unwrap();
        status.phase = Some(sluice_api::FlowPhase::Pending);
        let waiting = "waiting for a slot of concurrency key \"acme\": 2 of 2 held by a, b";
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Admitted".into(),
                status: "False".into(),
                reason: "ConcurrencyLimit".into(),
                message: waiting.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            });
        fr.status = Some(status);
        let report = FlowRunReport::new(&fr, "2026-03-01T12:01:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(report.waiting_for_slot.as_deref(), Some(waiting));
        let text = render(&report, Style::PLAIN);
        assert_eq!(
            text.lines().nth(1),
            Some(format!("  {waiting}").as_str()),
            "{text}"
        );
    }

    #[test]
    fn long_errors_are_cut_to_one_line() {
        let text = render(&report(), Style::PLAIN);
        let line = text.lines().find(|l| l.contains("error: Timeout")).unwrap();
        let error = &line[line.find("error: ").unwrap() + 7..];
        assert_eq!(error.chars().count(), ERROR_WIDTH, "{line}");
        assert!(error.ends_with('…'));
        assert_eq!(truncate("a\nb  c", 10), "a b c");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn colour_when_asked() {
        let text = render(&report(), Style { color: true });
        assert!(text.contains("\x1b[32mSucceeded"), "{text}");
        assert!(text.contains("\x1b[33mRetrying"), "{text}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(4), "4s");
        assert_eq!(duration(125), "2m05s");
        assert_eq!(duration(3 * 3600 + 7 * 60 + 5), "3h07m");
    }
}
