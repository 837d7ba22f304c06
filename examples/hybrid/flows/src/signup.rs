//! The signup flow: validate the email address, create the account, send the welcome message.
//!
//! ```text
//! validate (validate_email) ─▶ account (create_account) ─▶ welcome (send_welcome, retried)
//! ```
//!
//! The flow's output, [`SignupOutput`], is built from the outputs of `account` and `welcome`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_api::{FlowRunSpec, RetryPolicy, Step};

/// The handler of step `validate`.
pub const VALIDATE_EMAIL: &str = "validate_email";
/// The handler of step `account`.
pub const CREATE_ACCOUNT: &str = "create_account";
/// The handler of step `welcome`.
pub const SEND_WELCOME: &str = "send_welcome";
/// Every handler the flow names: what a worker of its pool must serve.
pub const HANDLERS: [&str; 3] = [VALIDATE_EMAIL, CREATE_ACCOUNT, SEND_WELCOME];

/// The WorkerPool the flow runs in unless the scheduler is told otherwise.
pub const DEFAULT_POOL: &str = "signup";

/// The plan a new account starts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// The free plan.
    #[default]
    Free,
    /// The paid plan.
    Pro,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
        })
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(Plan::Free),
            "pro" => Ok(Plan::Pro),
            other => Err(format!("unknown plan {other:?}: expected free or pro")),
        }
    }
}

/// The flow's input: who signs up, for which plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignupInput {
    /// The address as typed by the user; the flow normalizes it.
    pub email: String,
    /// The name to greet the user with.
    pub name: String,
    /// The plan chosen.
    pub plan: Plan,
}

/// The flow's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignupOutput {
    /// The new account.
    pub account_id: String,
    /// The normalized address the account was created for.
    pub email: String,
    /// The account's plan.
    pub plan: Plan,
    /// The welcome message handed to the mail service.
    pub welcome_message_id: String,
}

/// Input of [`validate_email`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidateEmailInput {
    /// The address as typed.
    pub email: String,
}

/// Output of [`validate_email`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidEmail {
    /// The normalized address.
    pub email: String,
}

/// Input of [`create_account`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateAccountInput {
    /// A normalized address (the output of [`validate_email`]).
    pub email: String,
    /// The user's name.
    pub name: String,
    /// The plan chosen.
    pub plan: Plan,
}

/// Output of [`create_account`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// The account's id (see [`account_id`]).
    pub account_id: String,
    /// The account's address.
    pub email: String,
    /// The account's plan.
    pub plan: Plan,
}

/// Input of [`send_welcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendWelcomeInput {
    /// The new account.
    pub account_id: String,
    /// Where to send the message.
    pub email: String,
    /// Whom to greet.
    pub name: String,
}

/// Output of [`send_welcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WelcomeMessage {
    /// The message's id at the mail service.
    pub message_id: String,
    /// Its subject line.
    pub subject: String,
}

/// Why a signup cannot go on. Each is a fact about the input, so no retry can help: a worker reports them as
/// fatal step errors of type [`SignupError::error_type`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignupError {
    /// The address is not of the form `local@domain.tld`.
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    /// The address belongs to the site itself (`admin@`, `postmaster@`, ...).
    #[error("{0:?} is reserved and cannot own an account")]
    ReservedAddress(String),
}

impl SignupError {
    /// The error type reported for the failed step, what `status.steps.*.error.type` shows.
    pub fn error_type(&self) -> &'static str {
        match self {
            SignupError::InvalidEmail(_) => "invalid_email",
            SignupError::ReservedAddress(_) => "reserved_address",
        }
    }
}

