//! The host's `bindgen!`s of `wit/`: everything generated stays in here, and the rest
//! of `runtime/` uses the few names re-exported below.
//!
//! Two worlds: `ebb:connector/plugin@0.2.0`, the current contract, and
//! `ebb:connector/plugin@0.1.0`, for components built before it. Both import the
//! same host interfaces (`ebb:connector/{log,config,sql,redis,secrets}@0.1.0`), so
//! one linker and one set of host implementations serve both; only the exported
//! `connector` interface differs.

#[allow(missing_debug_implementations, reason = "bindgen-generated code")]
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "ebb:connector/plugin@0.2.0",
        imports: {
            "ebb:connector/sql": async | trappable,
            "ebb:connector/redis": async | trappable,
            "ebb:connector/mysql": async | trappable,
            "ebb:connector/ldap": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

#[allow(missing_debug_implementations, reason = "bindgen-generated code")]
mod generated_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "ebb:connector/plugin@0.1.0",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "ebb:connector/log@0.1.0": crate::bindings::generated::ebb::connector0_1_0::log,
            "ebb:connector/config@0.1.0": crate::bindings::generated::ebb::connector0_1_0::config,
            "ebb:connector/sql@0.1.0": crate::bindings::generated::ebb::connector0_1_0::sql,
            "ebb:connector/redis@0.1.0": crate::bindings::generated::ebb::connector0_1_0::redis,
            "ebb:connector/secrets@0.1.0": crate::bindings::generated::ebb::connector0_1_0::secrets,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub(crate) use generated::PluginPre;
pub(crate) use generated::ebb::connector0_1_0::{config, log, redis, secrets, sql};
pub(crate) use generated::ebb::connector0_2_0::{crypto, ldap, mysql, types};

/// The 0.1.0 contract: its types and its world, adapted by `call.rs`.
pub(crate) mod v1 {
    pub(crate) use crate::bindings::generated_v1::PluginPre;
    pub(crate) use crate::bindings::generated_v1::ebb::connector0_1_0::types;
}
