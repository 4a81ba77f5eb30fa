//! tu-media-access-service over HTTP, against the embedded store and against Garage: the
//! original's contract (422 body, `{url, expiresAt}`, 300 s), plus what it lacked (internal token
//! enforced, 404 for a missing object).

use bytes::Bytes;
use objectstore::ObjectStore;
use serde_json::{Value, json};
use tu_media_access_service::{Config, Deps, GET_URL_PATH, run};

const TOKEN: &str = "media-test-token";

struct Harness {
    base: String,
    store: ObjectStore,
    http: reqwest::Client,
    shutdown: runtime::Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _guards: Vec<Box<dyn std::any::Any + Send>>,
}

async fn start(production: bool) -> Harness {
    let mut guards: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let s3 = if production {
        testkit::garage_s3()
    } else {
        let store = testkit::EmbeddedStore::start(1 << 20).await;
        let config = store.config.clone();
        guards.push(Box::new(store));
        config
    };
    let mut config = Config::default();
    config.settings.http_addr = format!("127.0.0.1:{}", testkit::free_port());
    config.settings.internal_auth_api_key = TOKEN.into();
    config.s3 = s3;
    let store = ObjectStore::new(&config.s3).expect("store");
    let deps = Deps::connect(&config).expect("deps");
    let shutdown = runtime::Shutdown::new();
    let base = format!("http://{}", config.settings.http_addr);
    let task = tokio::spawn(run(config, deps, shutdown.clone()));
    let http = reqwest::Client::new();
    testkit::wait_ready(&http, &base).await;
    Harness {
        base,
        store,
        http,
        shutdown,
        task,
        _guards: guards,
    }
}

impl Harness {
    async fn get_url(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{GET_URL_PATH}", self.base))
            .header("X-Correlation-ID", "media-corr-1")
            .json(&body);
        if let Some(t) = token {
            req = req.header("x-internal-token", t);
        }
        let r = req.send().await.expect("request");
        assert_eq!(
            r.headers()
                .get("x-correlation-id")
                .and_then(|v| v.to_str().ok()),
            Some("media-corr-1"),
            "correlation id echoed"
        );
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task
            .await
            .expect("join")
            .expect("service stopped cleanly");
    }
}

async fn contract(production: bool) {
    let h = start(production).await;
    let key = format!("images/2025/11/06/{}.jpg", uuid::Uuid::new_v4());
    let body = Bytes::from_static(b"\xFF\xD8\xFF\xE0 a small jpeg-ish body");
    h.store
        .put(&key, body.clone(), "image/jpeg")
        .await
        .expect("put");

    // Token: missing and wrong are refused before anything else.
    let (status, problem) = h.get_url(None, json!({"objectKey": key})).await;
    assert_eq!(status, 401);
    assert_eq!(problem["detail"], "Missing internal token");
    let (status, problem) = h
        .get_url(Some("media-test-tokeX"), json!({"objectKey": key}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(problem["detail"], "Invalid internal token");

    // Empty, blank or missing key: the original's 422 body.
    for bad in [
        json!({"objectKey": ""}),
        json!({"objectKey": "  "}),
        json!({}),
    ] {
        let (status, errors) = h.get_url(Some(TOKEN), bad).await;
        assert_eq!(status, 422);
        assert_eq!(errors, json!({"errors": {"objectKey": ["Required"]}}));
    }

    // A key that does not exist: 404 (the original signed it anyway).
    let missing = "images/2025/11/06/does-not-exist.jpg";
    let (status, body404) = h.get_url(Some(TOKEN), json!({"objectKey": missing})).await;
    assert_eq!(status, 404);
    assert_eq!(body404["objectKey"], missing);

    // An existing object: a URL that fetches exactly the stored bytes, valid for 300 s.
    let before = chrono::Utc::now();
    let (status, ok) = h.get_url(Some(TOKEN), json!({"ObjectKey": key})).await;
    assert_eq!(status, 200, "{ok}");
    let expires: chrono::DateTime<chrono::Utc> = ok["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("RFC 3339");
    let ttl = (expires - before).num_seconds();
    assert!((295..=305).contains(&ttl), "ttl {ttl}");
    let url = ok["url"].as_str().expect("url");
    let fetched = h.http.get(url).send().await.expect("GET url");
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.expect("bytes"), body);
    // The URL is bound to its key: another key with the same signature is refused.
    let tampered = url.replace(".jpg", ".png");
    let refused = h.http.get(&tampered).send().await.expect("GET");
    assert!(
        refused.status().is_client_error(),
        "tampered URL got {}",
        refused.status()
    );

    h.store.delete(&key).await.expect("cleanup");
    h.stop().await;
}

#[tokio::test]
async fn get_url_contract_on_the_embedded_store() {
    contract(false).await;
}

#[tokio::test]
async fn get_url_contract_on_garage() {
    contract(true).await;
}

#[tokio::test]
async fn refuses_to_start_without_an_internal_token() {
    let mut config = Config::default();
    config.settings.http_addr = format!("127.0.0.1:{}", testkit::free_port());
    config.s3.s3_access_key = "k".into();
    config.s3.s3_secret_key = "s".into();
    let deps = Deps::connect(&config).expect("deps");
    let err = run(config, deps, runtime::Shutdown::new())
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("INTERNAL_AUTH_API_KEY"), "{err}");
}
