//! A small writer of Prometheus' text exposition format (0.0.4), shared by the agent's and
//! the node's `/metrics`: a family's `# HELP`/`# TYPE` lines and its samples, with label
//! values escaped as the format says.

use std::fmt::{Display, Write as _};

/// The type a family declares in its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Append the `# HELP` and `# TYPE` lines that open the family `name`.
pub fn head(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = kind.as_str();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Append one sample: `name{label="value",...} value`, or `name value` without labels.
/// Label values are escaped; label names are the caller's constants.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            push_label_value(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value escaped as the text format says: backslash, double quote and line feed as
/// `\\`, `\"` and `\n`; everything else as it is.
fn push_label_value(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(labels: &[(&str, &str)], value: impl Display) -> String {
        let mut out = String::new();
        sample(&mut out, "m", labels, value);
        out
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        assert_eq!(one(&[("env", "prod")], 1), "m{env=\"prod\"} 1\n");
        assert_eq!(one(&[("env", r#"a"b\c"#)], 1), "m{env=\"a\\\"b\\\\c\"} 1\n");
        assert_eq!(one(&[("env", "a\nb")], 1), "m{env=\"a\\nb\"} 1\n");
        assert_eq!(one(&[("env", "é_ü")], 1), "m{env=\"é_ü\"} 1\n");
    }

    #[test]
    fn samples_with_several_labels_or_none() {
        assert_eq!(one(&[], 3), "m 3\n");
        assert_eq!(
            one(&[("kind", "signal"), ("signal", "SIGKILL")], 1),
            "m{kind=\"signal\",signal=\"SIGKILL\"} 1\n"
        );
        assert_eq!(one(&[], format_args!("{:.3}", 1.5)), "m 1.500\n");
    }

    #[test]
    fn a_family_opens_with_help_and_type() {
        let mut out = String::new();
        head(&mut out, "m", Kind::Histogram, "A test.");
        assert_eq!(out, "# HELP m A test.\n# TYPE m histogram\n");
    }
}
