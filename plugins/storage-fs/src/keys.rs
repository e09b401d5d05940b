//! Object keys: which strings name an object, and which list prefixes could start one.
//!
//! A key is `/`-separated segments of `[A-Za-z0-9._-]`, none empty, none starting with `.`
//! (so `.`, `..` and the store's own `.incoming/` are unreachable), without a leading `/`, at
//! most [`MAX_KEY_BYTES`] long. Every valid key is a relative path inside the root.

use hyperplane_guest::storage::Error;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Whether `character` may appear in a key segment.
fn is_segment_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
}

/// Why `key` is not a valid key, or `None` when it is.
fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Some(format!("the key is {} bytes long; at most {MAX_KEY_BYTES} are allowed", key.len()));
    }
    if key.starts_with('/') {
        return Some(format!("the key {key:?} starts with `/`"));
    }
    if let Some(bad_character) = key.chars().find(|character| *character != '/' && !is_segment_character(*character)) {
        return Some(format!("the key {key:?} contains {bad_character:?}; keys use only [A-Za-z0-9._-] and `/`"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Some(format!("the key {key:?} has an empty segment"));
        }
        if segment == "." || segment == ".." {
            return Some(format!("the key {key:?} has a `{segment}` segment"));
        }
        if segment.starts_with('.') {
            return Some(format!("the key {key:?} has a segment starting with `.` (reserved for the store)"));
        }
    }
    None
}

/// Checks `key`; [`Error::Invalid`] says what is wrong with it.
pub fn validate_key(key: &str) -> Result<(), Error> {
    match key_problem(key) {
        None => Ok(()),
        Some(problem) => Err(Error::Invalid(problem)),
    }
}

/// Checks a list prefix: the empty prefix, or one that some valid key starts with. A prefix may
/// end inside a segment (`chunks/ab`) or after a `/` (`chunks/`).
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    // Some valid key starts with `prefix` exactly when `prefix` is a key, or one with one more
    // character after it is (`x` continues a segment or starts one after a `/`).
    if prefix.is_empty() || key_problem(prefix).is_none() || key_problem(&format!("{prefix}x")).is_none() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "the prefix {:?} cannot start any key (keys are `/`-separated segments of [A-Za-z0-9._-], \
         none empty or starting with `.`, at most {MAX_KEY_BYTES} bytes)",
        shorten(prefix)
    )))
}

/// `text` cut to a length fit for an error message.
fn shorten(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_key(key: &str, expected_problem_fragment: Option<&str>) {
        match (validate_key(key), expected_problem_fragment) {
            (Ok(()), None) => {}
            (Err(Error::Invalid(message)), Some(fragment)) => {
                assert!(message.contains(fragment), "{key:?}: {message:?} does not contain {fragment:?}");
            }
            (outcome, expected) => panic!("{key:?}: got {outcome:?}, expected a problem like {expected:?}"),
        }
    }

    #[test]
    fn keys_are_checked_strictly() {
        check_key("template", None);
        check_key("chunks/ab/abcdef0123", None);
        check_key("a.b_c-D9/x..y", None);
        check_key(&"k".repeat(MAX_KEY_BYTES), None);

        check_key("", Some("empty"));
        check_key("../x", Some("`..` segment"));
        check_key("..", Some("`..` segment"));
        check_key("a/../b", Some("`..` segment"));
        check_key("/abs", Some("starts with `/`"));
        check_key("a//b", Some("empty segment"));
        check_key("a/", Some("empty segment"));
        check_key("a/./b", Some("`.` segment"));
        check_key(".incoming/x", Some("starting with `.`"));
        check_key("a/.hidden", Some("starting with `.`"));
        check_key(&"k".repeat(MAX_KEY_BYTES + 1), Some("1025 bytes"));
        check_key("a b", Some("' '"));
        check_key("a\\b", Some("'\\\\'"));
        check_key("caf\u{e9}", Some("'\u{e9}'"));
        check_key("a\0b", Some("'\\0'"));
        check_key("a:b", Some("':'"));
    }

    #[test]
    fn prefixes_must_be_able_to_start_a_key() {
        for acceptable in ["", "a", "chunks/", "chunks/ab", "a.b", "a/b."] {
            assert!(validate_prefix(acceptable).is_ok(), "{acceptable:?}");
        }
        for unacceptable in ["/", "/a", "a//", ".", ".incoming/", "a/.", "a/..", "a b", "../"] {
            assert!(matches!(validate_prefix(unacceptable), Err(Error::Invalid(_))), "{unacceptable:?}");
        }
        assert!(matches!(validate_prefix(&"k".repeat(MAX_KEY_BYTES + 1)), Err(Error::Invalid(_))));
    }
}
