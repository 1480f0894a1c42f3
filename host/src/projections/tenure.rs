//! One runner per projection version (and per process) across all hosts
//! (PostgreSQL).
//!
//! Every host runs a runner for every version, but only the one holding the
//! version's lease applies events (a process's runner: routes events and
//! sends commands): the others stand by, showing the
//! checkpoint the holder commits, and try to take the lease every second. The
//! holder renews it every [`RENEW_EVERY`] in a task of its own; a host that
//! dies stops renewing, and a standby takes over once [`LEASE_TIME`] has
//! passed, with a new fencing token. From then on the old holder's commits are
//! refused in the same transaction that would write them (`lease_lost`), so
//! no event is ever applied twice, however late the old holder wakes.
//!
//! On sled there is one host: no lease, the runner always runs.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Backend, Lease, Leases, StoreError, unique_holder};

/// How long a lease lasts without a renewal: a dead host's versions move to
/// a survivor within this (plus a standby's next try, [`STANDBY_POLL`]).
pub const LEASE_TIME: Duration = Duration::from_secs(10);
/// How often the holder renews: three renewals fit in one lease time.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often a standby tries to take the lease and reads the holder's checkpoint.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Who this service is, as a lease holder (see [`unique_holder`]).
pub fn holder_name() -> String {
    unique_holder()
}

/// A runner's hold on its version's lease, while it has one.
pub(crate) struct Tenure {
    leases: Leases,
    name: String,
    holder: String,
    held: Option<Held>,
}

struct Held {
    lease: Lease,
    /// Turns true when a renewal finds the lease taken over.
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Tenure {
    /// The lease `name` (`projection:name@version`, `process:name`); None on sled.
    pub fn new(store: &Backend, name: String, holder: &str) -> Option<Tenure> {
        Some(Tenure {
            leases: store.leases()?,
            name,
            holder: holder.to_string(),
            held: None,
        })
    }

    /// The lease, if this runner holds it and no renewal has found it lost.
    pub fn lease(&self) -> Option<&Lease> {
        self.held
            .as_ref()
            .filter(|h| !*h.lost.borrow())
            .map(|h| &h.lease)
    }

    /// Tries to take the lease (or keep it); starts renewing it when taken.
    pub async fn try_take(&mut self) -> Result<Option<&Lease>, StoreError> {
        if self.lease().is_some() {
            return Ok(self.lease());
        }
        self.drop_held();
        let Some(lease) = self
            .leases
            .acquire(&self.name, &self.holder, LEASE_TIME)
            .await?
        else {
            return Ok(None);
        };
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(self.leases.clone(), lease.clone(), lost_tx));
        tracing::info!(lease = %self.name, token = lease.token, "took the lease");
        self.held = Some(Held {
            lease,
            lost,
            renewer,
        });
        Ok(self.lease())
    }

    /// Forgets the lease (it was found lost): the runner stands by.
    pub fn lost(&mut self) {
        if let Some(held) = &self.held {
            tracing::warn!(lease = %self.name, token = held.lease.token, "the lease moved to another host; standing by");
        }
        self.drop_held();
    }

    /// Waits until a renewal finds the lease lost; forever while none is held.
    pub async fn until_lost(&mut self) {
        match &mut self.held {
            Some(held) => {
                let _ = held.lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Gives the lease up at a clean stop, so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            held.renewer.abort();
            if let Err(e) = self.leases.release(&held.lease).await {
                tracing::warn!(lease = %self.name, error = %e, "could not release the lease; it lapses on its own");
            }
        }
    }

    fn drop_held(&mut self) {
        if let Some(held) = self.held.take() {
            held.renewer.abort();
        }
    }
}

impl Drop for Tenure {
    fn drop(&mut self) {
        self.drop_held();
    }
}

/// Renews `lease` every [`RENEW_EVERY`] until it is found taken over, or
/// until no renewal has worked for a whole [`LEASE_TIME`] (then another host
/// may have it, and commits will say so).
async fn renew(leases: Leases, lease: Lease, lost: watch::Sender<bool>) {
    // The lease runs from when a renewal was *sent*; the holder gives up a
    // margin before it lapses, so that it has stopped before another host
    // can take over (a process's runner has no fence but this).
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(RENEW_EVERY, leases.renew(&lease, LEASE_TIME)).await {
            Ok(Ok(Ok(()))) => renewed = sent,
            Ok(Ok(Err(_))) => break,
            Ok(Err(e)) => {
                tracing::warn!(lease = %lease.name, error = %e, "could not renew a lease")
            }
            Err(_) => tracing::warn!(lease = %lease.name, "renewing a lease timed out"),
        }
        if renewed.elapsed() + RENEW_EVERY >= LEASE_TIME - GIVE_UP_MARGIN {
            break;
        }
    }
    lost.send_replace(true);
}

/// How long before its lease lapses a holder that could not renew stops.
const GIVE_UP_MARGIN: Duration = Duration::from_secs(1);
