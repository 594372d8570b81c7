//! A tokenizer built from a GGUF header's `tokenizer.ggml.*` metadata, then used: errors are
//! fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    let Ok(ct) = morphkv::model::gguf::header::read(&mut cursor, data.len() as u64) else {
        return;
    };
    let path = std::path::Path::new("fuzz.gguf");
    if let Ok(tok) = morphkv::tokenizer::Tokenizer::from_gguf(&ct, path) {
        if let Ok(ids) = tok.encode_special("Hello <|im_start|> wörld 123") {
            let _ = tok.decode(&ids);
        }
    }
});
