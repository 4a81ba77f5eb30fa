//! The gateway as a running service on real RabbitMQ, with a real OIDC issuer served in the
//! test. Events are published to the `analysis.*` fanouts exactly as the orchestrator does;
//! the full flow through every service is in `crates/trackunit/tests/gateway_e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use contracts::names::exchanges;
use contracts::{AnalysisCompleted, AnalysisStarted, MachineAggregate, RecognitionCompleted};
use graph_gateway::client::{HttpClient, Incoming, Protocol, WsClient};
use graph_gateway::issuer::{DevIssuer, TokenSpec};
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use messaging::{Message, MessageBroker};
use runtime::Shutdown;
use serde_json::{Value, json};
use uuid::Uuid;

const AUDIENCE: &str = "api://trackunit-gateway-test";
const WAIT: Duration = Duration::from_secs(15);

struct Gateway {
    base: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    fn graphql(&self) -> String {
        format!("{}/graphql", self.base)
    }

    fn ws(&self) -> String {
        format!("{}/graphql", self.base.replace("http://", "ws://"))
    }

    async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

async fn serve_issuer() -> DevIssuer {
    DevIssuer::spawn_local().await.expect("issuer")
}

async fn start_gateway(
    amqp: &str,
    issuer: &DevIssuer,
    tweak: impl FnOnce(&mut graph_gateway::Settings),
) -> Gateway {
    let port = testkit::free_port();
    let mut settings = graph_gateway::Settings {
        http_addr: format!("127.0.0.1:{port}"),
        oidc_issuer: issuer.issuer().to_owned(),
        oidc_audiences: AUDIENCE.into(),
        internal_auth_api_key: "gateway-test-internal".into(),
        // Nothing listens here: these tests need no upstream.
        ingestion_base_url: format!("http://127.0.0.1:{}", testkit::free_port()),
        orchestrator_base_url: format!("http://127.0.0.1:{}", testkit::free_port()),
        rate_limit_burst: 0,
        ..Default::default()
    };
    tweak(&mut settings);
    let config = graph_gateway::Config {
        settings,
        messaging: MessagingConfig {
            rabbit_url: amqp.to_owned(),
            ..Default::default()
        },
    };
    let deps = graph_gateway::Deps::connect(&config, &InProcessBroker::memory()).expect("deps");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(graph_gateway::run(config, deps, shutdown.clone()));
    let base = format!("http://127.0.0.1:{port}");
    testkit::wait_ready(&reqwest::Client::new(), &base).await;
    Gateway {
        base,
        shutdown,
        task,
    }
}

fn token(issuer: &DevIssuer, subject: &str) -> String {
    issuer
        .token(&TokenSpec {
            subject: subject.into(),
            audience: AUDIENCE.into(),
            scope: "analysis".into(),
            lifetime: Duration::from_secs(600),
        })
        .expect("token")
}

async fn publisher(amqp: &str) -> Arc<dyn MessageBroker> {
    let config = MessagingConfig {
        rabbit_url: amqp.to_owned(),
        ..Default::default()
    };
    let broker = config
        .message_broker("test-orchestrator", &InProcessBroker::memory())
        .expect("broker");
    broker
        .declare(&messaging::topology::platform())
        .await
        .expect("declare");
    broker
}

/// Publish, retrying while the broker reconnects (after a restart).
async fn publish(broker: &Arc<dyn MessageBroker>, exchange: &str, message: &Message) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match broker.publish(exchange, "", message).await {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("publish to {exchange}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("publish to {exchange}: {e}"),
        }
    }
}

struct Published {
    analysis_id: Uuid,
    upload_id: Uuid,
}

