//! Unit tests of template rendering: names, filters, errors without values.

use super::*;
use crate::state::entries;

fn r(text: &str, pairs: &[(&str, &str)]) -> Result<String, TemplateError> {
    render("t.tmpl", text, &entries(pairs)).map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn values_by_name_mapping_and_list() {
    let e = &[("DB_PASSWORD", "pw"), ("with-dash", "d")];
    assert_eq!(r("{{ DB_PASSWORD }}\n", e).unwrap(), "pw\n");
    assert_eq!(r(r#"{{ values["with-dash"] }}"#, e).unwrap(), "d");
    assert_eq!(
        r("{{ names | join(',') }}", e).unwrap(),
        "DB_PASSWORD,with-dash"
    );
    assert_eq!(
        r(
            "{% for n in values %}{{ n }}={{ values[n] }};{% endfor %}",
            e
        )
        .unwrap(),
        "DB_PASSWORD=pw;with-dash=d;"
    );
}

#[test]
fn a_missing_name_is_an_error_naming_it_and_the_line() {
    let err = r("a\nb {{ NOPE }}\n", &[("A", "s3cr3t")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("NOPE"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    let err = r(r#"x{{ values["gone-x"] }}"#, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("gone-x"), "{err}");
    let err = r("\n\n{{ GONE | required }}", &[]).unwrap_err().to_string();
    assert!(err.contains("GONE") && err.contains("line 3"), "{err}");
    assert!(err.contains("required"), "{err}");
}

#[test]
fn default_applies_to_missing_names_only() {
    assert_eq!(r("{{ X | default('d') }}", &[]).unwrap(), "d");
    assert_eq!(r("{{ X | default('d') }}", &[("X", "v")]).unwrap(), "v");
    assert_eq!(
        r("{% if X is defined %}y{% else %}n{% endif %}", &[]).unwrap(),
        "n"
    );
}

#[test]
fn filters() {
    let e = &[("A", " a:b\n"), ("Q", "it's"), ("L", "x,y")];
    assert_eq!(r("{{ A | trim }}", e).unwrap(), "a:b");
    assert_eq!(r("{{ 'hello' | b64encode }}", e).unwrap(), "aGVsbG8=");
    assert_eq!(r("{{ 'hi' | base64 | b64decode }}", e).unwrap(), "hi");
    assert_eq!(r("{{ A | tojson }}", e).unwrap(), r#"" a:b\n""#);
    assert_eq!(r("{{ A | toyaml }}", e).unwrap(), r#"" a:b\n""#);
    assert_eq!(r("{{ Q | totoml }}", e).unwrap(), r#""it's""#);
    assert_eq!(r("{{ Q | shell_quote }}", e).unwrap(), r"'it'\''s'");
    assert_eq!(r("{{ L | split(',') | join(' ') }}", e).unwrap(), "x y");
    assert_eq!(r("{{ 'a\nb' | lines | length }}", e).unwrap(), "2");
    assert_eq!(r("{{ 'a\nb' | indent(2) }}", e).unwrap(), "a\n  b");
    assert_eq!(
        r("{{ L | split(',') | tojson }}", e).unwrap(),
        r#"["x", "y"]"#
    );
}

#[test]
fn base64_round_trips() {
    for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
        let enc = b64::encode(s.as_bytes());
        assert_eq!(b64::decode(&enc).unwrap(), s.as_bytes(), "{s}");
    }
    assert_eq!(b64::encode(b"foobar"), "Zm9vYmFy");
    assert!(b64::decode("!!").is_none());
}

#[test]
fn errors_never_show_a_value() {
    let e = &[("S", "s3cr3t-value")];
    for text in [
        "{{ S | b64decode }}",
        "{{ S | int + S }}",
        "{{ S.nope.deeper }}",
        "{{ S | required }}{{ MISSING }}",
        "{{ S + 1 }}",
        "{% for x in S %}{{ x.y.z }}{% endfor %}",
    ] {
        if let Err(err) = r(text, e) {
            let msg = format!("{err} {err:?}");
            assert!(!msg.contains("s3cr3t"), "{text}: {msg}");
        }
    }
}

#[test]
fn syntax_errors_name_the_line() {
    let err = validate("t", "ok\n{% if %}\n").unwrap_err().to_string();
    assert!(
        err.contains("syntax error") && err.contains("line 2"),
        "{err}"
    );
    let names = validate(
        "t",
        "{{ A }}{{ values['b-c'] }}{% for n in names %}{{ n }}{% endfor %}",
    )
    .unwrap();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["A".to_string()]);
}
