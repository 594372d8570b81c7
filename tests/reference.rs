//! Our decoder against candle-transformers' `quantized_llama` on the real SmolLM2 GGUF, both
//! with dense f32 weights: same greedy tokens, same prefill logits.
//!
//! This file is its own test binary: `CANDLE_DEQUANTIZE_ALL` is set before any candle call so
//! the reference dequantizes like ours does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use morphkv::cache::KvCache;
use morphkv::chat::{encode_chat, ChatTemplate, Message};
use morphkv::model::{open_gguf, Logits, Model, WeightFormat};
use morphkv::sampling::argmax;
use morphkv::tokenizer::Tokenizer;

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences how a compiler works.",
];
const N: usize = 64;

#[test]
fn greedy_tokens_and_prefill_logits_match_the_reference() {
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = common::default_model();
    let dev = Device::Cpu;
    let (ct, mut r) = open_gguf(&path).unwrap();
    let ours = Model::from_gguf(&ct, &mut r, &path, &dev, WeightFormat::F32).unwrap();
    let tok = Tokenizer::from_gguf(&ct, &path).unwrap();
    let (ct2, mut r2) = open_gguf(&path).unwrap();
    let mut reference = ModelWeights::from_gguf(ct2, &mut r2, &dev).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();

    for prompt in PROMPTS {
        let ids = encode_chat(
            &tok,
            &template.render(&[Message::user(prompt)], true).unwrap(),
        )
        .unwrap();
        let mut cache = KvCache::new(ours.config(), DType::F32, &dev).unwrap();
        let a = ours.forward(&ids, &mut cache, Logits::Last).unwrap();
        let x = Tensor::new(ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let b = reference.forward(&x, 0).unwrap().squeeze(0).unwrap();
        let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let d = common::max_abs_diff(&a, &b);
        assert!(d < 1e-4, "{prompt:?}: prefill logits differ by {d}");

        let (mut ta, mut tb) = (argmax(&a), argmax(&b));
        let (mut seq_a, mut seq_b) = (vec![ta], vec![tb]);
        for i in 0..N - 1 {
            let la = ours.forward(&[ta], &mut cache, Logits::Last).unwrap();
            let x = Tensor::new(&[tb], &dev).unwrap().unsqueeze(0).unwrap();
            let lb = reference
                .forward(&x, ids.len() + i)
                .unwrap()
                .squeeze(0)
                .unwrap();
            ta = argmax(&la.to_vec1::<f32>().unwrap());
            tb = argmax(&lb.to_vec1::<f32>().unwrap());
            seq_a.push(ta);
            seq_b.push(tb);
        }
        assert_eq!(seq_a, seq_b, "{prompt:?}: greedy tokens differ");
        let text = tok.decode(&seq_a).unwrap();
        assert!(text.split_whitespace().count() > 5, "{prompt:?}: {text:?}");
        eprintln!("{prompt:?} -> {text:?}");
    }
}
