//! The state machine: what each incoming message does to an analysis, and what goes out.
//!
//! Every handler runs one transaction: inbox check (a redelivered message id is skipped), the
//! state change guarded by the current state (so a duplicate or late result changes nothing),
//! and the outgoing events into the outbox. The delivery is acked only after the commit.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use contracts::names::{exchanges, routing_keys};
use contracts::{
    AnalysisCompleted, AnalysisFailed, AnalysisStarted, Contract, FailureReason, ImageUploaded,
    RecognitionCompleted, RecognitionFailed, RecognitionRequested, RequestAnalysis, headers,
};
use database::outbox::{Destination, Outgoing, enqueue};
use database::sqlx::AnyConnection;
use database::{Db, DbError, now_ms};
use messaging::Message;
use messaging::consume::HandlerError;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::SERVICE;
use crate::store::{self, Analysis, NewAnalysis, Origin};

/// A boxed handler future (the four queues' handlers share one consumer loop type).
pub type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>;

#[derive(Clone)]
pub struct Flow {
    pub db: Db,
    pub relay_waker: Arc<Notify>,
    /// A started analysis without a recognition answer by then fails with `timeout`.
    pub recognition_timeout: Duration,
}

fn transient(e: DbError) -> HandlerError {
    HandlerError::transient(e)
}

