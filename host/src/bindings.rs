//! The one place the WIT contract in `wit/` becomes Rust: host-side bindings
//! for the `agent`, `router` and `adapter` worlds. The three worlds share the
//! `types`, `model` and `log` interfaces, generated once (in `agent`) and
//! reused through `with:`.

/// Bindings of the `agent` world (experts), and of the shared interfaces.
pub mod agent {
    wasmtime::component::bindgen!({
        world: "agent",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// Bindings of the `router` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "tessera:expert/types": super::agent::tessera::expert::types,
            "tessera:expert/model": super::agent::tessera::expert::model,
            "tessera:expert/log": super::agent::tessera::expert::log,
        },
    });
}

/// Bindings of the `adapter` world.
pub mod adapter {
    wasmtime::component::bindgen!({
        world: "adapter",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "tessera:expert/types": super::agent::tessera::expert::types,
            "tessera:expert/log": super::agent::tessera::expert::log,
        },
    });
}

pub use agent::tessera::expert::{experts, log, model, types};
