//! [`Value`] and [`Properties`]: the typed property values of contacts,
//! events, companies and deals, and their JSON form.
//!
//! JSON is untagged so API users write plain JSON: `null`, `true`, `3.5`,
//! `"text"`, `["a", "b"]`. A timestamp has no plain JSON form of its own (it
//! would come back as a number), so it is written `{"$timestamp": <epoch ms>}`
//! both over the API and in the database: a plugin that stores a timestamp
//! reads a timestamp back.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::error::{Result, StoreError};

/// Custom properties by name (sorted, so their JSON is stable).
pub type Properties = BTreeMap<String, Value>;

/// The JSON key that marks a timestamp value.
pub const TIMESTAMP_KEY: &str = "$timestamp";

/// Longest property name. Names are identifiers, not content.
pub const MAX_PROPERTY_NAME: usize = 128;
/// Largest JSON encoding of one record's properties: a record that grows
/// without bound slows every read of it and every plugin call that gets it.
pub const MAX_PROPERTIES_BYTES: usize = 64 << 10;

/// A typed property value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value; in a patch, deletes the property.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// Any JSON number.
    Number(f64),
    /// A string.
    Text(String),
    /// A list of strings.
    TextList(Vec<String>),
    /// A point in time, epoch milliseconds; JSON `{"$timestamp": ms}`.
    Timestamp(i64),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => s.serialize_f64(*n),
            Value::Text(t) => s.serialize_str(t),
            Value::TextList(l) => l.serialize(s),
            Value::Timestamp(t) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(TIMESTAMP_KEY, t)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null, a boolean, a number, a string, a list of strings or {\"$timestamp\": <epoch ms>}")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<Value, E> {
        Ok(Value::Number(n as f64))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<Value, E> {
        Ok(Value::Number(n as f64))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> std::result::Result<Value, E> {
        Ok(Value::Number(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Value, E> {
        Ok(Value::Text(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<Value, E> {
        Ok(Value::Text(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<ListItem>()? {
            items.push(item.0);
        }
        Ok(Value::TextList(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let key: Option<String> = map.next_key()?;
        match key.as_deref() {
            Some(TIMESTAMP_KEY) => {
                let ms: i64 = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("a timestamp object has only the key \"$timestamp\""));
                }
                Ok(Value::Timestamp(ms))
            }
            _ => {
                Err(de::Error::custom("objects are not property values; only {\"$timestamp\": <epoch ms>} is accepted"))
            }
        }
    }
}

/// One string of a list, with an error in plain words for anything else.
struct ListItem(String);

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ListItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (lists hold only strings)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<ListItem, E> {
                Ok(ListItem(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<ListItem, E> {
                Ok(ListItem(s))
            }
        }
        d.deserialize_string(V)
    }
}

/// Apply `patch` to `target`: `Null` deletes a property, anything else sets it.
pub fn merge_properties(target: &mut Properties, patch: &Properties) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                target.remove(name);
            }
            v => {
                target.insert(name.clone(), v.clone());
            }
        }
    }
}

/// Check the names of `props` and encode them as stored JSON text.
pub(crate) fn encode_properties(props: &Properties) -> Result<String> {
    for name in props.keys() {
        if name.is_empty() || name.len() > MAX_PROPERTY_NAME {
            return Err(StoreError::Invalid(format!(
                "property names are 1 to {MAX_PROPERTY_NAME} bytes (got {} bytes)",
                name.len()
            )));
        }
    }
    let json = serde_json::to_string(props).map_err(|e| StoreError::Invalid(format!("properties: {e}")))?;
    if json.len() > MAX_PROPERTIES_BYTES {
        return Err(StoreError::Invalid(format!(
            "properties are at most {} KiB once encoded as JSON (got {} bytes)",
            MAX_PROPERTIES_BYTES >> 10,
            json.len()
        )));
    }
    Ok(json)
}

/// Decode stored JSON properties.
pub(crate) fn decode_properties(json: &str) -> Result<Properties> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("properties: {e}")))
}
