//! What an Event may hold: names and notes fitted to the API server's limits.
//! Pure functions; the publishing lives in [`crate::controller`].

use jiff::Timestamp;

/// The API server refuses an Event note longer than this, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;
/// The longest object name, in bytes (a DNS subdomain).
const MAX_NAME_BYTES: usize = 253;

/// The name of an Event about the object `name` created at `now`: the
/// object's name, shortened where it has to be, then a dot and the time in
/// hexadecimal nanoseconds, as kube-runtime names them. Always a valid DNS
/// subdomain of at most 253 characters when `name` is one.
pub fn event_name(name: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let room = MAX_NAME_BYTES - suffix.len();
    let mut base = cut(name, room);
    // A shortened name must still end in a letter or digit.
    while base.ends_with(['-', '.']) {
        base = &base[..base.len() - 1];
    }
    let base = if base.is_empty() { "assumedrole" } else { base };
    format!("{base}{suffix}")
}

/// The note as the API server takes it: at most [`MAX_NOTE_BYTES`], cut at a
/// character boundary and marked as cut.
pub fn fit_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_string();
    }
    const MARK: &str = " [...]";
    format!("{}{MARK}", cut(note, MAX_NOTE_BYTES - MARK.len()))
}

/// The longest prefix of `text` of at most `bytes` bytes that ends at a
/// character boundary.
pub fn cut(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dns_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn short_names_keep_the_object_name() {
        let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let name = event_name("reader", now);
        assert!(name.starts_with("reader."), "{name}");
        assert!(dns_subdomain(&name), "{name}");
    }

    proptest! {
        #[test]
        fn event_names_fit_whatever_the_object_name(
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", nanos in 0i64..i64::MAX / 4
        ) {
            prop_assume!(dns_subdomain(&name));
            let now = Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(Timestamp::UNIX_EPOCH);
            let event = event_name(&name, now);
            prop_assert!(dns_subdomain(&event), "{event}");
        }

        #[test]
        fn notes_fit_the_limit_and_are_cut_at_a_character(note in "\\PC{0,1200}") {
            let fitted = fit_note(&note);
            prop_assert!(fitted.len() <= MAX_NOTE_BYTES);
            if note.len() <= MAX_NOTE_BYTES {
                prop_assert_eq!(fitted, note);
            } else {
                prop_assert!(fitted.ends_with("[...]"));
            }
        }
    }
}
