//! The sandbox: a wasmtime engine set up for many small, untrusted
//! components, and the per-invocation stores they run in.
//!
//! - The component model with async support: guests run on fibers, so an
//!   expert waiting on the model holds no thread.
//! - The pooling allocator: instantiation reuses pre-reserved slots.
//! - Epoch interruption: a background ticker advances the epoch; every tick
//!   a running guest yields to the executor, and past its deadline it traps.
//! - Fuel, always counted: the CPU figure validators read.
//! - A memory [`ResourceLimiter`](wasmtime::ResourceLimiter) per store.
//! - WASI 0.2 linked with nothing granted, for components that import it.
//! - An on-disk cache of compiled components.

mod cache;
mod limiter;
mod limits;
mod state;
mod stdio;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

pub use cache::{CACHE_DIR_ENV, CompileCache};
pub use limiter::{MAX_TABLE_ELEMENTS, MemoryLimiter};
pub use limits::*;
pub use state::InvocationState;

use crate::bundle::{ComponentError, ComponentInfo};

/// How often the epoch advances; a running guest yields this often and
/// notices its deadline within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Ticks of computing after which a guest counts as long-running and
/// computes only in the long-running lane (about 20 ms).
pub const LONG_RUNNING_AFTER_TICKS: u32 = 4;
/// Wasm stack per invocation. Deep recursion past it traps as a stack
/// overflow.
pub const MAX_WASM_STACK: usize = 1024 * 1024;

/// The engine, linker and compile cache shared by every expert on a host.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<InvocationState>,
    policy: HostPolicy,
    cache: Option<CompileCache>,
    /// Places for long-running guests ([`HostPolicy::long_running_places`]). A
    /// guest that has computed past [`LONG_RUNNING_AFTER_TICKS`] takes a
    /// place for each tick it computes and gives it back at every tick and
    /// host call, in turn with the others (the semaphore is fair), so
    /// spinning guests can never occupy every async worker and short
    /// invocations and HTTP always find one free.
    long_running: Arc<tokio::sync::Semaphore>,
}

/// A component compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct LoadedComponent {
    /// What its bytes say: world, imports, exports.
    pub info: ComponentInfo,
    /// sha256 of the component, hex.
    pub sha256: String,
    /// Whether the compilation came from the cache.
    pub from_cache: bool,
    pub(crate) pre: InstancePre<InvocationState>,
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The compile cache directory cannot be used.
    #[error("cannot use the compile cache at {path}: {reason}")]
    Cache {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Not a component of one of our worlds.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// wasmtime could not compile it (invalid WebAssembly).
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// Its imports do not match what the host provides.
    #[error("the component cannot be linked: {0}")]
    Link(String),
}

/// The error a store raises when an invocation outlives its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded;

impl Sandbox {
    /// A sandbox with `policy`, caching compiled components in `cache_dir`
    /// (no cache when `None`).
    pub fn new(policy: HostPolicy, cache_dir: Option<&Path>) -> Result<Sandbox, SandboxError> {
        let engine = Engine::new(&engine_config(&policy))
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        // The agent world imports every Tessera interface; routers and
        // adapters import subsets of it, so one linker serves all three.
        crate::caps::add_to_linker(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;

        let cache = cache_dir
            .map(|dir| {
                CompileCache::new(dir, &engine).map_err(|reason| SandboxError::Cache {
                    path: dir.to_path_buf(),
                    reason,
                })
            })
            .transpose()?;
        let long_running_places = policy.long_running_places.max(1);
        Ok(Sandbox {
            engine,
            linker,
            policy,
            cache,
            long_running: Arc::new(tokio::sync::Semaphore::new(long_running_places)),
        })
    }

    /// Places of the long-running lane free now.
    pub fn long_running_places_free(&self) -> usize {
        self.long_running.available_permits()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The host policy.
    pub fn policy(&self) -> &HostPolicy {
        &self.policy
    }

    /// The compile cache, if any.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_ref()
    }

    /// Check, compile (or fetch from the cache) and link a component.
    pub fn load(&self, wasm: &[u8], sha256: &str) -> Result<LoadedComponent, LoadError> {
        let info = ComponentInfo::parse(wasm)?;
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, sha256));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, wasm)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                if let Some(cache) = &self.cache
                    && let Err(e) = cache.store(sha256, &component)
                {
                    tracing::warn!(dir = %cache.dir().display(), error = %e, "cannot write compile cache");
                }
                component
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok(LoadedComponent {
            info,
            sha256: sha256.to_string(),
            from_cache,
            pre,
        })
    }

    /// A store for one invocation: memory limiter, fuel, deadline and the
    /// call hook that keeps the trace's fuel figures.
    pub(crate) fn new_store(&self, state: InvocationState) -> Store<InvocationState> {
        let fuel = state.ledger.limits.fuel;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(fuel)
            .expect("fuel consumption is enabled in the engine config");
        store.set_epoch_deadline(1);
        let lane = self.long_running.clone();
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                return Err(wasmtime::Error::new(DeadlineExceeded));
            }
            state.ticks += 1;
            if state.ticks < LONG_RUNNING_AFTER_TICKS {
                return Ok(UpdateDeadline::Yield(1));
            }
            // Give the place back (if held), let the others run, and queue
            // for it again.
            state.lane_place.release();
            let place = state.lane_place.clone();
            let lane = lane.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    if let Ok(permit) = lane.acquire_owned().await {
                        place.hold(permit);
                    }
                }),
            ))
        });
        store.call_hook(track_fuel);
        store
    }
}

