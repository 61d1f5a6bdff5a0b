//! The gateway's own broker: decoded results out, sensor readings in.
//!
//! Home Assistant, Node-RED or any MQTT subscriber on the gateway reads the
//! device's predictions from a local topic, and sensors that publish to a
//! local topic feed the agent. Decoded results exist only on this side:
//! this bridge is the only code that publishes them, and it holds a
//! connection to the local broker alone (the remote link never sees them).
//!
//! # Results
//! Each output is one JSON object on `results_topic`, QoS 1: a result
//! (`kind: "result"`, retained by default so a late subscriber sees the
//! latest) or a refusal or expiry (not retained). `availability_topic`
//! carries `online` while connected and `offline` through the last will.
//! With `homeassistant = true` a retained MQTT-discovery message declares
//! a sensor whose state is the predicted class.
//!
//! # Sensor input
//! `sensor_topic` (wildcards allowed) carries JSON objects; `features`
//! names, in the model's input order, the field that gives each feature.
//! `assemble = "message"`: every message holds all fields and makes one
//! frame. `assemble = "latest"`: messages may hold some fields each; a
//! frame is made once every field has a value newer than the last frame.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use veil_link::{LastWill, Link, LinkEvent, LinkHandle, MqttSettings};
use veil_shell::now_ms;

use crate::{AgentError, Output};

/// The `[local]` table of the agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalSettings {
    /// The gateway's broker (default `mqtt://127.0.0.1:1883`, anonymous).
    pub mqtt: MqttSettings,
    /// Where results go; `{device}` is replaced by the device id.
    pub results_topic: String,
    /// `online` / `offline` (retained, last will).
    pub availability_topic: String,
    /// Retain results (refusals and expiries are never retained).
    pub retain_results: bool,
    /// Publish Home Assistant MQTT discovery for the predicted class.
    pub homeassistant: bool,
    /// Topic prefix of Home Assistant discovery messages.
    pub discovery_prefix: String,
    /// Topic filter of sensor readings; none: no sensor input.
    pub sensor_topic: Option<String>,
    /// JSON field of each model input, in the model's input order.
    pub features: Vec<String>,
    /// How sensor messages become frames.
    pub assemble: Assemble,
    /// JSON field passed through as the result's label, if present.
    pub label_field: Option<String>,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            mqtt: MqttSettings {
                persistent_session: false,
                ..MqttSettings::default()
            },
            results_topic: "veil/{device}/result".into(),
            availability_topic: "veil/{device}/status".into(),
            retain_results: true,
            homeassistant: false,
            discovery_prefix: "homeassistant".into(),
            sensor_topic: None,
            features: Vec::new(),
            assemble: Assemble::Message,
            label_field: None,
        }
    }
}

/// How sensor messages become frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assemble {
    /// One message, one frame, every field in it.
    #[default]
    Message,
    /// The newest value of each field; a frame once all are fresh.
    Latest,
}

/// A result as the gateway's subscribers read it.
#[derive(Serialize)]
struct ResultLine<'a> {
    kind: &'static str,
    device: &'a str,
    session: &'a str,
    frame: u64,
    class: usize,
    outputs: &'a [f64],
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    captured_at_ms: u64,
    result_at_ms: u64,
    latency_ms: f64,
}

/// A reading that made no frame.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorRefusal {
    /// The topic the reading came on.
    pub topic: String,
    /// Why it made no frame, for the refusal line.
    pub reason: String,
}

/// What a sensor message gave.
pub type SensorFrame = Result<(Vec<f32>, Option<String>), SensorRefusal>;

/// The connection to the gateway's broker.
pub struct LocalBridge {
    settings: LocalSettings,
    device: String,
    results_topic: String,
    availability_topic: String,
    link: Link,
    latest: HashMap<String, f32>,
    label: Option<String>,
}

