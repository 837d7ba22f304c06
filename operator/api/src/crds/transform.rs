//! Rewrites applied to every generated CRD schema (see [`crate::crds::all`]), for what a derive attribute would
//! have to repeat on every field: integer formats the API server knows.

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

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::json_schema;

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
