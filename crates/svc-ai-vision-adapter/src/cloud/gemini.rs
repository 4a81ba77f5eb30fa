//! Gemini reasoning as an enricher (the original's step 8): the recogniser's brand, type and
//! model (and, ours, the text read) go to `generateContent` with the original's prompt and
//! response schema v2 (`responseMimeType: application/json`, `responseSchema`); the answer
//! refines the aggregate. `isConfident` is `confidence > 0.75` (the original's threshold).
//!
//! Differences from the original, on purpose: a refusal keeps the recogniser's aggregate (the
//! original replaced it with nulls, losing e.g. a brand read off a logo); a field Gemini leaves
//! null keeps the recogniser's value; values outside the schema (a year not `YYYY[-YYYY]`, a
//! negative weight) are dropped rather than passed on.

use std::sync::{Arc, LazyLock};

use anyhow::Context;
use async_trait::async_trait;
use contracts::{MachineAggregate, TextLine};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Attempt, Retry, classify_send_error, classify_status, send_with_retry};
use crate::Settings;
use crate::engine::{EngineError, Enricher, Enrichment, Image};

/// Gemini's `isConfident` threshold (strictly above).
pub const CONFIDENT_ABOVE: f64 = 0.75;
/// `provider.reasoningName` when Gemini refined the answer.
pub const REASONING_NAME: &str = "Gemini";
/// Lines of text read passed along at most.
const MAX_TEXT_LINES: usize = 20;

/// The prompt (the original's `gemini_prompt_v0.txt`, as the spec describes it).
pub const PROMPT: &str = "You are an expert at identifying heavy construction machinery \
(excavators, wheel loaders, bulldozers, motor graders, dump trucks, backhoe loaders and similar).\n\
An image recognition step found the machine below: brand {{brand}}, machine type {{machineType}}, \
model {{model}}.\n\
Return, as JSON matching the response schema: the brand, the machine type, the model, typical \
attachments, the estimated operating weight in kg, the production year range (at most 12 \
characters, e.g. 1997-2003), your confidence from 0 to 1, and a short source for your answer \
(at most 120 characters).\n\
Avoid guessing: leave a field null when you do not know it. If you are unsure what the machine \
is, refuse with {\"status\":\"refusal\",\"reason\":\"...\"}.";

/// Response schema v2 (the original's `response_json_schema_v2.json`), in Gemini's schema
/// dialect.
pub fn response_schema() -> Value {
    json!({
        "type": "OBJECT",
        "properties": {
            "status": { "type": "STRING", "enum": ["success", "refusal"] },
            "reason": { "type": "STRING", "nullable": true },
            "commentary": { "type": "STRING", "nullable": true },
            "partial": { "type": "BOOLEAN", "nullable": true },
            "brand": { "type": "STRING", "nullable": true },
            "machineType": { "type": "STRING", "nullable": true },
            "model": { "type": "STRING", "nullable": true },
            "weight": { "type": "NUMBER", "minimum": 0, "nullable": true },
            "year": { "type": "STRING", "pattern": "^[0-9]{4}(-[0-9]{4})?$", "maxLength": 20, "nullable": true },
            "attachment": { "type": "ARRAY", "items": { "type": "STRING" }, "nullable": true },
            "confidence": { "type": "NUMBER", "minimum": 0, "maximum": 1, "nullable": true },
            "source": { "type": "STRING", "nullable": true }
        },
        "required": ["status"]
    })
}

/// The prompt with the recogniser's findings filled in (`unknown` for null), as the original.
pub fn render_prompt(aggregate: &MachineAggregate, text: &[TextLine]) -> String {
    let or_unknown = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or("unknown")
            .to_owned()
    };
    let (brand, machine_type, model) = (
        or_unknown(&aggregate.brand),
        or_unknown(&aggregate.machine_type),
        or_unknown(&aggregate.model),
    );
    let mut prompt = PROMPT
        .replace("{{brand}}", &brand)
        .replace("{{machineType}}", &machine_type)
        .replace("{{model}}", &model);
    prompt.push_str(&format!(
        "\n\nbrand: {brand}\ntype: {machine_type}\nmodel: {model}"
    ));
    let lines: Vec<&str> = text
        .iter()
        .map(|l| l.text.trim())
        .filter(|l| !l.is_empty())
        .take(MAX_TEXT_LINES)
        .collect();
    if !lines.is_empty() {
        prompt.push_str("\ntext read on the machine:\n");
        prompt.push_str(&lines.join("\n"));
    }
    prompt
}

