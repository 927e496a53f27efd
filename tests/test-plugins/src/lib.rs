//! Paths of the components built from `plugins/` (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
