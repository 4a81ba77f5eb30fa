//! One recognition request, start to end: URL from media access (once), download with a size
//! cap, a timeout and retries, checks (size, checksum, image type, pixel count), the engine under
//! a concurrency limit, and the result on Kafka. Every failure that is the image's ends in one
//! `RecognitionFailed` with a reason code; a failure of our own infrastructure is retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use contracts::names::Topics;
use contracts::{
    EngineTimings, FailureReason, ImageUploaded, RecognitionCompleted, RecognitionFailed,
    RecognitionRequested,
};
use futures::StreamExt;
use messaging::consume::HandlerError;
use messaging::{EventLog, LogRecord, Message};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::SERVICE;
use crate::engine::{Image, RecognitionEngine};

/// Limits and retry settings of the pipeline.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_download_bytes: u64,
    pub max_pixels: u64,
    pub download_timeout: Duration,
    /// Attempts of the download on 408/429/5xx and connection errors.
    pub download_attempts: u32,
    pub retry_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_download_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            download_timeout: Duration::from_secs(30),
            download_attempts: 4,
            retry_backoff: Duration::from_millis(250),
        }
    }
}

/// The internal media-access API (`POST /internal/v0/media/get-url`).
#[derive(Clone)]
pub struct MediaAccess {
    pub http: reqwest::Client,
    pub base_url: String,
    pub token: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetUrlResponse {
    url: String,
}

/// Outcome of one step: the image's fault (a reason to report) or ours (retry the record).
enum Failure {
    Image(FailureReason, String),
    Ours(String),
}

impl MediaAccess {
    async fn get_url(&self, object_key: &str, correlation_id: &str) -> Result<String, Failure> {
        let url = format!(
            "{}/internal/v0/media/get-url",
            self.base_url.trim_end_matches('/')
        );
        let response = self
            .http
            .post(&url)
            .header(auth::internal::HEADER, &self.token)
            .header(runtime::correlation::HEADER, correlation_id)
            .json(&serde_json::json!({ "objectKey": object_key }))
            .send()
            .await
            .map_err(|e| Failure::Ours(format!("media access unreachable: {e}")))?;
        match response.status().as_u16() {
            200 => response
                .json::<GetUrlResponse>()
                .await
                .map(|r| r.url)
                .map_err(|e| Failure::Ours(format!("media access answered garbage: {e}"))),
            404 => Err(Failure::Image(
                FailureReason::DownloadFailed,
                "the object does not exist in storage".into(),
            )),
            status => Err(Failure::Ours(format!("media access answered {status}"))),
        }
    }
}

#[derive(Clone)]
pub struct Pipeline {
    pub media: MediaAccess,
    pub engine: Arc<dyn RecognitionEngine>,
    pub engine_slots: Arc<Semaphore>,
    pub limits: Limits,
    pub log: Arc<dyn EventLog>,
    pub topics: Topics,
    /// Download client (no redirects to other hosts, per-attempt timeout).
    pub http: reqwest::Client,
}

impl Pipeline {
    /// Handle one record of `tu.recognition.requested` (or, in compatibility mode,
    /// `tu.image.uploaded`). Ok once the result is on Kafka; the runner then commits.
    pub async fn handle(&self, record: LogRecord) -> Result<(), HandlerError> {
        let request = if record.topic == self.topics.topic_image_uploaded {
            let uploaded: ImageUploaded = record
                .message
                .decode()
                .map_err(|e| HandlerError::permanent(format!("not an ImageUploaded: {e}")))?;
            request_from_upload(uploaded)
        } else {
            record
                .message
                .decode::<RecognitionRequested>()
                .map_err(|e| HandlerError::permanent(format!("not a RecognitionRequested: {e}")))?
        };
        let correlation_id = record
            .message
            .headers
            .correlation_id()
            .map(str::to_owned)
            .unwrap_or_else(runtime::correlation::new_id);
        let started = Instant::now();
        let outcome = self.recognize(&request, &correlation_id).await;
        let message = match outcome {
            Ok((completed, _)) => {
                metrics::counter!("vision_recognitions_total", "outcome" => "completed")
                    .increment(1);
                Message::from_contract(&completed, SERVICE, &correlation_id)
            }
            Err(Failure::Image(reason, detail)) => {
                metrics::counter!("vision_recognitions_total", "outcome" => reason.as_str())
                    .increment(1);
                tracing::info!(analysis_id = %request.analysis_id, %reason, %detail, "recognition failed");
                let failed = RecognitionFailed {
                    analysis_id: Some(request.analysis_id),
                    upload_id: request.upload_id,
                    object_key: request.object_key.clone(),
                    owner: request.owner.clone(),
                    reason,
                    message: detail,
                    failed_at: Utc::now(),
                };
                Message::from_contract(&failed, SERVICE, &correlation_id)
            }
            Err(Failure::Ours(detail)) => return Err(HandlerError::Transient(detail)),
        };
        let topic = if message.headers.schema() == Some("recognition.completed.v1") {
            &self.topics.topic_recognition_completed
        } else {
            &self.topics.topic_recognition_failed
        };
        self.log
            .produce(topic, &request.object_key, &message)
            .await
            .map_err(HandlerError::transient)?;
        metrics::histogram!("vision_request_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn recognize(
        &self,
        request: &RecognitionRequested,
        correlation_id: &str,
    ) -> Result<(RecognitionCompleted, EngineTimings), Failure> {
        let total = Instant::now();
        let url = self
            .media
            .get_url(&request.object_key, correlation_id)
            .await?;
        let t = Instant::now();
        let (bytes, served_type) = self.download(&url).await?;
        let download_ms = ms(t);
        if let Some(expected) = request.bytes
            && expected >= 0
            && bytes.len() as u64 != expected as u64
        {
            return Err(Failure::Image(
                FailureReason::ChecksumMismatch,
                format!(
                    "downloaded {} bytes, the upload had {expected}",
                    bytes.len()
                ),
            ));
        }
        if let Some(expected) = &request.checksum {
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(Failure::Image(
                    FailureReason::ChecksumMismatch,
                    "the stored bytes do not match the checksum given at confirm".into(),
                ));
            }
        }
        let t = Instant::now();
        let image = decode(bytes, served_type.as_deref(), self.limits.max_pixels).await?;
        let decode_ms = ms(t);
        let t = Instant::now();
        let recognition = {
            let _slot = self
                .engine_slots
                .acquire()
                .await
                .map_err(|_| Failure::Ours("shutting down".into()))?;
            self.engine
                .recognize(image)
                .await
                .map_err(|e| Failure::Image(e.reason, e.message))?
        };
        let timings = EngineTimings {
            download_ms: Some(download_ms),
            decode_ms: Some(decode_ms),
            engine_ms: Some(ms(t)),
            total_ms: Some(ms(total)),
        };
        let mut aggregate = recognition.aggregate;
        let name = aggregate.display_name();
        aggregate.name = (!name.is_empty()).then_some(name);
        Ok((
            RecognitionCompleted {
                analysis_id: Some(request.analysis_id),
                upload_id: request.upload_id,
                object_key: Some(request.object_key.clone()),
                owner: request.owner.clone(),
                provider: recognition
                    .provider
                    .unwrap_or_else(|| self.engine.provider()),
                aggregate,
                text: recognition.text,
                timings: Some(timings.clone()),
                completed_at: Some(Utc::now()),
            },
            timings,
        ))
    }

