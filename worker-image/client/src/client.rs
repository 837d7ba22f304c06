//! The client: a Kubernetes client and a namespace, and idempotent starts.

use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions, PropagationPolicy};
use sluice_api::{FlowPhase, FlowRun, FlowRunSpec};

use crate::spec::spec_differences;
use crate::start::{IfExists, Start};
use crate::status::phase;
use crate::{Error, FIELD_MANAGER, Result, Run};

/// How many times a start goes round "create, find it taken, look" before giving up: the name can be freed
/// (a run deleted) or taken again (a concurrent start) between two requests, and each round trip settles one
/// such race.
const START_ROUNDS: usize = 4;

/// Starts Sluice flows in one namespace and hands out [`Run`] handles.
///
/// Cheap to clone (it shares the underlying [`kube::Client`]). Like [`kube::Api::default_namespaced`], it works
/// in the client's default namespace — the kubeconfig context's, or the pod's own in a cluster — unless
/// [`Client::namespaced`] picks another.
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::Error> {
/// let client = sluice_client::Client::try_default().await?.namespaced("payments");
/// assert_eq!(client.namespace(), "payments");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    kube: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on an existing [`kube::Client`], in its default namespace.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let kube = kube::Client::try_default().await?;
    /// let client = sluice_client::Client::new(kube);
    /// # Ok(()) }
    /// ```
    pub fn new(kube: kube::Client) -> Self {
        let namespace = kube.default_namespace().to_owned();
        Self { kube, namespace }
    }

    /// A client from the environment, as `kubectl` finds it: `KUBECONFIG` or `~/.kube/config` (its current
    /// context and namespace), else the in-cluster service account.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sluice_client::Error> {
    /// let client = sluice_client::Client::try_default().await?;
    /// # Ok(()) }
    /// ```
    pub async fn try_default() -> Result<Self> {
        // A program may link several rustls providers (kube picks ring, other dependencies aws-lc-rs), and
        // rustls then refuses to choose: choose ring, as kube does, unless the program chose already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self::new(kube::Client::try_default().await?))
    }

    /// The same client in namespace `namespace`.
    ///
    /// ```no_run
    /// # fn demo(client: sluice_client::Client) {
    /// let payments = client.namespaced("payments");
    /// # }
    /// ```
    pub fn namespaced(&self, namespace: impl Into<String>) -> Self {
        Self {
            kube: self.kube.clone(),
            namespace: namespace.into(),
        }
    }

    /// The namespace the client starts and finds runs in.
    ///
    /// ```no_run
    /// # fn demo(client: sluice_client::Client) {
    /// println!("runs go to {}", client.namespace());
    /// # }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The underlying Kubernetes client, for anything this crate does not cover.
    ///
    /// ```no_run
    /// # fn demo(client: sluice_client::Client) {
    /// let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::default_namespaced(client.kube_client().clone());
    /// # }
    /// ```
    pub fn kube_client(&self) -> &kube::Client {
        &self.kube
    }

    /// A handle to the run named `name` in the client's namespace, without a request: its verbs say
    /// [`Error::NotFound`] when there is no such run.
    ///
    /// ```no_run
    /// # async fn demo(client: sluice_client::Client) -> sluice_client::Result<()> {
    /// client.run("expense-42").signal("manager-approval", &serde_json::json!({"approved": true})).await?;
    /// # Ok(()) }
    /// ```
    pub fn run(&self, name: impl Into<String>) -> Run {
        Run::new(self.api(), &self.namespace, name.into(), false)
    }

    /// Starts a run: creates the FlowRun `start` describes, or — when a FlowRun of that name exists — does what
    /// its [`IfExists`] policy says (by default: returns the existing run if its spec is the same, refuses with
    /// [`Error::SpecConflict`] if not). [`Run::created`] tells which happened.
    ///
    /// Specs are compared as the API server stores them ([`spec_differences`](crate::spec_differences)); when
    /// that finds a difference, the sent spec is rendered by the API server itself (a dry-run create under a
    /// generated name, so schema defaults and admission mutations apply to it too) and compared again, so a
    /// default the server filled in is never taken for a conflict.
    ///
    /// ```no_run
    /// # async fn demo(client: sluice_client::Client, spec: sluice_client::api::FlowRunSpec) -> sluice_client::Result<()> {
    /// use sluice_client::{Error, Start};
    /// match client.start(Start::inline("order-42", spec)).await {
    ///     Ok(run) if run.created() => println!("started {}", run.name()),
    ///     Ok(run) => println!("{} was already started", run.name()),
    ///     Err(Error::SpecConflict { differences, .. }) => eprintln!("another order-42: {differences:?}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn start(&self, start: Start) -> Result<Run> {
        let api = self.api();
        let spec = start.spec();
        let flow_run = FlowRun {
            metadata: ObjectMeta {
                name: Some(start.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: (!start.labels.is_empty()).then(|| start.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: spec.clone(),
            status: None,
        };
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let name = start.name.as_str();
        for _ in 0..START_ROUNDS {
            match api.create(&post, &flow_run).await {
                Ok(_) => {
                    tracing::debug!(namespace = %self.namespace, name, "flowrun created");
                    return Ok(Run::new(api, &self.namespace, start.name, true));
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
            let Some(existing) = api.get_opt(name).await? else {
                // Deleted since the create was refused: create again.
                continue;
            };
            match self.existing(&start, &spec, &existing).await? {
                Existing::Return => {
                    tracing::debug!(namespace = %self.namespace, name, phase = ?phase(&existing), "flowrun exists: returning it");
                    return Ok(Run::new(api, &self.namespace, start.name, false));
                }
                Existing::Replace => {
                    tracing::info!(namespace = %self.namespace, name, phase = ?phase(&existing), "replacing the finished flowrun");
                    // On this very version: a run retried (or re-created) since it was looked at is judged again.
                    let delete = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: existing.metadata.uid.clone(),
                            resource_version: existing.metadata.resource_version.clone(),
                        }),
                        // Background: the name is free at once; the garbage collector removes its children.
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..DeleteParams::default()
                    };
                    match api.delete(name, &delete).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure(
            &format!(
                "flowrun {}/{name} kept changing (created, deleted or replaced) during {START_ROUNDS} attempts to start it",
                self.namespace
            ),
            "Conflict",
        )
        .with_code(409)))))
    }

    /// What the policy says to do with an existing run.
    async fn existing(
        &self,
        start: &Start,
        spec: &FlowRunSpec,
        existing: &FlowRun,
    ) -> Result<Existing> {
        let refused = |differences| Error::SpecConflict {
            namespace: self.namespace.clone(),
            name: start.name.clone(),
            differences,
        };
        match start.if_exists {
            IfExists::ReturnExisting => Ok(Existing::Return),
            IfExists::Reject => Err(Error::AlreadyExists {
                namespace: self.namespace.clone(),
                name: start.name.clone(),
            }),
            IfExists::ReplaceFailed
                if matches!(phase(existing), FlowPhase::Failed | FlowPhase::Cancelled) =>
            {
                Ok(Existing::Replace)
            }
            IfExists::ReturnIfSameSpec | IfExists::ReplaceFailed => {
                let differences = self.differences(start, spec, existing).await?;
                if differences.is_empty() {
                    Ok(Existing::Return)
                } else {
                    Err(refused(differences))
                }
            }
        }
    }

    /// Where the existing run's spec differs from the one asked for: locally first, then (only when that finds
    /// a difference) against the API server's own rendering of the sent spec.
    async fn differences(
        &self,
        start: &Start,
        spec: &FlowRunSpec,
        existing: &FlowRun,
    ) -> Result<Vec<String>> {
        let local = spec_differences(spec, &existing.spec);
        if local.is_empty() {
            return Ok(local);
        }
        let probe = FlowRun {
            metadata: ObjectMeta {
                // A dry run needs a free name; generateName gives one without guessing.
                generate_name: Some(format!("{}-", truncate(&start.name, 200))),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: spec.clone(),
            status: None,
        };
        let dry_run = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        match self.api().create(&dry_run, &probe).await {
            Ok(rendered) => Ok(spec_differences(&rendered.spec, &existing.spec)),
            // The sent spec is not even valid: it cannot be the stored run's. Report what the local
            // comparison found rather than the validation error; the caller asked about sameness.
            Err(kube::Error::Api(s)) if s.is_invalid() => Ok(local),
            Err(e) => Err(e.into()),
        }
    }

    fn api(&self) -> Api<FlowRun> {
        Api::namespaced(self.kube.clone(), &self.namespace)
    }
}

enum Existing {
    Return,
    Replace,
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
