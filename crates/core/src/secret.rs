//! The value type: bytes that may be secret. `Debug` and `Display` never print them; the
//! bytes are reachable only through [`Value::expose`], which only outputs call.

use std::fmt;

/// A configuration value. Always treated as sensitive when printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Value(Vec<u8>);

impl Value {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Value(bytes.into())
    }

    /// The raw bytes. Call this only where the value is written to its destination
    /// (an output file, the child's environment, the wire), never for logging.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is valid UTF-8.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value(s.into_bytes())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Value(<redacted>)")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let v = Value::from("hunter2");
        assert_eq!(format!("{v:?}"), "Value(<redacted>)");
        assert_eq!(format!("{v}"), "<redacted>");
        assert!(!format!("{:?}", vec![v.clone()]).contains("hunter2"));
        assert_eq!(v.expose(), b"hunter2");
        assert_eq!(v.expose_str(), Some("hunter2"));
    }
}