impl LocalBridge {
    /// Connects to the gateway's broker, announces the device online
    /// (and to Home Assistant, when asked) and subscribes to the sensors.
    pub fn start(settings: LocalSettings, device: &str) -> Result<LocalBridge, AgentError> {
        let results_topic = settings.results_topic.replace("{device}", device);
        let availability_topic = settings.availability_topic.replace("{device}", device);
        for topic in [&results_topic, &availability_topic] {
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(AgentError::Config(format!(
                    "local topic {topic:?} must be a plain topic name"
                )));
            }
        }
        if settings.sensor_topic.is_some() && settings.features.is_empty() {
            return Err(AgentError::Config(
                "local.sensor_topic needs local.features: the JSON field of each model input"
                    .into(),
            ));
        }
        let mut mqtt = settings.mqtt.clone();
        if mqtt.client_id.is_empty() {
            mqtt.client_id = format!("veil-{device}-local");
        }
        mqtt.last_will = Some(LastWill {
            topic: availability_topic.clone(),
            payload: b"offline".to_vec(),
            retain: true,
        });
        let link = Link::start(&mqtt)?;
        Ok(LocalBridge {
            settings,
            device: device.to_string(),
            results_topic,
            availability_topic,
            link,
            latest: HashMap::new(),
            label: None,
        })
    }

    fn handle(&self) -> &LinkHandle {
        &self.link.handle
    }

    /// Publishes an output of the agent.
    pub fn publish(&self, output: &Output) {
        let (payload, retain) = match output {
            Output::Result(r) => {
                let result_at_ms = now_ms();
                // A latency this agent measured (finite, non-negative):
                // whole milliseconds are the intent, and `as` saturates.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let latency_ms = r.latency_ms as u64;
                let line = ResultLine {
                    kind: "result",
                    device: &r.device,
                    session: &r.session,
                    frame: r.t,
                    class: r.class,
                    outputs: &r.logits,
                    label: r.label.as_deref(),
                    captured_at_ms: result_at_ms.saturating_sub(latency_ms),
                    result_at_ms,
                    latency_ms: r.latency_ms,
                };
                (serde_json::to_vec(&line), self.settings.retain_results)
            }
            other => (serde_json::to_vec(other), false),
        };
        match payload {
            Ok(payload) => self
                .handle()
                .publish(self.results_topic.clone(), payload, retain),
            Err(e) => tracing::error!(error = %e, "cannot encode an output for the local broker"),
        }
    }

    /// Publishes a sensor reading that made no frame, so that the
    /// application sees it.
    pub fn publish_refusal(&self, refusal: &SensorRefusal) {
        let line = serde_json::json!({
            "kind": "refused-at-capture",
            "device": self.device,
            "topic": refusal.topic,
            "reason": refusal.reason,
        });
        self.handle().publish(
            self.results_topic.clone(),
            line.to_string().into_bytes(),
            false,
        );
    }

    /// Publishes a line the application already got on stdout (a CSV row
    /// refused before it became a frame), not retained.
    pub fn publish_line(&self, json: String) {
        self.handle()
            .publish(self.results_topic.clone(), json.into_bytes(), false);
    }

    fn announce(&self) {
        self.handle()
            .publish(self.availability_topic.clone(), b"online".to_vec(), true);
        if self.settings.homeassistant {
            let id = format!("veil_{}", self.device.replace(['.', '-'], "_"));
            let config = serde_json::json!({
                "name": format!("veil {} class", self.device),
                "unique_id": format!("{id}_class"),
                "state_topic": self.results_topic,
                "value_template": "{{ value_json.class }}",
                "json_attributes_topic": self.results_topic,
                "availability_topic": self.availability_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {"identifiers": [id], "name": format!("veil {}", self.device)},
            });
            self.handle().publish(
                format!(
                    "{}/sensor/{id}/class/config",
                    self.settings.discovery_prefix
                ),
                config.to_string().into_bytes(),
                true,
            );
        }
        if let Some(filter) = &self.settings.sensor_topic {
            self.handle().subscribe(vec![filter.clone()]);
        }
    }

    /// Waits for the next sensor frame (or refusal), announcing availability
    /// on every (re)connection meanwhile. `None` once the link has ended.
    pub async fn next_frame(&mut self) -> Option<SensorFrame> {
        loop {
            match self.link.events.recv().await? {
                LinkEvent::Connected { .. } => self.announce(),
                LinkEvent::Message(message) => {
                    let frame = self.assemble(&message.topic, &message.payload);
                    self.handle().ack(message.ack);
                    if let Some(frame) = frame {
                        return Some(frame);
                    }
                }
                LinkEvent::Subscribed { .. }
                | LinkEvent::Confirmed(_)
                | LinkEvent::Disconnected { .. } => {}
            }
        }
    }

    fn assemble(&mut self, topic: &str, payload: &[u8]) -> Option<SensorFrame> {
        let refuse = |reason: String| {
            Some(Err(SensorRefusal {
                topic: topic.to_string(),
                reason,
            }))
        };
        let object = match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => return refuse("not a JSON object".into()),
            Err(e) => return refuse(format!("not JSON: {e}")),
        };
        if let Some(field) = &self.settings.label_field
            && let Some(v) = object.get(field)
        {
            self.label = Some(match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        for (field, value) in &object {
            if !self.settings.features.contains(field) {
                continue;
            }
            match value.as_f64() {
                Some(v) if v.abs() <= f64::from(f32::MAX) => {
                    // In range (checked): the model takes f32, so rounding
                    // to the nearest f32 is the intent.
                    #[allow(clippy::cast_possible_truncation)]
                    self.latest.insert(field.clone(), v as f32);
                }
                Some(v) => return refuse(format!("field {field:?} = {v} is beyond f32")),
                None => return refuse(format!("field {field:?} is not a number")),
            }
        }
        let missing: Vec<&String> = self
            .settings
            .features
            .iter()
            .filter(|f| !self.latest.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return match self.settings.assemble {
                Assemble::Message => {
                    let reason = format!("missing fields {missing:?}");
                    self.latest.clear();
                    refuse(reason)
                }
                Assemble::Latest => None,
            };
        }
        let features = self
            .settings
            .features
            .iter()
            .map(|f| self.latest.get(f).copied().unwrap_or(f32::NAN))
            .collect();
        self.latest.clear();
        Some(Ok((features, self.label.take())))
    }

    /// Says `offline` and disconnects.
    pub async fn shutdown(self) {
        self.handle()
            .publish(self.availability_topic.clone(), b"offline".to_vec(), true);
        self.link.close().await;
    }
}
