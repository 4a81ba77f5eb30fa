use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Storage settings (flattened into service configs: `S3_ENDPOINT`, `S3_BUCKET`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Config {
    /// Where services reach the store, e.g. `http://minio.storage:9000`.
    pub s3_endpoint: String,
    /// Where clients reach it, if different (it is signed into presigned URLs); empty = `s3_endpoint`.
    pub s3_public_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// Create the bucket at start when it is missing.
    pub s3_create_bucket: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            s3_endpoint: "http://127.0.0.1:8086".into(),
            s3_public_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: "trackunit-images".into(),
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            s3_create_bucket: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object `{key}` does not exist")]
    NotFound { key: String },
    #[error("object `{key}` has {size} bytes, more than the {max} allowed")]
    TooLarge { key: String, size: u64, max: u64 },
    #[error("object store refused the request: {0}")]
    Refused(String),
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("object store configuration: {0}")]
    Config(String),
}

/// A presigned request: the URL, the method, and the headers the caller must send as signed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Presigned {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub size: u64,
    pub content_type: Option<String>,
    pub etag: Option<String>,
}

/// The S3 client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    /// Signs URLs for the public endpoint (same credentials).
    presigner: aws_sdk_s3::Client,
    bucket: String,
}

fn sdk_client(config: &S3Config, endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        &config.s3_access_key,
        &config.s3_secret_key,
        None,
        None,
        "trackunit-config",
    );
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.s3_region.clone()))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        // MinIO, Garage and the embedded store are addressed by path, not by bucket subdomain.
        .force_path_style(true)
        // Newer SDKs add CRC checksums to every upload; S3-compatible stores and presigned URLs
        // handed to other clients do not all accept them.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn describe<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    match &e {
        SdkError::ServiceError(s)
            if matches!(
                s.err().code(),
                Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
            ) =>
        {
            StoreError::Refused(describe(&e))
        }
        _ => StoreError::Unavailable(describe(&e)),
    }
}

impl ObjectStore {
    pub fn new(config: &S3Config) -> Result<Self, StoreError> {
        if config.s3_access_key.is_empty() || config.s3_secret_key.is_empty() {
            return Err(StoreError::Config(
                "S3_ACCESS_KEY and S3_SECRET_KEY must be set".into(),
            ));
        }
        if config.s3_bucket.is_empty() {
            return Err(StoreError::Config("S3_BUCKET must be set".into()));
        }
        let public = if config.s3_public_endpoint.trim().is_empty() {
            &config.s3_endpoint
        } else {
            &config.s3_public_endpoint
        };
        Ok(Self {
            client: sdk_client(config, &config.s3_endpoint),
            presigner: sdk_client(config, public),
            bucket: config.s3_bucket.clone(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket if it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created bucket");
                Ok(())
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// The bucket answers (readiness).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// A URL the client PUTs the object to. `Content-Type` is signed: a different one is refused.
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        ttl: Duration,
    ) -> Result<Presigned, StoreError> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StoreError::Config(e.to_string()))?;
        let req = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .presigned(config)
            .await
            .map_err(classify)?;
        Ok(Presigned {
            url: req.uri().to_owned(),
            method: req.method().to_owned(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            expires_at: Utc::now() + ttl,
        })
    }

    /// A URL to GET the object without credentials until it expires.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Presigned, StoreError> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StoreError::Config(e.to_string()))?;
        let req = self
            .presigner
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(classify)?;
        Ok(Presigned {
            url: req.uri().to_owned(),
            method: req.method().to_owned(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            expires_at: Utc::now() + ttl,
        })
    }

    /// Size and content type, or `None` if there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
                etag: out.e_tag().map(str::to_owned),
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    /// The object's bytes and content type, refusing (without reading further) anything larger
    /// than `max_bytes`.
    pub async fn get_capped(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<(Bytes, Option<String>), StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(StoreError::NotFound { key: key.into() });
            }
            Err(e) => return Err(classify(e)),
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.into(),
                size: declared,
                max: max_bytes,
            });
        }
        let content_type = out.content_type().map(str::to_owned);
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(declared.min(max_bytes) as usize);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading `{key}`: {e}")))?
        {
            if (buf.len() + chunk.len()) as u64 > max_bytes {
                return Err(StoreError::TooLarge {
                    key: key.into(),
                    size: (buf.len() + chunk.len()) as u64,
                    max: max_bytes,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok((buf.freeze(), content_type))
    }

    /// Store an object directly (with the service's credentials).
    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}
