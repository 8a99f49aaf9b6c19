//! The node's Kafka producer, replaced once when it can no longer produce (fatal error, fenced
//! or expired producer id): an idempotent producer in that state fails every later send.

use rdkafka::producer::FutureProducer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The current producer and how to make a new one.
pub struct Producer {
    current: arc_swap::ArcSwap<FutureProducer>,
    bootstrap: String,
    timeout: Duration,
    renewing: Mutex<()>,
}

impl Producer {
    /// An idempotent, acks=all producer for `bootstrap`.
    pub fn build(bootstrap: &str, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context;
        let p = rtc_serverkit::kafka::producer_config(bootstrap, timeout)
            .create()
            .context("creating the Kafka producer")?;
        Ok(Producer {
            current: arc_swap::ArcSwap::from_pointee(p),
            bootstrap: bootstrap.to_string(),
            timeout,
            renewing: Mutex::new(()),
        })
    }

    /// The current producer.
    pub fn get(&self) -> Arc<FutureProducer> {
        self.current.load_full()
    }

    /// After a failed send: if `used` can no longer produce (see
    /// `kafka::needs_new_producer`), replace it with a new producer, once.
    pub fn renew_if_broken(&self, used: &Arc<FutureProducer>, err: &rdkafka::error::KafkaError) {
        let Some(why) = rtc_serverkit::kafka::needs_new_producer(used.as_ref(), err) else {
            return;
        };
        let _one = self.renewing.lock().expect("renew lock is never poisoned");
        if !Arc::ptr_eq(&self.current.load(), used) {
            return;
        }
        match rtc_serverkit::kafka::producer_config(&self.bootstrap, self.timeout)
            .create::<FutureProducer>()
        {
            Ok(p) => {
                self.current.store(Arc::new(p));
                tracing::warn!(reason = %why, "Kafka producer hit a fatal error; replaced it");
            }
            Err(e) => tracing::error!(error = %e, "could not replace the failed Kafka producer"),
        }
    }

    /// Waits (bounded) until every queued record is delivered or failed.
    pub async fn flush(&self, timeout: Duration) {
        let p = self.get();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            p.flush(timeout)
        })
        .await;
    }
}