/// Gemini's answer (schema v2).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GeminiAnswer {
    pub status: String,
    pub reason: Option<String>,
    pub commentary: Option<String>,
    pub partial: Option<bool>,
    pub brand: Option<String>,
    #[serde(alias = "type")]
    pub machine_type: Option<String>,
    pub model: Option<String>,
    pub weight: Option<f64>,
    pub year: Option<String>,
    pub attachment: Option<Vec<String>>,
    pub confidence: Option<f64>,
    pub source: Option<String>,
}

/// Why Gemini gave nothing to use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeminiError {
    #[error("Gemini refused: {0}")]
    Refusal(String),
    #[error("Gemini gave no answer: {0}")]
    Empty(String),
    #[error("Gemini's answer is not the expected JSON: {0}")]
    Malformed(String),
}

/// `candidates[0].content.parts[first with text].text`, parsed as schema v2.
pub fn parse_response(body: &str) -> Result<GeminiAnswer, GeminiError> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| GeminiError::Malformed(format!("body: {e}")))?;
    let Some(candidate) = v.pointer("/candidates/0") else {
        let why = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .map(|r| format!("blocked: {r}"))
            .unwrap_or_else(|| "no candidates".into());
        return Err(GeminiError::Empty(why));
    };
    let text = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .and_then(|parts| {
            parts
                .iter()
                .find_map(|p| p.get("text").and_then(Value::as_str))
        })
        .ok_or_else(|| {
            let finish = candidate
                .get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("none");
            GeminiError::Empty(format!("no text part (finishReason {finish})"))
        })?;
    let json_text = strip_fences(text);
    let answer: GeminiAnswer = serde_json::from_str(json_text)
        .map_err(|e| GeminiError::Malformed(format!("{e} in {:?}", preview(json_text))))?;
    match answer.status.as_str() {
        "success" => Ok(answer),
        "refusal" => Err(GeminiError::Refusal(
            answer
                .reason
                .clone()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "no reason given".into()),
        )),
        other => Err(GeminiError::Malformed(format!("status `{other}`"))),
    }
}

fn preview(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A model may wrap JSON in a Markdown fence despite `responseMimeType`.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

static YEAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9]{4}(-[0-9]{4})?$").expect("a constant pattern"));

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The original's mapping of a successful answer (`GeminiToAggregateMapper`), over the
/// recogniser's aggregate: Gemini's values where it gave them, `confidence ?? 0`,
/// `isConfident = confidence > 0.75`, `typeSource = source`, `typeConfidence` dropped.
pub fn to_aggregate(answer: GeminiAnswer, before: &MachineAggregate) -> MachineAggregate {
    let confidence = answer.confidence.unwrap_or(0.0);
    let confidence = if confidence.is_nan() {
        0.0
    } else {
        confidence.clamp(0.0, 1.0)
    };
    let year = non_empty(answer.year)
        .map(|y| y.replace(['–', '—'], "-"))
        .filter(|y| y.len() <= 20 && YEAR.is_match(y));
    let attachment = answer
        .attachment
        .map(|a| {
            a.into_iter()
                .filter_map(|s| non_empty(Some(s)))
                .collect::<Vec<_>>()
        })
        .filter(|a| !a.is_empty());
    let source = non_empty(answer.source).map(|s| s.chars().take(120).collect());
    MachineAggregate {
        brand: non_empty(answer.brand).or_else(|| before.brand.clone()),
        machine_type: non_empty(answer.machine_type).or_else(|| before.machine_type.clone()),
        model: non_empty(answer.model).or_else(|| before.model.clone()),
        weight: answer
            .weight
            .filter(|w| w.is_finite() && *w >= 0.0)
            .or(before.weight),
        year: year.or_else(|| before.year.clone()),
        attachment: attachment.or_else(|| before.attachment.clone()),
        confidence,
        is_confident: confidence > CONFIDENT_ABOVE,
        type_confidence: None,
        type_source: source,
        name: None,
    }
}

