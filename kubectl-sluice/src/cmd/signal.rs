//! `kubectl sluice signal FLOWRUN NAME [--data JSON | --file F]`: the status merge patch users would write by
//! hand, after the payload was validated as JSON.
//!
//! [`parse_payload`] and [`send`] are shared with the web view ([`crate::ui`]), which validates and delivers a
//! signal exactly as the command does.

use std::io::Read;
use std::path::Path;

use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};

use super::{api, get, print};
use crate::cli::SignalArgs;
use crate::kubeconfig::Connection;
use crate::{Error, FIELD_MANAGER, Result};

/// The payload from `--data` or `--file` (`-` reads `stdin`), parsed; `None` when neither is given.
pub fn payload(data: Option<&str>, file: Option<&Path>, stdin: impl Read) -> Result<Option<Value>> {
    let (flag, text) = match (data, file) {
        (Some(d), _) => ("--data", d.to_owned()),
        (None, Some(path)) => {
            let mut text = String::new();
            let read = if path == Path::new("-") {
                let mut stdin = stdin;
                stdin.read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            read.map_err(|source| Error::ReadFile {
                flag: "--file".into(),
                path: path.display().to_string(),
                source,
            })?;
            ("--file", text)
        }
        (None, None) => return Ok(None),
    };
    parse_payload(flag, &text).map(Some)
}

/// A payload given as text, parsed as JSON; the error names where it came from (`flag`) and what is wrong, with
/// line and column.
pub fn parse_payload(flag: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::InvalidJson {
        flag: flag.into(),
        problem: e.to_string(),
    })
}

/// The merge patch of the status subresource that delivers signal `name`.
pub fn signal_patch(name: &str, payload: Option<Value>) -> Value {
    let signal = match payload {
        Some(p) => json!({ "payload": p }),
        None => json!({}),
    };
    json!({ "status": { "signals": { name: signal } } })
}

/// What [`send`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// The FlowRun.
    pub flowrun: String,
    /// The signal.
    pub signal: String,
    /// Whether a step of the run waits for a signal of that name.
    pub waited_for: bool,
    /// Whether it replaced an earlier signal of that name that no step had consumed.
    pub replaced: bool,
}

impl Delivered {
    /// The line the command prints.
    pub fn message(&self) -> String {
        format!(
            "flowrun/{}: signal {:?} delivered{}",
            self.flowrun,
            self.signal,
            if self.replaced {
                " (it replaced an earlier signal of that name)"
            } else {
                ""
            }
        )
    }

    /// A warning when no step waits for the signal.
    pub fn warning(&self) -> Option<String> {
        (!self.waited_for).then(|| {
            format!(
                "no step of flowrun {} waits for signal {:?}; it is delivered anyway",
                self.flowrun, self.signal
            )
        })
    }
}

/// Patches `status.signals.SIGNAL` of FlowRun `flowrun` with an already validated payload.
pub async fn send(
    conn: &Connection,
    flowrun: &str,
    signal: &str,
    payload: Option<Value>,
) -> Result<Delivered> {
    let fr = get(conn, flowrun).await?;
    let waited_for = fr
        .spec
        .steps
        .iter()
        .chain(&fr.spec.on_exit)
        .any(|s| s.wait_for_signal.as_ref().is_some_and(|w| w.name == signal));
    let replaced = fr
        .status
        .as_ref()
        .is_some_and(|s| s.signals.contains_key(signal));
    api(conn)
        .patch_status(
            flowrun,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&signal_patch(signal, payload)),
        )
        .await?;
    Ok(Delivered {
        flowrun: flowrun.to_owned(),
        signal: signal.to_owned(),
        waited_for,
        replaced,
    })
}

/// Validates the payload, then patches `status.signals.NAME`.
pub async fn run(conn: &Connection, args: &SignalArgs) -> Result<u8> {
    let payload = payload(args.data.as_deref(), args.file.as_deref(), std::io::stdin())?;
    let delivered = send(conn, &args.flowrun, &args.name, payload).await?;
    if let Some(w) = delivered.warning() {
        eprintln!("warning: {w}");
    }
    print(&format!("{}\n", delivered.message()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_validated_and_name_their_flag() {
        assert_eq!(
            payload(Some(r#"{"ok": true}"#), None, std::io::empty()).unwrap(),
            Some(json!({"ok": true}))
        );
        assert_eq!(payload(None, None, std::io::empty()).unwrap(), None);
        let e = payload(Some("{ok: true}"), None, std::io::empty()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("--data: not valid JSON: key must be a string at line 1 column 2"),
            "{msg}"
        );
        let e = payload(None, Some(Path::new("-")), &b"[1, 2"[..]).unwrap_err();
        assert!(e.to_string().starts_with("--file: not valid JSON: "), "{e}");
        assert_eq!(
            payload(None, Some(Path::new("-")), &b" [1, 2] "[..]).unwrap(),
            Some(json!([1, 2]))
        );
        let e = payload(None, Some(Path::new("no/such/file.json")), std::io::empty()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--file: cannot read no/such/file.json: "),
            "{e}"
        );
    }

    #[test]
    fn the_patch_is_the_one_users_write_by_hand() {
        assert_eq!(
            signal_patch("approval", Some(json!({"approved": true}))),
            json!({"status": {"signals": {"approval": {"payload": {"approved": true}}}}})
        );
        assert_eq!(
            signal_patch("go", None),
            json!({"status": {"signals": {"go": {}}}})
        );
    }
}
