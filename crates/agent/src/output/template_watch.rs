//! Watches the template files of the outputs (through the sources' watcher), so that an
//! edited template is rendered again.

use tokio::sync::mpsc;

use super::{OutputSpec, TemplateSource};
use crate::source::watch::{self, SourceWatcher};
use crate::source::{SourceKind, SourceSpec};

/// The watch on every template file; `changed` waits for an edit of any.
pub struct TemplateWatch {
    watcher: Option<SourceWatcher>,
    rx: mpsc::UnboundedReceiver<usize>,
    count: usize,
}

impl TemplateWatch {
    /// Watch the template files of `outputs` (a failure is logged: such a template is then
    /// read again only when values change).
    pub fn new(outputs: &[OutputSpec]) -> TemplateWatch {
        let specs: Vec<SourceSpec> = outputs
            .iter()
            .filter_map(|o| match &o.template {
                Some(TemplateSource::File(p)) => Some(SourceSpec {
                    kind: SourceKind::Dotenv,
                    path: p.clone(),
                }),
                _ => None,
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match specs.is_empty() {
            true => None,
            false => match watch::watch(&specs, tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the template files; edits are seen at the next change of a value");
                    None
                }
            },
        };
        TemplateWatch {
            watcher,
            rx,
            count: specs.len(),
        }
    }

    /// Wait until a template file may have changed (forever when none is watched).
    pub async fn changed(&mut self) {
        let Some(first) = self.rx.recv().await else {
            return std::future::pending().await;
        };
        let mut dirty = vec![first];
        while let Ok(i) = self.rx.try_recv() {
            dirty.push(i);
        }
        if let Some(w) = &mut self.watcher {
            for i in dirty.into_iter().filter(|i| *i < self.count) {
                // A symlinked template may point somewhere else now.
                w.follow(i);
            }
        }
    }
}
