//! The analysis path end to end: an `ImageUploaded` on Kafka → bridge → orchestrator →
//! bridge → vision adapter (with a test engine) → bridge → orchestrator → `analysis.*` on
//! RabbitMQ. Once over the in-process broker (embedded store, SQLite) and once over real
//! RabbitMQ + tansu + Garage + PostgreSQL. Every case ends in exactly one started and exactly one
//! completed-or-failed event with the right reason, whatever the brokers redeliver.

#[path = "support/platform.rs"]
mod platform;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use contracts::{AiProvider, MachineAggregate, headers};
use platform::{Parts, Platform, TOKEN, in_process_parts, png, real_parts, upload};
use svc_ai_vision_adapter::engine::{EngineError, Image, Recognition, RecognitionEngine};

/// Width of a test image the engine fails on.
const ENGINE_FAILS: u32 = 13;
/// Width of a test image the engine answers only after the orchestrator's deadline.
const ENGINE_TOO_SLOW: u32 = 17;

/// Recognises every image as a CAT excavator whose model is the image width, except the two
/// widths above.
struct TestEngine {
    slow: Duration,
}

#[async_trait]
impl RecognitionEngine for TestEngine {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "test".into(),
            ..AiProvider::default()
        }
    }

    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError> {
        match image.decoded.width() {
            ENGINE_FAILS => Err(EngineError::new("the test engine fails on width 13")),
            w => {
                if w == ENGINE_TOO_SLOW {
                    tokio::time::sleep(self.slow).await;
                }
                Ok(Recognition {
                    aggregate: MachineAggregate {
                        brand: Some("CAT".into()),
                        machine_type: Some("Excavator".into()),
                        model: Some(w.to_string()),
                        confidence: 0.9,
                        is_confident: true,
                        ..MachineAggregate::default()
                    },
                    text: vec![],
                    provider: None,
                })
            }
        }
    }
}

struct Timing {
    /// The orchestrator's recognition deadline.
    timeout: Duration,
    /// How long the engine takes on the too-slow image (longer than `timeout`).
    slow: Duration,
}

#[derive(Debug, Default)]
struct Seen {
    started: usize,
    /// `completed` or the failure reason, in arrival order.
    finals: Vec<String>,
    correlation_ids: Vec<String>,
    success: Option<bool>,
    model: Option<String>,
}

async fn collect(p: &mut Platform, seen: &mut HashMap<String, Seen>, until: Instant) {
    while let Ok(Ok(d)) = tokio::time::timeout_at(until.into(), p.events.next()).await {
        let body: serde_json::Value =
            serde_json::from_slice(&d.message.payload).expect("event json");
        let key = body["objectKey"].as_str().unwrap_or_default().to_owned();
        let entry = seen.entry(key).or_default();
        entry.correlation_ids.push(
            d.message
                .headers
                .get(headers::CORRELATION_ID)
                .unwrap_or_default()
                .to_owned(),
        );
        match d.message.headers.schema() {
            Some("analysis.started.v1") => entry.started += 1,
            Some("analysis.completed.v1") => {
                entry.finals.push("completed".into());
                entry.success = body["success"].as_bool();
                entry.model = body["recognitionPayload"]["aggregate"]["model"]
                    .as_str()
                    .map(str::to_owned);
            }
            Some("analysis.failed.v1") => {
                entry
                    .finals
                    .push(body["reason"].as_str().unwrap_or("?").to_owned());
            }
            other => panic!("unexpected event {other:?}"),
        }
        d.ack().await.expect("ack");
    }
}

async fn wait_for_finals(
    p: &mut Platform,
    seen: &mut HashMap<String, Seen>,
    keys: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        collect(p, seen, Instant::now() + Duration::from_millis(200)).await;
        if keys
            .iter()
            .all(|k| seen.get(*k).is_some_and(|s| !s.finals.is_empty()))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every analysis ended within {within:?}: {seen:#?}"
        );
    }
}

