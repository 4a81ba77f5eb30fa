//! The cloud engines against a local stand-in for Google's APIs (axum on 127.0.0.1:0, started
//! per test and stopped with it) that replays answers shaped like the original's recorded
//! fixtures (`GoogleVisionSample*.json`, `GeminiSample.json`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use contracts::FailureReason;
use serde_json::{Value, json};
use svc_ai_vision_adapter::Settings;
use svc_ai_vision_adapter::cloud::auth::AssertionClaims;
use svc_ai_vision_adapter::engine::{Image, RecognitionEngine, by_name};
use tokio_util::sync::CancellationToken;

/// One canned answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body: body.to_string(),
    }
}

fn status(code: u16, body: Value) -> Reply {
    Reply {
        status: code,
        headers: vec![],
        body: body.to_string(),
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: String,
    headers: HeaderMap,
    body: String,
}

/// How the fake token endpoint checks assertions.
struct TokenCheck {
    public_pem: String,
    email: String,
    audience: String,
}

#[derive(Default)]
struct Fake {
    vision: Mutex<VecDeque<Reply>>,
    gemini: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    token: Mutex<Option<TokenCheck>>,
}

impl Fake {
    fn script(queue: &Mutex<VecDeque<Reply>>, replies: Vec<Reply>) {
        *queue.lock().expect("lock") = replies.into();
    }

    /// The next reply; the last one repeats.
    fn next(queue: &Mutex<VecDeque<Reply>>) -> Reply {
        let mut q = queue.lock().expect("lock");
        if q.len() > 1 {
            q.pop_front().expect("non-empty")
        } else {
            q.front().cloned().unwrap_or_else(|| status(404, json!({})))
        }
    }

    fn seen(&self, path_part: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.path.contains(path_part))
            .cloned()
            .collect()
    }
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    _method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    fake.seen.lock().expect("lock").push(seen.clone());
    let reply = if seen.path == "/v1/images:annotate" {
        Fake::next(&fake.vision)
    } else if seen.path.ends_with(":generateContent") {
        Fake::next(&fake.gemini)
    } else if seen.path == "/token" {
        token_reply(&fake, &seen)
    } else {
        status(404, json!({"error": {"message": "no such route"}}))
    };
    let mut response = (
        StatusCode::from_u16(reply.status).expect("status"),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        response
            .headers_mut()
            .insert(k, v.parse().expect("header value"));
    }
    response
}

/// The OAuth JWT-bearer grant: check the form, the assertion's RS256 signature and its claims.
fn token_reply(fake: &Fake, seen: &Seen) -> Reply {
    let guard = fake.token.lock().expect("lock");
    let Some(check) = guard.as_ref() else {
        return status(500, json!({"error": "no token check configured"}));
    };
    let mut grant = None;
    let mut assertion = None;
    for pair in seen.body.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant = Some(v.replace("%3A", ":")),
            Some(("assertion", v)) => assertion = Some(v.to_owned()),
            _ => {}
        }
    }
    if grant.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return status(400, json!({"error": "unsupported_grant_type"}));
    }
    let Some(assertion) = assertion else {
        return status(400, json!({"error": "invalid_request"}));
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(check.public_pem.as_bytes()).expect("pem");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&check.audience]);
    validation.set_issuer(&[&check.email]);
    match jsonwebtoken::decode::<AssertionClaims>(&assertion, &key, &validation) {
        Ok(data) => {
            let c = data.claims;
            if c.scope != "https://www.googleapis.com/auth/cloud-vision"
                || c.exp - c.iat != 3600
                || data.header.kid.as_deref() != Some("key-1")
            {
                return status(
                    400,
                    json!({"error": "invalid_grant", "claims": "unexpected"}),
                );
            }
            ok(
                json!({"access_token": "ya29.test-token", "expires_in": 3599, "token_type": "Bearer"}),
            )
        }
        Err(e) => status(
            400,
            json!({"error": "invalid_grant", "error_description": e.to_string()}),
        ),
    }
}

/// The fake on 127.0.0.1:0; stops when the returned guard drops.
struct Server {
    url: String,
    fake: Arc<Fake>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn server() -> Server {
    let fake = Arc::new(Fake::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let token = stop.clone();
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
        // Bounded life even if a test forgets to drop the guard.
        let _ = tokio::time::timeout(Duration::from_secs(60), serve).await;
    });
    Server { url, fake, stop }
}

