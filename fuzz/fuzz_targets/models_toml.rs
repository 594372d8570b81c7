//! `models.toml` from arbitrary text: a registry or an error, and every preset's file names
//! stay inside the models folder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = morphkv::models::Registry::parse(text, std::path::Path::new("models.toml"));
});
