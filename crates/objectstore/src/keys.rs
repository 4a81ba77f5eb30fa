//! Object keys. A key is built only from the server's clock, a fresh UUID and an extension chosen
//! from the allow-listed content type — never from a client's filename.

use chrono::{DateTime, Datelike, Utc};

/// Content types an upload may have, with the extension their keys get.
pub const ALLOWED_CONTENT_TYPES: &[(&str, &str)] = &[
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("image/webp", "webp"),
];

/// The allow-listed content type, normalised (`IMAGE/JPEG` → `image/jpeg`), or `None`.
pub fn allowed_content_type(content_type: &str) -> Option<&'static str> {
    let wanted = content_type.trim().to_ascii_lowercase();
    ALLOWED_CONTENT_TYPES
        .iter()
        .find(|(ct, _)| *ct == wanted)
        .map(|(ct, _)| *ct)
}

/// `images/yyyy/MM/dd/{uuid}.{ext}` for an allowed content type.
pub fn new_image_key(content_type: &str, now: DateTime<Utc>) -> Option<String> {
    let ct = allowed_content_type(content_type)?;
    let ext = ALLOWED_CONTENT_TYPES.iter().find(|(c, _)| *c == ct)?.1;
    Some(format!(
        "images/{:04}/{:02}/{:02}/{}.{ext}",
        now.year(),
        now.month(),
        now.day(),
        uuid::Uuid::new_v4()
    ))
}

/// Whether `key` has the exact shape of an image key (what the original's tests asserted:
/// `^images/\d{4}/\d{2}/\d{2}/[0-9a-fA-F-]{36}\.(png|jpg|jpeg|webp)$`).
pub fn is_image_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    let [images, y, m, d, file] = parts.as_slice() else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return false;
    };
    *images == "images"
        && digits(y, 4)
        && digits(m, 2)
        && digits(d, 2)
        && stem.len() == 36
        && stem.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && matches!(ext, "png" | "jpg" | "jpeg" | "webp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_original_shape_and_never_contain_input() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2025, 11, 2, 16, 5, 43)
            .single()
            .expect("date");
        let key = new_image_key("IMAGE/JPEG", now).expect("allowed");
        assert!(key.starts_with("images/2025/11/02/"), "{key}");
        assert!(key.ends_with(".jpg"));
        assert!(is_image_key(&key));
        assert_eq!(new_image_key("text/plain", now), None);
        assert!(
            new_image_key("image/png", now)
                .expect("png")
                .ends_with(".png")
        );
        assert!(
            new_image_key("image/webp", now)
                .expect("webp")
                .ends_with(".webp")
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [
            "",
            "images//bad.jpg",
            "images/2025/11/02/../../etc/passwd",
            "images/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.exe",
            "other/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg",
            "images/25/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg",
            "images/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg/x",
        ] {
            assert!(!is_image_key(bad), "{bad}");
        }
        assert!(is_image_key(
            "images/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpeg"
        ));
    }
}
