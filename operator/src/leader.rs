//! Leader election with a `coordination.k8s.io/v1` Lease, written directly with the kube API.
//!
//! One replica holds the Lease and runs the controllers; the others retry. The holder renews every
//! `retry`; a standby takes the Lease over once `renewTime + leaseDurationSeconds` has passed. Every
//! write is a replace carrying the `resourceVersion` read, so two replicas racing for the Lease
//! cannot both win: the loser gets 409 Conflict and stays standby.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::config::LeaseConfig;

/// Whether the error is a lost race (someone else wrote first).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether a Lease held by someone else may be taken over at `now`.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed
        .0
        .saturating_add(duration)
        .is_ok_and(|end| end < now)
}

/// Acquires, renews or takes over the Lease. `Ok(true)`: this replica holds it now.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !mine {
        if !expired(&spec, now.0) {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration);
    lease.spec = Some(spec);
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (on a clean shutdown), so a standby takes over at once instead of waiting
/// for it to expire.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let now = Timestamp::now();
        let at = |secs_ago: i64| {
            Some(MicroTime(
                now.saturating_sub(SignedDuration::from_secs(secs_ago))
                    .expect("time"),
            ))
        };
        let spec = |holder: Option<&str>, renewed| LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: renewed,
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec(Some("a"), at(5)), now));
        assert!(expired(&spec(Some("a"), at(20)), now));
        assert!(expired(&spec(None, at(1)), now));
        assert!(expired(&spec(Some(""), at(1)), now));
        assert!(expired(&spec(Some("a"), None), now));
    }
}
