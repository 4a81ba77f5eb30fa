//! The GraphQL schema: a superset of the original's final SDL (`ping`, `startUpload`,
//! `confirmUpload`, `onAnalysisStarted`, `onAnalysisCompleted`) plus the prototype's
//! `requestAnalysis`, the caller's uploads and analyses, and `onAnalysisFailed`.
//! Everything but `ping` needs a valid token with the required scope; subscriptions deliver
//! only the caller's own events.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{
    Context, EmptySubscription, Enum, ErrorExtensions, ID, InputObject, Object, Schema,
    SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use contracts::names::{exchanges, routing_keys};
use futures::{Stream, StreamExt};
use messaging::{Message, MessageBroker};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::SERVICE;
use crate::events::{Event, Filter, Hub, Kind};
use crate::oidc::{AuthError, Caller};
use crate::upstream::{CallContext, UpstreamError, Upstreams};

pub type GatewaySchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Per request (HTTP) or per connection (WebSocket): who is calling.
#[derive(Clone)]
pub struct RequestAuth {
    pub auth: Result<Caller, AuthError>,
    pub correlation_id: String,
}

pub struct Services {
    pub upstreams: Upstreams,
    pub hub: Hub,
    pub broker: Arc<dyn MessageBroker>,
}

pub fn build(services: Services, max_depth: usize, max_complexity: usize) -> GatewaySchema {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .data(services)
        .limit_depth(max_depth)
        .limit_complexity(max_complexity)
        .finish()
}

/// The SDL, for docs and clients.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, EmptySubscription)
        .finish()
        .sdl()
        .replace("schema {\n\tquery: Query\n\tmutation: Mutation\n}", "")
        + &Schema::build(Query, Mutation, SubscriptionRoot)
            .finish()
            .sdl()
}

