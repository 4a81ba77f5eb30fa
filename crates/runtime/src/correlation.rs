//! Correlation ids: taken from `X-Correlation-ID` when the caller sends a sane one, generated
//! otherwise, echoed in responses and carried in `x-correlation-id` on every message.

pub const HEADER: &str = "x-correlation-id";

/// The request's correlation id (an axum request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new id: 32 lower-case hex digits, like the original's `Guid.ToString("N")`.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Accept a caller's id only if it is short and plain, so it is safe in logs and headers.
pub fn sanitize(value: &str) -> Option<String> {
    let v = value.trim();
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_pass_and_others_are_replaced() {
        assert_eq!(
            sanitize(" 7c9f10a6c21f45e4 ").as_deref(),
            Some("7c9f10a6c21f45e4")
        );
        assert_eq!(sanitize("abc-DEF_1.2:3").as_deref(), Some("abc-DEF_1.2:3"));
        assert_eq!(sanitize(""), None);
        assert_eq!(sanitize("a\nb"), None);
        assert_eq!(sanitize("<script>"), None);
        assert_eq!(sanitize(&"x".repeat(129)), None);
        assert_eq!(new_id().len(), 32);
    }
}
