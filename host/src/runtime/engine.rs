//! The one wasmtime configuration, for the serving engine and for the compile
//! worker alike: an artifact is loadable only by an engine with the same
//! compatibility hash, so both must be built here.

use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeConfig;

/// How an engine allocates instances. Only the server runs guests; the compile
/// worker never instantiates anything, and the pooling allocator reserves
/// address space for every slot up front (terabytes of it), which would not
/// fit under the worker's memory limit. Wasmtime documents that the allocation
/// strategy does not affect compiled code, and `cache::tests` checks that the
/// compatibility hashes agree.
#[derive(Clone, Copy, Debug)]
pub enum Allocation<'a> {
    /// Serving: a fixed pool of instance slots sized by the runtime's limits.
    Pooling(&'a RuntimeConfig),
    /// Compiling only: nothing is allocated ahead.
    OnDemand,
}

/// The wasmtime `Config` of every Refold engine.
pub fn engine_config(allocation: Allocation<'_>) -> Config {
    let mut wasm = Config::new();
    wasm.consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true);
    match allocation {
        Allocation::Pooling(config) => {
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(config)));
        }
        Allocation::OnDemand => {
            wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        }
    }
    wasm
}

fn pooling(config: &RuntimeConfig) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * 8)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * 4)
        .max_memories_per_component(2)
        .max_core_instances_per_component(16)
        .max_memory_size(config.memory_bytes)
        .max_unused_warm_slots(32)
        // Instantiation is on every guest call. Keeping the first pages of a slot
        // resident, and asking the kernel which pages a guest dirtied instead of
        // releasing them all, avoids refaulting them on the next call and the
        // cross-core TLB flushes a release causes (measured: ~30 us -> ~15 us).
        .linear_memory_keep_resident(4 << 20)
        .pagemap_scan(Enabled::Auto);
    pool
}
