//! When a workload whose pods read credentials once is restarted: pure.
//!
//! A workload names the AssumedRoles it uses in an annotation. Its
//! *generation* is which credentials its pods started with: for each
//! AssumedRole, the expiration of the set in its Secret, a value that
//! changes with each mint and with nothing else. The operator writes the
//! generation into the pod template (a rollout) and onto the workload (what
//! the next decision reads), once per new set: never twice for one set,
//! never for a set not yet written (the status names a set only after its
//! Secret holds it), never because the operator restarted (the generation
//! is on the workload, not in memory).

use jiff::Timestamp;

/// On a Deployment, StatefulSet or DaemonSet: the AssumedRoles (in its
/// namespace, comma-separated) whose new credentials restart its pods.
pub const RESTART_ANNOTATION: &str = "sts.refresh.dev/restart-on-refresh";
/// On the workload and its pod template: the credentials its pods started
/// with, as the operator last rolled them out.
pub const GENERATION_ANNOTATION: &str = "sts.refresh.dev/credentials-generation";

/// The credentials an AssumedRole's Secret holds, as its status tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Set {
    /// When they expire: the set's identity.
    pub expires: Timestamp,
    /// When they were written.
    pub issued: Timestamp,
}

/// What to do with one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: its pods hold the current sets, or a set is not known yet.
    Keep,
    /// Roll it out, writing this generation.
    Roll(String),
}

/// The AssumedRoles an annotation value names, sorted, without repeats.
pub fn roles(annotation: &str) -> Vec<String> {
    let mut names: Vec<String> = annotation
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The generation of `sets` (by AssumedRole name, sorted), if every set is
/// known.
pub fn generation(sets: &[(String, Option<Set>)]) -> Option<String> {
    let parts: Option<Vec<String>> = sets
        .iter()
        .map(|(name, set)| set.map(|s| format!("{name}={}", s.expires)))
        .collect();
    parts.map(|p| p.join(","))
}

/// What to do with a workload created at `created`, whose pods were last
/// rolled to `rolled` (`None`: never by the operator), given the current
/// `sets` of the AssumedRoles it names.
pub fn decide(rolled: Option<&str>, created: Timestamp, sets: &[(String, Option<Set>)]) -> Verdict {
    let Some(wanted) = generation(sets) else {
        return Verdict::Keep;
    };
    match rolled {
        Some(rolled) if rolled == wanted => Verdict::Keep,
        Some(_) => Verdict::Roll(wanted),
        // Never rolled: pods created after every set was written read them
        // at their start; the next set rolls them. Both times are whole
        // seconds: a set written in the second the workload was created
        // may be newer than what its pods read, and rolls.
        None if sets.iter().all(|(_, s)| s.is_some_and(|s| s.issued < created)) => Verdict::Keep,
        None => Verdict::Roll(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn set(issued: i64) -> Option<Set> {
        Some(Set {
            expires: at(issued + 3600),
            issued: at(issued),
        })
    }

    #[test]
    fn a_new_set_rolls_once_and_the_same_set_never_again() {
        let first = vec![("reader".to_string(), set(0))];
        let Verdict::Roll(g1) = decide(None, at(-10), &first) else {
            panic!("a workload older than the set rolls");
        };
        assert_eq!(decide(Some(&g1), at(-10), &first), Verdict::Keep, "once per set");
        let second = vec![("reader".to_string(), set(2400))];
        let Verdict::Roll(g2) = decide(Some(&g1), at(-10), &second) else {
            panic!("a new set rolls");
        };
        assert_ne!(g1, g2);
        assert_eq!(decide(Some(&g2), at(-10), &second), Verdict::Keep);
    }

    #[test]
    fn a_workload_created_after_its_sets_waits_for_the_next() {
        let sets = vec![("a".to_string(), set(0)), ("b".to_string(), set(5))];
        assert_eq!(decide(None, at(10), &sets), Verdict::Keep);
        assert!(
            matches!(decide(None, at(3), &sets), Verdict::Roll(_)),
            "b was written after it"
        );
    }

    #[test]
    fn an_unknown_set_rolls_nothing() {
        let sets = vec![("a".to_string(), set(0)), ("missing".to_string(), None)];
        assert_eq!(decide(Some("old"), at(-10), &sets), Verdict::Keep);
    }

    #[test]
    fn the_annotation_names_each_role_once_in_order() {
        assert_eq!(roles(" b, a,,b "), vec!["a".to_string(), "b".to_string()]);
        let sets = vec![("a".to_string(), set(0)), ("b".to_string(), set(0))];
        assert_eq!(generation(&sets).unwrap(), format!("a={},b={}", at(3600), at(3600)));
    }
}
