//! One suite, two backends: the embedded store (`trackunit up`) and real Garage. Presigned PUTs
//! accept exactly what was signed; tampering, a wrong content type and expiry are refused; reads
//! are capped.

use std::time::Duration;

use bytes::Bytes;
use objectstore::{ObjectStore, Presigned, S3Config, StoreError, keys};

const MAX: usize = 64 * 1024;

struct Backend {
    store: ObjectStore,
    config: S3Config,
    _embedded: Option<testkit::EmbeddedStore>,
}

async fn backend(config: S3Config, embedded: Option<testkit::EmbeddedStore>) -> Backend {
    let store = ObjectStore::new(&config).expect("client");
    store.ensure_bucket().await.expect("bucket");
    Backend {
        store,
        config,
        _embedded: embedded,
    }
}

async fn embedded() -> Backend {
    let e = testkit::EmbeddedStore::start(MAX).await;
    backend(e.config.clone(), Some(e)).await
}

async fn garage() -> Backend {
    backend(testkit::garage_s3(), None).await
}

fn key(ct: &str) -> String {
    keys::new_image_key(ct, chrono::Utc::now()).expect("key")
}

async fn put_via(p: &Presigned, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = reqwest::Client::new().put(&p.url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.expect("send")
}

/// Refused as a client error (400 or 403), never stored.
fn refused(status: reqwest::StatusCode) -> bool {
    status == 400 || status == 403
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..len.saturating_sub(4)).map(|i| (i % 251) as u8));
    v
}

async fn presigned_put_then_head_get_and_presigned_get(b: Backend) {
    let k = key("image/jpeg");
    let body = jpeg(5000);
    let p = b
        .store
        .presign_put(&k, "image/jpeg", Duration::from_secs(300))
        .await
        .expect("presign");
    assert_eq!(p.method, "PUT");
    assert!(
        p.headers
            .iter()
            .any(|(h, v)| h.eq_ignore_ascii_case("content-type") && v == "image/jpeg")
    );
    let left = p.expires_at - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(290) && left <= chrono::Duration::seconds(300));
    let r = put_via(&p, Some("image/jpeg"), body.clone()).await;
    assert!(
        r.status().is_success(),
        "PUT: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );

    let info = b.store.head(&k).await.expect("head").expect("exists");
    assert_eq!(info.size, 5000);
    assert_eq!(info.content_type.as_deref(), Some("image/jpeg"));
    let (bytes, ct) = b.store.get_capped(&k, 10_000).await.expect("get");
    assert_eq!(bytes, Bytes::from(body.clone()));
    assert_eq!(ct.as_deref(), Some("image/jpeg"));

    let g = b
        .store
        .presign_get(&k, Duration::from_secs(300))
        .await
        .expect("presign get");
    let r = reqwest::get(&g.url).await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("bytes"), Bytes::from(body));

    b.store.delete(&k).await.expect("delete");
    assert!(b.store.head(&k).await.expect("head").is_none());
}

async fn wrong_content_type_tampering_and_other_keys_are_refused(b: Backend) {
    let k = key("image/jpeg");
    let p = b
        .store
        .presign_put(&k, "image/jpeg", Duration::from_secs(300))
        .await
        .expect("presign");

    let r = put_via(&p, Some("image/png"), jpeg(100)).await;
    assert_eq!(r.status(), 403, "another content type than signed");
    let r = put_via(&p, None, jpeg(100)).await;
    // AWS and the embedded store answer 403; Garage answers 400 for a missing signed header.
    assert!(
        refused(r.status()),
        "no content type at all: {}",
        r.status()
    );

    let sig_at =
        p.url.find("X-Amz-Signature=").expect("signature param") + "X-Amz-Signature=".len();
    let mut tampered = p.url.clone();
    let c = tampered.as_bytes()[sig_at];
    let flipped = if c == b'0' { "1" } else { "0" };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    let r = put_via(
        &Presigned {
            url: tampered,
            ..p.clone()
        },
        Some("image/jpeg"),
        jpeg(100),
    )
    .await;
    assert_eq!(r.status(), 403, "tampered signature");

    let other = key("image/jpeg");
    let moved = p.url.replace(&k, &other);
    let r = put_via(
        &Presigned {
            url: moved,
            ..p.clone()
        },
        Some("image/jpeg"),
        jpeg(100),
    )
    .await;
    assert_eq!(r.status(), 403, "the signature is for one key only");

    assert!(
        b.store.head(&k).await.expect("head").is_none(),
        "nothing was stored"
    );
    assert!(b.store.head(&other).await.expect("head").is_none());
}

