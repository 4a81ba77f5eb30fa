//! The whole flow through graph-gateway on real RabbitMQ, tansu, Garage and PostgreSQL, with a
//! real OIDC issuer running in the test: two users on two gateway replicas each upload through
//! GraphQL (startUpload → PUT to storage → confirmUpload) and get exactly their own Started and
//! Completed; the queries show each user only their own uploads and analyses.

#[path = "support/platform.rs"]
mod platform;

use std::sync::Arc;
use std::time::Duration;

use graph_gateway::client::{HttpClient, Incoming, Protocol, WsClient};
use graph_gateway::issuer::{DevIssuer, TokenSpec};
use messaging::memory::InProcessBroker;
use serde_json::{Value, json};
use svc_ai_vision_adapter::engine::NoEngine;

const AUDIENCE: &str = "api://trackunit-e2e";

async fn serve_issuer() -> DevIssuer {
    DevIssuer::spawn_local().await.expect("issuer")
}

async fn upload(http: &HttpClient, name: &str, bytes: &[u8]) -> String {
    let data = http
        .data(
            "mutation($f: String!) { startUpload(filename: $f, contentType: \"image/png\") { correlationId imageUploadPayload { uploadId putUrl requiredHeaders { name value } } } }",
            json!({"f": name}),
        )
        .await
        .expect("startUpload");
    let p = &data["startUpload"]["imageUploadPayload"];
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "image/png".parse().expect("header"));
    for h in p["requiredHeaders"].as_array().into_iter().flatten() {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(h["name"].as_str().expect("name").as_bytes())
                .expect("name"),
            h["value"].as_str().expect("value").parse().expect("value"),
        );
    }
    let put = reqwest::Client::new()
        .put(p["putUrl"].as_str().expect("putUrl"))
        .headers(headers);
    let r = put.body(bytes.to_vec()).send().await.expect("PUT");
    assert!(r.status().is_success(), "PUT: {}", r.status());
    let upload_id = p["uploadId"].as_str().expect("uploadId").to_owned();
    let confirmed = http
        .data(
            "mutation($u: String!, $b: Int!, $c: String!) { confirmUpload(uploadId: $u, bytes: $b, checksum: $c) { status } }",
            json!({"u": upload_id, "b": bytes.len(), "c": testkit::sha256_checksum(bytes)}),
        )
        .await
        .expect("confirmUpload");
    assert_eq!(confirmed["confirmUpload"]["status"], "Accepted");
    upload_id
}

async fn subscribe(url: &str, protocol: Protocol, token: &str) -> WsClient {
    let mut ws = WsClient::connect(
        url,
        protocol,
        None,
        json!({"Authorization": format!("Bearer {token}")}),
    )
    .await
    .expect("connect");
    ws.subscribe(
        "s",
        "subscription { onAnalysisStarted { analysisId uploadId } }",
        json!({}),
    )
    .await
    .expect("sub");
    ws.subscribe(
        "c",
        "subscription { onAnalysisCompleted { analysisId uploadId success } }",
        json!({}),
    )
    .await
    .expect("sub");
    ws
}

