//! Colour for terminals: ANSI codes, only when stdout is a terminal and `NO_COLOR` is unset or empty.

use std::io::IsTerminal;

use sluice_api::{FlowPhase, StepPhase};

/// Whether and how to colour text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub color: bool,
}

impl Style {
    /// No colour.
    pub const PLAIN: Style = Style { color: false };

    /// Colour when stdout is a terminal and `NO_COLOR` is not set to something.
    pub fn for_stdout() -> Self {
        Self::decide(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    /// The rule behind [`Style::for_stdout`]: colour only on a terminal without a non-empty `NO_COLOR`.
    pub fn decide(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> Self {
        Self {
            color: is_terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// A step phase, coloured by what it means.
    pub fn step_phase(self, phase: StepPhase, text: &str) -> String {
        let code = match phase {
            StepPhase::Succeeded => "32",
            StepPhase::Failed => "31",
            StepPhase::Running | StepPhase::Ready => "36",
            StepPhase::Retrying => "33",
            StepPhase::Waiting | StepPhase::Sleeping => "35",
            StepPhase::Pending | StepPhase::Skipped | StepPhase::Cancelled => "2",
        };
        self.paint(code, text)
    }

    /// A flow phase.
    pub fn flow_phase(self, phase: FlowPhase, text: &str) -> String {
        let code = match phase {
            FlowPhase::Succeeded => "1;32",
            FlowPhase::Failed => "1;31",
            FlowPhase::Running => "1;36",
            FlowPhase::Pending | FlowPhase::Cancelled => "1",
        };
        self.paint(code, text)
    }

    /// An error.
    pub fn error(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Less important text.
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    /// A name.
    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(Style::decide(true, None).color);
        assert!(Style::decide(true, Some(OsStr::new(""))).color);
        assert!(!Style::decide(true, Some(OsStr::new("1"))).color);
        assert!(!Style::decide(false, None).color);
        assert_eq!(
            Style::PLAIN.step_phase(StepPhase::Failed, "Failed"),
            "Failed"
        );
        assert_eq!(
            Style { color: true }.step_phase(StepPhase::Failed, "Failed"),
            "\x1b[31mFailed\x1b[0m"
        );
    }
}
