//! Conversions between the store's values and PostgreSQL's, and its errors.

use ebb_core::contract::Timestamp;
use ebb_core::store::Error;

pub(crate) fn db_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| match e.as_db_error().map(|d| d.code().clone()) {
        // Disk full or out of resources on the server: the disk-full promise.
        Some(code) if code.code().starts_with("53") => Error::Io {
            what,
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, e),
        },
        _ => Error::Storage {
            what,
            source: Box::new(e),
        },
    }
}

pub(crate) fn pool_error(what: &'static str) -> impl Fn(deadpool_postgres::PoolError) -> Error {
    move |e| Error::Storage {
        what,
        source: Box::new(e),
    }
}

pub(crate) fn corrupt<E: std::error::Error + Send + Sync + 'static>(
    key: String,
) -> impl Fn(E) -> Error {
    move |e| Error::Corrupt {
        key: key.clone(),
        source: Box::new(e),
    }
}

pub(crate) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.and_then(|v| u64::try_from(v).ok())
}

pub(crate) fn db_ts(v: Timestamp) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn wall_clock() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
