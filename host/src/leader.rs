//! Leader election: only the replica holding the Lease runs controllers.
//!
//! kube-lease-manager acquires and renews the Lease. Its standby sleeps until the holder's lease
//! expires, so a standby here asks again every retry period (a lease released on SIGTERM is
//! taken at once), and the holder renews every retry period (grace = duration − retry period).
//! A watchdog reads the Lease every retry period and declares the leadership lost when another
//! identity holds it, or when no renewal has been confirmed within the renew deadline — which is
//! shorter than the lease duration, so the controllers stop before another replica may take
//! over. Defaults are controller-runtime's: 15 s / 10 s / 2 s.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};

/// Why leader election could not start, or ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The durations do not fit together.
    #[error(
        "invalid leader election settings: {0} (need whole seconds, retry period < renew deadline < lease duration)"
    )]
    Settings(String),
    /// The Lease could not be read or written.
    #[error("leader election on Lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Why.
        source: LeaseManagerError,
    },
    /// The Lease is held by someone else now, or was not renewed in time.
    #[error("leader election lost on Lease {lease}: {reason}")]
    Lost {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What was seen.
        reason: String,
    },
}

/// Validated leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// This replica's identity (the Pod name in a cluster).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a confirmed renewal.
    pub renew_deadline: Duration,
    /// How often the holder renews and a standby asks.
    pub retry_period: Duration,
}

impl LeaderSettings {
    /// Checks that the durations fit together (kube-lease-manager panics otherwise).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let whole = |d: Duration| d.subsec_nanos() == 0 && d.as_secs() > 0;
        if !whole(self.lease_duration) || !whole(self.retry_period) {
            return Err(LeaderError::Settings(format!(
                "lease duration {:?} and retry period {:?} must be whole seconds",
                self.lease_duration, self.retry_period
            )));
        }
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return Err(LeaderError::Settings(format!(
                "retry period {:?}, renew deadline {:?}, lease duration {:?}",
                self.retry_period, self.renew_deadline, self.lease_duration
            )));
        }
        Ok(())
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }
}

/// This replica's leadership, once acquired.
pub struct Leadership {
    manager: LeaseManager,
    settings: LeaderSettings,
    client: Client,
    /// Where the watchdog reads the Lease: a watch's cache, or (`None`) a GET per retry period.
    leases: Option<Store<Lease>>,
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: &Client, settings: &LeaderSettings) -> Result<Leadership, LeaderError> {
    settings.validate()?;
    let lease_error = |source| LeaderError::Lease { lease: settings.lease(), source };
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration.as_secs())
        .with_grace(settings.lease_duration.as_secs() - settings.retry_period.as_secs())
        .build()
        .await
        .map_err(lease_error)?;
    tracing::info!(lease = %settings.lease(), identity = %settings.identity, "waiting to hold the Lease");
    loop {
        match tokio::time::timeout(settings.retry_period, manager.changed()).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %settings.lease(), error = %e, "cannot acquire the Lease; retrying");
                tokio::time::sleep(settings.retry_period).await;
            }
        }
    }
    tracing::info!(lease = %settings.lease(), identity = %settings.identity, "holding the Lease");
    Ok(Leadership { manager, settings: settings.clone(), client: client.clone(), leases: None })
}

impl Leadership {
    /// Confirms the renewals from `leases`, a watch of the Lease's namespace that someone
    /// already keeps (the sharding's), instead of a GET per retry period.
    #[must_use]
    pub fn confirmed_by(mut self, leases: Store<Lease>) -> Leadership {
        self.leases = Some(leases);
        self
    }

    /// The Lease as last seen (from the watch, else read now).
    async fn read(&self, api: &Api<Lease>) -> Result<Option<Lease>, kube::Error> {
        match &self.leases {
            Some(store) => {
                let key = ObjectRef::new(&self.settings.lease_name).within(&self.settings.namespace);
                Ok(store.get(&key).map(|lease| lease.as_ref().clone()))
            }
            None => api.get(&self.settings.lease_name).await.map(Some),
        }
    }

    /// Keeps the Lease renewed; completes when the leadership is lost, saying why.
    pub async fn lost(&self) -> LeaderError {
        let lease = self.settings.lease();
        let renew = async {
            loop {
                match self.manager.changed().await {
                    Ok(true) => continue,
                    Ok(false) => return "another replica holds the Lease".to_string(),
                    Err(e) => return format!("renewal failed: {e}"),
                }
            }
        };
        tokio::select! {
            reason = renew => LeaderError::Lost { lease, reason },
            reason = self.watchdog() => LeaderError::Lost { lease, reason },
        }
    }

    /// Completes when the Lease shows another holder, or no renewal within the renew deadline.
    async fn watchdog(&self) -> String {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let mut confirmed = SystemTime::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            match self.read(&api).await {
                Ok(None) => {}
                Ok(Some(lease)) => {
                    let spec = lease.spec.unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                        return format!("the Lease is held by {:?}", spec.holder_identity.unwrap_or_default());
                    }
                    if let Some(renewed) = spec.renew_time {
                        confirmed = confirmed.max(SystemTime::from(renewed.0));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the Lease to confirm leadership"),
            }
            let since = SystemTime::now().duration_since(confirmed).unwrap_or_default();
            if since > self.settings.renew_deadline {
                return format!(
                    "no renewal confirmed for {since:?} (renew deadline {:?})",
                    self.settings.renew_deadline
                );
            }
        }
    }

    /// Releases the Lease so another replica can lead at once (on a clean shutdown).
    pub async fn release(self) {
        match self.manager.release().await {
            Ok(()) => tracing::info!(lease = %self.settings.lease(), "Lease released"),
            Err(e) => tracing::warn!(lease = %self.settings.lease(), error = %e, "cannot release the Lease"),
        }
    }
}

/// Parses a duration as controller-runtime's flags write it: `15s`, `500ms`, `1m`, or seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 15s, 500ms or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?}; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, deadline: u64, retry: u64) -> LeaderSettings {
        LeaderSettings {
            lease_name: "l".into(),
            namespace: "n".into(),
            identity: "i".into(),
            lease_duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn durations_must_nest() {
        assert!(settings(15, 10, 2).validate().is_ok());
        assert!(settings(10, 10, 2).validate().is_err());
        assert!(settings(15, 10, 10).validate().is_err());
        assert!(settings(15, 10, 0).validate().is_err());
    }

    #[test]
    fn parses_controller_runtime_durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
    }
}
