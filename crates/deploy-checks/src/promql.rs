//! The metric names a PromQL expression reads (for checking dashboards and alert rules against
//! what the services export).

use std::collections::BTreeSet;

use regex::Regex;

/// PromQL words that are not metric names (functions are recognised by the `(` after them).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
];

/// Metric names in `expr`: identifiers that are not functions, keywords, label names inside
/// `{…}`, grouping labels in `by (…)`/`on (…)`…, durations in `[…]` or strings.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).expect("regex");
    let mut s = strings.replace_all(expr, "\"\"").into_owned();
    let braces = Regex::new(r"\{[^{}]*\}").expect("regex");
    s = braces.replace_all(&s, " ").into_owned();
    let brackets = Regex::new(r"\[[^\[\]]*\]").expect("regex");
    s = brackets.replace_all(&s, " ").into_owned();
    let grouping = Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
        .expect("regex");
    s = grouping.replace_all(&s, " ").into_owned();
    // Grafana variables ($__rate_interval, ${x}) are not metrics.
    let vars = Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").expect("regex");
    s = vars.replace_all(&s, " ").into_owned();
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");
    let mut out = BTreeSet::new();
    for m in ident.find_iter(&s) {
        let word = m.as_str();
        let before = &s[..m.start()];
        let after = s[m.end()..].trim_start();
        if after.starts_with('(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue;
        }
        // A number's exponent or unit (1e3, 5m) is not an identifier start.
        if before
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        {
            continue;
        }
        out.insert(word.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_the_rest_ignored() {
        let e = r#"histogram_quantile(0.99, sum by (le, route) (rate(bridge_forward_seconds_bucket{route=~"kafka.*"}[5m])))
            / on (route) group_left sum(rate(bridge_forwarded_total[$__rate_interval])) > 1e3 or vector(0)"#;
        assert_eq!(
            metric_names(e),
            BTreeSet::from([
                "bridge_forward_seconds_bucket".to_owned(),
                "bridge_forwarded_total".to_owned()
            ])
        );
        assert_eq!(
            metric_names("increase(x_total[1h] offset 5m) > 0"),
            BTreeSet::from(["x_total".to_owned()])
        );
    }
}
