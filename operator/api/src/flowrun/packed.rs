//! `status.steps.<step>.instances.outputs` as stored: one string holding the JSON object from instance index
//! to output, while Rust code sees the map.
//!
//! The API server's cost of a status write grows with the number of fields in the object: it decodes, merges,
//! tracks field ownership of and re-encodes every one of them. A forEach of 1,000 instances keeps up to 1,000
//! outputs until the step ends, so as a map they made each late write of a big fan-out several times dearer
//! than the same bytes as one string. Statuses written before the outputs were packed hold the map; both forms
//! are read.

use std::collections::BTreeMap;
use std::fmt;

use schemars::{Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::Value;

/// The stored string of `outputs`: compact JSON of the map, keys in index order as text.
pub fn pack(outputs: &BTreeMap<String, Value>) -> String {
    // Serializing string keys and JSON values cannot fail.
    serde_json::to_string(outputs).unwrap_or_default()
}

/// The map held by a stored string of `outputs`.
pub fn unpack(packed: &str) -> Result<BTreeMap<String, Value>, serde_json::Error> {
    if packed.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(packed)
}

pub(crate) fn serialize<S: Serializer>(
    outputs: &BTreeMap<String, Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&pack(outputs))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Value>, D::Error> {
    deserializer.deserialize_any(Outputs)
}

/// Reads either form: the packed string, or the map statuses held before.
struct Outputs;

impl<'de> Visitor<'de> for Outputs {
    type Value = BTreeMap<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a string of JSON holding an object from instance index to output, or that object",
        )
    }

    fn visit_str<E: de::Error>(self, packed: &str) -> Result<Self::Value, E> {
        unpack(packed)
            .map_err(|e| E::custom(format!("instances.outputs is not a JSON object: {e}")))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
}

/// Schema of the stored form: a string (the entry it sits in is open, so this is documentation).
pub(crate) fn schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string" })
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super", default)]
        outputs: BTreeMap<String, Value>,
    }

    fn outputs() -> BTreeMap<String, Value> {
        BTreeMap::from([
            (
                "0".to_owned(),
                json!({"doc": "a \"quoted\" word\n", "n": [1, 2]}),
            ),
            ("10".to_owned(), json!("ten")),
            ("2".to_owned(), json!(null)),
        ])
    }

    #[test]
    fn the_map_is_stored_as_one_string_and_read_back_whole() {
        let holder = Holder { outputs: outputs() };
        let stored = serde_json::to_value(&holder).unwrap();
        let packed = stored["outputs"].as_str().expect("a string");
        assert_eq!(
            serde_json::from_str::<Value>(packed).unwrap(),
            json!(outputs())
        );
        assert_eq!(serde_json::from_value::<Holder>(stored).unwrap(), holder);
    }

    #[test]
    fn the_map_form_of_earlier_statuses_and_absent_or_null_outputs_are_read() {
        let earlier: Holder = serde_json::from_value(json!({"outputs": outputs()})).unwrap();
        assert_eq!(earlier.outputs, outputs());
        for empty in [json!({}), json!({"outputs": null}), json!({"outputs": ""})] {
            let holder: Holder = serde_json::from_value(empty.clone()).unwrap();
            assert!(holder.outputs.is_empty(), "{empty}");
        }
    }

    #[test]
    fn a_string_that_is_not_an_object_of_outputs_is_refused_naming_the_field() {
        for bad in [json!("[1, 2]"), json!("{\"0\": "), json!(7)] {
            let err = serde_json::from_value::<Holder>(json!({"outputs": bad})).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("instances.outputs") || msg.contains("instance index"),
                "{bad}: {msg}"
            );
        }
    }
}
