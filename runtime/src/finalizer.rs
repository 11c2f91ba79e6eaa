//! kube's finalizer helper, with one tolerance: removing our finalizer from an object that is
//! already gone is success. Something else (the operator, for a node that left the cluster)
//! removed the last finalizer, and there is nothing left to hold.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error, Event};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Runs `reconcile` under finalizer `name` (see [`kube::runtime::finalizer::finalizer`]):
/// `Event::Apply` while the object lives (after adding the finalizer), `Event::Cleanup` once it
/// is being deleted (the finalizer is removed after it succeeds).
pub async fn finalizer<K, F, E>(
    api: &Api<K>,
    name: &str,
    obj: Arc<K>,
    reconcile: impl FnOnce(Event<K>) -> F,
) -> Result<Action, Error<E>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    F: Future<Output = Result<Action, E>>,
    E: std::error::Error + 'static,
{
    tolerate_vanished(kube::runtime::finalizer::finalizer(api, name, obj, reconcile).await)
}

/// The finalizer helper's outcome, with a 404 on removing the finalizer made a success.
pub fn tolerate_vanished<E>(result: Result<Action, Error<E>>) -> Result<Action, Error<E>>
where
    E: std::error::Error + 'static,
{
    match result {
        Err(Error::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failed;

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("failed")
        }
    }

    impl std::error::Error for Failed {}

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn removing_the_finalizer_of_a_vanished_object_is_success() {
        let gone = tolerate_vanished::<Failed>(Err(Error::RemoveFinalizer(api_error(404))));
        assert_eq!(gone.ok(), Some(Action::await_change()));
    }

    #[test]
    fn every_other_outcome_is_kept() {
        let requeue = Action::requeue(std::time::Duration::from_secs(3));
        assert_eq!(
            tolerate_vanished::<Failed>(Ok(requeue.clone())).ok(),
            Some(requeue)
        );
        for error in [
            Error::RemoveFinalizer(api_error(422)),
            Error::RemoveFinalizer(api_error(409)),
            Error::AddFinalizer(api_error(404)),
            Error::CleanupFailed(Failed),
            Error::ApplyFailed(Failed),
        ] {
            let expected = format!("{error:?}");
            match tolerate_vanished(Err(error)) {
                Err(kept) => assert_eq!(format!("{kept:?}"), expected),
                Ok(action) => panic!("{expected} became {action:?}"),
            }
        }
    }
}
