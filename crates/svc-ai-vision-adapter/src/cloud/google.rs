//! Google Cloud Vision over REST (`POST {endpoint}/v1/images:annotate`) as a recogniser: the
//! image inline (base64), the original's features (`LOGO_DETECTION`, `TEXT_DETECTION`,
//! `WEB_DETECTION`; `LABEL_DETECTION` and `OBJECT_LOCALIZATION` by setting), each with
//! `maxResults`; an API key or a service account; then the original's shaping and aggregation
//! ([`super::shaping`]).

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine as _;
use contracts::{AiProvider, FailureReason, TextLine};
use serde::Deserialize;
use serde_json::json;

use super::auth::{ServiceAccount, VISION_SCOPE};
use super::shaping::{self, Scored, VisionFindings};
use super::{Attempt, Retry, classify_send_error, classify_status, send_with_retry};
use crate::Settings;
use crate::engine::{EngineError, Image, Recognition, RecognitionEngine};

/// Features Vision knows that this engine can use.
pub const FEATURES: &[&str] = &[
    "LOGO_DETECTION",
    "TEXT_DETECTION",
    "WEB_DETECTION",
    "LABEL_DETECTION",
    "OBJECT_LOCALIZATION",
    "DOCUMENT_TEXT_DETECTION",
];

/// How the engine authenticates.
pub enum Credentials {
    /// `?key=` on every call.
    ApiKey(String),
    /// `Authorization: Bearer` with a token from the service account.
    ServiceAccount(Arc<ServiceAccount>),
}

/// The Google Cloud Vision recogniser.
pub struct GoogleVision {
    endpoint: String,
    credentials: Credentials,
    features: Vec<String>,
    max_results: i32,
    http: reqwest::Client,
    retry: Retry,
}

/// Parse `GOOGLE_VISION_FEATURES` (comma-separated; `LogoDetection` as the original wrote it is
/// accepted too).
pub fn parse_features(list: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        // `LogoDetection` → `LOGO_DETECTION`
        let mut name = String::new();
        for (i, c) in raw.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 && !raw.contains('_') && !raw.contains('-') {
                name.push('_');
            }
            name.push(if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            });
        }
        anyhow::ensure!(
            FEATURES.contains(&name.as_str()),
            "GOOGLE_VISION_FEATURES: unknown feature `{raw}` (known: {})",
            FEATURES.join(", ")
        );
        if !out.contains(&name) {
            out.push(name);
        }
    }
    anyhow::ensure!(!out.is_empty(), "GOOGLE_VISION_FEATURES is empty");
    Ok(out)
}

