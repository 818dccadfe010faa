//! The subset of JSON Schema the extractor fills: an object of flat
//! properties typed `string`, `number`, `integer`, `boolean` or `array`
//! (of strings or numbers), with `enum`, `description` and `required`.

use serde_json::Value;

/// Most fields filled in one request.
pub const MAX_FIELDS: usize = 12;

/// A field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    /// An array of this item type.
    Array(Box<FieldType>),
    /// One of these strings.
    Enum(Vec<String>),
    /// Text or a number, whichever the value is (a field named in a
    /// question without a type).
    Scalar,
}

impl FieldType {
    /// For the model's prompt and for errors.
    pub fn describe(&self) -> String {
        match self {
            FieldType::String => "text".into(),
            FieldType::Number => "a number".into(),
            FieldType::Integer => "a whole number".into(),
            FieldType::Boolean => "yes or no".into(),
            FieldType::Array(item) => format!("a comma-separated list of {}", item.describe()),
            FieldType::Enum(options) => format!("one of: {}", options.join(", ")),
            FieldType::Scalar => "text or a number".into(),
        }
    }
}

/// One property to fill.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: FieldType,
    pub description: Option<String>,
    pub required: bool,
}

/// The fields of an object schema.
#[derive(Debug)]
pub struct Schema {
    pub fields: Vec<Field>,
}

fn field_type(name: &str, spec: &Value) -> Result<FieldType, String> {
    if let Some(options) = spec.get("enum") {
        let options = options
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .filter(|o| !o.is_empty())
            .ok_or_else(|| format!("`{name}`: `enum` must be a list of strings"))?;
        return Ok(FieldType::Enum(options));
    }
    match spec.get("type").and_then(Value::as_str) {
        Some("string") | None => Ok(FieldType::String),
        Some("number") => Ok(FieldType::Number),
        Some("integer") => Ok(FieldType::Integer),
        Some("boolean") => Ok(FieldType::Boolean),
        Some("array") => {
            let item = spec
                .get("items")
                .map_or(Ok(FieldType::String), |i| field_type(name, i))?;
            match item {
                FieldType::String | FieldType::Number | FieldType::Integer => {
                    Ok(FieldType::Array(Box::new(item)))
                }
                _ => Err(format!("`{name}`: arrays of strings or numbers only")),
            }
        }
        Some(other) => Err(format!(
            "`{name}`: type `{other}` is not supported (string, number, integer, boolean, array, enum); flatten nested objects into fields"
        )),
    }
}

