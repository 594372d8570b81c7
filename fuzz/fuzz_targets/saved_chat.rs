//! A saved chat from arbitrary bytes: a chat whose id is its file name, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("chats/20260101-000000-1.json");
    if let Ok(chat) = morphkv::tui::store::parse(data, path) {
        assert_eq!(chat.id, "20260101-000000-1");
    }
});
