//! A theme file from arbitrary text: a theme or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = morphkv::tui::theme::Theme::parse(text, "fuzz.toml");
    }
});
