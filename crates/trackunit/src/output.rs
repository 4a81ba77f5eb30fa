//! Readable tables and lines for the terminal.

use serde_json::Value;

use crate::analyze::Outcome;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn confidence(a: &Value) -> String {
    a["confidence"]
        .as_f64()
        .map(|c| {
            let mark = if a["isConfident"].as_bool() == Some(true) {
                ""
            } else {
                " (unsure)"
            };
            format!("{:.0} %{mark}", c * 100.0)
        })
        .unwrap_or_else(|| "-".into())
}

/// `trackunit analyze`'s result table.
pub fn table(outcomes: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let a = o.aggregate.clone().unwrap_or(Value::Null);
            let result = match o.status {
                "completed" => o.provider.clone().unwrap_or_else(|| "completed".into()),
                _ => format!(
                    "{}: {}",
                    o.reason.as_deref().unwrap_or(o.status),
                    o.message.as_deref().unwrap_or("")
                ),
            };
            vec![
                o.file.clone(),
                s(&a["brand"]),
                s(&a["machineType"]),
                s(&a["model"]),
                confidence(&a),
                o.seconds.map_or("-".into(), |t| format!("{t:.1} s")),
                result,
            ]
        })
        .collect();
    render(
        &[
            "PHOTO",
            "BRAND",
            "TYPE",
            "MODEL",
            "CONFIDENCE",
            "TIME",
            "RESULT",
        ],
        &rows,
    )
}

/// `trackunit analyses`' table.
pub fn analyses_table(nodes: &[Value]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let a = &n["result"]["aggregate"];
            vec![
                s(&n["requestedAt"]),
                s(&n["status"]),
                s(&a["brand"]),
                s(&a["machineType"]),
                s(&a["model"]),
                if a.is_null() {
                    "-".into()
                } else {
                    confidence(a)
                },
                s(&n["reason"]),
                s(&n["id"]),
            ]
        })
        .collect();
    render(
        &[
            "REQUESTED",
            "STATUS",
            "BRAND",
            "TYPE",
            "MODEL",
            "CONFIDENCE",
            "REASON",
            "ANALYSIS",
        ],
        &rows,
    )
}

/// One line of `trackunit watch`.
pub fn event_line(kind: &str, e: &Value) -> String {
    match kind {
        "completed" => {
            let a = &e["recognitionPayload"]["aggregate"];
            format!(
                "completed  {}  {}  {}",
                s(&e["analysisId"]),
                if a["name"].is_string() {
                    s(&a["name"])
                } else {
                    "nothing recognised".into()
                },
                if a.is_null() {
                    String::new()
                } else {
                    confidence(a)
                }
            )
        }
        "failed" => format!(
            "failed     {}  {}: {}",
            s(&e["analysisId"]),
            s(&e["reason"]),
            s(&e["message"])
        ),
        _ => format!("started    {}  {}", s(&e["analysisId"]), s(&e["objectKey"])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_what_is_missing() {
        let out = analyses_table(&[
            json!({"requestedAt": "2026-12-07T10:00:00Z", "status": "COMPLETED", "id": "a1",
            "result": {"aggregate": {"brand": "Volvo", "machineType": "Excavator", "model": "EC220E", "confidence": 0.93, "isConfident": true}}}),
            json!({"requestedAt": "2026-12-07T10:01:00Z", "status": "FAILED", "reason": "not_an_image", "id": "a2", "result": null}),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("Volvo") && lines[2].contains("93 %"));
        assert!(lines[3].contains("not_an_image"));
        assert_eq!(lines[0].find("STATUS"), lines[2].find("COMPLETED"));
    }
}
