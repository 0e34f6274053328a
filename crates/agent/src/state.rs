//! The agent's view of configuration: named entries merged from several sources, and the
//! diff between two views.

use std::collections::BTreeMap;

use tether_core::secret::Value;

/// One configuration entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Value,
    /// Marked secret by its source. Every value is redacted when printed; this flag decides
    /// who may read it (network sources) and how `check` describes it.
    pub secret: bool,
}

/// Names to entries, in name order (so renders are deterministic).
pub type Entries = BTreeMap<String, Entry>;

/// The last good entries of each source, in precedence order (later overrides earlier).
#[derive(Clone, Debug, Default)]
pub struct Layers {
    layers: Vec<Option<Entries>>,
}

impl Layers {
    pub fn new(count: usize) -> Self {
        Layers {
            layers: vec![None; count],
        }
    }

    /// Replace one source's entries. Returns whether they differ from what it had.
    pub fn set(&mut self, index: usize, entries: Entries) -> bool {
        let slot = &mut self.layers[index];
        if slot.as_ref() == Some(&entries) {
            return false;
        }
        *slot = Some(entries);
        true
    }

    /// One source's last good entries, if it delivered any.
    pub fn get(&self, index: usize) -> Option<&Entries> {
        self.layers.get(index)?.as_ref()
    }

    /// True once every source has delivered at least once.
    #[cfg(test)]
    pub fn complete(&self) -> bool {
        self.layers.iter().all(Option::is_some)
    }

    /// Merge all layers key by key; a later source wins.
    pub fn merged(&self) -> Entries {
        // Start from a copy of the first layer: cloning a map copies its tree as it is,
        // without the key comparisons of inserting entry by entry (on every change).
        let mut present = self.layers.iter().flatten();
        let mut out = present.next().cloned().unwrap_or_default();
        for layer in present {
            for (k, v) in layer {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

/// Names added, removed or changed between two views, in name order. Both maps are in
/// name order, so one walk over them side by side finds every difference.
pub fn changed_keys(old: &Entries, new: &Entries) -> Vec<String> {
    use std::cmp::Ordering;
    let mut keys = Vec::new();
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return keys,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ko, _)), Some((kn, _))) => ko.cmp(kn),
        };
        match order {
            // Only in the old view: removed.
            Ordering::Less => keys.extend(old.next().map(|(k, _)| k.clone())),
            // Only in the new view: added.
            Ordering::Greater => keys.extend(new.next().map(|(k, _)| k.clone())),
            // In both: changed when the entries differ.
            Ordering::Equal => {
                if let (Some((k, vo)), Some((_, vn))) = (old.next(), new.next()) {
                    if vo != vn {
                        keys.push(k.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn entries(pairs: &[(&str, &str)]) -> Entries {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Entry {
                    value: Value::from(*v),
                    secret: true,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layer_wins_key_by_key() {
        let mut l = Layers::new(2);
        assert!(!l.complete());
        assert!(l.set(0, entries(&[("A", "1"), ("B", "1")])));
        assert!(!l.complete());
        assert!(l.set(1, entries(&[("B", "2"), ("C", "2")])));
        assert!(l.complete());
        assert_eq!(l.merged(), entries(&[("A", "1"), ("B", "2"), ("C", "2")]));
        assert!(
            !l.set(1, entries(&[("B", "2"), ("C", "2")])),
            "same entries are no change"
        );
    }

    #[test]
    fn diff_names_added_removed_changed() {
        let old = entries(&[("A", "1"), ("B", "1"), ("C", "1")]);
        let new = entries(&[("A", "1"), ("B", "2"), ("D", "1")]);
        assert_eq!(changed_keys(&old, &new), ["B", "C", "D"]);
        assert!(changed_keys(&new, &new).is_empty());
        // Differences at either end, on either side, and against nothing.
        let a = entries(&[("B", "1"), ("C", "1")]);
        let b = entries(&[("A", "1"), ("B", "1"), ("D", "1")]);
        assert_eq!(changed_keys(&a, &b), ["A", "C", "D"]);
        assert_eq!(changed_keys(&b, &a), ["A", "C", "D"]);
        assert_eq!(changed_keys(&Entries::new(), &a), ["B", "C"]);
        assert_eq!(changed_keys(&a, &Entries::new()), ["B", "C"]);
        let mut secret_flag = a.clone();
        secret_flag.get_mut("C").unwrap().secret = false;
        assert_eq!(changed_keys(&a, &secret_flag), ["C"]);
    }
}
