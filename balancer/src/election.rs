//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics and
//! timings (15 s lease, 10 s renew deadline, 2 s retry by default):
//!
//! - every write of the Lease is a compare-and-set on its resourceVersion (`replace` carries the
//!   one we read; a conflict means someone else wrote first);
//! - a follower takes the Lease only when it is free (no holder) or when the record it last saw
//!   has not changed for a whole lease duration on its own clock;
//! - a leader's writes are valid until the send time of its last successful renew plus the renew
//!   deadline ([`Leadership::term`] checks it before every write); it renews every retry period
//!   and gives up (`LOST`) when the deadline passes. Since a follower waits the full lease
//!   duration after the last renew it saw, and that renew was sent before it was seen, a leader
//!   that cannot renew stops writing at least `lease − deadline` before anyone else can start;
//! - each acquisition increments `leaseTransitions`: that number is the leader's *term*, and it
//!   is the high part of every ring epoch the leader publishes (fencing: see `rtc_protocol::ring`);
//! - on shutdown the leader releases the Lease (no holder, 1 s duration) so a follower takes over
//!   within a retry period.
//!
//! The operators' runbook greps the log for `ACQUIRED`, `LOST` and `MASTER`.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lease timings and names.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// A term of leadership and when it stops being valid unless renewed.
#[derive(Clone, Copy, Debug)]
struct Lead {
    term: u64,
    valid_until: Instant,
}

/// Whether this process leads, read before every write.
#[derive(Debug, Default)]
pub struct Leadership {
    lead: Mutex<Option<Lead>>,
}

impl Leadership {
    /// The term this process leads in, if its leadership is valid at this instant.
    pub fn term(&self) -> Option<u64> {
        self.lead
            .lock()
            .expect("leadership lock is never poisoned")
            .filter(|l| Instant::now() < l.valid_until)
            .map(|l| l.term)
    }

    fn set(&self, lead: Option<Lead>) {
        *self.lead.lock().expect("leadership lock is never poisoned") = lead;
    }
}

/// The parts of a Lease record that tell whether its holder is alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<MicroTime>,
    duration: Duration,
    transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew: spec.renew_time,
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// `lease` with its renew time set to now.
fn renewed(mut lease: Lease) -> Lease {
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(now());
    }
    lease
}

/// Runs the election until `cancel`, then releases the Lease if held. `on_change` is told of
/// every change of leadership (true = leading).
pub async fn run(
    api: Api<Lease>,
    s: Settings,
    leadership: std::sync::Arc<Leadership>,
    on_change: impl Fn(bool),
    cancel: CancellationToken,
) {
    let mut elector = Elector {
        api,
        s,
        observed: None,
        mine: None,
    };
    loop {
        // Follower: try every retry period until the Lease is ours.
        let lead = loop {
            let sent = Instant::now();
            match tokio::time::timeout(elector.s.retry_period, elector.try_acquire()).await {
                Ok(Ok(Some(term))) => {
                    break Lead {
                        term,
                        valid_until: sent + elector.s.renew_deadline,
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "lease not readable or not writable"),
                Err(_) => tracing::warn!("lease request timed out"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(jittered(elector.s.retry_period)) => {}
            }
        };
        leadership.set(Some(lead));
        on_change(true);
        tracing::info!(
            lease = %elector.s.name, identity = %elector.s.identity, term = lead.term,
            "ACQUIRED the leader lease"
        );
        tracing::info!(
            term = lead.term,
            "MASTER: this balancer writes the ring and scales the socket nodes"
        );
        // Leader: renew every retry period; stop at the deadline.
        let mut valid_until = lead.valid_until;
        let why = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    leadership.set(None);
                    on_change(false);
                    elector.release().await;
                    tracing::info!(term = lead.term, "LOST the leader lease: released on shutdown");
                    return;
                }
                _ = tokio::time::sleep(elector.s.retry_period) => {}
            }
            let sent = Instant::now();
            let Some(left) = valid_until.checked_duration_since(sent) else {
                break "renew deadline passed";
            };
            match tokio::time::timeout(left, elector.renew()).await {
                Ok(Ok(true)) => {
                    valid_until = sent + elector.s.renew_deadline;
                    leadership.set(Some(Lead {
                        term: lead.term,
                        valid_until,
                    }));
                }
                Ok(Ok(false)) => break "another replica holds the lease",
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renew failed; retrying"),
                Err(_) => tracing::warn!("lease renew timed out"),
            }
            if Instant::now() >= valid_until {
                break "renew deadline passed";
            }
        };
        leadership.set(None);
        on_change(false);
        elector.mine = None;
        tracing::warn!(term = lead.term, reason = why, "LOST the leader lease");
    }
}

/// client-go's jitter: a retry period plus up to 20 %.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + 0.2 * rand::random::<f64>())
}

struct Elector {
    api: Api<Lease>,
    s: Settings,
    /// The record last seen and when (local clock) it was first seen.
    observed: Option<(Record, Instant)>,
    /// The Lease as we last wrote it while leading (for its resourceVersion).
    mine: Option<Lease>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    fn spec(&self, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(self.s.lease_duration.as_secs() as i32),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: `Some(term)` when the Lease is now ours.
    async fn try_acquire(&mut self) -> kube::Result<Option<u64>> {
        let Some(current) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(1)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.mine = Some(l);
                    Ok(Some(1))
                }
                Err(e) if is_conflict(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        let record = Record::of(&current);
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record.clone(), Instant::now()));
                Instant::now()
            }
        };
        let free = record.holder.is_none() || seen_at.elapsed() >= record.duration;
        if !free {
            return Ok(None);
        }
        let term = record.transitions + 1;
        let mut lease = current;
        lease.spec = Some(self.spec(term));
        Ok(self.write(&lease).await?.then_some(term as u64))
    }

    /// Replaces the Lease with `lease`, compare-and-set on the resourceVersion it carries: true
    /// when written (and then it is ours as written), false when someone else wrote first.
    async fn write(&mut self, lease: &Lease) -> kube::Result<bool> {
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), lease)
            .await
        {
            Ok(l) => {
                self.mine = Some(l);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One renew; `Ok(false)` when the Lease is no longer ours (or could not be renewed twice
    /// in a row because someone kept writing it: giving up is the safe side).
    async fn renew(&mut self) -> kube::Result<bool> {
        let Some(lease) = self.mine.clone() else {
            return Ok(false);
        };
        if self.write(&renewed(lease)).await? {
            return Ok(true);
        }
        // Someone wrote the Lease. Still ours only if we hold it in our term; then renew on
        // top of what they wrote (a renew that was not written extends nothing).
        let current = self.api.get(&self.s.name).await?;
        let now = Record::of(&current);
        let ours = now.holder.as_deref() == Some(self.s.identity.as_str())
            && self
                .mine
                .as_ref()
                .is_some_and(|m| Record::of(m).transitions == now.transitions);
        Ok(ours && self.write(&renewed(current)).await?)
    }

    /// Gives the Lease up so a follower need not wait for it to expire.
    async fn release(&mut self) {
        let Some(mut lease) = self.mine.take() else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
        }
        let pp = PostParams::default();
        let put = self.api.replace(&self.s.name, &pp, &lease);
        match tokio::time::timeout(self.s.retry_period, put).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.s.name, "lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease not released; it expires by itself"),
            Err(_) => tracing::warn!("lease release timed out; it expires by itself"),
        }
    }
}