/// The Gemini enricher.
pub struct Gemini {
    api_key: String,
    model: String,
    endpoint: String,
    http: reqwest::Client,
    retry: Retry,
}

impl Gemini {
    pub fn new(
        api_key: &str,
        model: &str,
        endpoint: &str,
        http: reqwest::Client,
        retry: Retry,
    ) -> Self {
        Self {
            api_key: api_key.to_owned(),
            model: model.to_owned(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http,
            retry,
        }
    }

    pub fn from_settings(s: &Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !s.gemini_api_key.trim().is_empty(),
            "the `gemini` enricher needs GEMINI_API_KEY"
        );
        anyhow::ensure!(!s.gemini_model.trim().is_empty(), "GEMINI_MODEL is empty");
        Ok(Self::new(
            s.gemini_api_key.trim(),
            s.gemini_model.trim(),
            &s.gemini_endpoint,
            super::http_client(s)?,
            Retry::from_settings(s),
        ))
    }

    /// The `generateContent` request body (the original's shape).
    pub fn request_body(&self, prompt: &str) -> Value {
        json!({
            "model": self.model,
            "contents": [{ "role": "user", "parts": [{ "text": prompt }] }],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": response_schema(),
            }
        })
    }

    /// Ask Gemini; the parsed answer or why there is none.
    pub async fn ask(&self, prompt: &str) -> Result<GeminiAnswer, EngineError> {
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            self.endpoint, self.model
        );
        let body = self.request_body(prompt);
        let text = send_with_retry(&self.retry, "Gemini", |_| {
            let request = self
                .http
                .post(&url)
                .header("x-goog-api-key", &self.api_key)
                .json(&body);
            async move {
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => return classify_send_error(e),
                };
                let status = response.status();
                let headers = response.headers().clone();
                match response.text().await {
                    Ok(text) if status.is_success() => Attempt::Done(text),
                    Ok(text) => {
                        match classify_status::<String>("Gemini", status, &headers, &text) {
                            // Gemini never sees the image: its refusals are never the image's fault.
                            Attempt::Fail(e) => Attempt::Fail(EngineError::new(e.message)),
                            other => other,
                        }
                    }
                    Err(e) => classify_send_error(e),
                }
            }
        })
        .await?;
        parse_response(&text).map_err(|e| EngineError::new(e.to_string()))
    }
}

#[async_trait]
impl Enricher for Gemini {
    fn name(&self) -> &str {
        "gemini"
    }

    async fn enrich(
        &self,
        aggregate: &MachineAggregate,
        text: &[TextLine],
        _image: &Image,
    ) -> Result<Enrichment, EngineError> {
        let answer = self.ask(&render_prompt(aggregate, text)).await?;
        Ok(Enrichment {
            aggregate: to_aggregate(answer, aggregate),
            reasoning_name: Some(REASONING_NAME.into()),
            reasoning_model: Some(self.model.clone()),
        })
    }
}

