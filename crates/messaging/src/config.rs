//! Which brokers a service talks to, from env. Empty means the in-process broker (the embedded
//! one-process mode); production sets `KAFKA_BROKERS` and `RABBIT_URL`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::kafka::{KafkaLog, KafkaOptions};
use crate::memory::InProcessBroker;
use crate::rabbit::{RabbitBroker, RabbitOptions};
use crate::{Error, EventLog, MessageBroker, Result};

/// Broker settings shared by every service (flattened into each service's config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessagingConfig {
    /// `host:port[,host:port]` of a Kafka-API broker; empty → in-process.
    pub kafka_brokers: String,
    /// Extra librdkafka settings, `key=value;key=value` (e.g. SASL).
    pub kafka_options: String,
    /// Static membership id of this process' Kafka consumers (`group.instance.id`, one per group):
    /// empty → the host name (a pod's name), so a restarted container takes its partitions back
    /// at once instead of waiting for the group to notice the dead member; `none` → dynamic
    /// membership. Two replicas must never share one (the broker fences the older one).
    pub kafka_group_instance_id: String,
    /// `amqp://user:pass@host:5672/vhost`; empty → in-process (or built from the RABBIT_* below).
    pub rabbit_url: String,
    /// The original's variables, still honoured: RABBIT_HOST, RABBIT_PORT, RABBIT_USER, RABBIT_PASS.
    pub rabbit_host: String,
    pub rabbit_port: u16,
    pub rabbit_user: String,
    pub rabbit_pass: String,
    pub rabbit_vhost: String,
}

impl MessagingConfig {
    /// The AMQP URL, from `RABBIT_URL` or the original's `RABBIT_HOST`/… variables.
    pub fn amqp_url(&self) -> Option<String> {
        if !self.rabbit_url.trim().is_empty() {
            return Some(self.rabbit_url.trim().to_owned());
        }
        if self.rabbit_host.trim().is_empty() {
            return None;
        }
        let port = if self.rabbit_port == 0 {
            5672
        } else {
            self.rabbit_port
        };
        let user = if self.rabbit_user.is_empty() {
            "guest"
        } else {
            &self.rabbit_user
        };
        let vhost = if self.rabbit_vhost.is_empty() {
            "%2f".to_owned()
        } else {
            self.rabbit_vhost.replace('/', "%2f")
        };
        Some(format!(
            "amqp://{}:{}@{}:{port}/{vhost}",
            user, self.rabbit_pass, self.rabbit_host
        ))
    }

    fn kafka_extra(&self) -> Result<Vec<(String, String)>> {
        self.kafka_options
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| Error::Invalid {
                        backend: "kafka",
                        detail: format!("KAFKA_OPTIONS entry `{kv}` is not key=value"),
                    })
            })
            .collect()
    }

    /// The `group.instance.id` for this process' consumers, if static membership is on.
    pub fn group_instance_id(&self) -> Option<String> {
        match self.kafka_group_instance_id.trim() {
            "none" => None,
            "" => std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
            id => Some(id.to_owned()),
        }
    }

    /// Subscribe options for a service consumer: static membership as configured.
    pub fn subscribe_options(&self) -> crate::log::SubscribeOptions {
        crate::log::SubscribeOptions {
            instance_id: self.group_instance_id(),
            ..crate::log::SubscribeOptions::default()
        }
    }

    /// The Kafka-style log: real Kafka if configured, else `in_process`.
    pub fn event_log(
        &self,
        client_id: &str,
        in_process: &InProcessBroker,
    ) -> Result<Arc<dyn EventLog>> {
        if self.kafka_brokers.trim().is_empty() {
            return Ok(Arc::new(in_process.clone()));
        }
        let mut options = KafkaOptions::new(self.kafka_brokers.trim(), client_id);
        options.extra = self.kafka_extra()?;
        Ok(Arc::new(KafkaLog::new(options)?))
    }

    /// The RabbitMQ-style broker: real RabbitMQ if configured, else `in_process`.
    pub fn message_broker(
        &self,
        connection_name: &str,
        in_process: &InProcessBroker,
    ) -> Result<Arc<dyn MessageBroker>> {
        match self.amqp_url() {
            None => Ok(Arc::new(in_process.clone())),
            Some(url) => Ok(Arc::new(RabbitBroker::new(RabbitOptions::new(
                url,
                connection_name,
            ))?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_rabbit_variables_build_a_url() {
        let c = MessagingConfig {
            rabbit_host: "rabbitmq.messaging".into(),
            rabbit_user: "graph".into(),
            rabbit_pass: "s3cret".into(),
            ..Default::default()
        };
        assert_eq!(
            c.amqp_url().as_deref(),
            Some("amqp://graph:s3cret@rabbitmq.messaging:5672/%2f")
        );
        let explicit = MessagingConfig {
            rabbit_url: "amqp://a:b@h:1/v".into(),
            ..c
        };
        assert_eq!(explicit.amqp_url().as_deref(), Some("amqp://a:b@h:1/v"));
        assert_eq!(MessagingConfig::default().amqp_url(), None);
    }

    #[test]
    fn kafka_options_parse_or_fail_clearly() {
        let c = MessagingConfig {
            kafka_options: "security.protocol=SASL_SSL; sasl.mechanism=SCRAM-SHA-256".into(),
            ..Default::default()
        };
        assert_eq!(c.kafka_extra().expect("parse").len(), 2);
        let bad = MessagingConfig {
            kafka_options: "nonsense".into(),
            ..Default::default()
        };
        assert!(
            bad.kafka_extra()
                .expect_err("bad")
                .to_string()
                .contains("nonsense")
        );
    }
}
