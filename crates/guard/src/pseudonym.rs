//! Reversible pseudonyms: `<EMAIL_1>` in the prompt, the real address back in the answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;

/// The tags of one request and the values they stand for. The same value always gets the
/// same tag; tags are numbered per kind in order of first appearance.
///
/// Holds personal data: its `Debug` output shows the tags only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pseudonyms {
    by_value: HashMap<String, String>,
    by_tag: BTreeMap<String, String>,
    counts: HashMap<String, usize>,
}

/// Two pseudonym maps gave one tag to different values (see [`Pseudonyms::merge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pseudonym {tag} stands for different values in the two maps; check all messages of a \
     request with one map (Policy::check_input_with) instead of merging separate ones"
)]
pub struct PseudonymConflict {
    /// The tag in conflict.
    pub tag: String,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonyms")
            .field("tags", &self.by_tag.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a pseudonym tag looks like: `<LABEL_n>`. Bounded (at most 40 bytes), so the stream
/// guard's hold-back always covers a tag split across chunks.
pub(crate) static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<[A-Z][A-Z0-9_]{0,30}_[0-9]{1,6}>").expect("tag regex"));

impl Pseudonyms {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tag for `value`, creating `<LABEL_n>` the first time the value is seen.
    pub fn tag_for(&mut self, label: &str, value: &str) -> String {
        if let Some(tag) = self.by_value.get(value) {
            return tag.clone();
        }
        let n = self.counts.entry(label.to_string()).or_insert(0);
        *n += 1;
        let tag = format!("<{label}_{n}>");
        self.by_value.insert(value.to_string(), tag.clone());
        self.by_tag.insert(tag.clone(), value.to_string());
        tag
    }

    /// The original value of a tag.
    pub fn value(&self, tag: &str) -> Option<&str> {
        self.by_tag.get(tag).map(String::as_str)
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.by_tag.len()
    }

    /// No tags?
    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }

    /// `(tag, value)` pairs in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_tag.iter().map(|(t, v)| (t.as_str(), v.as_str()))
    }

    /// Adds another map's tags. Fails, changing nothing, when a tag means different values
    /// in the two maps (they were numbered independently); use one map for all messages of a
    /// request to avoid that.
    pub fn merge(&mut self, other: &Pseudonyms) -> Result<(), PseudonymConflict> {
        for (tag, value) in &other.by_tag {
            let clash = self.by_tag.get(tag).is_some_and(|v| v != value)
                || self.by_value.get(value).is_some_and(|t| t != tag);
            if clash {
                return Err(PseudonymConflict { tag: tag.clone() });
            }
        }
        for (tag, value) in &other.by_tag {
            self.by_tag.insert(tag.clone(), value.clone());
            self.by_value.insert(value.clone(), tag.clone());
        }
        for (label, &n) in &other.counts {
            let mine = self.counts.entry(label.clone()).or_insert(0);
            *mine = (*mine).max(n);
        }
        Ok(())
    }

    /// Replaces every known tag in `text` by its value (unknown tags stay as written).
    pub fn restore(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        TAG.replace_all(text, |c: &regex::Captures<'_>| {
            self.value(&c[0]).unwrap_or(&c[0]).to_string()
        })
        .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_same_tag_numbered_per_kind() {
        let mut p = Pseudonyms::new();
        assert_eq!(p.tag_for("EMAIL", "a@x.io"), "<EMAIL_1>");
        assert_eq!(p.tag_for("PHONE", "+1 415 555 2671"), "<PHONE_1>");
        assert_eq!(p.tag_for("EMAIL", "b@x.io"), "<EMAIL_2>");
        assert_eq!(p.tag_for("EMAIL", "a@x.io"), "<EMAIL_1>");
        assert_eq!(
            p.restore("mail <EMAIL_2> and <EMAIL_1>, not <EMAIL_9>"),
            "mail b@x.io and a@x.io, not <EMAIL_9>"
        );
        assert!(
            !format!("{p:?}").contains("a@x.io"),
            "Debug must not leak values"
        );
    }

    #[test]
    fn merge_accepts_agreeing_maps_and_refuses_conflicts() {
        let mut a = Pseudonyms::new();
        a.tag_for("EMAIL", "a@x.io");
        let mut b = a.clone();
        b.tag_for("EMAIL", "b@x.io");
        a.merge(&b).unwrap();
        assert_eq!(a.value("<EMAIL_2>"), Some("b@x.io"));
        assert_eq!(a.tag_for("EMAIL", "c@x.io"), "<EMAIL_3>");

        let mut c = Pseudonyms::new();
        c.tag_for("EMAIL", "other@x.io");
        let err = a.merge(&c).unwrap_err();
        assert_eq!(err.tag, "<EMAIL_1>");
        assert_eq!(a.value("<EMAIL_1>"), Some("a@x.io"));
    }
}