fn settings(server: &Server, engine: &str) -> Settings {
    Settings {
        recognition_engine: engine.into(),
        google_vision_api_key: "test-key".into(),
        google_vision_endpoint: server.url.clone(),
        gemini_api_key: "gemini-key".into(),
        gemini_endpoint: server.url.clone(),
        gemini_model: "gemini-2.5-flash".into(),
        cloud_attempts: 3,
        cloud_backoff_ms: 1,
        cloud_timeout_secs: 5,
        ..Settings::default()
    }
}

fn image() -> Image {
    let img = image::DynamicImage::new_rgb8(8, 6);
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    Image {
        bytes: png.into(),
        content_type: "image/png",
        decoded: Arc::new(img),
    }
}

/// Shaped like the original's `GoogleVisionSample.json`: a CAT 930G wheel loader.
fn vision_cat_930g() -> Value {
    json!({"responses": [{
        "logoAnnotations": [
            {"mid": "/m/01q0t", "description": "Caterpillar", "score": 0.93,
             "boundingPoly": {"vertices": [{"x": 10, "y": 5}, {"x": 90, "y": 5}, {"x": 90, "y": 30}, {"y": 30}]}}
        ],
        "textAnnotations": [
            {"locale": "en", "description": "CAT\n930G\n",
             "boundingPoly": {"vertices": [{"x": 10, "y": 5}, {"x": 120, "y": 5}, {"x": 120, "y": 80}, {"x": 10, "y": 80}]}},
            {"description": "CAT", "boundingPoly": {"vertices": [{"x": 10, "y": 5}, {"x": 60, "y": 5}, {"x": 60, "y": 30}, {"x": 10, "y": 30}]}},
            {"description": "930G", "boundingPoly": {"vertices": [{"x": 20, "y": 50}, {"x": 120, "y": 50}, {"x": 120, "y": 80}, {"x": 20, "y": 80}]}}
        ],
        "webDetection": {
            "webEntities": [
                {"entityId": "/m/02x984l", "score": 1.2, "description": "Caterpillar Inc."},
                {"entityId": "/m/0h8n5zk", "score": 0.85, "description": "Wheel loader"},
                {"entityId": "/m/01x3z", "score": 0.4, "description": "Excavator"}
            ],
            "bestGuessLabels": [{"label": "caterpillar 930g", "languageCode": "en"}]
        }
    }]})
}

/// No logo: a Volvo decal read as text, the type only in the best guess.
fn vision_volvo_text_only() -> Value {
    json!({"responses": [{
        "textAnnotations": [
            {"description": "VOLVO\nEC220E\n"},
            {"description": "VOLVO"},
            {"description": "EC220E"}
        ],
        "webDetection": {
            "webEntities": [{"score": 0.41, "description": "Excavator"}, {"score": 0.3, "description": "Machine"}],
            "bestGuessLabels": [{"label": "crawler excavator"}]
        }
    }]})
}

/// The original's `GeminiSample.json`.
fn gemini_sample() -> Value {
    let answer = json!({"status": "success", "brand": "Caterpillar", "machineType": "Wheel Loader",
        "model": "930G", "attachment": ["Bucket", "Forks", "Material handling arm"], "weight": 14500,
        "year": "1997-2003", "confidence": 0.95, "partial": false,
        "source": "Model number lookup for '930G' in manufacturer catalog"});
    json!({"candidates": [{"content": {"parts": [{"text": answer.to_string()}], "role": "model"},
        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 172, "candidatesTokenCount": 163, "totalTokenCount": 658},
        "modelVersion": "gemini-2.5-flash"})
}

fn gemini_text(text: &str) -> Value {
    json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}]})
}

fn engine(s: &Settings) -> Arc<dyn RecognitionEngine> {
    by_name(s).expect("engine")
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the test finishes within 30 s")
}

