//! Starts real downstream systems on loopback for Ebb's tests. Nothing here is a
//! fake: each type runs the real server from the distribution's packages.

pub mod api;
pub mod postgres;
pub mod redis;

pub use postgres::Postgres;
pub use redis::Redis;
