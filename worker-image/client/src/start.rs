//! What to start: a named run of an inline spec, its typed input, and what to do when the name is taken.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_api::{FlowRunSpec, TemplateRef};

use crate::{Error, Result};

/// What [`Client::start`](crate::Client::start) does when a FlowRun of the name already exists, like
/// Temporal's workflow-id reuse policies. The FlowRun's name is the run's identity: whatever the policy, a
/// start never creates a second FlowRun of a name.
///
/// A *finished* run counts as existing: with the default policy, starting a name whose run already
/// Succeeded returns that run, and its [`Run::wait`](crate::Run::wait) returns the recorded output at once
/// (a result is computed once per name). [`IfExists::ReplaceFailed`] lets a new run take the place of a
/// Failed or Cancelled one.
///
/// ```
/// use sluice_client::{IfExists, Start};
/// # let spec = sluice_client::api::FlowRunSpec::default();
/// let start = Start::inline("order-42", spec).if_exists(IfExists::Reject);
/// assert_eq!(start.policy(), IfExists::Reject);
/// assert_eq!(IfExists::default(), IfExists::ReturnIfSameSpec);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IfExists {
    /// Return the existing run when its spec declares the same run as the one asked for (see
    /// [`spec_differences`](crate::spec_differences)), whatever its phase; otherwise refuse with
    /// [`Error::SpecConflict`] naming where they differ. The default: retrying a start is safe.
    #[default]
    ReturnIfSameSpec,
    /// Return the existing run whatever its spec (the caller only cares that a run of that name exists).
    ReturnExisting,
    /// Refuse with [`Error::AlreadyExists`]: the caller wants to be the one that created it.
    Reject,
    /// When the existing run ended Failed or Cancelled, delete it (with its child FlowRuns) and start the new
    /// spec in its place; otherwise behave as [`IfExists::ReturnIfSameSpec`]. Like Temporal's
    /// `AllowDuplicateFailedOnly`; the failed run's record is gone afterwards (to re-run a Failed run from
    /// the point of failure instead, keeping its Succeeded steps, use `kubectl sluice retry`).
    ReplaceFailed,
}

/// Where the run's spec comes from. Private, so that other sources can be added without breaking callers.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A spec written inline; it may itself name a template (`spec.templateRef`) and set the pool, defaults
    /// or deadline a template run should use instead of the template's.
    Inline(Box<FlowRunSpec>),
}

/// A run to start: its name, its spec (inline, or a FlowTemplate to run), its input, labels, and the
/// [`IfExists`] policy. Build one with [`Start::inline`] or [`Start::template`] and hand it to
/// [`Client::start`](crate::Client::start).
///
/// ```
/// use serde::Serialize;
/// use sluice_client::Start;
/// use sluice_client::api::{FlowRunSpec, Step};
///
/// #[derive(Serialize)]
/// #[serde(rename_all = "camelCase")]
/// struct Charge { order_id: String, amount: f64 }
///
/// let spec = FlowRunSpec {
///     pool: Some("payments".into()),
///     steps: vec![Step { name: "charge".into(), handler: Some("charge_payment".into()),
///                        input: Some("${{ input }}".into()), ..Step::default() }],
///     ..FlowRunSpec::default()
/// };
/// let start = Start::inline("order-42", spec)
///     .input(&Charge { order_id: "42".into(), amount: 99.5 })?
///     .label("team", "payments");
/// assert_eq!(start.name(), "order-42");
/// # Ok::<(), sluice_client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Start {
    pub(crate) name: String,
    pub(crate) source: Source,
    pub(crate) input: Option<serde_json::Value>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) if_exists: IfExists,
}