impl GoogleVision {
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        features: Vec<String>,
        max_results: i32,
        http: reqwest::Client,
        retry: Retry,
    ) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            credentials,
            features,
            max_results: max_results.max(1),
            http,
            retry,
        }
    }

    /// From the adapter's settings: the API key if set, else the service-account key file.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Self> {
        let http = super::http_client(s)?;
        let retry = Retry::from_settings(s);
        let credentials = if !s.google_vision_api_key.trim().is_empty() {
            Credentials::ApiKey(s.google_vision_api_key.trim().to_owned())
        } else if !s.google_application_credentials.trim().is_empty() {
            Credentials::ServiceAccount(Arc::new(ServiceAccount::from_file(
                s.google_application_credentials.trim(),
                Some(s.google_token_uri.as_str()),
                VISION_SCOPE,
                http.clone(),
                retry.clone(),
            )?))
        } else {
            anyhow::bail!(
                "the `google` engine needs GOOGLE_VISION_API_KEY or GOOGLE_APPLICATION_CREDENTIALS (a service-account key file)"
            );
        };
        let features = parse_features(&s.google_vision_features)?;
        Ok(Self::new(
            &s.google_vision_endpoint,
            credentials,
            features,
            s.google_vision_max_results,
            http,
            retry,
        ))
    }

    async fn annotate(&self, image: &Image) -> Result<AnnotateImageResponse, EngineError> {
        let body = json!({
            "requests": [{
                "image": { "content": base64::engine::general_purpose::STANDARD.encode(&image.bytes) },
                "features": self.features.iter()
                    .map(|f| json!({ "type": f, "maxResults": self.max_results }))
                    .collect::<Vec<_>>(),
            }]
        });
        let mut url = format!("{}/v1/images:annotate", self.endpoint);
        if let Credentials::ApiKey(key) = &self.credentials {
            url.push_str("?key=");
            url.extend(key.bytes().map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            }));
        }
        send_with_retry(&self.retry, "Google Vision", |_| {
            let body = &body;
            let url = &url;
            async move {
                let mut request = self.http.post(url).json(body);
                match &self.credentials {
                    Credentials::ApiKey(_) => {}
                    Credentials::ServiceAccount(sa) => match sa.token().await {
                        Ok(token) => request = request.bearer_auth(token),
                        Err(e) => return Attempt::Fail(e),
                    },
                }
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => return classify_send_error(e),
                };
                let status = response.status();
                let headers = response.headers().clone();
                let text = match response.text().await {
                    Ok(t) => t,
                    Err(e) => return classify_send_error(e),
                };
                if status == reqwest::StatusCode::UNAUTHORIZED
                    && let Credentials::ServiceAccount(sa) = &self.credentials
                {
                    // An expired or revoked token: fetch a new one on the next attempt.
                    sa.invalidate().await;
                    return Attempt::Retry("HTTP 401: the access token was refused".into(), None);
                }
                if !status.is_success() {
                    return classify_status("Google Vision", status, &headers, &text);
                }
                let parsed: BatchAnnotateResponse = match serde_json::from_str(&text) {
                    Ok(p) => p,
                    Err(e) => {
                        return Attempt::Fail(EngineError::new(format!(
                            "Google Vision answered something that is not an annotate response: {e}"
                        )));
                    }
                };
                let Some(first) = parsed.responses.into_iter().next() else {
                    return Attempt::Fail(EngineError::new(
                        "Google Vision answered no response for the image",
                    ));
                };
                if let Some(error) = &first.error
                    && error.code != 0
                {
                    return classify_image_error(error);
                }
                Attempt::Done(first)
            }
        })
        .await
    }
}

/// A per-image `error` (a `google.rpc.Status`): bad image data is the caller's fault;
/// unavailable/exhausted/internal/deadline are retried; the rest is ours.
fn classify_image_error(error: &RpcStatus) -> Attempt<AnnotateImageResponse> {
    let what = format!(
        "Google Vision refused the image (code {}): {}",
        error.code, error.message
    );
    match error.code {
        // INVALID_ARGUMENT
        3 if error.message.to_ascii_lowercase().contains("image") => {
            Attempt::Fail(EngineError::rejected(FailureReason::NotAnImage, what))
        }
        // DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE
        4 | 8 | 13 | 14 => Attempt::Retry(what, None),
        _ => Attempt::Fail(EngineError::new(what)),
    }
}

#[async_trait]
impl RecognitionEngine for GoogleVision {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "google".into(),
            api_version: Some("v1".into()),
            featureset: self.features.clone(),
            max_results: Some(self.max_results),
            reasoning_name: None,
            reasoning_model: None,
        }
    }

    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError> {
        let response = self.annotate(&image).await?;
        let text = text_lines(&response);
        let shaped = shaping::shape(findings(response), self.max_results as usize);
        Ok(Recognition {
            aggregate: shaping::aggregate(&[shaped]),
            text,
            provider: None,
        })
    }
}

/// What the shaper needs from one response.
pub fn findings(r: AnnotateImageResponse) -> VisionFindings {
    let scored = |v: Vec<Annotation>| {
        v.into_iter()
            .map(|a| Scored {
                description: a.description,
                score: a.score,
            })
            .collect()
    };
    let web = r.web_detection.unwrap_or_default();
    let ocr = r
        .text_annotations
        .first()
        .map(|t| t.description.clone())
        .filter(|t| !t.trim().is_empty())
        .or_else(|| r.full_text_annotation.map(|f| f.text))
        .unwrap_or_default();
    VisionFindings {
        logos: scored(r.logo_annotations),
        web_entities: web
            .web_entities
            .into_iter()
            .map(|e| Scored {
                description: e.description,
                score: e.score,
            })
            .collect(),
        best_guess_labels: web.best_guess_labels.into_iter().map(|l| l.label).collect(),
        ocr,
        labels: scored(r.label_annotations),
        objects: r
            .localized_object_annotations
            .into_iter()
            .map(|o| Scored {
                description: o.name,
                score: o.score,
            })
            .collect(),
    }
}

