//! Names that agents and nodes agree on: which names of environments and entries are safe
//! everywhere an agent may put them. (Sizes on the wire: `protocol::MAX_AGENT_FRAME`; what the
//! store takes is the node's `store::size`.)

/// Longest name of an environment or an entry, in bytes.
pub const MAX_NAME: usize = 256;

/// Names that are safe everywhere an agent may put them: non-empty, at most [`MAX_NAME`]
/// bytes, no NUL, no `/`, no `=`, no control character, not `.` or `..`. The error says
/// which rule `name` breaks, naming it as a `kind` ("environment", "entry").
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{kind} name {name:?} {why}"));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad("is longer than 256 bytes");
    }
    if name.contains(['\0', '/', '=']) {
        return bad("contains '/', '=' or NUL");
    }
    if name == "." || name == ".." {
        return bad("is not allowed");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for ok in ["A", "db.password", "x-y_z", &"n".repeat(256)] {
            assert!(validate_name("entry", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a=b",
            "a\0b",
            "a\nb",
            &"n".repeat(257),
        ] {
            assert!(validate_name("entry", bad).is_err(), "{bad:?}");
        }
    }
}
