//! The node's panic hook logs through tracing where a panic happened and never a formatted
//! message. A test binary of its own: the hook is process-wide.

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_hook_logs_the_place_and_withholds_formatted_messages() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tether_node::install_panic_hook();
    let secret = String::from("s3cr3t-value");
    tracing::subscriber::with_default(subscriber, || {
        let _ = std::panic::catch_unwind(|| panic!("the value is {secret}"));
        let _ = std::panic::catch_unwind(|| panic!("a message written as is"));
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!log.contains("s3cr3t-value"), "{log}");
    assert!(log.contains("formatted message withheld"), "{log}");
    assert!(log.contains("a message written as is"), "{log}");
    assert!(log.contains("panic_hook.rs"), "the place is logged: {log}");
}