async fn publish_flow(broker: &Arc<dyn MessageBroker>, owner: &str) -> Published {
    let analysis_id = Uuid::now_v7();
    let upload_id = Uuid::now_v7();
    let key = format!("images/2026/12/07/{upload_id}.jpg");
    let started = AnalysisStarted {
        analysis_id: Some(analysis_id),
        upload_id: Some(upload_id),
        object_key: key.clone(),
        owner: Some(owner.into()),
        correlation_id: Some(format!("corr-{owner}")),
        started_at: Some(Utc::now()),
    };
    publish(
        broker,
        exchanges::ANALYSIS_STARTED,
        &Message::from_contract(&started, "svc-analysis-orchestrator", "c"),
    )
    .await;
    let completed = AnalysisCompleted {
        analysis_id: Some(analysis_id),
        upload_id: Some(upload_id),
        object_key: Some(key.clone()),
        owner: Some(owner.into()),
        correlation_id: Some(format!("corr-{owner}")),
        success: true,
        recognition_payload: Some(RecognitionCompleted {
            analysis_id: Some(analysis_id),
            upload_id: Some(upload_id),
            object_key: Some(key),
            owner: Some(owner.into()),
            provider: contracts::AiProvider {
                name: "offline".into(),
                ..Default::default()
            },
            aggregate: MachineAggregate {
                brand: Some("Caterpillar".into()),
                machine_type: Some("Excavator".into()),
                model: Some("320D".into()),
                confidence: 0.9,
                is_confident: true,
                ..Default::default()
            },
            text: vec![],
            timings: None,
            completed_at: Some(Utc::now()),
        }),
        completed_at: Some(Utc::now()),
    };
    publish(
        broker,
        exchanges::ANALYSIS_COMPLETED,
        &Message::from_contract(&completed, "svc-analysis-orchestrator", "c"),
    )
    .await;
    Published {
        analysis_id,
        upload_id,
    }
}

const STARTED: &str = "subscription { onAnalysisStarted { analysisId uploadId objectKey } }";
const COMPLETED: &str = "subscription { onAnalysisCompleted { analysisId uploadId success recognitionPayload { provider { name } aggregate { brand type machineType model isConfident name } } } }";

async fn subscriber(gw: &Gateway, protocol: Protocol, token: &str) -> WsClient {
    let mut ws = WsClient::connect(
        &gw.ws(),
        protocol,
        None,
        json!({"Authorization": format!("Bearer {token}")}),
    )
    .await
    .expect("connect");
    ws.subscribe("s", STARTED, json!({})).await.expect("sub");
    ws.subscribe("c", COMPLETED, json!({})).await.expect("sub");
    ws
}

/// Everything that arrives within `quiet` after the last message.
async fn drain(ws: &mut WsClient, first_within: Duration, quiet: Duration) -> Vec<Incoming> {
    let mut got = Vec::new();
    let mut within = first_within;
    while let Ok(m) = ws.next(within).await {
        got.push(m);
        within = quiet;
    }
    got
}