    /// GET the presigned URL: cap, timeout, retries with backoff on 408/429/5xx and connection
    /// errors. Returns the bytes and the served content type.
    async fn download(&self, url: &str) -> Result<(Bytes, Option<String>), Failure> {
        let cap = self.limits.max_download_bytes;
        let mut last = String::new();
        for attempt in 1..=self.limits.download_attempts.max(1) {
            if attempt > 1 {
                let wait = self.limits.retry_backoff * 2u32.pow((attempt - 2).min(6));
                tokio::time::sleep(wait).await;
            }
            let response =
                match tokio::time::timeout(self.limits.download_timeout, self.http.get(url).send())
                    .await
                {
                    Err(_) => {
                        last = "timed out waiting for storage".into();
                        continue;
                    }
                    Ok(Err(e)) => {
                        last = format!("storage unreachable: {}", without_url(&e));
                        continue;
                    }
                    Ok(Ok(r)) => r,
                };
            let status = response.status().as_u16();
            if status == 408 || status == 429 || status >= 500 {
                last = format!("storage answered {status}");
                continue;
            }
            if status != 200 {
                return Err(Failure::Image(
                    FailureReason::DownloadFailed,
                    format!("storage answered {status}"),
                ));
            }
            if response.content_length().is_some_and(|n| n > cap) {
                return Err(too_large(cap));
            }
            let served_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
            let mut body = BytesMut::new();
            let mut stream = response.bytes_stream();
            let read = tokio::time::timeout(self.limits.download_timeout, async {
                while let Some(chunk) = stream.next().await {
                    let chunk =
                        chunk.map_err(|e| format!("download broke off: {}", without_url(&e)))?;
                    if (body.len() + chunk.len()) as u64 > cap {
                        return Ok(false);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<bool, String>(true)
            })
            .await;
            match read {
                Ok(Ok(true)) => return Ok((body.freeze(), served_type)),
                Ok(Ok(false)) => return Err(too_large(cap)),
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out reading from storage".into(),
            }
        }
        Err(Failure::Image(FailureReason::DownloadFailed, last))
    }
}

fn too_large(cap: u64) -> Failure {
    Failure::Image(
        FailureReason::TooLarge,
        format!("the image is larger than {cap} bytes"),
    )
}

/// reqwest errors print the URL; a presigned URL is a credential and stays out of messages.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    s
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Sniff the type from the bytes (never trust the name or header alone), check the pixel count
/// from the header before decoding, then decode on a blocking thread.
async fn decode(
    bytes: Bytes,
    served_type: Option<&str>,
    max_pixels: u64,
) -> Result<Image, Failure> {
    let not_an_image = |detail: String| Failure::Image(FailureReason::NotAnImage, detail);
    let format = image::guess_format(&bytes)
        .map_err(|_| not_an_image("the bytes are not a JPEG, PNG or WebP image".into()))?;
    let content_type = match format {
        image::ImageFormat::Jpeg => "image/jpeg",
        image::ImageFormat::Png => "image/png",
        image::ImageFormat::WebP => "image/webp",
        other => {
            return Err(not_an_image(format!(
                "{other:?} images are not accepted (JPEG, PNG, WebP)"
            )));
        }
    };
    if let Some(served) = served_type
        && served.starts_with("image/")
        && served != content_type
        && !(served == "image/jpg" && content_type == "image/jpeg")
    {
        tracing::debug!(
            served,
            sniffed = content_type,
            "stored content type differs from the bytes; going by the bytes"
        );
    }
    let joined = tokio::task::spawn_blocking(move || {
        let reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| not_an_image(format!("unreadable image header: {e}")))?;
        if u64::from(w) * u64::from(h) > max_pixels {
            return Err(Failure::Image(
                FailureReason::TooLarge,
                format!("{w}×{h} pixels is over the limit of {max_pixels}"),
            ));
        }
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        limits.max_alloc = Some(max_pixels.saturating_mul(16));
        reader.limits(limits);
        let decoded = reader
            .decode()
            .map_err(|e| not_an_image(format!("the image does not decode: {e}")))?;
        Ok(Image {
            bytes: bytes.clone(),
            content_type,
            decoded: Arc::new(decoded),
        })
    })
    .await;
    joined.map_err(|e| Failure::Ours(format!("decoder thread: {e}")))?
}

/// Compatibility mode: an `ImageUploaded` read directly, as the original adapter did. The
/// analysis id is derived from the upload, so a redelivery names the same analysis.
fn request_from_upload(uploaded: ImageUploaded) -> RecognitionRequested {
    RecognitionRequested {
        analysis_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, uploaded.upload_id.as_bytes()),
        upload_id: Some(uploaded.upload_id),
        object_key: uploaded.object_key,
        owner: uploaded.owner,
        content_type: Some(uploaded.content_type),
        bytes: Some(uploaded.bytes),
        checksum: Some(uploaded.checksum),
        requested_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Bytes {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 160, 0]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        Bytes::from(out.into_inner())
    }