/// The flow, run in the WorkerPool `pool`.
pub fn signup_flow(pool: &str) -> FlowRunSpec {
    FlowRunSpec {
        pool: Some(pool.to_owned()),
        steps: vec![
            Step {
                name: "validate".into(),
                handler: Some(VALIDATE_EMAIL.into()),
                input: Some(json!({"email": "${{ input.email }}"})),
                ..Step::default()
            },
            Step {
                name: "account".into(),
                depends_on: vec!["validate".into()],
                handler: Some(CREATE_ACCOUNT.into()),
                input: Some(json!({
                    "email": "${{ steps.validate.output.email }}",
                    "name": "${{ input.name }}",
                    "plan": "${{ input.plan }}",
                })),
                ..Step::default()
            },
            Step {
                name: "welcome".into(),
                depends_on: vec!["account".into()],
                handler: Some(SEND_WELCOME.into()),
                input: Some(json!({
                    "accountId": "${{ steps.account.output.accountId }}",
                    "email": "${{ steps.account.output.email }}",
                    "name": "${{ input.name }}",
                })),
                // The mail service has bad minutes: keep trying for a while before failing the signup.
                retry: Some(RetryPolicy {
                    max_attempts: Some(5),
                    initial_backoff: Some("2s".into()),
                    backoff_factor: Some(2.0),
                    max_backoff: Some("1m".into()),
                    ..RetryPolicy::default()
                }),
                timeout: Some("30s".into()),
                ..Step::default()
            },
        ],
        output: Some(json!({
            "accountId": "${{ steps.account.output.accountId }}",
            "email": "${{ steps.account.output.email }}",
            "plan": "${{ steps.account.output.plan }}",
            "welcomeMessageId": "${{ steps.welcome.output.messageId }}",
        })),
        ..FlowRunSpec::default()
    }
}

/// The FlowRun name of the signup of `email`: one run per address, so starting a signup again (a retried
/// request, a restarted scheduler) finds the run already started instead of creating a second account.
///
/// A readable part of the address (a DNS name allows no `@`) and a hash of all of it, so that addresses
/// differing only in characters the readable part drops get different runs.
pub fn run_name(email: &str) -> String {
    let email = normalize(email);
    let mut readable: String = email
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    while readable.contains("--") {
        readable = readable.replace("--", "-");
    }
    let hash = fnv1a(&email) as u32;
    match readable.trim_matches('-') {
        "" => format!("signup-{hash:08x}"),
        readable => format!("signup-{readable}-{hash:08x}"),
    }
}

/// The account id of a normalized address. Derived rather than drawn at random so that a retried
/// `create_account` (after a lost worker, say) returns the account the first attempt created.
pub fn account_id(email: &str) -> String {
    format!("acct-{:016x}", fnv1a(email))
}

/// Checks and normalizes an address: trimmed, lower-case, one `@`, a dot in the domain.
pub async fn validate_email(input: ValidateEmailInput) -> Result<ValidEmail, SignupError> {
    let email = normalize(&input.email);
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|label| !label.is_empty())
                && !email.contains(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(ValidEmail { email })
    } else {
        Err(SignupError::InvalidEmail(input.email))
    }
}

/// Creates the account of a validated address.
pub async fn create_account(input: CreateAccountInput) -> Result<Account, SignupError> {
    const RESERVED: [&str; 4] = ["admin", "root", "postmaster", "abuse"];
    let local = input.email.split('@').next().unwrap_or_default();
    if RESERVED.contains(&local) {
        return Err(SignupError::ReservedAddress(input.email));
    }
    Ok(Account {
        account_id: account_id(&input.email),
        email: input.email,
        plan: input.plan,
    })
}

/// Writes the welcome message of a new account. Its id is derived from the account, so the mail service can
/// drop a message a retried attempt sends twice.
pub async fn send_welcome(input: SendWelcomeInput) -> Result<WelcomeMessage, SignupError> {
    Ok(WelcomeMessage {
        message_id: format!("welcome-{}", input.account_id),
        subject: format!("Welcome aboard, {}!", input.name),
    })
}

fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hashers.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_passes_the_operators_validation() {
        let spec = signup_flow("signup");
        if let Err(errors) = sluice_operator::engine::validate::validate(&spec) {
            panic!("the signup flow is invalid: {errors}");
        }
    }

    #[test]
    fn the_flow_names_exactly_the_handlers_it_exports_in_order() {
        let spec = signup_flow("signup");
        let named: Vec<&str> = spec
            .steps
            .iter()
            .filter_map(|step| step.handler.as_deref())
            .collect();
        assert_eq!(named, HANDLERS);
        assert_eq!(spec.pool.as_deref(), Some("signup"));
        let welcome = spec.steps.iter().find(|s| s.name == "welcome").unwrap();
        assert_eq!(welcome.retry.as_ref().and_then(|r| r.max_attempts), Some(5));
        assert_eq!(welcome.depends_on, ["account"]);
    }

    #[test]
    fn the_flow_output_has_the_fields_of_signup_output() {
        let output = signup_flow("signup").output.unwrap();
        let fields: Vec<&String> = output.as_object().unwrap().keys().collect();
        let typed = serde_json::to_value(SignupOutput {
            account_id: String::new(),
            email: String::new(),
            plan: Plan::Free,
            welcome_message_id: String::new(),
        })
        .unwrap();
        let expected: Vec<&String> = typed.as_object().unwrap().keys().collect();
        assert_eq!(fields, expected);
    }

    #[test]
    fn the_input_serializes_as_the_step_inputs_read_it() {
        let input = SignupInput {
            email: "ada@example.org".into(),
            name: "Ada".into(),
            plan: Plan::Pro,
        };
        assert_eq!(
            serde_json::to_value(input).unwrap(),
            json!({"email": "ada@example.org", "name": "Ada", "plan": "pro"})
        );
    }

    #[test]
    fn run_names_are_dns_names_one_per_normalized_address() {
        let name = run_name("  Ada.Lovelace+news@Example.org ");
        assert!(
            name.starts_with("signup-ada-lovelace-news-example-org-"),
            "{name}"
        );
        assert_eq!(name, run_name("ada.lovelace+news@example.org"));
        assert_ne!(run_name("a.b@example.org"), run_name("a-b@example.org"));
        for email in ["a@b.c", "--@--", &"x".repeat(300)] {
            let name = run_name(email);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
            assert!(!name.contains("--") && !name.ends_with('-'), "{name}");
        }
    }

    #[tokio::test]
    async fn validate_email_normalizes_good_addresses_and_refuses_others() {
        let valid = validate_email(ValidateEmailInput {
            email: " Ada@Example.ORG ".into(),
        })
        .await
        .unwrap();
        assert_eq!(valid.email, "ada@example.org");
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@example",
            "ada@@example.org",
            "a da@x.org",
            "ada@x..org",
        ] {
            let error = validate_email(ValidateEmailInput { email: bad.into() })
                .await
                .unwrap_err();
            assert_eq!(error, SignupError::InvalidEmail(bad.into()));
            assert_eq!(error.error_type(), "invalid_email");
        }
    }

    #[tokio::test]
    async fn create_account_is_deterministic_and_refuses_reserved_addresses() {
        let input = CreateAccountInput {
            email: "ada@example.org".into(),
            name: "Ada".into(),
            plan: Plan::Pro,
        };
        let first = create_account(input.clone()).await.unwrap();
        assert_eq!(first, create_account(input).await.unwrap());
        assert_eq!(first.account_id, account_id("ada@example.org"));
        assert_ne!(first.account_id, account_id("grace@example.org"));
        assert_eq!(first.plan, Plan::Pro);
        let reserved = create_account(CreateAccountInput {
            email: "postmaster@example.org".into(),
            name: "Post".into(),
            plan: Plan::Free,
        })
        .await
        .unwrap_err();
        assert_eq!(reserved.error_type(), "reserved_address");
    }

    #[tokio::test]
    async fn send_welcome_greets_by_name_with_an_id_per_account() {
        let message = send_welcome(SendWelcomeInput {
            account_id: "acct-1".into(),
            email: "ada@example.org".into(),
            name: "Ada".into(),
        })
        .await
        .unwrap();
        assert_eq!(message.message_id, "welcome-acct-1");
        assert_eq!(message.subject, "Welcome aboard, Ada!");
    }

    #[test]
    fn plans_parse_from_their_display() {
        for plan in [Plan::Free, Plan::Pro] {
            assert_eq!(plan.to_string().parse::<Plan>(), Ok(plan));
        }
        assert!("gold".parse::<Plan>().is_err());
    }
}
