//! A bundle's `tessera.toml`, as a stranger may write it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tessera_host::bundle::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(manifest) = Manifest::from_toml(text, Path::new("fuzz/tessera.toml"))
    {
        // What parses must serialise and parse back to the same manifest.
        let again = Manifest::from_toml(&manifest.to_toml(), Path::new("fuzz/again.toml"))
            .expect("a valid manifest round-trips");
        assert_eq!(again, manifest);
    }
});