#[tokio::test]
async fn google_logo_text_and_web_detection_give_a_cat_930g_wheel_loader() {
    let server = server().await;
    Fake::script(&server.fake.vision, vec![ok(vision_cat_930g())]);
    let engine = engine(&settings(&server, "google"));
    let image = image();
    let r = within(engine.recognize(image.clone()))
        .await
        .expect("recognised");

    let a = &r.aggregate;
    assert_eq!(a.brand.as_deref(), Some("Caterpillar"));
    assert_eq!(a.machine_type.as_deref(), Some("Wheel Loader"));
    assert_eq!(a.model.as_deref(), Some("930G"));
    assert_eq!(
        a.confidence, 1.0,
        "max(logo 0.93, web 1.2 clamped, brand 0.90)"
    );
    assert!(a.is_confident);
    assert_eq!(a.type_source.as_deref(), Some("web_entity"));
    assert_eq!(a.type_confidence, Some(0.85));
    assert_eq!(
        r.text.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["CAT", "930G"]
    );
    assert_eq!(
        r.text[1].bounding_box.as_deref(),
        Some(&[[20.0, 50.0], [120.0, 50.0], [120.0, 80.0], [20.0, 80.0]][..])
    );
    let provider = engine.provider();
    assert_eq!(provider.name, "google");
    assert_eq!(provider.api_version.as_deref(), Some("v1"));
    assert_eq!(
        provider.featureset,
        ["LOGO_DETECTION", "TEXT_DETECTION", "WEB_DETECTION"]
    );
    assert_eq!(provider.max_results, Some(5));

    // The request: API key, the image inline, the original's features with maxResults 5.
    let seen = server.fake.seen("images:annotate");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].query, "key=test-key");
    let body: Value = serde_json::from_str(&seen[0].body).expect("json");
    use base64::Engine as _;
    assert_eq!(
        body["requests"][0]["image"]["content"],
        base64::engine::general_purpose::STANDARD.encode(&image.bytes)
    );
    assert_eq!(
        body["requests"][0]["features"],
        json!([{"type": "LOGO_DETECTION", "maxResults": 5},
               {"type": "TEXT_DETECTION", "maxResults": 5},
               {"type": "WEB_DETECTION", "maxResults": 5}])
    );
}

#[tokio::test]
async fn without_a_logo_the_brand_comes_from_the_text_and_the_type_from_the_best_guess() {
    let server = server().await;
    Fake::script(&server.fake.vision, vec![ok(vision_volvo_text_only())]);
    let r = within(engine(&settings(&server, "google")).recognize(image()))
        .await
        .expect("recognised");
    let a = &r.aggregate;
    assert_eq!(a.brand.as_deref(), Some("Volvo"));
    assert_eq!(a.model.as_deref(), Some("EC220E"));
    assert_eq!(a.machine_type.as_deref(), Some("Excavator"));
    assert_eq!(a.type_source.as_deref(), Some("web_best_guess"));
    assert_eq!(a.type_confidence, None);
    assert_eq!(a.confidence, 0.80);
    assert!(a.is_confident);
}

#[tokio::test]
async fn an_empty_answer_claims_nothing() {
    let server = server().await;
    Fake::script(&server.fake.vision, vec![ok(json!({"responses": [{}]}))]);
    let r = within(engine(&settings(&server, "google")).recognize(image()))
        .await
        .expect("recognised");
    assert_eq!(r.aggregate, contracts::MachineAggregate::default());
    assert!(r.text.is_empty());
}

#[tokio::test]
async fn rate_limited_then_ok_is_retried() {
    let server = server().await;
    Fake::script(
        &server.fake.vision,
        vec![
            Reply {
                status: 429,
                headers: vec![("retry-after", "0".into())],
                body: json!({"error": {"code": 429, "message": "Quota exceeded"}}).to_string(),
            },
            status(503, json!({"error": {"message": "unavailable"}})),
            ok(vision_cat_930g()),
        ],
    );
    let r = within(engine(&settings(&server, "google")).recognize(image()))
        .await
        .expect("recognised after the retries");
    assert_eq!(r.aggregate.model.as_deref(), Some("930G"));
    assert_eq!(server.fake.seen("images:annotate").len(), 3);
}

#[tokio::test]
async fn server_errors_exhaust_the_retries_into_a_clear_transient_engine_error() {
    let server = server().await;
    Fake::script(
        &server.fake.vision,
        vec![status(
            500,
            json!({"error": {"code": 500, "message": "Internal error encountered."}}),
        )],
    );
    let err = within(engine(&settings(&server, "google")).recognize(image()))
        .await
        .expect_err("fails");
    assert_eq!(err.reason, FailureReason::EngineError);
    assert!(err.transient);
    assert!(
        err.message
            .contains("Google Vision unavailable after 3 attempts")
            && err
                .message
                .contains("HTTP 500: Internal error encountered."),
        "{}",
        err.message
    );
    assert_eq!(server.fake.seen("images:annotate").len(), 3);
}