/// The lines read (`textAnnotations[0]`), each with the box around its words
/// (`textAnnotations[1..]`, taken in order). Vision gives no per-line score for
/// `TEXT_DETECTION`; the page confidence of `fullTextAnnotation` is used when present, else 1.
pub fn text_lines(r: &AnnotateImageResponse) -> Vec<TextLine> {
    let Some(full) = r.text_annotations.first() else {
        return vec![];
    };
    let score = r
        .full_text_annotation
        .as_ref()
        .and_then(|f| {
            let c: Vec<f64> = f.pages.iter().filter_map(|p| p.confidence).collect();
            (!c.is_empty()).then(|| c.iter().sum::<f64>() / c.len() as f64)
        })
        .unwrap_or(1.0);
    let mut words = r.text_annotations.iter().skip(1).peekable();
    let mut lines = Vec::new();
    for line in full
        .description
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let mut points: Vec<(f64, f64)> = Vec::new();
        let mut rest = line.split_whitespace().collect::<String>();
        while let Some(word) = words.peek() {
            let w: String = word.description.split_whitespace().collect();
            if w.is_empty() || !rest.starts_with(&w) {
                break;
            }
            rest = rest[w.len()..].to_owned();
            if let Some(poly) = &word.bounding_poly {
                points.extend(poly.vertices.iter().map(|v| (v.x, v.y)));
            }
            words.next();
            if rest.is_empty() {
                break;
            }
        }
        let bounding_box = (!points.is_empty()).then(|| {
            let (x0, y0, x1, y1) = points.iter().fold(
                (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
                |(a, b, c, d), (x, y)| (a.min(*x), b.min(*y), c.max(*x), d.max(*y)),
            );
            vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        });
        lines.push(TextLine {
            text: line.to_owned(),
            score,
            bounding_box,
        });
    }
    lines
}

// The REST response, as far as it is used. Absent fields are empty; Vision omits zeros.

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAnnotateResponse {
    #[serde(default)]
    pub responses: Vec<AnnotateImageResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AnnotateImageResponse {
    pub logo_annotations: Vec<Annotation>,
    pub label_annotations: Vec<Annotation>,
    pub text_annotations: Vec<Annotation>,
    pub localized_object_annotations: Vec<LocalizedObject>,
    pub full_text_annotation: Option<FullText>,
    pub web_detection: Option<WebDetection>,
    pub error: Option<RpcStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Annotation {
    pub description: String,
    pub score: f64,
    pub bounding_poly: Option<Poly>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalizedObject {
    pub name: String,
    pub score: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Poly {
    pub vertices: Vec<Vertex>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Vertex {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FullText {
    pub text: String,
    pub pages: Vec<Page>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Page {
    pub confidence: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebDetection {
    pub web_entities: Vec<WebEntity>,
    pub best_guess_labels: Vec<BestGuess>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebEntity {
    pub description: String,
    pub score: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BestGuess {
    pub label: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcStatus {
    pub code: i32,
    pub message: String,
}

/// Context for a settings error naming the engine.
pub fn engine(s: &Settings) -> anyhow::Result<Arc<dyn RecognitionEngine>> {
    Ok(Arc::new(
        GoogleVision::from_settings(s).context("RECOGNITION_ENGINE `google`")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_in_either_spelling() {
        assert_eq!(
            parse_features("LogoDetection, TEXT_DETECTION,web-detection").expect("parses"),
            vec!["LOGO_DETECTION", "TEXT_DETECTION", "WEB_DETECTION"]
        );
        assert!(
            parse_features("FACE_MAGIC")
                .expect_err("unknown")
                .to_string()
                .contains("unknown feature")
        );
    }
}
