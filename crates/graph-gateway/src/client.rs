//! A small GraphQL client for the gateway: POST for queries and mutations, a WebSocket
//! (`graphql-transport-ws` or legacy `graphql-ws`) for subscriptions. `trackunit analyze`,
//! the tests and the benches use it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the gateway at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the gateway answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// A GraphQL error: its message and `extensions.code`.
    #[error("{message} ({code})")]
    GraphQL { message: String, code: String },
    #[error("the WebSocket closed: {0}")]
    Closed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::GraphQL { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The first GraphQL error of a response, if any.
pub fn first_error(response: &Value) -> Option<ClientError> {
    let e = response.get("errors")?.get(0)?;
    Some(ClientError::GraphQL {
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        code: e
            .pointer("/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

/// Queries and mutations over HTTP.
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl HttpClient {
    /// `url` is the gateway's `/graphql`.
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            url: url.into(),
            token,
        }
    }

    /// The raw response (`data` and/or `errors`); HTTP errors without a GraphQL body are errors.
    pub async fn execute(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(&self.url)
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| ClientError::Connect {
            url: self.url.clone(),
            detail: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.get("data").is_some() || v.get("errors").is_some() => {
                if status >= 400 && v.get("data").is_none() {
                    return Err(first_error(&v).unwrap_or(ClientError::Http { status, body }));
                }
                Ok(v)
            }
            _ => Err(ClientError::Http { status, body }),
        }
    }

    /// `data`, or the first GraphQL error.
    pub async fn data(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let response = self.execute(query, variables).await?;
        if let Some(e) = first_error(&response) {
            return Err(e);
        }
        Ok(response.get("data").cloned().unwrap_or(Value::Null))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws` (the current protocol).
    TransportWs,
    /// `graphql-ws` (the legacy subscriptions-transport-ws protocol).
    LegacyWs,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        }
    }
}

/// What arrives on a subscription connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A result (`data` and/or `errors`) for subscription `id`.
    Next {
        id: String,
        payload: Value,
    },
    /// The server rejected or ended subscription `id` with errors.
    Error {
        id: String,
        errors: Value,
    },
    Complete {
        id: String,
    },
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct WsClient {
    socket: Socket,
    protocol: Protocol,
}

impl WsClient {
    /// Connect to `url` (`ws://…/graphql`), send `connection_init` with `init_payload` and wait
    /// for the ack. `upgrade_token` goes into the upgrade request's `Authorization` header.
    pub async fn connect(
        url: &str,
        protocol: Protocol,
        upgrade_token: Option<&str>,
        init_payload: Value,
    ) -> Result<Self, ClientError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Connect {
                url: url.into(),
                detail: e.to_string(),
            })?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(protocol.name()),
        );
        if let Some(token) = upgrade_token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            request.headers_mut().insert("authorization", v);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    let body = response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    let parsed = serde_json::from_str::<Value>(&body).ok();
                    parsed
                        .as_ref()
                        .and_then(first_error)
                        .unwrap_or(ClientError::Http {
                            status: response.status().as_u16(),
                            body,
                        })
                }
                other => ClientError::Connect {
                    url: url.into(),
                    detail: other.to_string(),
                },
            })?;
        let mut client = Self { socket, protocol };
        client
            .send(json!({"type": "connection_init", "payload": init_payload}))
            .await?;
        loop {
            let msg = client.read_json(Duration::from_secs(10)).await?;
            match msg.get("type").and_then(Value::as_str) {
                Some("connection_ack") => return Ok(client),
                Some("ka") | Some("ping") | Some("pong") => continue,
                Some("connection_error") => {
                    return Err(ClientError::Closed(msg["payload"].to_string()));
                }
                _ => return Err(ClientError::Protocol(msg.to_string())),
            }
        }
    }

    async fn send(&mut self, v: Value) -> Result<(), ClientError> {
        self.socket
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))
    }

    /// Start subscription `id`.
    pub async fn subscribe(
        &mut self,
        id: &str,
        query: &str,
        variables: Value,
    ) -> Result<(), ClientError> {
        let kind = match self.protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await
    }

    async fn read_json(&mut self, within: Duration) -> Result<Value, ClientError> {
        loop {
            let next = tokio::time::timeout(within, self.socket.next())
                .await
                .map_err(|_| ClientError::Timeout(within))?;
            match next {
                None => return Err(ClientError::Closed("end of stream".into())),
                Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t)
                        .map_err(|e| ClientError::Protocol(format!("{e}: {t}")));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame
                            .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_default(),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next subscription message (pings and keepalives are skipped).
    pub async fn next(&mut self, within: Duration) -> Result<Incoming, ClientError> {
        loop {
            let msg = self.read_json(within).await?;
            let id = msg
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            match msg.get("type").and_then(Value::as_str) {
                Some("next") | Some("data") => {
                    let payload = msg.get("payload").cloned().unwrap_or(Value::Null);
                    // A subscription refused by its resolver: errors and no data.
                    if payload.get("data").is_none_or(Value::is_null)
                        && let Some(errors) = payload.get("errors").filter(|e| e.is_array())
                    {
                        return Ok(Incoming::Error {
                            id,
                            errors: errors.clone(),
                        });
                    }
                    return Ok(Incoming::Next { id, payload });
                }
                Some("error") => {
                    let payload = msg.get("payload").cloned().unwrap_or(Value::Null);
                    // graphql-transport-ws sends the errors array; graphql-ws one error object.
                    let errors = if payload.is_array() {
                        payload
                    } else {
                        Value::Array(vec![payload])
                    };
                    return Ok(Incoming::Error { id, errors });
                }
                Some("complete") => return Ok(Incoming::Complete { id }),
                Some("ping") => {
                    self.send(json!({"type": "pong"})).await?;
                }
                _ => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