async fn every_case_ends_once_with_its_reason(parts: Parts, timing: Timing) {
    let mut p = platform::start(
        parts,
        timing.timeout,
        Arc::new(TestEngine { slow: timing.slow }),
    )
    .await;
    let mut seen = HashMap::new();

    // Warm-up: consumer groups have joined once one analysis went all the way round.
    let (warm, _) = upload(&p, "warm-up", png(64, 48), &png(64, 48)).await;
    wait_for_finals(&mut p, &mut seen, &[&warm], Duration::from_secs(60)).await;
    assert_eq!(
        seen[&warm].finals,
        ["completed"],
        "warm-up: {:?}",
        seen[&warm]
    );

    let ok_bytes = png(320, 200);
    let (ok, ok_corr) = upload(&p, "ok", ok_bytes.clone(), &ok_bytes).await;
    let (mismatch, _) = upload(&p, "mismatch", png(321, 200), b"other bytes").await;
    let text = Bytes::from_static(b"this is a text file, not a photo of a machine");
    let (not_image, _) = upload(&p, "text", text.clone(), &text).await;
    // Incompressible bytes over the adapter's 256 KiB download cap.
    let big: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (too_large, _) = upload(&p, "big", Bytes::from(big.clone()), &big).await;
    let fails = png(ENGINE_FAILS, ENGINE_FAILS);
    let (engine_error, _) = upload(&p, "engine", fails.clone(), &fails).await;
    let slow = png(ENGINE_TOO_SLOW, ENGINE_TOO_SLOW);
    let (timeout, _) = upload(&p, "slow", slow.clone(), &slow).await;
    let sent_at = Instant::now();

    let cases = [
        (ok.as_str(), "completed"),
        (mismatch.as_str(), "checksum_mismatch"),
        (not_image.as_str(), "not_an_image"),
        (too_large.as_str(), "too_large"),
        (engine_error.as_str(), "engine_error"),
        (timeout.as_str(), "timeout"),
    ];
    let keys: Vec<&str> = cases.iter().map(|(k, _)| *k).collect();
    wait_for_finals(
        &mut p,
        &mut seen,
        &keys,
        timing.slow + Duration::from_secs(60),
    )
    .await;
    // The slow engine's late answer, and any redelivery, must change nothing: keep listening
    // until well after it.
    collect(
        &mut p,
        &mut seen,
        (sent_at + timing.slow + Duration::from_secs(3))
            .max(Instant::now() + Duration::from_secs(1)),
    )
    .await;

    for (key, expected) in cases {
        let s = &seen[key];
        assert_eq!(s.started, 1, "{expected}: one AnalysisStarted, saw {s:?}");
        assert_eq!(
            s.finals,
            [expected],
            "{expected}: exactly one final event, saw {s:?}"
        );
    }
    let ok_seen = &seen[&ok];
    assert_eq!(
        ok_seen.success,
        Some(true),
        "a confident result is a success"
    );
    assert_eq!(
        ok_seen.model.as_deref(),
        Some("320"),
        "the engine's answer arrives"
    );
    assert!(
        ok_seen.correlation_ids.iter().all(|c| c == &ok_corr),
        "the upload's correlation id travels to every event: {:?}",
        ok_seen.correlation_ids
    );

    // The read API tells the same story.
    let http = reqwest::Client::new();
    let page: serde_json::Value = http
        .get(format!("{}/v1/analyses?first=100", p.orchestrator))
        .header("x-internal-token", TOKEN)
        .header("x-owner", "alice")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 7, "one analysis per upload: {page:#}");
    let by_key = |k: &str| {
        items
            .iter()
            .find(|i| i["objectKey"] == k)
            .unwrap_or_else(|| panic!("{k} listed"))
    };
    assert_eq!(by_key(&ok)["status"], "completed");
    assert_eq!(by_key(&ok)["result"]["aggregate"]["brand"], "CAT");
    assert_eq!(by_key(&timeout)["status"], "failed");
    assert_eq!(by_key(&timeout)["reason"], "timeout");
    assert!(by_key(&timeout)["startedAt"].is_string() && by_key(&timeout)["failedAt"].is_string());
    let foreign = http
        .get(format!("{}/v1/analyses?first=100", p.orchestrator))
        .header("x-internal-token", TOKEN)
        .header("x-owner", "mallory")
        .send()
        .await
        .expect("list")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(
        foreign["items"].as_array().map(Vec::len),
        Some(0),
        "owners see only their own"
    );

    p.shutdown.trigger();
    for t in p.tasks.drain(..) {
        t.await.expect("join").expect("service stopped cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_every_case_ends_once_with_its_reason() {
    let parts = in_process_parts().await;
    every_case_ends_once_with_its_reason(
        parts,
        Timing {
            timeout: Duration::from_secs(2),
            slow: Duration::from_secs(4),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_brokers_every_case_ends_once_with_its_reason() {
    let parts = real_parts().await;
    every_case_ends_once_with_its_reason(
        parts,
        Timing {
            timeout: Duration::from_secs(6),
            slow: Duration::from_secs(10),
        },
    )
    .await;
}