fn analysis_ids(messages: &[Incoming]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Incoming::Next { id, payload } => {
                let data = payload.get("data")?;
                let event = data
                    .get("onAnalysisStarted")
                    .or_else(|| data.get("onAnalysisCompleted"))?;
                Some((id.clone(), event["analysisId"].as_str()?.to_owned()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn each_user_gets_exactly_their_own_events_on_both_replicas_and_protocols() {
    let vhost = testkit::RabbitVhost::create();
    let issuer = serve_issuer().await;
    let one = start_gateway(&vhost.url(), &issuer, |_| {}).await;
    let two = start_gateway(&vhost.url(), &issuer, |_| {}).await;
    let broker = publisher(&vhost.url()).await;

    let alice_token = token(&issuer, "alice");
    let bob_token = token(&issuer, "bob");
    // Alice on replica one (graphql-transport-ws) and on replica two (legacy graphql-ws);
    // Bob on replica two.
    let mut alice_one = subscriber(&one, Protocol::TransportWs, &alice_token).await;
    let mut alice_two = subscriber(&two, Protocol::LegacyWs, &alice_token).await;
    let mut bob_two = subscriber(&two, Protocol::TransportWs, &bob_token).await;
    // A subscription only to one upload of Alice's.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let alice = publish_flow(&broker, "alice").await;
    let bob = publish_flow(&broker, "bob").await;
    let _carol = publish_flow(&broker, "carol").await;

    for (who, ws, own) in [
        ("alice on replica one", &mut alice_one, &alice),
        ("alice on replica two (graphql-ws)", &mut alice_two, &alice),
        ("bob on replica two", &mut bob_two, &bob),
    ] {
        let got = drain(ws, WAIT, Duration::from_millis(1500)).await;
        let ids = analysis_ids(&got);
        let want = own.analysis_id.to_string();
        assert_eq!(
            ids,
            vec![("s".to_owned(), want.clone()), ("c".to_owned(), want)],
            "{who}: exactly one Started and one Completed, their own: {got:?}"
        );
        let completed = got
            .iter()
            .find_map(|m| match m {
                Incoming::Next { id, payload } if id == "c" => Some(payload.clone()),
                _ => None,
            })
            .expect("completed");
        let aggregate =
            &completed["data"]["onAnalysisCompleted"]["recognitionPayload"]["aggregate"];
        assert_eq!(aggregate["brand"], "Caterpillar");
        assert_eq!(aggregate["type"], "Excavator", "the original's field name");
        assert_eq!(aggregate["machineType"], "Excavator");
        assert_eq!(aggregate["name"], "Caterpillar, Excavator, 320D");
        assert_eq!(
            completed["data"]["onAnalysisCompleted"]["uploadId"],
            own.upload_id.to_string()
        );
    }

    // Filters: a subscription to one upload sees only that upload's events.
    let mut filtered = WsClient::connect(
        &one.ws(),
        Protocol::TransportWs,
        Some(&alice_token),
        json!({}),
    )
    .await
    .expect("token on the upgrade request");
    let wanted = Uuid::now_v7();
    filtered
        .subscribe(
            "f",
            "subscription($u: ID) { onAnalysisStarted(uploadId: $u) { uploadId } }",
            json!({"u": wanted.to_string()}),
        )
        .await
        .expect("sub");
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_flow(&broker, "alice").await;
    let got = drain(
        &mut filtered,
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .await;
    assert!(got.is_empty(), "another upload's event: {got:?}");

    for ws in [alice_one, alice_two, bob_two, filtered] {
        ws.close().await;
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn clients_without_a_valid_token_get_a_clear_error_and_no_events() {
    let vhost = testkit::RabbitVhost::create();
    let issuer = serve_issuer().await;
    let gw = start_gateway(&vhost.url(), &issuer, |_| {}).await;
    let broker = publisher(&vhost.url()).await;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": issuer.issuer(), "sub": "mallory", "aud": AUDIENCE,
                           "scp": "analysis", "iat": now, "exp": now + 600});
        f(&mut c);
        issuer.sign(&c).expect("sign")
    };
    let impostor = DevIssuer::generate(issuer.issuer()).expect("impostor");
    let forged = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(issuer.current_kid());
        jsonwebtoken::encode(
            &h,
            &json!({"iss": issuer.issuer(), "sub": "mallory", "aud": AUDIENCE, "scp": "analysis", "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(impostor.private_key_pem().as_bytes())
                .expect("key"),
        )
        .expect("forged")
    };
    let alg_none = {
        use base64::Engine as _;
        let b = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b(json!({"alg": "none", "typ": "JWT"})),
            b(
                json!({"iss": issuer.issuer(), "sub": "mallory", "aud": AUDIENCE, "scp": "analysis", "exp": now + 600})
            )
        )
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "UNAUTHENTICATED"),
        (
            "expired",
            Some(claims(&|c| c["exp"] = json!(now - 3600))),
            "UNAUTHENTICATED",
        ),
        (
            "wrong audience",
            Some(claims(&|c| c["aud"] = json!("api://other"))),
            "UNAUTHENTICATED",
        ),
        (
            "wrong issuer",
            Some(claims(&|c| c["iss"] = json!("https://login.example/other"))),
            "UNAUTHENTICATED",
        ),
        (
            "missing scope",
            Some(claims(&|c| c["scp"] = json!("openid"))),
            "FORBIDDEN",
        ),
        ("forged signature", Some(forged), "UNAUTHENTICATED"),
        ("alg none", Some(alg_none), "UNAUTHENTICATED"),
    ];
    let http_client = |t: &Option<String>| HttpClient::new(gw.graphql(), t.clone());
    let mut sockets = Vec::new();
    for (what, token, code) in &cases {
        // Over a WebSocket (token in connection_init): the subscription is refused with the code.
        let payload = token.as_ref().map_or(
            json!({}),
            |t| json!({"Authorization": format!("Bearer {t}")}),
        );
        let mut ws = WsClient::connect(&gw.ws(), Protocol::TransportWs, None, payload)
            .await
            .expect("connect");
        ws.subscribe("s", STARTED, json!({})).await.expect("sub");
        match ws.next(WAIT).await {
            Ok(Incoming::Error { errors, .. }) => {
                assert_eq!(errors[0]["extensions"]["code"], *code, "{what}: {errors}");
                assert!(
                    errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{what}: a message says why"
                );
            }
            other => panic!("{what}: expected an error, got {other:?}"),
        }
        sockets.push(ws);
        // Over HTTP: ping needs no token, a protected field gets the same code.
        let c = http_client(token);
        assert_eq!(
            c.data("{ ping }", json!({})).await.expect("ping")["ping"],
            "pong"
        );
        let err = c
            .data("{ analyses { nodes { id } } }", json!({}))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Some(*code), "{what}: {err}");
        // A bad token on the upgrade request: HTTP 401, there is no GraphQL session yet.
        if let Some(t) = token {
            let refused =
                WsClient::connect(&gw.ws(), Protocol::TransportWs, Some(t), json!({})).await;
            match refused {
                Err(graph_gateway::client::ClientError::GraphQL { code: c, .. }) => {
                    assert_eq!(c, *code, "{what} on the upgrade")
                }
                Err(graph_gateway::client::ClientError::Http { status, .. }) => {
                    assert_eq!(status, 401, "{what} on the upgrade")
                }
                other => panic!("{what}: the upgrade should be refused: {:?}", other.is_ok()),
            }
        }
    }
    // Nothing reaches them: mallory's own events included (the refused subscriptions are gone).
    publish_flow(&broker, "mallory").await;
    for mut ws in sockets {
        let got = drain(&mut ws, Duration::from_secs(2), Duration::from_millis(300)).await;
        assert!(
            got.iter().all(|m| !matches!(m, Incoming::Next { .. })),
            "no events: {got:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn limits_hold_depth_complexity_size_and_rate() {
    let vhost = testkit::RabbitVhost::create();
    let issuer = serve_issuer().await;
    let gw = start_gateway(&vhost.url(), &issuer, |s| {
        s.max_query_depth = 4;
        s.max_query_complexity = 50;
        s.max_request_bytes = 4096;
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 8;
    })
    .await;
    let alice = HttpClient::new(gw.graphql(), Some(token(&issuer, "alice")));
    let deep = "{ analyses(first: 1) { nodes { result { aggregate { brand } } } } }";
    let err = alice.data(deep, json!({})).await.expect_err("too deep");
    assert!(err.to_string().to_lowercase().contains("too deep"), "{err}");
    let costly = "{ analyses(first: 100) { nodes { id objectKey status } } }";
    let err = alice
        .data(costly, json!({}))
        .await
        .expect_err("too complex");
    assert!(err.to_string().to_lowercase().contains("complex"), "{err}");
    let err = alice
        .data("{ analyses(first: 0) { nodes { id } } }", json!({}))
        .await
        .expect_err("page size");
    assert!(
        err.to_string().contains("greater than or equal to 1"),
        "{err}"
    );

    let big = format!("{{ ping }} # {}", "x".repeat(8192));
    let response = reqwest::Client::new()
        .post(gw.graphql())
        .json(&json!({"query": big}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "REQUEST_TOO_LARGE");

    // Rate: a burst of 8, then 429 with Retry-After — per subject, so Bob is not affected.
    let bob = HttpClient::new(gw.graphql(), Some(token(&issuer, "bob")));
    let mut limited = None;
    for i in 0..20 {
        match alice.execute("{ ping }", json!({})).await {
            Ok(_) => {}
            Err(e) => {
                limited = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = limited.expect("rate limited");
    assert!(at <= 8, "limited after the burst, at {at}");
    assert_eq!(err.code(), Some("RATE_LIMITED"), "{err}");
    assert!(bob.data("{ ping }", json!({})).await.is_ok(), "per client");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_failures_and_bad_input_are_coded_errors() {
    let vhost = testkit::RabbitVhost::create();
    let issuer = serve_issuer().await;
    let gw = start_gateway(&vhost.url(), &issuer, |_| {}).await;
    let alice = HttpClient::new(gw.graphql(), Some(token(&issuer, "alice")));
    // Nothing listens at the ingestion URL.
    let err = alice
        .data(
            "mutation { startUpload(filename: \"a.jpg\", contentType: \"image/jpeg\") { correlationId } }",
            json!({}),
        )
        .await
        .expect_err("ingestion down");
    assert_eq!(err.code(), Some("UPSTREAM_UNAVAILABLE"), "{err}");
    let err = alice
        .data("{ analysis(id: \"not-a-uuid\") { id } }", json!({}))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Some("BAD_USER_INPUT"), "{err}");
    let err = alice
        .data(
            "mutation { requestAnalysis(input: {objectKey: \"../etc/passwd\"}) { analysisId } }",
            json!({}),
        )
        .await
        .expect_err("bad key");
    assert_eq!(err.code(), Some("BAD_USER_INPUT"), "{err}");
    let response = reqwest::Client::new()
        .post(gw.graphql())
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    // Without development mode there is no GraphiQL.
    let page = reqwest::get(gw.graphql()).await.expect("get");
    assert_eq!(page.status(), 405);
    gw.stop().await;
}

#[tokio::test]
async fn faults_events_flow_again_after_a_rabbitmq_restart() {
    let vhost = testkit::RabbitVhost::create_on_faults_node();
    let issuer = serve_issuer().await;
    let gw = start_gateway(&vhost.url(), &issuer, |_| {}).await;
    let alice_token = token(&issuer, "alice");
    let mut ws = subscriber(&gw, Protocol::TransportWs, &alice_token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = publisher(&vhost.url()).await;
    let before = publish_flow(&broker, "alice").await;
    let got = drain(&mut ws, WAIT, Duration::from_millis(800)).await;
    assert_eq!(analysis_ids(&got).len(), 2, "{got:?}");
    assert!(
        analysis_ids(&got)
            .iter()
            .all(|(_, a)| *a == before.analysis_id.to_string())
    );

    testkit::restart_rabbit_faults_node(Duration::from_secs(2));
    // Readiness comes back once the gateway consumes its queue again.
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{}/health/ready", gw.base))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The subscription on the open WebSocket receives events published after the restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let after = publish_flow(&broker, "alice").await;
        let got = drain(&mut ws, Duration::from_secs(3), Duration::from_millis(500)).await;
        if analysis_ids(&got)
            .iter()
            .any(|(_, a)| *a == after.analysis_id.to_string())
        {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events after the restart: {got:?}"
        );
    };
    assert_ne!(after.analysis_id, before.analysis_id);
    ws.close().await;
    gw.stop().await;
}
