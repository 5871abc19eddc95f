//! JSON schemas for fields every custom resource of a wasmop plugin shares, for use with
//! `#[schemars(schema_with = "...")]` in a `#[derive(CustomResource)]` type.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Longest condition message the API server and the host accept.
pub const MAX_CONDITION_MESSAGE: usize = 32 * 1024;

/// Schema of `status.conditions`: a list of `metav1.Condition` with the validation that
/// kubebuilder generates for it (type and reason patterns, status enum, message length), so that
/// the API server refuses a malformed condition exactly as it does for built-in types.
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Standard conditions of the object; `Ready` is written by the wasmop host.",
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type", "status", "reason", "message", "lastTransitionTime"],
            "properties": {
                "type": {
                    "description": "Type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                },
                "status": {
                    "description": "Status of the condition: True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "reason": {
                    "description": "Programmatic identifier of the reason for the last transition, in CamelCase.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "message": {
                    "description": "Human readable details about the transition; may be empty.",
                    "type": "string",
                    "maxLength": MAX_CONDITION_MESSAGE
                },
                "lastTransitionTime": {
                    "description": "When the condition last changed status.",
                    "type": "string",
                    "format": "date-time"
                },
                "observedGeneration": {
                    "description": "The .metadata.generation the condition was set for.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_length_is_bounded_as_the_api_server_bounds_it() {
        let schema = conditions(&mut SchemaGenerator::default());
        let message = &schema.as_value()["items"]["properties"]["message"];
        assert_eq!(message["maxLength"], 32768);
    }
}
