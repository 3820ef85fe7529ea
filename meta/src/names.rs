//! Validation of user-supplied names and the document key layout built from them.
//!
//! Keys join their parts with the unit separator `\x1f`. Names may contain no control
//! characters, so a key's parts can always be recovered, and every key of one owner (or one
//! file) lies in the half-open range `prefix\x1f .. prefix\x20`: listing is a `map_range`.

use crate::error::MetaError;

pub(crate) const SEP: char = '\x1f';
/// The character right after [`SEP`]; the exclusive end of a prefix range.
const SEP_END: char = '\x20';

/// Longest file name or tag, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest user name, in bytes.
pub const MAX_USER_BYTES: usize = 64;
/// Longest node id, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 128;

/// A controller's node id, given by the caller (derived from its libp2p key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// `[A-Za-z0-9._:-]{1,128}`.
    pub fn new(id: impl Into<String>) -> Result<Self, MetaError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_NODE_ID_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return Err(MetaError::invalid(
                "node id",
                format!("{id:?} must be 1-{MAX_NODE_ID_BYTES} characters of [A-Za-z0-9._:-]"),
            ));
        }
        Ok(NodeId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// User names: `[a-z0-9._-]{1,64}`.
pub fn validate_user(user: &str) -> Result<(), MetaError> {
    let ok = !user.is_empty()
        && user.len() <= MAX_USER_BYTES
        && user.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(MetaError::invalid(
            "user name",
            format!("{user:?} must be 1-{MAX_USER_BYTES} characters of [a-z0-9._-]"),
        ))
    }
}

/// File names: 1-255 bytes, no control characters, no '/'.
pub fn validate_name(name: &str) -> Result<(), MetaError> {
    validate_text_field("file name", name)
}

/// Tags: 1-255 bytes, no control characters, no '/'.
pub fn validate_tag(tag: &str) -> Result<(), MetaError> {
    validate_text_field("tag", tag)
}

/// 1-255 bytes, no control characters, no '/'; errors name `field`.
pub(crate) fn validate_text_field(field: &'static str, s: &str) -> Result<(), MetaError> {
    if s.is_empty() {
        return Err(MetaError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(MetaError::invalid(
            field,
            format!("is {} bytes, longer than {MAX_NAME_BYTES}", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || *c == '/') {
        return Err(MetaError::invalid(
            field,
            format!("{s:?} contains the forbidden character {c:?}"),
        ));
    }
    Ok(())
}

/// `owner\x1fname`: the key of a file in `heads`.
pub(crate) fn file_key(owner: &str, name: &str) -> String {
    format!("{owner}{SEP}{name}")
}

/// The first 8 bytes (little endian) of BLAKE3(`fkey`): what places a file in its shard, and
/// how the derived counts tell files apart.
pub(crate) fn file_hash(fkey: &str) -> u64 {
    let h = blake3::hash(fkey.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// `file_key\x1fpart`: a version (`part` = vid) or a tag of a file.
pub(crate) fn sub_key(file_key: &str, part: &str) -> String {
    format!("{file_key}{SEP}{part}")
}

/// The key range of every key that starts with `prefix\x1f`.
pub(crate) fn prefix_range(prefix: &str) -> std::ops::Range<String> {
    format!("{prefix}{SEP}")..format!("{prefix}{SEP_END}")
}

/// The last `\x1f`-separated part of a key.
pub(crate) fn last_part(key: &str) -> &str {
    key.rsplit(SEP).next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let e = validate_name("a/b").unwrap_err().to_string();
        assert!(e.contains("file name") && e.contains("'/'"), "{e}");
        let e = validate_tag("a\u{1f}b").unwrap_err().to_string();
        assert!(e.starts_with("invalid tag"), "{e}");
        let e = validate_tag(&"x".repeat(256)).unwrap_err().to_string();
        assert!(e.contains("256 bytes"), "{e}");
        assert!(validate_tag(&"é".repeat(127)).is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("report 2024 (final).pdf").is_ok());
        assert!(validate_user("alice.b-2_x").is_ok());
        for bad in ["Alice", "", "a b", "a/b", &"a".repeat(65)] {
            let e = validate_user(bad).unwrap_err().to_string();
            assert!(e.contains("user name"), "{e}");
        }
        assert!(NodeId::new("12D3KooWabc").is_ok());
        assert!(NodeId::new("a/b").is_err());
    }

    #[test]
    fn prefix_range_covers_exactly_one_prefix() {
        let r = prefix_range("bob");
        assert!(r.contains(&file_key("bob", "x")));
        assert!(r.contains(&file_key("bob", "~~~")));
        assert!(!r.contains(&file_key("bobby", "x")));
        assert!(!r.contains(&file_key("bo", "x")));
        let f = file_key("bob", "a");
        let r = prefix_range(&f);
        assert!(r.contains(&sub_key(&f, "tag")));
        assert!(!r.contains(&sub_key(&file_key("bob", "ab"), "tag")));
        assert_eq!(last_part(&sub_key(&f, "t1")), "t1");
    }
}
