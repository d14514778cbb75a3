//! Validate an install's config against the plugin's JSON Schema, with one
//! message per failing field, so a no-code builder's form can point at it.

use serde::Serialize;

/// One failing field.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigError {
    /// JSON pointer into the config (`""` for the whole document).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Largest config accepted: a config is settings, not data.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

/// Check `config` against `schema`.
pub fn validate(schema: &serde_json::Value, config: &serde_json::Value) -> Result<(), Vec<ConfigError>> {
    let size = config.to_string().len();
    if size > MAX_CONFIG_BYTES {
        return Err(vec![ConfigError {
            field: String::new(),
            message: format!("the config is {size} bytes; the limit is {MAX_CONFIG_BYTES}"),
        }]);
    }
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        vec![ConfigError { field: String::new(), message: format!("the plugin's schema is invalid: {e}") }]
    })?;
    let errors: Vec<ConfigError> = validator
        .iter_errors(config)
        .map(|e| ConfigError { field: e.instance_path.to_string(), message: e.to_string() })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_errors_name_the_field() {
        let schema = json!({"type": "object", "properties": {"times": {"type": "integer", "minimum": 1}}, "required": ["times"], "additionalProperties": false});
        assert!(validate(&schema, &json!({"times": 3})).is_ok());
        let errors = validate(&schema, &json!({"times": 0, "extra": true})).unwrap_err();
        assert!(errors.iter().any(|e| e.field == "/times"), "{errors:?}");
        assert!(errors.iter().any(|e| e.message.contains("extra")), "{errors:?}");
    }
}