/// The enricher from settings, naming itself in errors.
pub fn enricher(s: &Settings) -> anyhow::Result<Arc<dyn Enricher>> {
    Ok(Arc::new(
        Gemini::from_settings(s).context("RECOGNITION_ENGINE `gemini`")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"candidates":[{"content":{"parts":[{"text":"{\"status\":\"success\",\"brand\":\"Caterpillar\",\"machineType\":\"Wheel Loader\",\"model\":\"930G\",\"attachment\":[\"Bucket\",\"Forks\",\"Material handling arm\"],\"weight\":14500,\"year\":\"1997-2003\",\"confidence\":0.95,\"partial\":false,\"source\":\"Model number lookup for '930G'\"}"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":172,"candidatesTokenCount":163,"totalTokenCount":658},"modelVersion":"gemini-2.5-flash"}"#;

    #[test]
    fn the_original_sample_maps_to_a_confident_aggregate() {
        let answer = parse_response(SAMPLE).expect("parses");
        let agg = to_aggregate(answer, &MachineAggregate::default());
        assert_eq!(agg.brand.as_deref(), Some("Caterpillar"));
        assert_eq!(agg.machine_type.as_deref(), Some("Wheel Loader"));
        assert_eq!(agg.model.as_deref(), Some("930G"));
        assert_eq!(agg.weight, Some(14500.0));
        assert_eq!(agg.year.as_deref(), Some("1997-2003"));
        assert_eq!(agg.attachment.as_ref().map(Vec::len), Some(3));
        assert_eq!(agg.confidence, 0.95);
        assert!(agg.is_confident);
        assert_eq!(
            agg.type_source.as_deref(),
            Some("Model number lookup for '930G'")
        );
    }

    #[test]
    fn is_confident_is_strictly_above_075() {
        let at = |c: f64| {
            to_aggregate(
                GeminiAnswer {
                    status: "success".into(),
                    confidence: Some(c),
                    ..Default::default()
                },
                &MachineAggregate::default(),
            )
            .is_confident
        };
        assert!(!at(0.75));
        assert!(at(0.7501));
        assert!(!at(0.5));
        let none = to_aggregate(
            GeminiAnswer {
                status: "success".into(),
                ..Default::default()
            },
            &MachineAggregate::default(),
        );
        assert_eq!(none.confidence, 0.0);
    }

    #[test]
    fn refusals_empty_and_malformed_answers_are_told_apart() {
        let wrap =
            |t: &str| json!({"candidates":[{"content":{"parts":[{"text": t}]}}]}).to_string();
        assert_eq!(
            parse_response(&wrap(r#"{"status":"refusal","reason":"image unclear"}"#)),
            Err(GeminiError::Refusal("image unclear".into()))
        );
        assert!(matches!(
            parse_response(&wrap("not json at all")),
            Err(GeminiError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(&wrap(r#"{"status":"maybe"}"#)),
            Err(GeminiError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(r#"{"candidates":[]}"#),
            Err(GeminiError::Empty(_))
        ));
        assert!(matches!(
            parse_response(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#),
            Err(GeminiError::Empty(r)) if r.contains("SAFETY")
        ));
        assert!(matches!(
            parse_response(r#"{"candidates":[{"content":{"parts":[]},"finishReason":"MAX_TOKENS"}]}"#),
            Err(GeminiError::Empty(r)) if r.contains("MAX_TOKENS")
        ));
        let fenced = wrap("```json\n{\"status\":\"success\",\"brand\":\"JCB\"}\n```");
        assert_eq!(
            parse_response(&fenced).expect("fenced").brand.as_deref(),
            Some("JCB")
        );
    }

    #[test]
    fn the_prompt_fills_unknowns_and_out_of_schema_values_are_dropped() {
        let prompt = render_prompt(
            &MachineAggregate {
                brand: Some("Volvo".into()),
                ..Default::default()
            },
            &[],
        );
        assert!(prompt.contains("brand: Volvo\ntype: unknown\nmodel: unknown"));
        assert!(!prompt.contains("{{"));
        let agg = to_aggregate(
            GeminiAnswer {
                status: "success".into(),
                year: Some("around 2005".into()),
                weight: Some(-3.0),
                confidence: Some(0.9),
                ..Default::default()
            },
            &MachineAggregate {
                model: Some("EC220E".into()),
                ..Default::default()
            },
        );
        assert_eq!(agg.year, None);
        assert_eq!(agg.weight, None);
        assert_eq!(agg.model.as_deref(), Some("EC220E"));
    }
}
