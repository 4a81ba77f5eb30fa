//! The embedded S3-compatible store of the one-process mode: objects as files under a directory,
//! served over HTTP by s3s (SigV4 on headers and presigned URLs, with expiry) and s3s-fs (the
//! file-system backend). Requests larger than `max_object_bytes` get 413 before any byte is written.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;

#[derive(Debug, Clone)]
pub struct EmbeddedS3Options {
    /// Directory holding buckets (sub-directories) and objects (files).
    pub root: PathBuf,
    /// Listen address, e.g. `127.0.0.1:8086` (`:0` picks a port).
    pub addr: String,
    pub access_key: String,
    pub secret_key: String,
    /// Largest object accepted; bigger uploads are refused with 413.
    pub max_object_bytes: usize,
    /// Buckets to create at start.
    pub buckets: Vec<String>,
}

/// A running embedded store.
pub struct EmbeddedS3 {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl EmbeddedS3 {
    /// Bind and serve until `shutdown`.
    pub async fn start(
        options: EmbeddedS3Options,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&options.root)?;
        for bucket in &options.buckets {
            std::fs::create_dir_all(options.root.join(bucket))?;
        }
        let fs = s3s_fs::FileSystem::new(&options.root).map_err(|e| {
            std::io::Error::other(format!(
                "embedded store at {}: {e:?}",
                options.root.display()
            ))
        })?;
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(
                options.access_key.clone(),
                options.secret_key.clone(),
            ));
            b.build()
        };
        let app = Router::new()
            .fallback(move |req: Request| {
                let service = service.clone();
                async move {
                    match service.call(req.map(s3s::Body::http_body_unsync)).await {
                        Ok(resp) => resp.map(axum::body::Body::new).into_response(),
                        Err(e) => {
                            tracing::warn!(error = ?e, "embedded S3 request failed");
                            (
                                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                "embedded S3 failure",
                            )
                                .into_response()
                        }
                    }
                }
            })
            .layer(RequestBodyLimitLayer::new(options.max_object_bytes));
        let listener = tokio::net::TcpListener::bind(&options.addr)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("embedded S3 cannot listen on {}: {e}", options.addr),
                )
            })?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Without TCP_NODELAY a small response waits for the client's delayed ACK (~40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        tracing::info!(%addr, root = %options.root.display(), "embedded S3 store listening");
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Wait until the server has stopped (after the shutdown token fired).
    pub async fn stopped(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

impl std::fmt::Debug for EmbeddedS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedS3")
            .field("addr", &self.addr)
            .finish()
    }
}
