//! A safetensors file's header and tensor views, as the Hugging Face
//! loader reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if safetensors::SafeTensors::read_metadata(data).is_ok()
        && let Ok(tensors) = safetensors::SafeTensors::deserialize(data)
    {
        for (_, view) in tensors.tensors() {
            let _ = (view.dtype(), view.shape(), view.data().len());
        }
    }
});