fn decode<T: Contract>(message: &Message) -> Result<T, HandlerError> {
    message
        .decode::<T>()
        .map_err(|e| HandlerError::permanent(format!("not a valid {}: {e}", T::NAME)))
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

fn correlation(message: &Message, fallback: Option<&str>) -> String {
    message
        .headers
        .correlation_id()
        .or(fallback)
        .map(str::to_owned)
        .unwrap_or_else(runtime::correlation::new_id)
}

impl Flow {
    async fn begin(
        &self,
    ) -> Result<database::sqlx::Transaction<'static, database::sqlx::Any>, HandlerError> {
        self.db.begin().await.map_err(|e| transient(e.into()))
    }

    async fn commit(
        &self,
        tx: database::sqlx::Transaction<'static, database::sqlx::Any>,
    ) -> Result<(), HandlerError> {
        tx.commit().await.map_err(|e| transient(e.into()))?;
        self.relay_waker.notify_one();
        Ok(())
    }

    /// `ImageUploaded` → one analysis per upload, `AnalysisStarted` and a recognition request.
    pub async fn on_image_uploaded(&self, message: Message) -> Result<(), HandlerError> {
        let event: ImageUploaded = decode(&message)?;
        let correlation_id = correlation(&message, None);
        let now = now_ms();
        let mut tx = self.begin().await?;
        if !store::first_delivery(&mut tx, "image-uploaded", &message.dedupe_id(), now)
            .await
            .map_err(transient)?
        {
            metrics::counter!("orchestrator_duplicates_total", "queue" => "image-uploaded")
                .increment(1);
            return self.commit(tx).await;
        }
        let new = NewAnalysis {
            id: Uuid::now_v7().to_string(),
            origin: Origin::Upload,
            upload_id: Some(event.upload_id.to_string()),
            object_key: event.object_key.clone(),
            owner: event.owner.clone(),
            content_type: Some(event.content_type.clone()),
            bytes: Some(event.bytes),
            checksum: Some(event.checksum.clone()),
            correlation_id: Some(correlation_id),
            requested_at: event.occurred_at.timestamp_millis(),
        };
        if self.start(&mut tx, &new, now).await? {
            metrics::counter!("orchestrator_analyses_started_total", "origin" => "upload")
                .increment(1);
        } else {
            // Same upload, another message id (ingestion confirmed twice, or a replay).
            metrics::counter!("orchestrator_duplicates_total", "queue" => "image-uploaded")
                .increment(1);
        }
        self.commit(tx).await
    }

    /// `RequestAnalysis` → a new analysis of an object the owner uploaded, or a failed one.
    pub async fn on_request_analysis(&self, message: Message) -> Result<(), HandlerError> {
        let command: RequestAnalysis = decode(&message)?;
        let correlation_id = correlation(&message, Some(&command.correlation_id));
        let now = now_ms();
        let id = command.analysis_id.unwrap_or_else(Uuid::now_v7).to_string();
        let mut tx = self.begin().await?;
        if !store::first_delivery(&mut tx, "analysis-commands", &message.dedupe_id(), now)
            .await
            .map_err(transient)?
            || store::get(&mut tx, &id).await.map_err(transient)?.is_some()
        {
            metrics::counter!("orchestrator_duplicates_total", "queue" => "analysis-commands")
                .increment(1);
            return self.commit(tx).await;
        }
        let source = store::upload_analysis_of_object(&mut tx, &command.object_key)
            .await
            .map_err(transient)?;
        let requested_at = command
            .requested_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(now);
        // Another owner's object is answered exactly like a missing one: no existence leak.
        let source = source.filter(|s| s.owner.is_some() && s.owner == command.owner);
        let Some(source) = source else {
            let new = NewAnalysis {
                id: id.clone(),
                origin: Origin::Request,
                upload_id: None,
                object_key: command.object_key.clone(),
                owner: command.owner.clone(),
                content_type: None,
                bytes: None,
                checksum: None,
                correlation_id: Some(correlation_id.clone()),
                requested_at,
            };
            let detail = "no upload of this object by the caller";
            store::insert_failed(&mut tx, &new, FailureReason::NotFound, detail, now)
                .await
                .map_err(transient)?;
            let failed = AnalysisFailed {
                analysis_id: parse_uuid(&id).unwrap_or_else(Uuid::now_v7),
                upload_id: None,
                object_key: command.object_key,
                owner: command.owner,
                correlation_id: Some(correlation_id.clone()),
                reason: FailureReason::NotFound,
                message: detail.into(),
                failed_at: Utc::now(),
            };
            self.emit(
                &mut tx,
                notify(exchanges::ANALYSIS_FAILED, &failed, &correlation_id),
            )
            .await?;
            metrics::counter!("orchestrator_analyses_failed_total", "reason" => "not_found")
                .increment(1);
            return self.commit(tx).await;
        };
        let new = NewAnalysis {
            id,
            origin: Origin::Request,
            upload_id: source.upload_id.clone(),
            object_key: source.object_key.clone(),
            owner: source.owner.clone(),
            content_type: source.content_type.clone(),
            bytes: source.bytes,
            checksum: source.checksum.clone(),
            correlation_id: Some(correlation_id),
            requested_at,
        };
        if self.start(&mut tx, &new, now).await? {
            metrics::counter!("orchestrator_analyses_started_total", "origin" => "request")
                .increment(1);
        }
        self.commit(tx).await
    }

    /// Record a started analysis and enqueue `AnalysisStarted` + `RecognitionRequested`.
    async fn start(
        &self,
        tx: &mut AnyConnection,
        new: &NewAnalysis,
        now: i64,
    ) -> Result<bool, HandlerError> {
        let deadline = now + self.recognition_timeout.as_millis() as i64;
        if !store::insert_started(tx, new, now, deadline)
            .await
            .map_err(transient)?
        {
            return Ok(false);
        }
        let analysis_id = parse_uuid(&new.id);
        let upload_id = new.upload_id.as_deref().and_then(parse_uuid);
        let correlation_id = new.correlation_id.clone().unwrap_or_default();
        let started = AnalysisStarted {
            analysis_id,
            upload_id,
            object_key: new.object_key.clone(),
            owner: new.owner.clone(),
            correlation_id: new.correlation_id.clone(),
            started_at: store::to_time(now),
        };
        self.emit(
            tx,
            notify(exchanges::ANALYSIS_STARTED, &started, &correlation_id),
        )
        .await?;
        let request = RecognitionRequested {
            analysis_id: analysis_id.unwrap_or_else(Uuid::now_v7),
            upload_id,
            object_key: new.object_key.clone(),
            owner: new.owner.clone(),
            content_type: new.content_type.clone(),
            bytes: new.bytes,
            checksum: new.checksum.clone(),
            requested_at: Utc::now(),
        };
        let message = Message::from_contract(&request, SERVICE, &correlation_id)
            .with_header(headers::PARTITION_KEY, new.object_key.as_str());
        self.emit(
            tx,
            Outgoing {
                destination: Destination::Broker {
                    exchange: exchanges::ANALYSIS_COMMANDS.into(),
                    routing_key: routing_keys::RECOGNITION_REQUEST.into(),
                },
                key: new.object_key.clone(),
                message,
            },
        )
        .await?;
        Ok(true)
    }

    async fn emit(&self, tx: &mut AnyConnection, out: Outgoing) -> Result<(), HandlerError> {
        enqueue(tx, &out).await.map(|_| ()).map_err(transient)
    }

    /// Find the analysis a recognition result is about.
    async fn target(
        &self,
        tx: &mut AnyConnection,
        analysis_id: Option<Uuid>,
        object_key: Option<&str>,
    ) -> Result<Option<Analysis>, HandlerError> {
        match (analysis_id, object_key) {
            (Some(id), _) => store::get(tx, &id.to_string()).await.map_err(transient),
            (None, Some(key)) => store::started_of_object(tx, key).await.map_err(transient),
            (None, None) => Err(HandlerError::permanent(
                "the result names neither an analysisId nor an objectKey",
            )),
        }
    }

    /// `RecognitionCompleted` → `AnalysisCompleted` (once; a late or repeated result is dropped).
    pub async fn on_recognition_completed(&self, message: Message) -> Result<(), HandlerError> {
        let result: RecognitionCompleted = decode(&message)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        if !store::first_delivery(&mut tx, "recognition-completed", &message.dedupe_id(), now)
            .await
            .map_err(transient)?
        {
            metrics::counter!("orchestrator_duplicates_total", "queue" => "recognition-completed")
                .increment(1);
            return self.commit(tx).await;
        }
        let analysis = self
            .target(&mut tx, result.analysis_id, result.object_key.as_deref())
            .await?
            .ok_or_else(|| {
                HandlerError::permanent(format!(
                    "no analysis {:?} for object {:?}",
                    result.analysis_id, result.object_key
                ))
            })?;
        let success = result.aggregate.is_confident;
        if !store::complete(&mut tx, &analysis.id, success, &result, now)
            .await
            .map_err(transient)?
        {
            late(&analysis, "recognition-completed");
            return self.commit(tx).await;
        }
        let correlation_id = analysis.correlation_id.clone().unwrap_or_default();
        let completed = AnalysisCompleted {
            analysis_id: parse_uuid(&analysis.id),
            upload_id: analysis.upload_id.as_deref().and_then(parse_uuid),
            object_key: Some(analysis.object_key.clone()),
            owner: analysis.owner.clone(),
            correlation_id: analysis.correlation_id.clone(),
            success,
            recognition_payload: Some(result),
            completed_at: store::to_time(now),
        };
        self.emit(
            &mut tx,
            notify(exchanges::ANALYSIS_COMPLETED, &completed, &correlation_id),
        )
        .await?;
        metrics::counter!("orchestrator_analyses_completed_total", "success" => success.to_string())
            .increment(1);
        observe_duration(&analysis, now);
        self.commit(tx).await
    }

    /// `RecognitionFailed` → `AnalysisFailed` with the adapter's reason.
    pub async fn on_recognition_failed(&self, message: Message) -> Result<(), HandlerError> {
        let failure: RecognitionFailed = decode(&message)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        if !store::first_delivery(&mut tx, "recognition-failed", &message.dedupe_id(), now)
            .await
            .map_err(transient)?
        {
            metrics::counter!("orchestrator_duplicates_total", "queue" => "recognition-failed")
                .increment(1);
            return self.commit(tx).await;
        }
        let analysis = self
            .target(&mut tx, failure.analysis_id, Some(&failure.object_key))
            .await?
            .ok_or_else(|| {
                HandlerError::permanent(format!(
                    "no analysis {:?} for object {}",
                    failure.analysis_id, failure.object_key
                ))
            })?;
        if self
            .fail_started(&mut tx, &analysis, failure.reason, &failure.message, now)
            .await?
        {
            observe_duration(&analysis, now);
        } else {
            late(&analysis, "recognition-failed");
        }
        self.commit(tx).await
    }

    async fn fail_started(
        &self,
        tx: &mut AnyConnection,
        analysis: &Analysis,
        reason: FailureReason,
        detail: &str,
        now: i64,
    ) -> Result<bool, HandlerError> {
        if !store::fail(tx, &analysis.id, reason, detail, now)
            .await
            .map_err(transient)?
        {
            return Ok(false);
        }
        let correlation_id = analysis.correlation_id.clone().unwrap_or_default();
        let failed = AnalysisFailed {
            analysis_id: parse_uuid(&analysis.id).unwrap_or_else(Uuid::now_v7),
            upload_id: analysis.upload_id.as_deref().and_then(parse_uuid),
            object_key: analysis.object_key.clone(),
            owner: analysis.owner.clone(),
            correlation_id: analysis.correlation_id.clone(),
            reason,
            message: detail.to_owned(),
            failed_at: store::to_time(now).unwrap_or_else(Utc::now),
        };
        self.emit(
            tx,
            notify(exchanges::ANALYSIS_FAILED, &failed, &correlation_id),
        )
        .await?;
        metrics::counter!("orchestrator_analyses_failed_total", "reason" => reason.as_str())
            .increment(1);
        Ok(true)
    }

    /// Fail started analyses whose recognition did not answer in time. Returns how many.
    pub async fn expire_overdue(&self) -> Result<usize, HandlerError> {
        let now = now_ms();
        let ids = store::overdue(&self.db, now, 200)
            .await
            .map_err(transient)?;
        let mut expired = 0;
        for id in ids {
            let mut tx = self.begin().await?;
            let Some(analysis) = store::get(&mut tx, &id).await.map_err(transient)? else {
                continue;
            };
            let detail = format!(
                "no recognition result within {} s",
                self.recognition_timeout.as_secs_f64()
            );
            if self
                .fail_started(&mut tx, &analysis, FailureReason::Timeout, &detail, now)
                .await?
            {
                expired += 1;
            }
            self.commit(tx).await?;
        }
        Ok(expired)
    }
}

fn notify<T: Contract>(exchange: &str, event: &T, correlation_id: &str) -> Outgoing {
    Outgoing {
        destination: Destination::Notify {
            exchange: exchange.into(),
        },
        key: String::new(),
        message: Message::from_contract(event, SERVICE, correlation_id),
    }
}

fn late(analysis: &Analysis, queue: &'static str) {
    metrics::counter!("orchestrator_late_results_total", "queue" => queue).increment(1);
    tracing::info!(analysis_id = %analysis.id, status = ?analysis.status, "result for an analysis that is no longer running; ignored");
}

fn observe_duration(analysis: &Analysis, now: i64) {
    if let Some(started) = analysis.started_at {
        metrics::histogram!("orchestrator_analysis_seconds")
            .record((now - started).max(0) as f64 / 1000.0);
    }
}
