//! `kubectl sluice graph`: the DAG with each step's phase, as a Mermaid flowchart or Graphviz DOT.
//!
//! Nodes are labelled `name` and `phase` (and the forEach counts); edges go from a step to the steps that
//! depend on it. Mermaid node ids are `s0`, `s1`, ... (step names may hold `-`, which Mermaid edge syntax
//! would misread); DOT ids are the quoted step names.

use std::fmt::Write as _;

use sluice_api::StepPhase;

use crate::cli::GraphFormat;
use crate::report::{FlowRunReport, StepReport};

/// The graph in the given format.
pub fn render(report: &FlowRunReport, format: GraphFormat) -> String {
    match format {
        GraphFormat::Mermaid => mermaid(report),
        GraphFormat::Dot => dot(report),
    }
}

fn phase_label(step: &StepReport) -> String {
    match &step.instances {
        Some(inst) => format!("{:?} {}/{}", step.phase, inst.succeeded, inst.total),
        None => format!("{:?}", step.phase),
    }
}

/// Fill and stroke colours of a phase.
fn colours(phase: StepPhase) -> (&'static str, &'static str) {
    match phase {
        StepPhase::Succeeded => ("#d4edda", "#28a745"),
        StepPhase::Failed => ("#f8d7da", "#dc3545"),
        StepPhase::Running | StepPhase::Ready => ("#d1ecf1", "#17a2b8"),
        StepPhase::Retrying => ("#fff3cd", "#ffc107"),
        StepPhase::Waiting | StepPhase::Sleeping => ("#e2d9f3", "#6f42c1"),
        StepPhase::Pending | StepPhase::Skipped | StepPhase::Cancelled => ("#f1f1f1", "#999999"),
    }
}

const PHASES: [StepPhase; 10] = [
    StepPhase::Pending,
    StepPhase::Ready,
    StepPhase::Running,
    StepPhase::Retrying,
    StepPhase::Waiting,
    StepPhase::Sleeping,
    StepPhase::Succeeded,
    StepPhase::Failed,
    StepPhase::Skipped,
    StepPhase::Cancelled,
];

/// A Mermaid flowchart, top to bottom.
pub fn mermaid(report: &FlowRunReport) -> String {
    let mut out = String::from("flowchart TD\n");
    let id = |name: &str| {
        report
            .steps
            .iter()
            .position(|s| s.name == name)
            .map(|i| format!("s{i}"))
    };
    for (i, step) in report.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "    s{i}[\"{}<br/>{}\"]",
            step.name.replace('"', "#quot;"),
            phase_label(step)
        );
    }
    for (i, step) in report.steps.iter().enumerate() {
        for d in &step.depends_on {
            if let Some(from) = id(d) {
                let _ = writeln!(out, "    {from} --> s{i}");
            }
        }
    }
    for phase in PHASES {
        let members: Vec<String> = report
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == phase)
            .map(|(i, _)| format!("s{i}"))
            .collect();
        if members.is_empty() {
            continue;
        }
        let (fill, stroke) = colours(phase);
        let class = format!("{phase:?}").to_lowercase();
        let _ = writeln!(
            out,
            "    classDef {class} fill:{fill},stroke:{stroke}\n    class {} {class}",
            members.join(",")
        );
    }
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Graphviz digraph, top to bottom.
pub fn dot(report: &FlowRunReport) -> String {
    let mut out = format!(
        "digraph {} {{\n    rankdir=TB;\n    node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n",
        quote(&report.name)
    );
    for step in &report.steps {
        let (fill, stroke) = colours(step.phase);
        let _ = writeln!(
            out,
            "    {} [label={}, fillcolor=\"{fill}\", color=\"{stroke}\"];",
            quote(&step.name),
            quote(&format!("{}\n{}", step.name, phase_label(step))).replace('\n', "\\n")
        );
    }
    for step in &report.steps {
        for d in &step.depends_on {
            if report.step(d).is_some() {
                let _ = writeln!(out, "    {} -> {};", quote(d), quote(&step.name));
            }
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::report::fixtures;

    fn report() -> FlowRunReport {
        FlowRunReport::new(&fixtures::order(), Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn mermaid_has_a_node_per_step_and_an_edge_per_dependency() {
        let m = mermaid(&report());
        assert!(m.starts_with("flowchart TD\n"));
        assert!(m.contains("s0[\"charge<br/>Succeeded\"]"), "{m}");
        assert!(m.contains("s2[\"pack<br/>Running 1/4\"]"), "{m}");
        let edges: Vec<&str> = m.lines().filter(|l| l.contains("-->")).collect();
        assert_eq!(
            edges,
            ["    s0 --> s2", "    s2 --> s3", "    s1 --> s3"],
            "{m}"
        );
        assert!(m.contains("class s0 succeeded"), "{m}");
    }

    #[test]
    fn dot_is_a_digraph_with_labelled_nodes() {
        let d = dot(&report());
        assert!(d.starts_with("digraph \"order-1\" {"), "{d}");
        assert!(d.trim_end().ends_with('}'));
        assert!(d.contains("\"ship\" [label=\"ship\\nPending\""), "{d}");
        let edges: Vec<&str> = d.lines().filter(|l| l.contains("->")).collect();
        assert_eq!(edges.len(), 3, "{d}");
        assert!(d.contains("\"pack\" -> \"ship\";"));
        assert!(d.contains("\"reserve\" -> \"ship\";"));
    }
}
