//! The caller's identity on internal routes: the gateway validated the user's JWT and passes its
//! subject in `x-owner`. Only meaningful behind [`crate::internal::require`].

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;

pub const HEADER: &str = "x-owner";

/// The subject the request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(pub String);

impl Owner {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Option<Owner>`: absent header → `None` (routes that also serve operators); a present but
/// invalid one is still refused.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Owner {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.headers.get(HEADER).is_none() {
            return Ok(None);
        }
        <Owner as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Owner {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 255);
        match value {
            Some(v) => Ok(Owner(v.to_owned())),
            None => Err(runtime::http::problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Missing or invalid x-owner (the caller's subject)",
            )),
        }
    }
}