/// (subscription id, uploadId) of everything that arrives until `quiet` passes without news.
async fn collect(ws: &mut WsClient, want: usize) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let within = if got.len() >= want {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(90)
        };
        match ws.next(within).await {
            Ok(Incoming::Next { id, payload }) => {
                let data = &payload["data"];
                let e = data
                    .get("onAnalysisStarted")
                    .or_else(|| data.get("onAnalysisCompleted"))
                    .cloned()
                    .unwrap_or(Value::Null);
                got.push((
                    id,
                    e["uploadId"].as_str().unwrap_or("").to_owned(),
                    e["analysisId"].as_str().unwrap_or("").to_owned(),
                ));
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    got
}

#[tokio::test]
async fn two_users_on_two_replicas_each_get_exactly_their_own_analyses() {
    let parts = platform::real_parts().await;
    let messaging = parts.messaging.clone();
    let s3 = parts.s3.clone();
    let topics = parts.topics.clone();
    let p = platform::start(parts, Duration::from_secs(60), Arc::new(NoEngine)).await;
    let http = reqwest::Client::new();

    let ingestion = tu_ingestion_service::Config {
        settings: tu_ingestion_service::Settings {
            http_addr: format!("127.0.0.1:{}", testkit::free_port()),
            database_url: testkit::postgres_database().await,
            internal_auth_api_key: platform::TOKEN.into(),
            ..Default::default()
        },
        s3,
        messaging: messaging.clone(),
        topics,
    };
    let ingestion_url = format!("http://{}", ingestion.settings.http_addr);
    let deps = tu_ingestion_service::Deps::connect(&ingestion, &InProcessBroker::memory())
        .await
        .expect("ingestion deps");
    let ingestion_task = tokio::spawn(tu_ingestion_service::run(
        ingestion,
        deps,
        p.shutdown.clone(),
    ));
    testkit::wait_ready(&http, &ingestion_url).await;

    let issuer = serve_issuer().await;
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let config = graph_gateway::Config {
            settings: graph_gateway::Settings {
                http_addr: format!("127.0.0.1:{}", testkit::free_port()),
                ingestion_base_url: ingestion_url.clone(),
                orchestrator_base_url: p.orchestrator.clone(),
                internal_auth_api_key: platform::TOKEN.into(),
                oidc_issuer: issuer.issuer().to_owned(),
                oidc_audiences: AUDIENCE.into(),
                ..Default::default()
            },
            messaging: messaging.clone(),
        };
        let base = format!("http://{}", config.settings.http_addr);
        let deps = graph_gateway::Deps::connect(&config, &InProcessBroker::memory()).expect("deps");
        tokio::spawn(graph_gateway::run(config, deps, p.shutdown.clone()));
        testkit::wait_ready(&http, &base).await;
        gateways.push(base);
    }
    let token = |sub: &str| {
        issuer
            .token(&TokenSpec {
                subject: sub.into(),
                audience: AUDIENCE.into(),
                scope: "analysis".into(),
                lifetime: Duration::from_secs(600),
            })
            .expect("token")
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let ws = |base: &str| format!("{}/graphql", base.replace("http://", "ws://"));
    let mut alice_ws = subscribe(&ws(&gateways[0]), Protocol::TransportWs, &alice).await;
    let mut alice_legacy = subscribe(&ws(&gateways[1]), Protocol::LegacyWs, &alice).await;
    let mut bob_ws = subscribe(&ws(&gateways[1]), Protocol::TransportWs, &bob).await;

    let alice_http = HttpClient::new(format!("{}/graphql", gateways[0]), Some(alice.clone()));
    let bob_http = HttpClient::new(format!("{}/graphql", gateways[1]), Some(bob.clone()));
    let photo = platform::png(64, 48);
    let alice_upload = upload(&alice_http, "alice.png", &photo).await;
    let bob_upload = upload(&bob_http, "bob.png", &platform::png(48, 64)).await;

    for (who, ws, own) in [
        (
            "alice (graphql-transport-ws, replica 1)",
            &mut alice_ws,
            &alice_upload,
        ),
        (
            "alice (graphql-ws, replica 2)",
            &mut alice_legacy,
            &alice_upload,
        ),
        ("bob (replica 2)", &mut bob_ws, &bob_upload),
    ] {
        let got = collect(ws, 2).await;
        let mut kinds: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec!["c", "s"],
            "{who}: one Started, one Completed: {got:?}"
        );
        assert!(
            got.iter().all(|(_, u, _)| u == own),
            "{who}: only their own upload: {got:?}"
        );
    }
    let analysis_id = {
        let got = alice_http
            .data(
                "{ analyses(first: 10) { nodes { id uploadId status } } }",
                json!({}),
            )
            .await
            .expect("analyses");
        let nodes = got["analyses"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(nodes.len(), 1, "alice sees one analysis: {got}");
        assert_eq!(nodes[0]["uploadId"], alice_upload.as_str());
        assert_eq!(nodes[0]["status"], "COMPLETED");
        nodes[0]["id"].as_str().expect("id").to_owned()
    };
    let own = alice_http
        .data(
            "query($i: ID!) { analysis(id: $i) { id status } }",
            json!({"i": analysis_id}),
        )
        .await
        .expect("analysis");
    assert_eq!(own["analysis"]["id"], analysis_id.as_str());
    let theirs = bob_http
        .data(
            "query($i: ID!) { analysis(id: $i) { id } }",
            json!({"i": analysis_id}),
        )
        .await
        .expect("analysis");
    assert!(
        theirs["analysis"].is_null(),
        "bob cannot read alice's analysis"
    );
    let up = alice_http
        .data(
            "query($i: ID!) { upload(id: $i) { status bytes checksum } }",
            json!({"i": alice_upload}),
        )
        .await
        .expect("upload");
    assert_eq!(up["upload"]["status"], "Uploaded");
    assert_eq!(up["upload"]["bytes"], photo.len());
    let not_bobs = bob_http
        .data(
            "query($i: ID!) { upload(id: $i) { status } }",
            json!({"i": alice_upload}),
        )
        .await
        .expect("upload");
    assert!(not_bobs["upload"].is_null());
    // A confirm with the wrong size is refused with the field's error.
    let bad = alice_http
        .data(
            "mutation($u: String!) { confirmUpload(uploadId: $u, bytes: 0, checksum: \"sha256:00\") { status } }",
            json!({"u": alice_upload}),
        )
        .await
        .expect_err("invalid confirm");
    assert_eq!(bad.code(), Some("BAD_USER_INPUT"), "{bad}");

    for w in [alice_ws, alice_legacy, bob_ws] {
        w.close().await;
    }
    p.shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(20), ingestion_task).await;
}
