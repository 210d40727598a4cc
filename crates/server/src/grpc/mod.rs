//! gRPC services: thin handlers that validate, convert, call the domain and convert back.
//! Proto ↔ domain conversions destructure whole messages, so a new field cannot be ignored
//! silently.

pub mod admin;
pub mod callers;
pub mod fast_path;
pub mod token;
pub mod watch;

use std::time::Duration;

use tonic::{Status, metadata::MetadataMap};

use crate::status::to_status;

/// Margin kept before the caller's deadline: past it, tonic itself answers CANCELLED, so we
/// answer DEADLINE_EXCEEDED a little earlier.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The caller's remaining budget from the `grpc-timeout` header, if it sent one.
pub fn caller_wait(metadata: &MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.saturating_sub(DEADLINE_MARGIN))
}

pub(crate) fn status(e: tokenvend_core::Error) -> Status {
    to_status(&e)
}

pub(crate) fn invalid(e: tokenvend_core::InvalidInput) -> Status {
    to_status(&e.into())
}

pub(crate) fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        let mut m = MetadataMap::new();
        assert_eq!(caller_wait(&m), None);
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(caller_wait(&m), Some(Duration::from_millis(1980)));
        m.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(caller_wait(&m), Some(Duration::from_millis(480)));
        m.insert("grpc-timeout", "5m".parse().unwrap());
        assert_eq!(caller_wait(&m), Some(Duration::ZERO));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(caller_wait(&m), None);
    }
}
