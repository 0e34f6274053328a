//! `tether-bench file --template`: the 200-line template rendered over the source's values,
//! and its latency figure, printed beside the dotenv one.

use std::time::Duration;

/// Lines of the bench's template.
pub const LINES: usize = 200;

/// A config-file-like template: the changing value, then settings spread over the source's
/// entries, quoted as JSON (a filter call per line, as real templates have).
pub fn text(entries: usize) -> String {
    let mut s = String::from("version = {{ BENCH_VERSION }}\n");
    let others = entries.saturating_sub(1).max(1);
    for i in 1..LINES {
        let k = 1 + (i * 5) % others;
        s.push_str(&format!(
            "setting_{i:03} = {{{{ APP_SETTING_{k:05} | default('') | tojson }}}}\n"
        ));
    }
    s
}

/// The template run's change → signal figures.
pub fn print(sorted: &[Duration], entries: usize, percentile: fn(&[Duration], f64) -> Duration) {
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "change → SIGUSR1 with a {LINES}-line template over {entries} values, {} changes:",
        sorted.len()
    );
    println!(
        "  p50 {}   p90 {}   p99 {}   max {}",
        us(percentile(sorted, 0.5)),
        us(percentile(sorted, 0.9)),
        us(percentile(sorted, 0.99)),
        us(sorted.last().copied().unwrap_or_default())
    );
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_its_lines_and_renders_names_that_exist() {
        let t = text(1000);
        assert_eq!(t.lines().count(), LINES);
        assert!(t.contains("APP_SETTING_00996"));
        assert!(!t.contains("APP_SETTING_01000"), "the source has 1..=999");
        assert_eq!(text(1).lines().count(), LINES);
    }
}
