//! The delivery tasks: one per webhook, each posting the queued
//! notifications in order, each until its receiver takes it (or refuses it
//! for good), then moving its cursor in the store. A notification whose
//! cursor move was not yet stored when the server stopped is sent again
//! after the restart: delivery is at least once, and receivers drop repeats
//! by the idempotency key.

use std::sync::Arc;
use std::time::Duration;

use super::decide::{answer, retry_delay, Answer};
use super::{render, Destination, Format, NotifyConfig, Secret, ID_HEADER, KIND_HEADER, SIGNATURE_HEADER};
use crate::metrics::Metrics;
use crate::model::NotificationRecord;
use crate::store::StoreHandle;

/// Wait after a store error before reading the queue again.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// Starts one delivery task per destination.
pub fn start(
    config: &NotifyConfig,
    store: &StoreHandle,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    if config.destinations.is_empty() {
        return Ok(Vec::new());
    }
    // System roots (rustls with the platform verifier); no redirects, so a
    // signed body never goes anywhere but the configured URL.
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ccfleet-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| anyhow::anyhow!("cannot build the webhook client: {error}"))?;
    let mut tasks = Vec::new();
    for destination in &config.destinations {
        tracing::info!(%destination, "delivering notifications to a webhook");
        let delivery = Delivery {
            destination: destination.clone(),
            client: client.clone(),
            secret: config.secret.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            max_retry_delay: config.max_retry_delay,
        };
        tasks.push(tokio::spawn(delivery.run()));
    }
    Ok(tasks)
}

struct Delivery {
    destination: Destination,
    client: reqwest::Client,
    secret: Option<Secret>,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    max_retry_delay: Duration,
}

/// What one attempt came to.
enum Attempt {
    Answered(Answer, u16),
    /// No answer (connection, TLS, timeout): the error without the URL.
    Failed(String),
}

impl Delivery {
    async fn run(self) {
        let mut waker = self.store.notification_waker();
        loop {
            // Marked seen before the read: a notification queued after the
            // read wakes the wait below.
            waker.borrow_and_update();
            let id = self.destination.id.clone();
            let (sequence, notification) = match self.store.read(move |store| store.next_notification(&id)).await {
                Ok(Some(next)) => next,
                Ok(None) => {
                    if waker.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, destination = %self.destination, "cannot read the notification queue");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
            };
            self.deliver(&notification).await;
            let id = self.destination.id.clone();
            if let Err(error) = self
                .store
                .write(move |store| store.notification_delivered(&id, sequence))
                .await
            {
                // It is sent again: at least once.
                tracing::error!(%error, destination = %self.destination, "cannot record a delivered notification");
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    }

    /// Posts until the receiver answers for good.
    async fn deliver(&self, notification: &NotificationRecord) {
        let (body, content_type) = match self.destination.format {
            Format::Json => (render::json_body(notification), "application/json"),
            Format::Text => (
                render::text_line(notification).into_bytes(),
                "text/plain; charset=utf-8",
            ),
        };
        let signature = self.secret.as_ref().map(|secret| secret.sign(&body));
        let mut failures = 0u32;
        loop {
            let mut request = self
                .client
                .post(self.destination.url.clone())
                .header("Content-Type", content_type)
                .header(ID_HEADER, &notification.id)
                .header(KIND_HEADER, notification.kind.name())
                .body(body.clone());
            if let Some(signature) = &signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            let attempt = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    Attempt::Answered(answer(status), status)
                }
                Err(error) => Attempt::Failed(error.without_url().to_string()),
            };
            let problem = match attempt {
                Attempt::Answered(Answer::Delivered, status) => {
                    Metrics::increment(&self.metrics.notifications_delivered);
                    tracing::info!(
                        destination = %self.destination,
                        id = notification.id,
                        status,
                        attempts = failures + 1,
                        "notification delivered"
                    );
                    return;
                }
                Attempt::Answered(Answer::Rejected, status) => {
                    Metrics::increment(&self.metrics.notifications_rejected);
                    tracing::error!(
                        destination = %self.destination,
                        id = notification.id,
                        status,
                        "the webhook refused the notification; it is not sent again"
                    );
                    return;
                }
                Attempt::Answered(Answer::Retry, status) => format!("answered {status}"),
                Attempt::Failed(error) => error,
            };
            failures = failures.saturating_add(1);
            Metrics::increment(&self.metrics.notifications_retried);
            let delay = retry_delay(failures, self.max_retry_delay);
            tracing::warn!(
                destination = %self.destination,
                id = notification.id,
                failures,
                problem,
                retry_in = ?delay,
                "notification not delivered; trying again"
            );
            tokio::time::sleep(delay).await;
        }
    }
}