    fn reason(f: Failure) -> FailureReason {
        match f {
            Failure::Image(r, _) => r,
            Failure::Ours(e) => panic!("not the image's fault: {e}"),
        }
    }

    #[tokio::test]
    async fn decodes_within_the_pixel_limit_and_refuses_beyond() {
        let img = decode(png(40, 30), Some("image/png"), 1200)
            .await
            .unwrap_or_else(|_| panic!("decodes"));
        assert_eq!((img.decoded.width(), img.decoded.height()), (40, 30));
        assert_eq!(img.content_type, "image/png");
        let over = decode(png(40, 31), None, 1200).await;
        assert_eq!(reason(over.err().expect("over")), FailureReason::TooLarge);
    }

    #[tokio::test]
    async fn text_and_truncated_images_are_not_images() {
        let text = decode(Bytes::from_static(b"hello, not an image"), None, 1000).await;
        assert_eq!(reason(text.err().expect("text")), FailureReason::NotAnImage);
        let mut cut = png(50, 50).to_vec();
        cut.truncate(cut.len() / 2);
        let cut = decode(Bytes::from(cut), None, 10_000).await;
        assert_eq!(reason(cut.err().expect("cut")), FailureReason::NotAnImage);
        let gif = decode(
            Bytes::from_static(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
            None,
            10,
        )
        .await;
        assert_eq!(reason(gif.err().expect("gif")), FailureReason::NotAnImage);
    }

    #[test]
    fn compatibility_requests_name_the_same_analysis_on_redelivery() {
        let uploaded = ImageUploaded {
            upload_id: Uuid::now_v7(),
            object_key: "images/2026/11/22/x.png".into(),
            content_type: "image/png".into(),
            bytes: 10,
            checksum: format!("sha256:{}", "0".repeat(64)),
            occurred_at: Utc::now(),
            owner: Some("alice".into()),
        };
        let a = request_from_upload(uploaded.clone());
        let b = request_from_upload(uploaded);
        assert_eq!(a.analysis_id, b.analysis_id);
        assert_eq!(a.checksum.as_deref().map(str::len), Some(71));
    }
}
