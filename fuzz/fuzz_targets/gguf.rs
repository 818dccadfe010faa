//! A GGUF header: metadata and tensor table, every length from the file.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tessera_host::inference::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_reader(Cursor::new(data), Path::new("fuzz.gguf")) {
        for t in &file.tensors {
            let _ = t.byte_size();
        }
        let _ = file.architecture();
    }
});
