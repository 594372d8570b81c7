//! The chat's `config.toml` from arbitrary text: a config whose cache settings are in range,
//! or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = morphkv::tui::config::parse(text, std::path::Path::new("config.toml")) {
        if let Some(b) = c.budget {
            assert!(morphkv::cache::limits::BUDGET.check(b).is_ok());
        }
    }
});