#[tokio::test]
async fn a_refused_image_is_the_callers_fault_and_not_retried() {
    let server = server().await;
    Fake::script(
        &server.fake.vision,
        vec![ok(
            json!({"responses": [{"error": {"code": 3, "message": "Bad image data."}}]}),
        )],
    );
    let s = settings(&server, "google");
    let err = within(engine(&s).recognize(image()))
        .await
        .expect_err("refused");
    assert_eq!(err.reason, FailureReason::NotAnImage);
    assert!(!err.transient);
    assert_eq!(server.fake.seen("images:annotate").len(), 1);

    Fake::script(
        &server.fake.vision,
        vec![status(
            400,
            json!({"error": {"code": 400, "message": "Request payload size exceeds the limit: 41943040 bytes."}}),
        )],
    );
    let err = within(engine(&s).recognize(image()))
        .await
        .expect_err("too large");
    assert_eq!(err.reason, FailureReason::TooLarge);

    Fake::script(
        &server.fake.vision,
        vec![status(
            403,
            json!({"error": {"code": 403, "message": "API key not valid."}}),
        )],
    );
    let err = within(engine(&s).recognize(image()))
        .await
        .expect_err("bad key");
    assert_eq!(err.reason, FailureReason::EngineError);
    assert!(!err.transient);
    assert!(err.message.contains("API key not valid"), "{}", err.message);
}

/// An RSA key made for this test by the openssl CLI: (private PKCS#8 PEM, public PEM).
fn rsa_key(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("key.pem");
    let public = dir.join("pub.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key_s = key.to_str().expect("utf-8 path");
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_s,
    ]);
    run(&[
        "pkey",
        "-in",
        key_s,
        "-pubout",
        "-out",
        public.to_str().expect("utf-8 path"),
    ]);
    (
        std::fs::read_to_string(&key).expect("key"),
        std::fs::read_to_string(&public).expect("public key"),
    )
}

#[tokio::test]
async fn a_service_account_signs_an_assertion_and_reuses_the_token() {
    let server = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (private_pem, public_pem) = rsa_key(dir.path());
    let email = "vision@test-project.iam.gserviceaccount.com";
    let token_uri = format!("{}/token", server.url);
    *server.fake.token.lock().expect("lock") = Some(TokenCheck {
        public_pem,
        email: email.into(),
        audience: token_uri.clone(),
    });
    let key_file = dir.path().join("service-account.json");
    std::fs::write(
        &key_file,
        json!({"type": "service_account", "project_id": "test-project", "private_key_id": "key-1",
               "private_key": private_pem, "client_email": email, "token_uri": token_uri})
        .to_string(),
    )
    .expect("write key file");
    Fake::script(&server.fake.vision, vec![ok(vision_cat_930g())]);
    let s = Settings {
        google_vision_api_key: String::new(),
        google_application_credentials: key_file.to_string_lossy().into_owned(),
        ..settings(&server, "google")
    };
    let engine = engine(&s);
    for _ in 0..2 {
        let r = within(engine.recognize(image())).await.expect("recognised");
        assert_eq!(r.aggregate.brand.as_deref(), Some("Caterpillar"));
    }
    assert_eq!(server.fake.seen("/token").len(), 1, "the token is cached");
    let calls = server.fake.seen("images:annotate");
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.query, "", "no API key with a service account");
        assert_eq!(
            call.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer ya29.test-token")
        );
    }

    // A key the token endpoint does not know: the grant is refused, a clear engine error.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (other_pem, _) = rsa_key(&other);
    std::fs::write(
        &key_file,
        json!({"type": "service_account", "private_key_id": "key-1", "private_key": other_pem,
               "client_email": email, "token_uri": format!("{}/token", server.url)})
        .to_string(),
    )
    .expect("write key file");
    let err = within(by_name(&s).expect("engine").recognize(image()))
        .await
        .expect_err("refused grant");
    assert_eq!(err.reason, FailureReason::EngineError);
    assert!(
        err.message.contains("invalid_grant") || err.message.contains("HTTP 400"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn google_plus_gemini_refines_the_answer_and_reports_the_chain() {
    let server = server().await;
    Fake::script(&server.fake.vision, vec![ok(vision_cat_930g())]);
    Fake::script(
        &server.fake.gemini,
        vec![
            status(
                429,
                json!({"error": {"code": 429, "message": "Resource has been exhausted"}}),
            ),
            ok(gemini_sample()),
        ],
    );
    let engine = engine(&settings(&server, "google+gemini"));
    assert_eq!(engine.provider().name, "google+gemini");
    let r = within(engine.recognize(image())).await.expect("recognised");
    let a = &r.aggregate;
    assert_eq!(a.brand.as_deref(), Some("Caterpillar"));
    assert_eq!(a.machine_type.as_deref(), Some("Wheel Loader"));
    assert_eq!(a.model.as_deref(), Some("930G"));
    assert_eq!(a.weight, Some(14500.0));
    assert_eq!(a.year.as_deref(), Some("1997-2003"));
    assert_eq!(
        a.attachment.as_deref(),
        Some(
            &[
                "Bucket".to_owned(),
                "Forks".into(),
                "Material handling arm".into()
            ][..]
        )
    );
    assert_eq!(a.confidence, 0.95);
    assert!(a.is_confident);
    assert_eq!(a.type_confidence, None);
    assert!(
        a.type_source
            .as_deref()
            .is_some_and(|s| s.starts_with("Model number lookup"))
    );
    let provider = r.provider.expect("the chain reports its provider");
    assert_eq!(provider.name, "google+gemini");
    assert_eq!(provider.reasoning_name.as_deref(), Some("Gemini"));
    assert_eq!(
        provider.reasoning_model.as_deref(),
        Some("gemini-2.5-flash")
    );
    assert_eq!(provider.featureset.len(), 3);

    // The request: the original's shape, the key in a header, the vision findings in the prompt.
    let calls = server.fake.seen(":generateContent");
    assert_eq!(calls.len(), 2, "the 429 was retried");
    assert_eq!(
        calls[1].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        calls[1]
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok()),
        Some("gemini-key")
    );
    let body: Value = serde_json::from_str(&calls[1].body).expect("json");
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        body["generationConfig"]["responseSchema"]["required"],
        json!(["status"])
    );
    let prompt = body["contents"][0]["parts"][0]["text"]
        .as_str()
        .expect("prompt");
    assert!(
        prompt.contains("brand: Caterpillar\ntype: Wheel Loader\nmodel: 930G"),
        "{prompt}"
    );
    assert!(prompt.contains("930G"));
}