/// Keeps the fuel figures of host calls, and charges a caller for the fuel
/// its nested experts burned.
///
/// The charge is applied only when the outermost host entry returns to the
/// guest. A libcall of guest code that the host called back into (an epoch
/// check inside `cabi_realloc` while a result is lowered) also returns
/// through this hook, but that code keeps its fuel in a register and writes
/// it back on return: a charge applied there would be overwritten and lost.
fn track_fuel(
    mut ctx: wasmtime::StoreContextMut<'_, InvocationState>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    match hook {
        CallHook::CallingHost => {
            // Waiting on the host is not computing.
            ctx.data().lane_place.release();
            let left = ctx.get_fuel()?;
            let rec = &mut ctx.data_mut().ledger;
            rec.host_depth += 1;
            if rec.host_depth == 1 {
                rec.fuel_at_host_entry = rec.initial_fuel.saturating_sub(left);
            }
        }
        CallHook::ReturningFromHost => {
            let rec = &mut ctx.data_mut().ledger;
            rec.host_depth = rec.host_depth.saturating_sub(1);
            if rec.host_depth > 0 {
                return Ok(());
            }
            let charge = std::mem::take(&mut rec.pending_fuel_charge);
            let mut left = ctx.get_fuel()?;
            if charge > 0 {
                left = left.saturating_sub(charge);
                ctx.set_fuel(left)?;
            }
            let rec = &mut ctx.data_mut().ledger;
            if let Some(index) = rec.open_call.take() {
                rec.host_calls[index].fuel_after = rec.initial_fuel.saturating_sub(left);
            }
            if charge > 0 && left == 0 {
                return Err(Trap::OutOfFuel.into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Bytes of each linear memory kept mapped and reset in place between
/// invocations (only the pages an invocation dirtied are reset, and only
/// those stay resident). 64 MiB covers a componentize-py component's
/// CPython heap: its trivial expert's instantiate + handle p50 fell from
/// 2.2 ms (2 or 16 MiB) to 1.5 ms (`cargo bench -p tessera-tests --bench
/// python`); a Rust expert touches far less and is unaffected.
pub const KEEP_RESIDENT_BYTES: usize = 64 << 20;
/// Bytes of each fiber stack kept mapped between invocations.
pub const KEEP_RESIDENT_STACK_BYTES: usize = 128 << 10;
/// Bytes of each table kept mapped and reset in place.
pub const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

fn engine_config(policy: &HostPolicy) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);

    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(policy)));
    config
}

/// The pooling allocator's settings for `policy`: slot counts, per-component
/// caps and what stays resident between instances. Public so that the
/// sandbox benchmark's bare-wasmtime reference runs with the same pool.
pub fn pool_config(policy: &HostPolicy) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(policy.pool_instances);
    pool.total_core_instances(policy.pool_instances.saturating_mul(4));
    pool.total_memories(policy.pool_instances.saturating_mul(2));
    pool.total_tables(policy.pool_instances.saturating_mul(4));
    pool.total_stacks(policy.pool_instances);
    // One component cannot take a large share of the pool's slots.
    pool.max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT);
    pool.max_memories_per_component(MAX_MEMORIES_PER_COMPONENT);
    pool.max_tables_per_component(MAX_TABLES_PER_COMPONENT);
    pool.max_memory_size(usize::try_from(policy.max_memory_bytes).unwrap_or(usize::MAX));
    // Reset the low part of a finished instance's memory, tables and stack in
    // place (only the pages it touched, found with PAGEMAP_SCAN where the
    // kernel has it) instead of unmapping them: a small expert's next
    // invocation then takes no page faults, and no TLB shootdown hits the
    // other cores. Measured with the serve benchmark (README).
    pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    pool.table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    pool.async_stack_keep_resident(KEEP_RESIDENT_STACK_BYTES);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// Advance `engine`'s epoch every [`EPOCH_TICK`] until the engine is
/// dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tessera-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use wasmtime::component::{Component, Linker};

    use super::*;
    use crate::ensemble::Ensemble;
    use crate::inference::NoModel;

    /// A component of `memories` core instances, each with its own linear
    /// memory of one page, exporting `grow-N` (memory.grow on instance N).
    fn multi_memory_component(memories: usize) -> String {
        let mut wat = String::from(
            "(component
               (core module $m
                 (memory 1)
                 (func (export \"grow\") (param i32) (result i32)
                   local.get 0
                   memory.grow))\n",
        );
        for i in 0..memories {
            wat.push_str(&format!(
                "(core instance $i{i} (instantiate $m))
                 (func $g{i} (param \"pages\" u32) (result s32)
                   (canon lift (core func $i{i} \"grow\")))
                 (export \"grow-{i}\" (func $g{i}))\n"
            ));
        }
        wat.push(')');
        wat
    }

    fn store_with_limit(
        ensemble: &Arc<Ensemble>,
        memory_bytes: u64,
    ) -> wasmtime::Store<InvocationState> {
        let limits = Limits {
            memory_bytes,
            ..ensemble.sandbox().policy().limits_for(&Default::default())
        };
        let state = ensemble.invocation_state(
            vec!["multi-memory".into()],
            &Default::default(),
            limits,
            Instant::now() + Duration::from_secs(5),
            None,
        );
        ensemble.sandbox().new_store(state)
    }

    /// A real component with three memories gets one `memory-mib` for all
    /// of them, and one with more memories than the pool allows is
    /// refused when it is compiled (at load).
    #[tokio::test]
    async fn a_multi_memory_component_shares_one_budget() {
        let sandbox = Sandbox::new(HostPolicy::default(), None).unwrap();
        let ensemble = Ensemble::new(sandbox, Arc::new(NoModel));
        let engine = ensemble.sandbox().engine().clone();
        let linker: Linker<InvocationState> = Linker::new(&engine);
        const PAGE: u64 = 64 << 10;

        let three =
            Component::new(&engine, wat::parse_str(multi_memory_component(3)).unwrap()).unwrap();
        let mut store = store_with_limit(&ensemble, 64 * PAGE);
        let instance = linker.instantiate_async(&mut store, &three).await.unwrap();
        let grow = |i: usize, store: &mut wasmtime::Store<InvocationState>| {
            instance
                .get_typed_func::<(u32,), (i32,)>(&mut *store, &format!("grow-{i}"))
                .unwrap()
        };
        // 3 pages are in use; 40 more fit under 64 pages.
        let g0 = grow(0, &mut store);
        assert_eq!(g0.call_async(&mut store, (40,)).await.unwrap(), (1,));
        // Each memory alone would stay under 64 pages; together they do not.
        let g1 = grow(1, &mut store);
        assert_eq!(g1.call_async(&mut store, (40,)).await.unwrap(), (-1,));
        assert_eq!(store.data().limiter.refused(), Some((83 * PAGE) as usize));
        let g2 = grow(2, &mut store);
        assert_eq!(g2.call_async(&mut store, (20,)).await.unwrap(), (1,));
        assert_eq!(store.data().limiter.peak_bytes(), (63 * PAGE) as usize);

        let too_many = MAX_MEMORIES_PER_COMPONENT as usize + 1;
        let wasm = wat::parse_str(multi_memory_component(too_many)).unwrap();
        let Err(error) = Component::new(&engine, wasm) else {
            panic!("the pool took a component with {too_many} memories");
        };
        assert!(
            format!("{error:#}")
                .contains("5 Wasm linear memories, which exceeds the configured maximum of 4"),
            "unexpected error: {error:#}"
        );
    }
}
