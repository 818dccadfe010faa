//! Component bytes: inspected, then compiled and linked by the sandbox as
//! a bundle's component would be.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_host::bundle::{ComponentInfo, sha256_hex};
use tessera_host::sandbox::{HostPolicy, Sandbox};

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(
            HostPolicy {
                pool_instances: 4,
                ..HostPolicy::default()
            },
            None,
        )
        .expect("sandbox")
    })
}

fuzz_target!(|data: &[u8]| {
    if ComponentInfo::parse(data).is_ok() {
        let _ = sandbox().load(data, &sha256_hex(data));
    }
});
