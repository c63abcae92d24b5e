//! Decides how each way a reconcile can end is named and treated: the one
//! vocabulary of reasons that conditions, Events and metrics share.
//!
//! Every reason says whether it counts as a failure (and so grows the
//! backoff), whether it is retried after the backoff or waits for a change,
//! and its category, the `result` label of `reconciles_total`. No reason is a
//! string literal anywhere else.

use std::fmt;

/// Why a reconcile ended as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The Secret holds valid credentials for the current spec.
    CredentialsReady,
    /// New credentials were written.
    CredentialsRefreshed,
    /// The held credentials were written back after another writer deleted
    /// or changed the Secret.
    SecretRestored,
    /// The Secret was rewritten around the same credentials: labels,
    /// annotations, mount path, profile or name changed.
    SecretUpdated,
    /// A Secret left behind by a rename was deleted.
    SecretRemoved,
    /// `RefreshAdjusted`: the setting would refresh later than the floor
    /// allows, so the refresh is at the floor.
    ClampedToFloor,
    /// `RefreshAdjusted`: the setting is longer than the lifetime STS
    /// granted, so the default is used.
    FellBackToDefault,
    /// `DurationAdjusted`: a chained session asks for at most an hour.
    ClampedForChaining,
    /// Nothing was tried: the reconcile only waited out the backoff of
    /// earlier failures.
    BackingOff,
    /// `spec.suspend` is set.
    Suspended,
    /// The spec cannot be acted on.
    InvalidSpec,
    /// A Secret of that name exists and is not this AssumedRole's.
    SecretConflict,
    /// Another writer keeps changing the Secret; the operator stopped
    /// restoring it until the next refresh.
    SecretContested,
    /// No `AssumedRolePolicy` allows this namespace to assume this role
    /// (with this duration and source).
    PolicyDenied,
    /// The identity that `spec.source` names cannot be had: the
    /// ServiceAccount, the Secret or its keys, or the other AssumedRole's
    /// credentials are missing.
    SourceUnavailable,
    /// `spec.source.assumedRoleRef` leads back to where it started.
    SourceCycle,
    /// The operator was installed without this kind of source (`--sources`,
    /// the chart's `sources` values), so it has no permission to use it.
    SourceDisabled,
    /// STS refused: the operator may not assume the role.
    AccessDenied,
    /// STS asked the operator to slow down.
    Throttled,
    /// STS could not be reached or failed on its side.
    StsUnavailable,
    /// The operator has no AWS credentials of its own.
    NoCredentials,
    /// The API server's RBAC refused a call.
    Forbidden,
    /// The namespace is being deleted.
    NamespaceTerminating,
    /// Reading the Secret failed.
    GetSecret,
    /// Writing the Secret failed.
    ApplySecret,
    /// Writing the status failed.
    PatchStatus,
    /// The object lacks metadata the API server always sets.
    MissingMetadata,
}

/// What a reason does to the retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing failed: next time at the refresh time.
    AtRefresh,
    /// Retried after the exponential backoff, and counted as a failure.
    Backoff,
    /// Counted as a failure, but retried only when the object changes.
    OnChange,
    /// Not a failure; nothing happens until the object changes.
    Never,
}

