//! The change lines of `kubectl sluice watch`: what differs between two reports of the same FlowRun.

use sluice_api::FlowPhase;

use crate::cli::{EXIT_CANCELLED, EXIT_FAILED};
use crate::report::{FlowRunReport, StepReport};
use crate::style::Style;
use crate::tree::{ERROR_WIDTH, truncate};

fn step_line(step: &StepReport, from: Option<&StepReport>, style: Style) -> String {
    let phase = style.step_phase(step.phase, &format!("{:?}", step.phase));
    let mut line = match from {
        Some(old) if old.phase != step.phase => format!(
            "{}: {} → {phase}",
            step.name,
            style.step_phase(old.phase, &format!("{:?}", old.phase))
        ),
        _ => format!("{}: {phase}", step.name),
    };
    if step.attempts > 0 {
        line.push_str(&format!(" (attempt {})", step.attempts));
    }
    if let Some(w) = &step.worker {
        line.push_str(&format!(" on {w}"));
    }
    if let Some(inst) = &step.instances {
        line.push_str(&format!(
            " instances {}/{} succeeded",
            inst.succeeded, inst.total
        ));
        if inst.failed > 0 {
            line.push_str(&format!(", {} failed", inst.failed));
        }
    }
    if matches!(
        step.phase,
        sluice_api::StepPhase::Failed | sluice_api::StepPhase::Retrying
    ) && let Some(e) = &step.error
    {
        let text = if e.message.is_empty() {
            e.type_.clone()
        } else {
            format!("{}: {}", e.type_, e.message)
        };
        line.push_str(&format!(
            " error: {}",
            style.error(&truncate(&text, ERROR_WIDTH))
        ));
    }
    line
}

/// The lines to print when the FlowRun went from `prev` (None: first sight) to `next`: the run's phase when it
/// changed, and one line per step whose phase, attempt or forEach counts changed. On first sight every step
/// gets a line.
pub fn changes(prev: Option<&FlowRunReport>, next: &FlowRunReport, style: Style) -> Vec<String> {
    let mut lines = Vec::new();
    let flow = |p: FlowPhase| style.flow_phase(p, &format!("{p:?}"));
    match prev {
        None => lines.push(format!(
            "flowrun {}: {}{}",
            next.name,
            flow(next.phase),
            next.progress
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        )),
        Some(old) if old.phase != next.phase => lines.push(format!(
            "flowrun {}: {} → {}",
            next.name,
            flow(old.phase),
            flow(next.phase)
        )),
        _ => {}
    }
    for step in &next.steps {
        let old = prev.and_then(|p| p.step(&step.name));
        let changed = match old {
            None => true,
            Some(o) => {
                o.phase != step.phase
                    || o.attempts != step.attempts
                    || o.instances.as_ref().map(|i| (i.succeeded, i.failed))
                        != step.instances.as_ref().map(|i| (i.succeeded, i.failed))
            }
        };
        if changed {
            lines.push(step_line(step, old, style));
        }
    }
    if next.phase.is_terminal()
        && prev.is_none_or(|p| !p.phase.is_terminal())
        && let Some(m) = &next.message
    {
        lines.push(format!("  {}", style.error(&truncate(m, ERROR_WIDTH))));
    }
    lines
}

/// The exit code of a run that ended in `phase`: 0 Succeeded, 3 Failed, 4 Cancelled.
pub fn exit_code(phase: FlowPhase) -> u8 {
    match phase {
        FlowPhase::Failed => EXIT_FAILED,
        FlowPhase::Cancelled => EXIT_CANCELLED,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use sluice_api::StepPhase;

    use super::*;
    use crate::report::fixtures;

    #[test]
    fn first_sight_lists_every_step_then_only_changes() {
        let fr = fixtures::order();
        let first = FlowRunReport::new(&fr, Timestamp::UNIX_EPOCH);
        let lines = changes(None, &first, Style::PLAIN);
        assert_eq!(lines[0], "flowrun order-1: Running (2/5)");
        assert_eq!(lines.len(), 1 + 5, "{lines:#?}");
        assert!(lines.contains(&"charge: Succeeded (attempt 1)".to_owned()));

        let mut fr2 = fr.clone();
        let status = fr2.status.as_mut().unwrap();
        status.steps.get_mut("reserve").unwrap().phase = StepPhase::Failed;
        status.phase = Some(FlowPhase::Failed);
        let second = FlowRunReport::new(&fr2, Timestamp::UNIX_EPOCH);
        let lines = changes(Some(&first), &second, Style::PLAIN);
        assert_eq!(lines[0], "flowrun order-1: Running → Failed");
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[1]
                .starts_with("reserve: Retrying → Failed (attempt 2) error: Timeout: the stock"),
            "{}",
            lines[1]
        );
        // Nothing changed, nothing printed.
        assert!(changes(Some(&second), &second, Style::PLAIN).is_empty());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(FlowPhase::Succeeded), 0);
        assert_eq!(exit_code(FlowPhase::Failed), 3);
        assert_eq!(exit_code(FlowPhase::Cancelled), 4);
    }
}
