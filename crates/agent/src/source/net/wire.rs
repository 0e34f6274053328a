//! Entries from the node's frames: a snapshot's list and a change set applied to the
//! followed state. A secret the token may not read arrives without its value: skipped and
//! logged by name.

use crate::state::{Entries, Entry};
use tether_core::protocol::{WireChange, WireEntry};

pub(super) fn to_entries(list: Vec<WireEntry>) -> Entries {
    let mut out = Entries::new();
    for e in list {
        match e.value {
            Some(value) => {
                out.insert(
                    e.name,
                    Entry {
                        value,
                        secret: e.secret,
                    },
                );
            }
            None => {
                tracing::warn!(key = %tether_core::logname::name(&e.name), "secret withheld by the node (token may not read secrets); skipped")
            }
        }
    }
    out
}

pub(super) fn apply_changes(entries: &mut Entries, changes: Vec<WireChange>) {
    for c in changes {
        match (c.delete, c.value) {
            (true, _) => {
                entries.remove(&c.name);
            }
            (false, Some(value)) => {
                entries.insert(
                    c.name,
                    Entry {
                        value,
                        secret: c.secret,
                    },
                );
            }
            (false, None) => {
                tracing::warn!(key = %tether_core::logname::name(&c.name), "secret withheld by the node (token may not read secrets); skipped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::secret::Value;

    #[test]
    fn changes_set_and_delete() {
        let mut e = crate::state::entries(&[("A", "1"), ("B", "1")]);
        apply_changes(
            &mut e,
            vec![
                WireChange {
                    name: "A".into(),
                    value: Some(Value::from("2")),
                    secret: false,
                    delete: false,
                },
                WireChange {
                    name: "B".into(),
                    value: None,
                    secret: false,
                    delete: true,
                },
            ],
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e["A"].value.expose(), b"2");
    }
}