async fn expired_urls_are_refused(b: Backend) {
    let k = key("image/png");
    let p = b
        .store
        .presign_put(&k, "image/png", Duration::from_secs(1))
        .await
        .expect("presign");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = put_via(&p, Some("image/png"), vec![0x89, b'P', b'N', b'G']).await;
    // AWS and the embedded store answer 403 AccessDenied; Garage answers 400.
    assert!(refused(r.status()), "expired: {}", r.status());
    assert!(b.store.head(&k).await.expect("head").is_none());
}

async fn reads_are_capped_and_missing_objects_are_not_found(b: Backend) {
    let k = key("image/webp");
    b.store
        .put(&k, Bytes::from(vec![7u8; 3000]), "image/webp")
        .await
        .expect("put");
    match b.store.get_capped(&k, 1000).await {
        Err(StoreError::TooLarge { size, max, .. }) => assert_eq!((size, max), (3000, 1000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let missing = key("image/webp");
    assert!(b.store.head(&missing).await.expect("head").is_none());
    assert!(matches!(
        b.store.get_capped(&missing, 1000).await,
        Err(StoreError::NotFound { .. })
    ));
    b.store.delete(&k).await.expect("delete");
}

async fn presigned_urls_use_the_public_endpoint(b: Backend) {
    let config = S3Config {
        s3_public_endpoint: "https://uploads.example.test".into(),
        ..b.config.clone()
    };
    let store = ObjectStore::new(&config).expect("client");
    let p = store
        .presign_put(&key("image/jpeg"), "image/jpeg", Duration::from_secs(60))
        .await
        .expect("presign");
    assert!(
        p.url
            .starts_with("https://uploads.example.test/trackunit-images/images/"),
        "{}",
        p.url
    );
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn presigned_put_then_head_get_and_presigned_get() {
                super::presigned_put_then_head_get_and_presigned_get(super::$backend().await).await;
            }
            #[tokio::test]
            async fn wrong_content_type_tampering_and_other_keys_are_refused() {
                super::wrong_content_type_tampering_and_other_keys_are_refused(
                    super::$backend().await,
                )
                .await;
            }
            #[tokio::test]
            async fn expired_urls_are_refused() {
                super::expired_urls_are_refused(super::$backend().await).await;
            }
            #[tokio::test]
            async fn reads_are_capped_and_missing_objects_are_not_found() {
                super::reads_are_capped_and_missing_objects_are_not_found(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn presigned_urls_use_the_public_endpoint() {
                super::presigned_urls_use_the_public_endpoint(super::$backend().await).await;
            }
        }
    };
}

suite!(embedded);
suite!(garage);

/// Only the embedded store can refuse an oversized presigned PUT itself; S3 proper (Garage, AWS)
/// cannot limit a presigned PUT's size, so tu-ingestion-service enforces the limit at confirm.
#[tokio::test]
async fn embedded_refuses_objects_over_the_limit() {
    let b = embedded().await;
    let k = key("image/jpeg");
    let p = b
        .store
        .presign_put(&k, "image/jpeg", Duration::from_secs(60))
        .await
        .expect("presign");
    let r = put_via(&p, Some("image/jpeg"), jpeg(MAX + 1)).await;
    assert_eq!(r.status(), 413);
    assert!(b.store.head(&k).await.expect("head").is_none());
    let r = put_via(&p, Some("image/jpeg"), jpeg(MAX)).await;
    assert!(
        r.status().is_success(),
        "exactly the limit is fine: {}",
        r.status()
    );
}

#[tokio::test]
async fn embedded_creates_missing_buckets_and_refuses_unknown_keys() {
    let b = embedded().await;
    let config = S3Config {
        s3_bucket: "another-bucket".into(),
        ..b.config.clone()
    };
    let other = ObjectStore::new(&config).expect("client");
    other.ensure_bucket().await.expect("create");
    other.check().await.expect("exists now");

    let wrong = S3Config {
        s3_secret_key: "not-the-secret".into(),
        ..b.config.clone()
    };
    let err = ObjectStore::new(&wrong)
        .expect("client")
        .check()
        .await
        .expect_err("refused");
    assert!(
        matches!(err, StoreError::Refused(_) | StoreError::Unavailable(_)),
        "{err}"
    );
}

#[test]
fn missing_credentials_are_a_config_error() {
    let err = ObjectStore::new(&S3Config::default()).expect_err("no credentials");
    assert!(err.to_string().contains("S3_ACCESS_KEY"), "{err}");
}