fn coded(message: impl Into<String>, code: &'static str) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

fn auth_error(e: &AuthError) -> async_graphql::Error {
    metrics::counter!("gateway_auth_failures_total", "reason" => e.reason()).increment(1);
    coded(e.to_string(), e.code())
}

fn upstream_error(e: UpstreamError) -> async_graphql::Error {
    let code = e.code();
    let errors = match &e {
        UpstreamError::Invalid { errors, .. } => Some(errors.clone()),
        _ => None,
    };
    async_graphql::Error::new(e.to_string()).extend_with(move |_, ext| {
        ext.set("code", code);
        if let Some(errors) = &errors
            && let Ok(v) = async_graphql::Value::from_json(errors.clone())
        {
            ext.set("fieldErrors", v);
        }
    })
}

/// The caller, or the error that says why not.
fn caller<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<(&'a Caller, CallContext)> {
    let request = ctx
        .data::<RequestAuth>()
        .map_err(|_| coded("no authentication context", "UNAUTHENTICATED"))?;
    match &request.auth {
        Ok(caller) => Ok((
            caller,
            CallContext {
                owner: caller.subject.clone(),
                correlation_id: request.correlation_id.clone(),
            },
        )),
        Err(e) => Err(auth_error(e)),
    }
}

fn services<'a>(ctx: &'a Context<'_>) -> &'a Services {
    // Put there by `build`; a schema without it is a programming error caught by every test.
    ctx.data_unchecked::<Services>()
}

fn observe<T>(operation: &'static str, result: &async_graphql::Result<T>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("gateway_graphql_requests_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
}

fn parse_uuid(value: &str, field: &str) -> async_graphql::Result<Uuid> {
    Uuid::parse_str(value.trim())
        .map_err(|_| coded(format!("{field} is not a valid id"), "BAD_USER_INPUT"))
}

// ---- types -------------------------------------------------------------------------------

#[derive(SimpleObject, Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderPair {
    pub name: String,
    pub value: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ImageUploadPayload {
    pub upload_id: String,
    pub key: String,
    pub put_url: String,
    pub expires_at: DateTime<Utc>,
    /// Headers the PUT must carry exactly (they are signed into the URL).
    pub required_headers: Vec<HeaderPair>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct StartUploadPayload {
    pub correlation_id: String,
    pub image_upload_payload: ImageUploadPayload,
}

#[derive(SimpleObject, Clone, Debug, Deserialize)]
pub struct ConfirmUploadPayload {
    pub status: String,
}

#[derive(InputObject, Debug)]
pub struct AnalysisRequestInput {
    pub object_key: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AnalysisRequestPayload {
    pub correlation_id: String,
    pub analysis_id: String,
}

#[derive(SimpleObject, Clone, Debug, Default)]
#[graphql(name = "AIProviderDto")]
pub struct AiProviderDto {
    pub name: String,
    pub api_version: Option<String>,
    pub featureset: Vec<String>,
    pub max_results: Option<i32>,
    pub reasoning_name: Option<String>,
    pub reasoning_model: Option<String>,
}

#[derive(SimpleObject, Clone, Debug, Default)]
#[graphql(name = "MachineAggregateDto")]
pub struct MachineAggregateDto {
    pub brand: Option<String>,
    /// The original's name for `machineType`, kept for old clients.
    #[graphql(name = "type")]
    pub type_: Option<String>,
    pub machine_type: Option<String>,
    pub model: Option<String>,
    /// Operating weight in kg.
    pub weight: Option<f64>,
    pub year: Option<String>,
    pub attachment: Option<Vec<String>>,
    pub confidence: f64,
    pub is_confident: bool,
    pub type_confidence: Option<f64>,
    pub type_source: Option<String>,
    pub name: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct TextLine {
    pub text: String,
    pub score: f64,
    /// Four corners (x, y) in image pixels.
    #[graphql(name = "box")]
    pub bounding_box: Option<Vec<Vec<f64>>>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct RecognitionCompleted {
    pub provider: AiProviderDto,
    pub aggregate: MachineAggregateDto,
    pub text: Vec<TextLine>,
}

impl From<&contracts::RecognitionCompleted> for RecognitionCompleted {
    fn from(r: &contracts::RecognitionCompleted) -> Self {
        let a = &r.aggregate;
        let name = a.name.clone().or_else(|| {
            let n = a.display_name();
            (!n.is_empty()).then_some(n)
        });
        Self {
            provider: AiProviderDto {
                name: r.provider.name.clone(),
                api_version: r.provider.api_version.clone(),
                featureset: r.provider.featureset.clone(),
                max_results: r.provider.max_results,
                reasoning_name: r.provider.reasoning_name.clone(),
                reasoning_model: r.provider.reasoning_model.clone(),
            },
            aggregate: MachineAggregateDto {
                brand: a.brand.clone(),
                type_: a.machine_type.clone(),
                machine_type: a.machine_type.clone(),
                model: a.model.clone(),
                weight: a.weight,
                year: a.year.clone(),
                attachment: a.attachment.clone(),
                confidence: a.confidence,
                is_confident: a.is_confident,
                type_confidence: a.type_confidence,
                type_source: a.type_source.clone(),
                name,
            },
            text: r
                .text
                .iter()
                .map(|t| TextLine {
                    text: t.text.clone(),
                    score: t.score,
                    bounding_box: t
                        .bounding_box
                        .as_ref()
                        .map(|b| b.iter().map(|p| p.to_vec()).collect()),
                })
                .collect(),
        }
    }
}

fn id_string(id: Option<Uuid>) -> Option<String> {
    id.map(|u| u.to_string())
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AnalysisStarted {
    pub analysis_id: Option<String>,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub correlation_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
}

impl From<&contracts::AnalysisStarted> for AnalysisStarted {
    fn from(e: &contracts::AnalysisStarted) -> Self {
        Self {
            analysis_id: id_string(e.analysis_id),
            upload_id: id_string(e.upload_id),
            object_key: e.object_key.clone(),
            correlation_id: e.correlation_id.clone(),
            started_at: e.started_at,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AnalysisCompleted {
    pub analysis_id: Option<String>,
    pub upload_id: Option<String>,
    pub object_key: Option<String>,
    pub correlation_id: Option<String>,
    /// True only when the engine was confident.
    pub success: bool,
    pub recognition_payload: Option<RecognitionCompleted>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<&contracts::AnalysisCompleted> for AnalysisCompleted {
    fn from(e: &contracts::AnalysisCompleted) -> Self {
        Self {
            analysis_id: id_string(e.analysis_id),
            upload_id: id_string(e.upload_id),
            object_key: e.object_key.clone(),
            correlation_id: e.correlation_id.clone(),
            success: e.success,
            recognition_payload: e.recognition_payload.as_ref().map(Into::into),
            completed_at: e.completed_at,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AnalysisFailed {
    pub analysis_id: String,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub correlation_id: Option<String>,
    /// Stable code: download_failed, checksum_mismatch, not_an_image, too_large, engine_error,
    /// timeout, not_found.
    pub reason: String,
    pub message: String,
    pub failed_at: DateTime<Utc>,
}

impl From<&contracts::AnalysisFailed> for AnalysisFailed {
    fn from(e: &contracts::AnalysisFailed) -> Self {
        Self {
            analysis_id: e.analysis_id.to_string(),
            upload_id: id_string(e.upload_id),
            object_key: e.object_key.clone(),
            correlation_id: e.correlation_id.clone(),
            reason: e.reason.as_str().to_owned(),
            message: e.message.clone(),
            failed_at: e.failed_at,
        }
    }
}

#[derive(SimpleObject, Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    pub upload_id: String,
    pub key: String,
    pub content_type: String,
    pub filename: String,
    /// Pending, Uploaded or Expired.
    pub status: String,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub confirmed_at: Option<String>,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AnalysisStatus {
    Requested,
    Started,
    Completed,
    Failed,
}

/// The orchestrator's view of an analysis (its read API's JSON).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct AnalysisView {
    id: String,
    upload_id: Option<String>,
    object_key: String,
    correlation_id: Option<String>,
    origin: Option<String>,
    status: String,
    reason: Option<String>,
    message: Option<String>,
    success: Option<bool>,
    result: Option<serde_json::Value>,
    requested_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Analysis {
    pub id: String,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub correlation_id: Option<String>,
    /// `upload` or `request`.
    pub origin: Option<String>,
    pub status: AnalysisStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub success: Option<bool>,
    pub result: Option<RecognitionCompleted>,
    pub requested_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<AnalysisView> for Analysis {
    fn from(v: AnalysisView) -> Self {
        let status = match v.status.to_ascii_lowercase().as_str() {
            "started" => AnalysisStatus::Started,
            "completed" => AnalysisStatus::Completed,
            "failed" => AnalysisStatus::Failed,
            _ => AnalysisStatus::Requested,
        };
        let result = v
            .result
            .and_then(|r| serde_json::from_value::<contracts::RecognitionCompleted>(r).ok())
            .map(|r| RecognitionCompleted::from(&r));
        Self {
            id: v.id,
            upload_id: v.upload_id,
            object_key: v.object_key,
            correlation_id: v.correlation_id,
            origin: v.origin,
            status,
            reason: v.reason,
            message: v.message,
            success: v.success,
            result,
            requested_at: v.requested_at,
            started_at: v.started_at,
            completed_at: v.completed_at,
            failed_at: v.failed_at,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AnalysisConnection {
    pub nodes: Vec<Analysis>,
    pub page_info: PageInfo,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnalysisPage {
    items: Vec<AnalysisView>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartAnswer {
    upload_id: String,
    key: String,
    put_url: String,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    required_headers: std::collections::BTreeMap<String, String>,
}

// ---- roots -------------------------------------------------------------------------------

pub struct Query;

#[Object]
impl Query {
    /// Always "pong"; needs no token.
    async fn ping(&self) -> &'static str {
        "pong"
    }

    /// One of the caller's uploads.
    async fn upload(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Upload>> {
        let result = async {
            let (_, cx) = caller(ctx)?;
            let id = parse_uuid(&id, "id")?;
            match services(ctx)
                .upstreams
                .ingestion::<Upload>(&cx, Method::GET, &format!("/v1/uploads/{id}"), None::<&()>)
                .await
            {
                Ok(u) => Ok(Some(u)),
                Err(UpstreamError::NotFound(_)) => Ok(None),
                Err(e) => Err(upstream_error(e)),
            }
        }
        .await;
        observe("upload", &result);
        result
    }

    /// One of the caller's analyses; someone else's is answered like a missing one.
    async fn analysis(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Analysis>> {
        let result = async {
            let (_, cx) = caller(ctx)?;
            let id = parse_uuid(&id, "id")?;
            match services(ctx)
                .upstreams
                .orchestrator::<AnalysisView>(&cx, &format!("/v1/analyses/{id}"))
                .await
            {
                Ok(a) => Ok(Some(a.into())),
                Err(UpstreamError::NotFound(_)) => Ok(None),
                Err(e) => Err(upstream_error(e)),
            }
        }
        .await;
        observe("analysis", &result);
        result
    }

    /// The caller's analyses, newest first. `after` is a page's `endCursor`.
    #[graphql(complexity = "first.unwrap_or(20).clamp(1, 100) as usize * child_complexity")]
    async fn analyses(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 1, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<AnalysisConnection> {
        let result = async {
            let (_, cx) = caller(ctx)?;
            let mut query = format!("/v1/analyses?first={}", first.unwrap_or(20));
            if let Some(after) = after.as_deref() {
                let safe = after
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !safe || after.len() > 200 {
                    return Err(coded(
                        "after is not a cursor this API gave out",
                        "BAD_USER_INPUT",
                    ));
                }
                query.push_str("&after=");
                query.push_str(after);
            }
            let page: AnalysisPage = services(ctx)
                .upstreams
                .orchestrator(&cx, &query)
                .await
                .map_err(upstream_error)?;
            Ok(AnalysisConnection {
                nodes: page.items.into_iter().map(Into::into).collect(),
                page_info: PageInfo {
                    has_next_page: page.next_cursor.is_some(),
                    end_cursor: page.next_cursor,
                },
            })
        }
        .await;
        observe("analyses", &result);
        result
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Begin an upload: where to PUT the bytes (straight to storage) and until when.
    async fn start_upload(
        &self,
        ctx: &Context<'_>,
        filename: String,
        content_type: String,
    ) -> async_graphql::Result<StartUploadPayload> {
        let result = async {
            let (_, mut cx) = caller(ctx)?;
            // One id for the whole flow: ingestion keeps it and every event carries it.
            cx.correlation_id = runtime::correlation::new_id();
            let body = serde_json::json!({"filename": filename, "contentType": content_type});
            let answer: StartAnswer = services(ctx)
                .upstreams
                .ingestion(&cx, Method::POST, "/v1/uploads/start", Some(&body))
                .await
                .map_err(upstream_error)?;
            Ok(StartUploadPayload {
                correlation_id: cx.correlation_id,
                image_upload_payload: ImageUploadPayload {
                    upload_id: answer.upload_id,
                    key: answer.key,
                    put_url: answer.put_url,
                    expires_at: answer.expires_at,
                    required_headers: answer
                        .required_headers
                        .into_iter()
                        .map(|(name, value)| HeaderPair { name, value })
                        .collect(),
                },
            })
        }
        .await;
        observe("startUpload", &result);
        result
    }

    /// The bytes are stored: `bytes` is their size and `checksum` `sha256:<64 hex>` of them.
    async fn confirm_upload(
        &self,
        ctx: &Context<'_>,
        upload_id: String,
        bytes: i64,
        checksum: String,
    ) -> async_graphql::Result<ConfirmUploadPayload> {
        let result = async {
            let (_, cx) = caller(ctx)?;
            let body =
                serde_json::json!({"uploadId": upload_id, "bytes": bytes, "checksum": checksum});
            services(ctx)
                .upstreams
                .ingestion(&cx, Method::POST, "/v1/uploads/confirm", Some(&body))
                .await
                .map_err(upstream_error)
        }
        .await;
        observe("confirmUpload", &result);
        result
    }

    /// Analyse a stored object of the caller's again (the prototype's command path).
    async fn request_analysis(
        &self,
        ctx: &Context<'_>,
        input: AnalysisRequestInput,
    ) -> async_graphql::Result<AnalysisRequestPayload> {
        let result = async {
            let (caller, _) = caller(ctx)?;
            let key = input.object_key.trim();
            if !objectstore::keys::is_image_key(key) {
                return Err(coded(
                    "objectKey is not a valid object key",
                    "BAD_USER_INPUT",
                ));
            }
            let correlation_id = runtime::correlation::new_id();
            let analysis_id = Uuid::now_v7();
            let command = contracts::RequestAnalysis {
                correlation_id: correlation_id.clone(),
                object_key: key.to_owned(),
                analysis_id: Some(analysis_id),
                owner: Some(caller.subject.clone()),
                requested_at: Some(Utc::now()),
            };
            let message = Message::from_contract(&command, SERVICE, &correlation_id);
            services(ctx)
                .broker
                .publish(
                    exchanges::ANALYSIS_COMMANDS,
                    routing_keys::REQUEST_ANALYSIS,
                    &message,
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "publishing RequestAnalysis");
                    coded(
                        "the analysis could not be requested; try again",
                        "UPSTREAM_UNAVAILABLE",
                    )
                })?;
            Ok(AnalysisRequestPayload {
                correlation_id,
                analysis_id: analysis_id.to_string(),
            })
        }
        .await;
        observe("requestAnalysis", &result);
        result
    }
}

pub struct SubscriptionRoot;

type EventStream<T> = std::pin::Pin<Box<dyn Stream<Item = async_graphql::Result<T>> + Send>>;

/// The caller's events of `kind`, mapped by `pick`; ends with an error when the subscriber fell
/// behind or the token expired.
fn subscribe<T: Send + 'static>(
    ctx: &Context<'_>,
    operation: &'static str,
    kind: Kind,
    upload_id: Option<ID>,
    analysis_id: Option<ID>,
    pick: fn(&Event) -> Option<T>,
) -> async_graphql::Result<EventStream<T>> {
    let result = (|| {
        let (caller, _) = caller(ctx)?;
        let filter = Filter {
            upload_id: upload_id
                .as_deref()
                .map(|u| parse_uuid(u, "uploadId"))
                .transpose()?,
            analysis_id: analysis_id
                .as_deref()
                .map(|a| parse_uuid(a, "analysisId"))
                .transpose()?,
        };
        Ok((caller.clone(), filter))
    })();
    observe(operation, &result);
    let (caller, filter) = result?;
    let subscription = services(ctx).hub.subscribe(&caller.subject, kind, filter);
    let now = jsonwebtoken::get_current_timestamp();
    let expires_in = Duration::from_secs(caller.expires_at.saturating_sub(now));
    let deadline = tokio::time::Instant::now() + expires_in;
    let stream = futures::stream::unfold(Some(subscription), move |state| async move {
        let mut sub = state?;
        tokio::select! {
            next = sub.events.recv() => match next {
                Some(event) => match pick(&event) {
                    Some(item) => Some((Ok(item), Some(sub))),
                    None => Some((Err(coded("internal: event of another kind", "INTERNAL")), Some(sub))),
                },
                None if sub.overflowed.load(std::sync::atomic::Ordering::SeqCst) => Some((
                    Err(coded(
                        "this subscription fell too far behind and was ended; subscribe again and query missed analyses",
                        "SLOW_CONSUMER",
                    )),
                    None,
                )),
                None => None,
            },
            () = tokio::time::sleep_until(deadline) => Some((
                Err(coded("the token has expired; subscribe again with a new one", "UNAUTHENTICATED")),
                None,
            )),
        }
    });
    Ok(stream.boxed())
}

#[Subscription]
impl SubscriptionRoot {
    /// The caller's analyses as they start; optionally only one upload's or analysis'.
    async fn on_analysis_started(
        &self,
        ctx: &Context<'_>,
        upload_id: Option<ID>,
        analysis_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<AnalysisStarted>>> {
        subscribe(
            ctx,
            "onAnalysisStarted",
            Kind::Started,
            upload_id,
            analysis_id,
            |e| match e {
                Event::Started(s) => Some(s.into()),
                _ => None,
            },
        )
    }

    /// The caller's analyses as they complete.
    async fn on_analysis_completed(
        &self,
        ctx: &Context<'_>,
        upload_id: Option<ID>,
        analysis_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<AnalysisCompleted>>> {
        subscribe(
            ctx,
            "onAnalysisCompleted",
            Kind::Completed,
            upload_id,
            analysis_id,
            |e| match e {
                Event::Completed(c) => Some(c.as_ref().into()),
                _ => None,
            },
        )
    }

    /// The caller's analyses that failed, with the reason.
    async fn on_analysis_failed(
        &self,
        ctx: &Context<'_>,
        upload_id: Option<ID>,
        analysis_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<AnalysisFailed>>> {
        subscribe(
            ctx,
            "onAnalysisFailed",
            Kind::Failed,
            upload_id,
            analysis_id,
            |e| match e {
                Event::Failed(f) => Some(f.into()),
                _ => None,
            },
        )
    }
}
