//! The panic hook logs a panic as one `ERROR` event (target `panic`) with its message and
//! location. Its own test binary: the hook is process-wide.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tracing_subscriber::fmt::MakeWriter;

/// Collects what the subscriber writes.
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

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn a_panic_is_one_error_line_with_message_and_location() {
    tokenvend_server::panic::install_hook();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(captured.clone())
        .finish();
    let panicked = std::thread::Builder::new()
        .name("worker-7".into())
        .spawn(move || {
            tracing::subscriber::with_default(subscriber, || {
                panic!("the planted message {}", 42);
            })
        })
        .unwrap()
        .join();
    assert!(panicked.is_err());

    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = &lines[0];
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["target"], "panic");
    assert_eq!(line["message"], "panicked: the planted message 42");
    assert_eq!(line["thread"], "worker-7");
    let location = line["location"].as_str().unwrap();
    assert!(location.contains("tests/panic_hook.rs:"), "{location}");
}
