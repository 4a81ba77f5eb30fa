//! Which Kafka topics go to which RabbitMQ exchanges, and which queues go to which topics.
//!
//! `BRIDGE_ROUTES` overrides the defaults: entries separated by `;`, each
//! `kafka:<topic> -> rabbit:<exchange>[/<routing key>]` or `rabbit:<queue> -> kafka:<topic>`.

use contracts::names::{Topics, exchanges, queues};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Kafka topic → RabbitMQ exchange (fanout: the routing key is usually empty).
    ToRabbit {
        topic: String,
        exchange: String,
        routing_key: String,
    },
    /// RabbitMQ queue → Kafka topic (key: the `x-partition-key` header).
    ToKafka { queue: String, topic: String },
}

impl Route {
    /// Label for logs and metrics, e.g. `tu.image.uploaded->tu.image.uploaded`.
    pub fn label(&self) -> String {
        match self {
            Route::ToRabbit {
                topic, exchange, ..
            } => format!("kafka:{topic}->rabbit:{exchange}"),
            Route::ToKafka { queue, topic } => format!("rabbit:{queue}->kafka:{topic}"),
        }
    }
}

/// The platform's four routes (target.md, Flows).
pub fn defaults(topics: &Topics) -> Vec<Route> {
    let to_rabbit = |topic: &str, exchange: &str| Route::ToRabbit {
        topic: topic.into(),
        exchange: exchange.into(),
        routing_key: String::new(),
    };
    vec![
        to_rabbit(&topics.topic_image_uploaded, exchanges::IMAGE_UPLOADED),
        to_rabbit(
            &topics.topic_recognition_completed,
            exchanges::RECOGNITION_COMPLETED,
        ),
        to_rabbit(
            &topics.topic_recognition_failed,
            exchanges::RECOGNITION_FAILED,
        ),
        Route::ToKafka {
            queue: queues::BRIDGE_RECOGNITION_REQUESTS.into(),
            topic: topics.topic_recognition_requested.clone(),
        },
    ]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("BRIDGE_ROUTES entry `{entry}`: {problem}")]
pub struct RouteError {
    entry: String,
    problem: &'static str,
}

/// Parse `BRIDGE_ROUTES`; empty → `defaults`.
pub fn parse(spec: &str, topics: &Topics) -> Result<Vec<Route>, RouteError> {
    let entries: Vec<&str> = spec
        .split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Ok(defaults(topics));
    }
    let mut routes = Vec::new();
    for entry in entries {
        let err = |problem| RouteError {
            entry: entry.to_owned(),
            problem,
        };
        let (from, to) = entry
            .split_once("->")
            .ok_or_else(|| err("expected `<from> -> <to>`"))?;
        let (from, to) = (from.trim(), to.trim());
        let valid = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        let route = match (from.split_once(':'), to.split_once(':')) {
            (Some(("kafka", topic)), Some(("rabbit", target))) => {
                let (exchange, routing_key) = target.split_once('/').unwrap_or((target, ""));
                if !valid(topic) || !valid(exchange) {
                    return Err(err("topic and exchange names are letters, digits, `._-`"));
                }
                Route::ToRabbit {
                    topic: topic.into(),
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                }
            }
            (Some(("rabbit", queue)), Some(("kafka", topic))) => {
                if !valid(queue) || !valid(topic) {
                    return Err(err("queue and topic names are letters, digits, `._-`"));
                }
                Route::ToKafka {
                    queue: queue.into(),
                    topic: topic.into(),
                }
            }
            _ => {
                return Err(err(
                    "routes go kafka:<topic> -> rabbit:<exchange> or rabbit:<queue> -> kafka:<topic>",
                ));
            }
        };
        if routes.contains(&route) {
            return Err(err("listed twice"));
        }
        routes.push(route);
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_gives_the_platform_routes() {
        let routes = parse("  ", &Topics::default()).expect("defaults");
        assert_eq!(routes.len(), 4);
        assert!(routes.contains(&Route::ToKafka {
            queue: "bridge.recognition-requests".into(),
            topic: "tu.recognition.requested".into()
        }));
        assert!(routes.contains(&Route::ToRabbit {
            topic: "tu.image.uploaded".into(),
            exchange: "tu.image.uploaded".into(),
            routing_key: String::new()
        }));
    }

    #[test]
    fn renamed_topics_follow_into_the_defaults() {
        let topics = Topics {
            topic_image_uploaded: "tu.images.uploaded".into(),
            ..Topics::default()
        };
        let routes = defaults(&topics);
        assert!(matches!(&routes[0], Route::ToRabbit { topic, exchange, .. }
            if topic == "tu.images.uploaded" && exchange == "tu.image.uploaded"));
    }

    #[test]
    fn spec_entries_parse_with_routing_keys() {
        let routes = parse(
            "kafka:a.b -> rabbit:ex/rk.1; rabbit:q-1 -> kafka:t_2",
            &Topics::default(),
        )
        .expect("parse");
        assert_eq!(
            routes,
            vec![
                Route::ToRabbit {
                    topic: "a.b".into(),
                    exchange: "ex".into(),
                    routing_key: "rk.1".into()
                },
                Route::ToKafka {
                    queue: "q-1".into(),
                    topic: "t_2".into()
                }
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry() {
        for bad in [
            "kafka:a",
            "kafka:a -> kafka:b",
            "rabbit:q -> rabbit:x",
            "kafka:a b -> rabbit:x",
            "kafka:a -> rabbit:x; kafka:a -> rabbit:x",
        ] {
            let e = parse(bad, &Topics::default()).expect_err(bad);
            assert!(e.to_string().contains("BRIDGE_ROUTES entry"), "{e}");
        }
    }
}
