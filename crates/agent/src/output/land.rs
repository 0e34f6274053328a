//! Landing one change set in every output: each is rendered (and checked) to a temp file
//! first; then, when all of them succeeded (or each on its own, without `atomic_outputs`),
//! they are renamed into place. Failures are logged and counted here.

use super::Output;
use crate::state::Entries;

/// Land `entries` in `outputs`; returns the indexes of the outputs written, and pushes each
/// failure's message (no value in it) on `failures`. With `all_or_nothing`, one failure
/// leaves every output as it was.
pub async fn land(
    outputs: &mut [Output],
    entries: &Entries,
    all_or_nothing: bool,
    failures: &mut Vec<String>,
) -> Vec<usize> {
    let mut staged = Vec::new();
    let mut written = Vec::new();
    let failed = |o: &Output, e: super::OutputError, failures: &mut Vec<String>| {
        crate::health::output_done(&o.spec.path, false);
        tracing::error!(error = %e, "output not updated; it keeps its previous content");
        failures.push(e.to_string());
    };
    let before = failures.len();
    for (i, o) in outputs.iter_mut().enumerate() {
        let r = match o.prepare(entries).await {
            Ok(Some(p)) if all_or_nothing => {
                staged.push((i, p));
                continue;
            }
            Ok(Some(p)) => o.commit(p).map(|()| true),
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        match r {
            Ok(true) => written.push(i),
            Ok(false) => {}
            Err(e) => failed(o, e, failures),
        }
    }
    if failures.len() == before {
        for (i, p) in staged {
            let o = &mut outputs[i];
            match o.commit(p) {
                Ok(()) => written.push(i),
                Err(e) => failed(o, e, failures),
            }
        }
    } else if !staged.is_empty() {
        tracing::error!(
            outputs = staged.len(),
            "an output failed: no output moves to the new version (atomic_outputs)"
        );
    }
    for &i in &written {
        crate::health::output_done(&outputs[i].spec.path, true);
    }
    written
}
