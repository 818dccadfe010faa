//! JSON extractor: returns valid JSON that matches a schema, from text.
//!
//! Small models rarely write a whole valid object, so the JSON is built
//! here, and the model is asked for one field at a time: each answer is
//! coerced to the field's type (and checked against its `enum`); an answer
//! that does not fit is retried with sampling, up to [`TRIES`] times. The
//! finished object is validated against the schema before it is returned,
//! so the answer is always valid JSON matching the schema, or an error
//! that names the field that could not be filled.
//!
//! The schema comes from the request metadata `schema` (the server puts
//! OpenAI's `response_format: {"type": "json_schema", ...}` there). Without
//! one, the fields are read from the question ("extract the name, age and
//! city from ...") as strings.

mod schema;

use serde_json::{Map, Value};
use tessera_sdk::prelude::*;

use schema::{Field, Schema};

/// Model answers tried per field.
pub const TRIES: u32 = 3;
/// Tokens of one field's answer.
const FIELD_TOKENS: u32 = 32;

struct JsonExtractor;

impl Expert for JsonExtractor {
    fn describe() -> ExpertInfo {
        ExpertInfo::new(
            "json-extractor",
            "Extracts data from text as JSON matching a schema.",
        )
        .tag("json")
    }

    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let schema = match req.metadata("schema") {
            Some(text) => Schema::parse(text).map_err(Error::invalid_input)?,
            None => Schema::from_question(question).ok_or_else(|| {
                Error::invalid_input(
                    "no schema: send one as response_format {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}} or metadata `schema`, or ask like \"extract the name and age from: ...\"",
                )
            })?,
        };
        let text = schema::text_of(question);
        let mut object = Map::new();
        let mut usage = Usage::default();
        let mut tries_total = 0;
        let mut confidence_sum = 0.0;
        for field in &schema.fields {
            let mut filled = None;
            let mut last_output = String::new();
            for attempt in 0..TRIES {
                tries_total += 1;
                let completion = ask(text, field, attempt, &req)?;
                usage += completion.usage;
                last_output = completion.text.trim().to_string();
                if let Some(value) = field.coerce(&last_output) {
                    confidence_sum += completion.mean_probability().unwrap_or(0.5);
                    filled = Some(value);
                    break;
                }
                log::with_fields(
                    log::Level::Debug,
                    "answer does not fit the field; retrying",
                    &[("field", &field.name), ("output", &last_output)],
                );
            }
            match filled {
                Some(value) => {
                    object.insert(field.name.clone(), value);
                }
                None if field.required => {
                    return Err(Error::Model(format!(
                        "could not extract `{}` as {} after {TRIES} tries (last answer: \"{last_output}\")",
                        field.name,
                        field.kind.describe()
                    )));
                }
                None => {}
            }
        }
        let value = Value::Object(object);
        schema.validate(&value).map_err(|e| {
            Error::internal(format!(
                "the extracted object does not match the schema: {e}"
            ))
        })?;
        let confidence = confidence_sum / schema.fields.len().max(1) as f32;
        Ok(Response::new(value.to_string())
            .with_usage(usage)
            .with_confidence(confidence)
            .with_metadata("tries", tries_total.to_string()))
    }
}

/// Ask the model for one field; greedy first, then sampled retries.
fn ask(text: &str, field: &Field, attempt: u32, req: &Request) -> Result<Completion, Error> {
    let mut hint = field.kind.describe();
    if let Some(description) = &field.description {
        hint = format!("{hint}; {description}");
    }
    let messages = [
        Message::system(
            "You extract one value from a text. Reply with the value only, on one line, with no explanation.",
        ),
        Message::user(format!(
            "Text: {text}\n\nWhat is the {} ({hint})?",
            field.name.replace('_', " ")
        )),
    ];
    let mut sampling = Sampling::greedy().max_tokens(FIELD_TOKENS).stop("\n");
    if attempt > 0 {
        sampling = sampling.temperature(0.8).seed(
            req.sampling
                .seed
                .unwrap_or(0)
                .wrapping_add(u64::from(attempt)),
        );
    }
    model::chat(&messages, &sampling)
}

export_expert!(JsonExtractor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_coerce_to_their_types() {
        let schema = Schema::parse(
            r#"{"type":"object","properties":{"age":{"type":"integer"},"ok":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string"}},"size":{"enum":["S","M"]}},"required":["age"]}"#,
        )
        .unwrap();
        let field = |n: &str| schema.fields.iter().find(|f| f.name == n).unwrap();
        assert_eq!(
            field("age").coerce("He is 42 years old."),
            Some(Value::from(42))
        );
        assert_eq!(field("age").coerce("unknown"), None);
        assert_eq!(field("ok").coerce("Yes."), Some(Value::from(true)));
        assert_eq!(
            field("tags").coerce("red, green and blue"),
            Some(serde_json::json!(["red", "green", "blue"]))
        );
        assert_eq!(field("size").coerce("m"), Some(Value::from("M")));
        assert_eq!(field("size").coerce("XL"), None);
        assert!(field("age").required && !field("ok").required);
    }
}