impl Schema {
    /// Read an object schema from JSON text.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let schema: Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not valid JSON: {e}"))?;
        if schema
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "object")
        {
            return Err("the schema must describe an object (\"type\": \"object\")".into());
        }
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .filter(|p| !p.is_empty())
            .ok_or("the schema needs `properties`: the fields to extract")?;
        if properties.len() > MAX_FIELDS {
            return Err(format!(
                "the schema has {} fields; at most {MAX_FIELDS} are extracted per request",
                properties.len()
            ));
        }
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let fields = properties
            .iter()
            .map(|(name, spec)| {
                Ok(Field {
                    name: name.clone(),
                    kind: field_type(name, spec)?,
                    description: spec
                        .get("description")
                        .and_then(Value::as_str)
                        .map(String::from),
                    required: required.contains(&name.as_str()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Schema { fields })
    }

    /// Check `value` against the schema.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        let object = value.as_object().ok_or("not an object")?;
        for field in &self.fields {
            match object.get(&field.name) {
                None if field.required => return Err(format!("`{}` is missing", field.name)),
                None => {}
                Some(v) if !fits(&field.kind, v) => {
                    return Err(format!("`{}` is not {}", field.name, field.kind.describe()));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn fits(kind: &FieldType, value: &Value) -> bool {
    match kind {
        FieldType::String => value.is_string(),
        FieldType::Number => value.is_number(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Array(item) => value
            .as_array()
            .is_some_and(|a| a.iter().all(|v| fits(item, v))),
        FieldType::Enum(options) => value
            .as_str()
            .is_some_and(|s| options.iter().any(|o| o == s)),
        FieldType::Scalar => value.is_string() || value.is_number(),
    }
}

/// The first number in `text`.
fn first_number(text: &str) -> Option<f64> {
    let mut start = None;
    for (i, c) in text.char_indices() {
        let digitish = c.is_ascii_digit()
            || (c == '-' && text[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
            || (c == '.' && start.is_some());
        match (start, digitish) {
            (None, true) => start = Some(i),
            (Some(s), false) if c != ',' => return text[s..i].replace(',', "").parse().ok(),
            _ => {}
        }
    }
    start.and_then(|s| {
        text[s..]
            .replace(',', "")
            .trim_end_matches('.')
            .parse()
            .ok()
    })
}

impl Field {
    /// The model's answer as this field's value, or `None` when it does
    /// not fit.
    pub fn coerce(&self, answer: &str) -> Option<Value> {
        let answer = answer
            .trim()
            .trim_matches(|c| c == '"' || c == '\'' || c == '`')
            .trim();
        coerce(&self.kind, answer)
    }
}

fn coerce(kind: &FieldType, answer: &str) -> Option<Value> {
    if answer.is_empty() {
        return None;
    }
    match kind {
        FieldType::String | FieldType::Scalar => {
            let lower = answer.to_lowercase();
            let unknown = ["unknown", "n/a", "none", "not mentioned", "not specified"];
            (!unknown.iter().any(|u| lower.starts_with(u)))
                .then(|| Value::from(answer.trim_end_matches('.')))
        }
        FieldType::Number => first_number(answer)
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        FieldType::Integer => first_number(answer)
            .filter(|n| n.fract() == 0.0 && n.abs() < 9e15)
            .map(|n| Value::from(n as i64)),
        FieldType::Boolean => {
            let lower = answer.to_lowercase();
            let word = lower
                .split(|c: char| !c.is_alphabetic())
                .next()
                .unwrap_or("");
            match word {
                "yes" | "true" | "y" => Some(Value::Bool(true)),
                "no" | "false" | "n" => Some(Value::Bool(false)),
                _ => None,
            }
        }
        FieldType::Array(item) => {
            let items: Option<Vec<Value>> = answer
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .flat_map(|p| p.split(" and "))
                .map(|p| p.trim().trim_matches('"'))
                .filter(|p| !p.is_empty())
                .map(|p| coerce(item, p))
                .collect();
            items.filter(|i| !i.is_empty()).map(Value::Array)
        }
        FieldType::Enum(options) => {
            let lower = answer.to_lowercase();
            options
                .iter()
                .find(|o| o.to_lowercase() == lower)
                .or_else(|| options.iter().find(|o| lower.contains(&o.to_lowercase())))
                .map(|o| Value::from(o.as_str()))
        }
    }
}

/// The text to extract from: the question without a fenced schema block.
pub fn text_of(question: &str) -> &str {
    question.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_schemas_are_explained() {
        assert!(Schema::parse("{").unwrap_err().contains("not valid JSON"));
        assert!(
            Schema::parse(r#"{"type":"array"}"#)
                .unwrap_err()
                .contains("object")
        );
        let e = Schema::parse(r#"{"properties":{"a":{"type":"object"}}}"#).unwrap_err();
        assert!(e.contains("flatten"), "{e}");
    }

    #[test]
    fn validation_checks_types_and_required_fields() {
        let schema = Schema::parse(
            r#"{"properties":{"n":{"type":"integer"},"s":{"type":"string"}},"required":["n"]}"#,
        )
        .unwrap();
        assert!(schema.validate(&serde_json::json!({"n": 3})).is_ok());
        assert!(schema.validate(&serde_json::json!({"n": "3"})).is_err());
        assert!(schema.validate(&serde_json::json!({"s": "x"})).is_err());
    }
}
