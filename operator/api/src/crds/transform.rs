//! Rewrites applied to every generated CRD schema (see [`crate::crds::all`]), for what a derive attribute would
//! have to repeat on every field: integer formats the API server knows, and descriptions that read as running
//! text in `kubectl explain`.

use schemars::Schema;
use serde_json::{Value, json};

/// The integer formats of a Kubernetes structural schema. The API server warns about any other format at
/// `kubectl apply` (`unrecognized format "uint32"`) and then ignores it.
pub const KUBERNETES_INTEGER_FORMATS: [&str; 2] = ["int32", "int64"];

/// Rewrites the integer formats schemars emits for Rust's integer types (`uint8`, `uint16`, `uint32`, `uint64`,
/// `uint`, `int8`, `int16`, `int`) into the two Kubernetes knows, `int32` and `int64`, keeping the Rust type's
/// range as `minimum`/`maximum` (tightened, never widened, against bounds the field declares itself).
///
/// The format is the narrowest Kubernetes format that holds the whole range: `int32` where the range fits
/// (`u8`, `u16`, and a `u32` declaring a maximum up to 2^31-1), else `int64`. A plain `u32` is therefore `int64`
/// with `maximum: 4294967295`, not `int32`: the API server enforces the `int32` range, and would refuse values a
/// `u32` holds.
pub fn kubernetes_integer_format(schema: &mut Schema) {
    let Some(format) = schema.get("format").and_then(Value::as_str) else {
        return;
    };
    // The range of the Rust type; `None`: as wide as Kubernetes integers (int64) on that side.
    let (low, high): (Option<i64>, Option<i64>) = match format {
        "uint8" => (Some(0), Some(u8::MAX.into())),
        "uint16" => (Some(0), Some(u16::MAX.into())),
        "uint32" => (Some(0), Some(u32::MAX.into())),
        "uint64" | "uint" => (Some(0), None),
        "int8" => (Some(i8::MIN.into()), Some(i8::MAX.into())),
        "int16" => (Some(i16::MIN.into()), Some(i16::MAX.into())),
        "int" => (None, None),
        _ => return,
    };
    let declared = |key: &str| schema.get(key).and_then(Value::as_f64);
    // Bounds are f64 in the schema (they are written as `minimum: 0.0`); every bound here is exact in an f64.
    let minimum = match (declared("minimum"), low) {
        (Some(d), Some(l)) => Some(d.max(l as f64)),
        (d, l) => d.or(l.map(|l| l as f64)),
    };
    let maximum = match (declared("maximum"), high) {
        (Some(d), Some(h)) => Some(d.min(h as f64)),
        (d, h) => d.or(h.map(|h| h as f64)),
    };
    let fits_int32 = minimum.is_some_and(|m| m >= f64::from(i32::MIN))
        && maximum.is_some_and(|m| m <= f64::from(i32::MAX));
    let object = schema.ensure_object();
    if let Some(m) = minimum {
        object.insert("minimum".into(), json!(m));
    }
    if let Some(m) = maximum {
        object.insert("maximum".into(), json!(m));
    }
    let format = if fits_int32 { "int32" } else { "int64" };
    object.insert("format".into(), json!(format));
}

/// Joins the line breaks of a description that come from wrapping its doc comment in the source, so that
/// `kubectl explain` (which re-wraps text at its own width) shows paragraphs rather than lines broken
/// mid-sentence. Schemars puts a `\n` at every source line break of a doc comment.
pub fn unwrap_description(schema: &mut Schema) {
    let Some(text) = schema.get("description").and_then(Value::as_str) else {
        return;
    };
    let joined = unwrap_lines(text);
    if joined != text {
        schema.insert("description".into(), Value::String(joined));
    }
}

/// What the last line written was; it decides whether the next line continues it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Nothing written yet.
    Start,
    /// A blank line after something: the next line starts a paragraph.
    Blank,
    /// Running text: the next plain line continues it.
    Text,
    /// A list item (or its continuation): the next line continues it unless it starts another item.
    ListItem,
    /// A line kept as written (indented or fenced code): the next line starts a line of its own.
    Verbatim,
}

/// Joins the single line breaks of markdown-ish doc text into spaces. What keeps its line break, and why:
/// - blank lines: they separate paragraphs (kept as one blank line, `\n\n`);
/// - a line starting a list item (`- `, `* `, `+ `, `1. `, `1) `, see [`starts_list_item`]): joined into the
///   previous line, the list would
///   read as one run-on sentence. An item's own wrapped lines (usually indented under it) are joined to it;
/// - indented lines after running text (and the indented lines after those), and fenced code blocks: code,
///   tables and aligned examples only read as written. They are kept verbatim, indentation included, and the
///   next unindented line starts a line of its own.
pub fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = Last::Start;
    let mut fenced = false;
    for line in text.lines() {
        let line = line.trim_end();
        let content = line.trim_start();
        let fence = content.starts_with("```");
        if fenced || fence {
            if fence {
                fenced = !fenced;
            }
            push_break(&mut out, last);
            out.push_str(line);
            last = Last::Verbatim;
            continue;
        }
        if content.is_empty() {
            if last != Last::Start {
                last = Last::Blank;
            }
            continue;
        }
        let indented = content.len() < line.len();
        // An indented line right after code is more code, even if it looks like a list item (`- name: a`).
        let item = !(indented && last == Last::Verbatim)
            && starts_list_item(content, last == Last::ListItem);
        let continues = match last {
            Last::Text => !item && !indented,
            Last::ListItem => !item,
            Last::Start | Last::Blank | Last::Verbatim => false,
        };
        if continues {
            out.push(' ');
            out.push_str(content);
            continue;
        }
        push_break(&mut out, last);
        out.push_str(line);
        last = match (item, indented) {
            (true, _) => Last::ListItem,
            (false, true) => Last::Verbatim,
            (false, false) => Last::Text,
        };
    }
    out
}