impl Start {
    /// A run named `name` of the flow `spec`, written inline (what `kubectl apply` of a FlowRun would create).
    /// The name must be a DNS subdomain name; it is the run's identity (see [`IfExists`]).
    ///
    /// ```
    /// let start = sluice_client::Start::inline("nightly-2026-12-01", Default::default());
    /// assert_eq!(start.name(), "nightly-2026-12-01");
    /// ```
    pub fn inline(name: impl Into<String>, spec: FlowRunSpec) -> Self {
        Self {
            name: name.into(),
            source: Source::Inline(Box::new(spec)),
            input: None,
            labels: BTreeMap::new(),
            if_exists: IfExists::default(),
        }
    }

    /// A run named `name` of the FlowTemplate `template` (in the client's namespace): `spec.templateRef`.
    /// Set the template's inputs with [`Start::input`]. The operator checks the input against the template's
    /// declared inputs when the run starts (a mismatch fails the run with reason `InvalidInput`, which
    /// [`Run::wait`](crate::Run::wait) returns as [`Error::Failed`]) and copies the template's flow into the
    /// run, so editing the template later never changes it.
    ///
    /// A template run is the same run as another start when it names the same template with the same input
    /// (and sets the same pool, defaults or deadline, if it sets any): the steps the operator copied into the
    /// stored run are not compared.
    ///
    /// ```
    /// use sluice_client::Start;
    /// let start = Start::template("expense-77", "expense-approval")
    ///     .input(&serde_json::json!({"reportId": "77", "employee": "grace", "amount": 42.5}))?;
    /// # Ok::<(), sluice_client::Error>(())
    /// ```
    pub fn template(name: impl Into<String>, template: impl Into<String>) -> Self {
        let spec = FlowRunSpec {
            template_ref: Some(TemplateRef {
                name: template.into(),
                input: None,
            }),
            ..FlowRunSpec::default()
        };
        Self::inline(name, spec)
    }

    /// Sets the flow's input from any `Serialize` value: `spec.input` (visible to expressions as `input`), or
    /// for a run of a template `spec.templateRef.input`; it replaces an input the spec carried. Fails with
    /// [`Error::Encode`] when the value has no JSON form (a map with non-string keys, for example).
    ///
    /// ```
    /// let start = sluice_client::Start::inline("r", Default::default())
    ///     .input(&serde_json::json!({"n": 21}))?;
    /// # Ok::<(), sluice_client::Error>(())
    /// ```
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Result<Self> {
        let value = serde_json::to_value(input).map_err(|source| Error::Encode {
            what: "input",
            source,
        })?;
        self.input = Some(value);
        Ok(self)
    }

    /// Adds a label to the FlowRun's metadata (to find runs with a label selector later). Labels are not
    /// compared by [`IfExists::ReturnIfSameSpec`]: they describe a run, they do not make it another.
    ///
    /// ```
    /// let start = sluice_client::Start::inline("r", Default::default()).label("app", "shop");
    /// ```
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// What to do when a FlowRun of the name exists (default [`IfExists::ReturnIfSameSpec`]).
    ///
    /// ```
    /// use sluice_client::{IfExists, Start};
    /// let start = Start::inline("r", Default::default()).if_exists(IfExists::ReturnExisting);
    /// ```
    pub fn if_exists(mut self, policy: IfExists) -> Self {
        self.if_exists = policy;
        self
    }

    /// The name of the run to start.
    ///
    /// ```
    /// assert_eq!(sluice_client::Start::inline("r", Default::default()).name(), "r");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The [`IfExists`] policy of this start.
    ///
    /// ```
    /// use sluice_client::{IfExists, Start};
    /// assert_eq!(Start::inline("r", Default::default()).policy(), IfExists::ReturnIfSameSpec);
    /// ```
    pub fn policy(&self) -> IfExists {
        self.if_exists
    }

    /// The spec this start asks for: the inline spec with the input set where it belongs.
    pub(crate) fn spec(&self) -> FlowRunSpec {
        let Source::Inline(spec) = &self.source;
        let mut spec = (**spec).clone();
        if let Some(input) = &self.input {
            match &mut spec.template_ref {
                Some(template) => template.input = Some(input.clone()),
                None => spec.input = Some(input.clone()),
            }
        }
        spec
    }
}