#[tokio::test]
async fn a_gemini_refusal_malformed_answer_or_outage_keeps_the_vision_answer() {
    let server = server().await;
    Fake::script(&server.fake.vision, vec![ok(vision_cat_930g())]);
    let vision_only = within(engine(&settings(&server, "google")).recognize(image()))
        .await
        .expect("recognised")
        .aggregate;
    let chain = engine(&settings(&server, "google+gemini"));
    for reply in [
        ok(gemini_text(
            r#"{"status":"refusal","reason":"cannot identify the machine"}"#,
        )),
        ok(gemini_text("I think it is a loader")),
        ok(json!({"promptFeedback": {"blockReason": "OTHER"}})),
        status(500, json!({"error": {"message": "backend error"}})),
    ] {
        Fake::script(&server.fake.gemini, vec![reply]);
        let r = within(chain.recognize(image()))
            .await
            .expect("still recognised");
        assert_eq!(r.aggregate, vision_only);
        let provider = r.provider.expect("provider");
        assert_eq!(provider.name, "google+gemini");
        assert_eq!(provider.reasoning_name, None);
        assert_eq!(provider.reasoning_model, None);
    }
}

#[tokio::test]
async fn engine_names_and_missing_credentials_are_refused_clearly() {
    let err = |s: &Settings| by_name(s).err().expect("refused").to_string();
    let base = Settings::default();
    let with = |engine: &str| Settings {
        recognition_engine: engine.into(),
        ..base.clone()
    };
    assert!(err(&with("google+magic")).contains("unknown enricher `magic`"));
    assert!(err(&with("vision")).contains("unknown recogniser `vision`"));
    assert!(err(&with("gemini")).contains("cannot come first"));
    let e = format!(
        "{:#}",
        by_name(&with("google")).err().expect("no credentials")
    );
    assert!(
        e.contains("GOOGLE_VISION_API_KEY") && e.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        by_name(&Settings {
            google_vision_api_key: "k".into(),
            ..with("google+gemini")
        })
        .err()
        .expect("no gemini key")
    );
    assert!(e.contains("GEMINI_API_KEY"), "{e}");
    let e = format!(
        "{:#}",
        by_name(&Settings {
            google_application_credentials: "/nonexistent/sa.json".into(),
            ..with("google")
        })
        .err()
        .expect("no key file")
    );
    assert!(e.contains("/nonexistent/sa.json"), "{e}");
    assert_eq!(
        by_name(&with("none")).expect("none").provider().name,
        "none"
    );
}
