//! What every controller of the operator shares: which namespaces it acts in, the name it writes under, and
//! who reports its Events. The controllers import this module and never each other, so `flowrun/` and
//! `workerpool/` stay independent and [`crate::runtime`] is the one place that ties them together.

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource};

/// Field manager of every write the operator makes (server-side apply and merge patches alike), and the
/// `reportingController` of its Events.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// Which namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// Only these.
    Namespaces(Vec<String>),
}

impl Scope {
    /// One `Api` per watched namespace (a single cluster-wide one for [`Scope::All`]).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => vec![Api::all(client.clone())],
            Scope::Namespaces(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// Whether objects of `namespace` are the operator's to act on.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(namespaces) => namespaces.iter().any(|n| n == namespace),
        }
    }
}

/// Publishes the operator's Kubernetes Events: reported as [`FIELD_MANAGER`] from `instance` (the pod name,
/// so `kubectl describe` shows which replica acted).
pub fn event_recorder(client: Client, instance: Option<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        },
    )
}

/// The pod this process runs in, when it runs in one (`POD_NAME` from the downward API).
pub fn pod_name() -> Option<String> {
    std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_contains() {
        assert!(Scope::All.contains("anything"));
        let some = Scope::Namespaces(vec!["a".into(), "b".into()]);
        assert!(some.contains("b"));
        assert!(!some.contains("c"));
    }
}
