//! Starts real downstream systems on loopback for Ebb's tests. Nothing here is a
//! fake: each type runs the real server from the distribution's packages.

pub mod postgres;

pub use postgres::Postgres;