impl Reason {
    /// The name used as condition reason and Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsReady => "CredentialsReady",
            Self::CredentialsRefreshed => "CredentialsRefreshed",
            Self::SecretRestored => "SecretRestored",
            Self::SecretUpdated => "SecretUpdated",
            Self::SecretRemoved => "SecretRemoved",
            Self::ClampedToFloor => "ClampedToFloor",
            Self::FellBackToDefault => "FellBackToDefault",
            Self::ClampedForChaining => "ClampedForChaining",
            Self::BackingOff => "BackingOff",
            Self::Suspended => "Suspended",
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretConflict => "SecretConflict",
            Self::SecretContested => "SecretContested",
            Self::PolicyDenied => "PolicyDenied",
            Self::SourceUnavailable => "SourceUnavailable",
            Self::SourceCycle => "SourceCycle",
            Self::SourceDisabled => "SourceDisabled",
            Self::AccessDenied => "AccessDenied",
            Self::Throttled => "Throttled",
            Self::StsUnavailable => "STSUnavailable",
            Self::NoCredentials => "NoCredentials",
            Self::Forbidden => "Forbidden",
            Self::NamespaceTerminating => "NamespaceTerminating",
            Self::GetSecret => "GetSecret",
            Self::ApplySecret => "ApplySecret",
            Self::PatchStatus => "PatchStatus",
            Self::MissingMetadata => "MissingMetadata",
        }
    }

    /// How the reason is retried, and whether it counts as a failure.
    pub fn retry(self) -> Retry {
        match self {
            Self::CredentialsReady
            | Self::CredentialsRefreshed
            | Self::SecretRestored
            | Self::SecretUpdated
            | Self::SecretRemoved
            | Self::ClampedToFloor
            | Self::FellBackToDefault
            | Self::ClampedForChaining => Retry::AtRefresh,
            Self::Suspended | Self::SecretContested | Self::BackingOff => Retry::Never,
            Self::InvalidSpec | Self::MissingMetadata | Self::PolicyDenied | Self::SourceDisabled => Retry::OnChange,
            Self::SecretConflict
            | Self::SourceUnavailable
            | Self::SourceCycle
            | Self::AccessDenied
            | Self::Throttled
            | Self::StsUnavailable
            | Self::NoCredentials
            | Self::Forbidden
            | Self::NamespaceTerminating
            | Self::GetSecret
            | Self::ApplySecret
            | Self::PatchStatus => Retry::Backoff,
        }
    }

    /// Whether this ending counts as a failed attempt.
    pub fn is_failure(self) -> bool {
        matches!(self.retry(), Retry::Backoff | Retry::OnChange)
    }

    /// Whether this failure is about reaching the API server rather than
    /// about the object: while it lasts, neither status nor Events can be
    /// written either.
    pub fn is_api_failure(self) -> bool {
        matches!(self, Self::GetSecret | Self::ApplySecret | Self::PatchStatus)
    }

    /// Whether this failure is STS being down or throttling rather than
    /// about the role: over once STS answers a call again.
    pub fn is_sts_outage(self) -> bool {
        matches!(self, Self::StsUnavailable | Self::Throttled)
    }

    /// The `result` label of `reconciles_total`: a handful of fixed words,
    /// so that a dashboard can tell working AssumedRoles from failing ones.
    pub fn category(self) -> &'static str {
        match self {
            Self::CredentialsReady
            | Self::CredentialsRefreshed
            | Self::SecretRestored
            | Self::SecretUpdated
            | Self::SecretRemoved
            | Self::ClampedToFloor
            | Self::FellBackToDefault
            | Self::ClampedForChaining => "success",
            Self::Suspended => "suspended",
            Self::BackingOff => "backoff",
            Self::InvalidSpec | Self::MissingMetadata => "invalid_spec",
            Self::PolicyDenied | Self::SourceDisabled => "policy_denied",
            Self::SourceUnavailable => "source_unavailable",
            Self::SourceCycle => "invalid_spec",
            Self::SecretConflict | Self::SecretContested => "secret_conflict",
            Self::AccessDenied | Self::NoCredentials => "sts_denied",
            Self::Throttled | Self::StsUnavailable => "sts_unavailable",
            Self::Forbidden | Self::NamespaceTerminating => "api_denied",
            Self::GetSecret | Self::ApplySecret | Self::PatchStatus => "api_unavailable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason with the words that explain it to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: Reason,
    /// What happened, for the condition and the Event note.
    pub message: String,
}

impl Failure {
    /// A failure for `reason`, explained by `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl From<crate::sts::StsError> for Failure {
    fn from(e: crate::sts::StsError) -> Self {
        use crate::sts::StsError;
        let reason = match &e {
            StsError::AccessDenied(_) => Reason::AccessDenied,
            StsError::Throttled(_) => Reason::Throttled,
            StsError::InvalidRequest(_) => Reason::InvalidSpec,
            StsError::Unavailable(_) => Reason::StsUnavailable,
            StsError::NoCredentials(_) => Reason::NoCredentials,
        };
        Self::new(reason, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; 27] = [
        Reason::ClampedForChaining,
        Reason::SourceDisabled,
        Reason::PolicyDenied,
        Reason::SourceUnavailable,
        Reason::SourceCycle,
        Reason::BackingOff,
        Reason::CredentialsReady,
        Reason::CredentialsRefreshed,
        Reason::SecretRestored,
        Reason::SecretUpdated,
        Reason::SecretRemoved,
        Reason::ClampedToFloor,
        Reason::FellBackToDefault,
        Reason::Suspended,
        Reason::InvalidSpec,
        Reason::SecretConflict,
        Reason::SecretContested,
        Reason::AccessDenied,
        Reason::Throttled,
        Reason::StsUnavailable,
        Reason::NoCredentials,
        Reason::Forbidden,
        Reason::NamespaceTerminating,
        Reason::GetSecret,
        Reason::ApplySecret,
        Reason::PatchStatus,
        Reason::MissingMetadata,
    ];

    #[test]
    fn only_working_credentials_count_as_success() {
        for reason in ALL {
            assert_eq!(
                reason.category() == "success",
                reason.retry() == Retry::AtRefresh,
                "{reason}"
            );
            assert_eq!(
                reason.is_failure(),
                matches!(reason.retry(), Retry::Backoff | Retry::OnChange)
            );
        }
        assert_eq!(Reason::AccessDenied.category(), "sts_denied");
        assert!(!Reason::Suspended.is_failure());
    }

    #[test]
    fn reasons_are_pascal_case_words_of_their_own() {
        let names: std::collections::HashSet<&str> = ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), ALL.len());
        for name in names {
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
            assert!(name.starts_with(|c: char| c.is_ascii_uppercase()), "{name}");
        }
    }
}
