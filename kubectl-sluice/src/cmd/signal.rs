//! `kubectl sluice signal FLOWRUN NAME [--data JSON | --file F]`: the status merge patch users would write by
//! hand, after the payload was validated as JSON.

use std::io::Read;
use std::path::Path;

use kube::api::{Patch, PatchParams};
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
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::InvalidJson {
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

/// Validates the payload, then patches `status.signals.NAME`.
pub async fn run(conn: &Connection, args: &SignalArgs) -> Result<u8> {
    let payload = payload(args.data.as_deref(), args.file.as_deref(), std::io::stdin())?;
    let fr = get(conn, &args.flowrun).await?;
    let waited_for = fr.spec.steps.iter().any(|s| {
        s.wait_for_signal
            .as_ref()
            .is_some_and(|w| w.name == args.name)
    });
    if !waited_for {
        eprintln!(
            "warning: no step of flowrun {} waits for signal {:?}; it is delivered anyway",
            args.flowrun, args.name
        );
    }
    let replaced = fr
        .status
        .as_ref()
        .is_some_and(|s| s.signals.contains_key(&args.name));
    api(conn)
        .patch_status(
            &args.flowrun,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&signal_patch(&args.name, payload)),
        )
        .await?;
    print(&format!(
        "flowrun/{}: signal {:?} delivered{}\n",
        args.flowrun,
        args.name,
        if replaced {
            " (it replaced an earlier signal of that name)"
        } else {
            ""
        }
    ))?;
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
