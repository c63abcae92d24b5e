//! assumed-role-operator keeps AWS STS AssumeRole credentials fresh in
//! Kubernetes Secrets.
//!
//! An `AssumedRole` names an IAM role. The operator assumes it, writes the
//! temporary credentials into a Secret that the AssumedRole owns, and
//! refreshes them well before they expire, in a layout that AWS SDKs in pods
//! re-read by themselves.
//!
//! Data flows one way: a watch event, then [`controller::reconcile`], then
//! one decision from the pure modules ([`plan`], with [`schedule`],
//! [`secret`] and [`api`]), then the effects (STS, the Secret, status, an
//! Event), which live in [`controller`] and [`sts`] alone (and the loading of
//! the signing key, [`hmac_key`]); [`status`] and [`outcome`] say what the
//! status and the metrics make of the result.

pub mod admin;
pub mod allocator;
pub mod api;
pub mod api_limit;
pub mod budget;
pub mod clock;
pub mod controller;
pub mod credentials;
pub mod ecr;
pub mod endpoint;
pub mod events;
pub mod fanout;
#[cfg(test)]
pub mod fixtures;
pub mod hmac_key;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod rollout;
pub mod schedule;
pub mod secret;
pub mod source;
pub mod status;
pub mod sts;
pub mod webhook;

/// Failures of the controller's effects. Each variant is named for the
/// operation that failed; [`Error::reason`] gives the reason it is reported
/// under.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the target Secret failed.
    #[error("reading Secret {name}: {}", api_message(.source))]
    GetSecret {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the target Secret failed.
    #[error("applying Secret {name}: {}", api_message(.source))]
    ApplySecret {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the AssumedRole's status failed.
    #[error("patching status: {}", api_message(.0))]
    PatchStatus(#[source] kube::Error),
    /// Reading or creating the key that signs Secret data failed.
    #[error("loading the HMAC key Secret {name}: {}", api_message(.source))]
    HmacKey {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Asking the API server for a ServiceAccount's token failed.
    #[error("requesting a token for ServiceAccount {name} (spec.source.serviceAccountName): {}", api_message(.source))]
    RequestToken {
        /// The ServiceAccount's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading what `spec.source` names failed.
    #[error("reading {what}: {}", api_message(.source))]
    GetSource {
        /// What, in words that name the field.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object lacks metadata the API server always sets.
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// The reason this failure is reported under: the condition and Event
    /// reason, whose category is the metric label.
    pub fn reason(&self) -> outcome::Reason {
        use outcome::Reason;
        let api = match self {
            Self::GetSecret { source, .. }
            | Self::ApplySecret { source, .. }
            | Self::HmacKey { source, .. }
            | Self::RequestToken { source, .. }
            | Self::GetSource { source, .. } => Some(source),
            Self::PatchStatus(source) => Some(source),
            Self::MissingMetadata(_) => None,
        };
        if let Some(kube::Error::Api(status)) = api
            && status.code == 403
        {
            // A namespace being deleted refuses new objects with 403 too; that
            // is not RBAC's doing.
            if status.message.contains("being terminated") {
                return Reason::NamespaceTerminating;
            }
            return Reason::Forbidden;
        }
        match self {
            Self::GetSecret { .. } | Self::HmacKey { .. } => Reason::GetSecret,
            Self::ApplySecret { .. } => Reason::ApplySecret,
            Self::PatchStatus(_) => Reason::PatchStatus,
            Self::RequestToken { .. } | Self::GetSource { .. } => Reason::SourceUnavailable,
            Self::MissingMetadata(_) => Reason::MissingMetadata,
        }
    }
}

impl From<&Error> for outcome::Failure {
    fn from(e: &Error) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

/// What the API server (or the connection to it) said, in its own words: the
/// `message` of a Status, not the client's debug dump of it.
pub fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) => format!("{} (HTTP {})", status.reason, status.code),
        other => {
            // The client's own errors read best with their causes.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn categories_tell_rbac_refusals_from_terminating_namespaces() {
        let rbac = Error::ApplySecret {
            name: "s".into(),
            source: api_error(
                403,
                "secrets \"s\" is forbidden: User \"x\" cannot patch resource \"secrets\"",
            ),
        };
        assert_eq!(rbac.reason(), outcome::Reason::Forbidden);
        let terminating = Error::ApplySecret {
            name: "s".into(),
            source: api_error(
                403,
                "unable to create new content in namespace n because it is being terminated",
            ),
        };
        assert_eq!(terminating.reason(), outcome::Reason::NamespaceTerminating);
        let other = Error::PatchStatus(api_error(409, "conflict"));
        assert_eq!(other.reason(), outcome::Reason::PatchStatus);
    }

    #[test]
    fn api_errors_read_as_the_api_servers_message_not_a_debug_dump() {
        let err = Error::ApplySecret {
            name: "reader".into(),
            source: api_error(422, "Secret \"reader\" is invalid: metadata.labels: Invalid value"),
        };
        assert_eq!(
            err.to_string(),
            "applying Secret reader: Secret \"reader\" is invalid: metadata.labels: Invalid value"
        );
        assert!(!err.to_string().contains("Status {"), "{err}");
    }
}
