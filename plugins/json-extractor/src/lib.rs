//! JSON extractor: returns valid JSON that matches a schema, from text.
//!
//! Small models rarely write a whole valid object, so the JSON is built
//! here, one field at a time, and the finished object is validated against
//! the schema before it is returned: the answer is always valid JSON
//! matching the schema, or an error that names the field that could not be
//! filled.
//!
//! Text, number and enum values are *chosen*, not written: the candidates
//! are spans of the text (or the enum's options), and the model's
//! log-likelihood of each after worked examples decides ([`infer`]). So a
//! value is never a sentence about the value, and the confidence reported
//! is the winner's share of the candidates' probability. Booleans and
//! arrays are asked for and coerced to their type, with sampled retries
//! when an answer does not fit, up to [`TRIES`] times.
//!
//! The schema comes from the request metadata `schema` (the server puts
//! OpenAI's `response_format: {"type": "json_schema", ...}` there). Without
//! one, the fields are read from the question in any common phrasing
//! ("extract the name and age from: ...", "JSON with keys drink and size:
//! ...", "fields name and member (a boolean)"); a boolean field without a
//! schema is true unless the text negates it.

mod infer;
mod schema;

use serde_json::{Map, Value};
use tessera_sdk::prelude::*;

use infer::Span;
use schema::{Field, FieldType, Schema};

/// Model answers tried per field.
pub const TRIES: u32 = 3;
/// Tokens of one field's answer.
const FIELD_TOKENS: u32 = 32;
/// Most spans rated in one request (one `score-choices` call per field).
pub const RATING_BUDGET: usize = 64;

struct JsonExtractor;

impl Expert for JsonExtractor {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let (schema, text, inferred) = match req.metadata("schema") {
            Some(schema) => (
                Schema::parse(schema).map_err(Error::invalid_input)?,
                schema::text_of(question).to_string(),
                false,
            ),
            None => {
                let (fields, text) = infer::fields_and_text(question).ok_or_else(|| {
                    Error::invalid_input(
                        "no schema: send one as response_format {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}} or metadata `schema`, or ask like \"extract the name and age from: ...\"",
                    )
                })?;
                (Schema { fields }, text, true)
            }
        };
        let per_field =
            (RATING_BUDGET / schema.fields.len().max(1)).clamp(2, infer::MAX_CANDIDATES);
        let mut object = Map::new();
        let mut usage = Usage::default();
        let mut calls = 0;
        let mut confidence_sum = 0.0;
        // Fields whose value is chosen among spans: rated first, assigned
        // together below.
        let mut rated: Vec<(&Field, Vec<Span>, Vec<f64>)> = Vec::new();
        for field in &schema.fields {
            let mut choices: Vec<Span> = match &field.kind {
                FieldType::Enum(options) => options.iter().cloned().map(Span::Text).collect(),
                FieldType::String | FieldType::Scalar | FieldType::Number | FieldType::Integer => {
                    infer::candidates(&text, field)
                }
                _ => Vec::new(),
            };
            choices.truncate(per_field);
            let found = if inferred && field.kind == FieldType::Boolean {
                Some((Value::Bool(infer::boolean(&text)), 1.0))
            } else if choices.is_empty() {
                ask_until_it_fits(&text, field, &req, &mut usage, &mut calls)?
            } else {
                calls += 1;
                let scores = rate(&text, field, &choices)?;
                rated.push((field, choices, scores));
                continue;
            };
            match found {
                Some((value, confidence)) => {
                    confidence_sum += confidence;
                    object.insert(field.name.clone(), value);
                }
                None if field.required => return Err(unfilled(field)),
                None => {}
            }
        }
        for (field, value, share) in assign(rated)? {
            match value {
                Some(value) => {
                    confidence_sum += share;
                    object.insert(field.name.clone(), value);
                }
                None if field.required => return Err(unfilled(field)),
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
            .with_metadata("model_calls", calls.to_string()))
    }
}

fn unfilled(field: &Field) -> Error {
    Error::Model(format!(
        "could not extract `{}` as {}: no value in the text fits",
        field.name,
        field.kind.describe()
    ))
}

/// The model's log-likelihood of each of `choices` as `field`'s value.
fn rate(text: &str, field: &Field, choices: &[Span]) -> Result<Vec<f64>, Error> {
    let prompt = infer::prompt(text, &field.name);
    let continuations: Vec<String> = choices
        .iter()
        .map(|choice| format!(" {}\n", choice.text()))
        .collect();
    model::score_choices(&prompt, &continuations)
}

/// Values for the rated fields: the most confident field takes its best
/// span first, and a span of the text fills one field only (enum options
/// may repeat). Confidence is the winner's share of the probability of
/// the choices still open to the field.
#[allow(clippy::type_complexity)]
fn assign(
    mut rated: Vec<(&Field, Vec<Span>, Vec<f64>)>,
) -> Result<Vec<(&Field, Option<Value>, f32)>, Error> {
    let mut used: Vec<Span> = Vec::new();
    let mut out = Vec::new();
    while !rated.is_empty() {
        // (index in `rated`, index of the choice, share)
        let mut best: Option<(usize, usize, f32)> = None;
        for (r, (field, choices, scores)) in rated.iter().enumerate() {
            let open = |i: &usize| {
                matches!(field.kind, FieldType::Enum(_)) || !used.contains(&choices[*i])
            };
            let Some(top) = (0..choices.len())
                .filter(open)
                .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            else {
                continue;
            };
            let total: f64 = (0..choices.len())
                .filter(open)
                .map(|i| (scores[i] - scores[top]).exp())
                .sum();
            let share = (1.0 / total) as f32;
            if best.is_none_or(|(_, _, s)| share > s) {
                best = Some((r, top, share));
            }
        }
        let Some((r, choice, share)) = best else {
            // Every remaining field's spans are taken.
            out.extend(rated.drain(..).map(|(f, _, _)| (f, None, 0.0)));
            break;
        };
        let (field, choices, _) = rated.remove(r);
        let span = choices[choice].clone();
        log::with_fields(
            log::Level::Debug,
            "chose a span",
            &[
                ("field", &field.name),
                ("value", span.text()),
                ("share", &format!("{share:.3}")),
            ],
        );
        let value = match (&span, &field.kind) {
            (Span::Number(n), FieldType::Scalar | FieldType::Number) => {
                number(n).unwrap_or_else(|| Value::from(n.as_str()))
            }
            (Span::Number(n), FieldType::Integer) => field.coerce(n).ok_or_else(|| {
                Error::Model(format!("`{}`: {n} is not a whole number", field.name))
            })?,
            (span, _) => Value::from(span.text()),
        };
        used.push(span);
        out.push((field, Some(value), share));
    }
    Ok(out)
}

/// A JSON number for `text`: an integer when it is whole.
fn number(text: &str) -> Option<Value> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(Value::from(n));
    }
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
}

/// Ask for a field's value (booleans, arrays) until an answer fits its type.
fn ask_until_it_fits(
    text: &str,
    field: &Field,
    req: &Request,
    usage: &mut Usage,
    calls: &mut usize,
) -> Result<Option<(Value, f32)>, Error> {
    for attempt in 0..TRIES {
        *calls += 1;
        let completion = ask(text, field, attempt, req)?;
        *usage += completion.usage;
        let output = completion.text.trim().to_string();
        if let Some(value) = field.coerce(&output) {
            return Ok(Some((value, completion.mean_probability().unwrap_or(0.5))));
        }
        log::with_fields(
            log::Level::Debug,
            "answer does not fit the field; retrying",
            &[("field", &field.name), ("output", &output)],
        );
    }
    Ok(None)
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
