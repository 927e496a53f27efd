//! The host's only `bindgen!` of `wit/`: everything generated stays in here, and
//! the rest of `runtime/` uses the few names re-exported below.

#[allow(missing_debug_implementations, reason = "bindgen-generated code")]
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "ebb:connector/plugin",
        imports: {
            "ebb:connector/sql": async | trappable,
            "ebb:connector/redis": async | trappable,
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

pub(crate) use generated::ebb::connector::{config, log, redis, secrets, sql, types};
pub(crate) use generated::{Plugin, PluginPre};