fn push_break(out: &mut String, last: Last) {
    match last {
        Last::Start => {}
        Last::Blank => out.push_str("\n\n"),
        Last::Text | Last::ListItem | Last::Verbatim => out.push('\n'),
    }
}

/// Whether a line (without its indentation) starts a markdown list item: `- `, `* `, `+ `, or a number and
/// `. ` or `) `. As in CommonMark, only `1.` starts a numbered list in running text (a wrapped sentence may
/// well put `2026. ` at the start of a line); inside a list any number does.
fn starts_list_item(content: &str, in_list: bool) -> bool {
    if ["- ", "* ", "+ "].iter().any(|m| content.starts_with(m)) {
        return true;
    }
    let digits = content.bytes().take_while(u8::is_ascii_digit).count();
    (1..=9).contains(&digits)
        && [". ", ") "]
            .iter()
            .any(|m| content[digits..].starts_with(m))
        && (in_list || &content[..digits] == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::json_schema;

    #[test]
    fn source_line_wraps_are_joined_and_paragraphs_kept() {
        assert_eq!(
            unwrap_lines(
                "Pod template of the workers: a container running the\nuser's worker binary."
            ),
            "Pod template of the workers: a container running the user's worker binary."
        );
        assert_eq!(
            unwrap_lines("First paragraph,\nwrapped.\n\n\nSecond\nparagraph.\n"),
            "First paragraph, wrapped.\n\nSecond paragraph."
        );
        assert_eq!(unwrap_lines("One line."), "One line.");
        assert_eq!(
            unwrap_lines("trailing space \njoined"),
            "trailing space joined"
        );
    }

    #[test]
    fn list_items_keep_their_breaks_and_join_their_own_wrapped_lines() {
        assert_eq!(
            unwrap_lines(
                "Modes:\n- QueueDepth: the operator\n  sets replicas.\n- Manual: as\nwritten.\n* star\n+ plus\n1. one\n2) two\n  - nested\n    item"
            ),
            "Modes:\n- QueueDepth: the operator sets replicas.\n- Manual: as written.\n* star\n+ plus\n1. one\n2) two\n  - nested item"
        );
        // Not list items: a word that merely starts with a marker character.
        assert_eq!(
            unwrap_lines("a range\n-5 to 5, and\n*emphasis*, and\n2026. The end"),
            "a range -5 to 5, and *emphasis*, and 2026. The end"
        );
    }

    #[test]
    fn code_keeps_its_lines() {
        assert_eq!(
            unwrap_lines("For example:\n    steps:\n    - name: a\nAfter the code,\nmore text."),
            "For example:\n    steps:\n    - name: a\nAfter the code, more text."
        );
        assert_eq!(
            unwrap_lines("Run\n```\nkubectl get wp\n\nkubectl get fr\n```\nthen\nlook."),
            "Run\n```\nkubectl get wp\n\nkubectl get fr\n```\nthen look."
        );
    }

    #[test]
    fn unsigned_formats_become_kubernetes_formats_with_their_range() {
        let mut s = json_schema!({"type": "integer", "format": "uint32", "minimum": 0.0});
        kubernetes_integer_format(&mut s);
        assert_eq!(
            s,
            json_schema!({"type": "integer", "format": "int64", "minimum": 0.0, "maximum": 4294967295.0})
        );
        // A declared maximum that fits int32 makes it int32; a declared minimum is kept.
        let mut s = json_schema!({"type": "integer", "format": "uint32", "minimum": 1.0, "maximum": 1000.0});
        kubernetes_integer_format(&mut s);
        assert_eq!(
            s,
            json_schema!({"type": "integer", "format": "int32", "minimum": 1.0, "maximum": 1000.0})
        );
        let mut s = json_schema!({"type": "integer", "format": "uint64", "minimum": 0.0});
        kubernetes_integer_format(&mut s);
        assert_eq!(
            s,
            json_schema!({"type": "integer", "format": "int64", "minimum": 0.0})
        );
        // A missing minimum is added.
        let mut s = json_schema!({"type": "integer", "format": "uint"});
        kubernetes_integer_format(&mut s);
        assert_eq!(
            s,
            json_schema!({"type": "integer", "format": "int64", "minimum": 0.0})
        );
        let mut s =
            json_schema!({"type": "integer", "format": "uint8", "minimum": 0.0, "maximum": 255.0});
        kubernetes_integer_format(&mut s);
        assert_eq!(s.get("format"), Some(&json!("int32")));
        let mut s = json_schema!({"type": "integer", "format": "int16", "minimum": -32768.0, "maximum": 32767.0});
        kubernetes_integer_format(&mut s);
        assert_eq!(s.get("format"), Some(&json!("int32")));
        // Known formats are left alone.
        for known in [
            json_schema!({"type": "integer", "format": "int32"}),
            json_schema!({"type": "number", "format": "double"}),
            json_schema!({"type": "string", "format": "date-time"}),
        ] {
            let mut s = known.clone();
            kubernetes_integer_format(&mut s);
            assert_eq!(s, known);
        }
    }
}
