//! The GGUF header reader on arbitrary bytes: an error or a header whose every tensor lies
//! inside the file, never a panic or an allocation the input does not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    if let Ok(ct) = morphkv::model::gguf::header::read(&mut cursor, data.len() as u64) {
        for info in ct.tensor_infos.values() {
            assert!(info.offset + ct.tensor_data_offset <= data.len() as u64);
        }
    }
});
