//! Alerts for loud events (break-glass requests, anomaly reports, escalations):
//! JSON POSTs to the operator's webhooks.

use serde_json::Value;
use std::time::Duration;

/// Sends alerts to the configured webhooks: JSON POSTs, retried a few times, never
/// blocking the caller. Alerts carry ids and reasons, never credentials.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    webhooks: Vec<String>,
    http: reqwest::Client,
}

impl Alerts {
    pub fn new(webhooks: Vec<String>) -> Self {
        Self {
            webhooks,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Sends `alert` to every webhook in the background.
    pub fn send(&self, alert: Value) {
        for url in &self.webhooks {
            let (http, url, alert) = (self.http.clone(), url.clone(), alert.clone());
            tokio::spawn(async move {
                for attempt in 1..=3u32 {
                    match http.post(&url).json(&alert).send().await {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) => {
                            tracing::warn!(%url, status = %r.status(), attempt, "alert webhook refused")
                        }
                        Err(e) => tracing::warn!(%url, error = %e, attempt, "alert webhook failed"),
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                tracing::error!(%url, "alert not delivered after 3 attempts");
            });
        }
    }
}
