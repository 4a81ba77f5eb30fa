//! Config from environment variables (via the `config` crate) over defaults that run the
//! embedded (one-process) mode.
//!
//! A field `rabbit_url` is read from `RABBIT_URL`. With a prefix (as `trackunit up` uses for each
//! service it hosts), `INGESTION_HTTP_ADDR` overrides `HTTP_ADDR` for that service only.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] config::ConfigError);

/// Load `T`: its `Default`, then env vars, then prefixed env vars. Values are parsed to the
/// field's type (a password of digits stays a string; `HTTP_PORT=eighty` is an error naming it).
///
/// Config structs are flat and loaded one by one (a service's `Config` composes several); serde's
/// `flatten` would buffer values and lose this type-directed parsing.
pub fn from_env<T>(prefix: Option<&str>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    from_env_over(prefix, &T::default())
}

/// Like [`from_env`], with `base` in place of `T::default()` (how `trackunit up` points services
/// at its embedded parts while env vars still win).
pub fn from_env_over<T>(prefix: Option<&str>, base: &T) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    Ok(builder(prefix, base)?.build()?.try_deserialize()?)
}

fn builder<T: Serialize>(
    prefix: Option<&str>,
    base: &T,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    let mut b = config::Config::builder()
        .add_source(config::Config::try_from(base)?)
        .add_source(config::Environment::default());
    if let Some(prefix) = prefix {
        b = b.add_source(
            config::Environment::with_prefix(&prefix.to_uppercase()).prefix_separator("_"),
        );
    }
    Ok(b)
}

/// Mask credentials in a URL for logs: `amqp://user:secret@host` → `amqp://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Sample {
        rt_sample_port: u16,
        rt_sample_pass: String,
        rt_sample_flag: bool,
    }

    #[test]
    fn env_overrides_defaults_and_prefix_overrides_env() {
        // SAFETY: variable names unique to this test; no other test reads them.
        unsafe {
            std::env::set_var("RT_SAMPLE_PORT", "8081");
            std::env::set_var("RT_SAMPLE_PASS", "12345");
            std::env::set_var("RT_SAMPLE_FLAG", "true");
            std::env::set_var("SVCX_RT_SAMPLE_PORT", "9090");
        }
        let plain: Sample = from_env(None).expect("config");
        assert_eq!(plain.rt_sample_port, 8081);
        assert_eq!(plain.rt_sample_pass, "12345", "digits stay a string");
        assert!(plain.rt_sample_flag);
        let prefixed: Sample = from_env(Some("svcx")).expect("config");
        assert_eq!(prefixed.rt_sample_port, 9090);
    }

    #[test]
    fn bad_values_name_the_variable() {
        unsafe { std::env::set_var("RT_BAD_PORT", "eighty") };
        #[derive(Debug, Default, Serialize, serde::Deserialize)]
        #[serde(default)]
        struct Bad {
            rt_bad_port: u16,
        }
        let err = from_env::<Bad>(None).expect_err("not a number").to_string();
        assert!(
            err.contains("rt_bad_port") || err.contains("RT_BAD_PORT"),
            "{err}"
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("http://h:1"), "http://h:1");
    }
}
