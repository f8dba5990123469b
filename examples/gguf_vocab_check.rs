//! Checks webmoe's GGUF tokenizer against llama.cpp's tokenizer test vocabularies
//! (llama.cpp's `models/ggml-vocab-*.gguf` with their `.inp` texts and `.out` ids):
//!     cargo run --release --example gguf_vocab_check -- path/to/ggml-vocab-gpt-2.gguf
//! Prints how many of the test texts give llama.cpp's ids, and the first mismatches.
use webmoe::model::gguf::{parse_gguf, tokenizer_of};

fn main() {
    let path = std::env::args().nth(1).expect("usage: gguf_vocab_check VOCAB.gguf");
    let bytes = std::fs::read(&path).expect("read the vocabulary file");
    let file = parse_gguf(&path, &bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = match tokenizer_of(&file.metadata, &path) {
        Ok(Some(t)) => t,
        Ok(None) => return println!("{path}: no tokenizer in the file"),
        Err(e) => return println!("{path}: {e}"),
    };
    let bos = file.metadata.get("tokenizer.ggml.bos_token_id").and_then(|v| match v {
        webmoe::model::gguf::MetaValue::Uint(id) => Some(*id as u32),
        webmoe::model::gguf::MetaValue::Int(id) => Some(*id as u32),
        _ => None,
    });
    let inputs = std::fs::read_to_string(format!("{path}.inp")).expect(".inp");
    let outputs = std::fs::read_to_string(format!("{path}.out")).expect(".out");
    let texts: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let (mut ok, mut shown) = (0, 0);
    for (text, line) in texts.iter().zip(outputs.lines()) {
        let want: Vec<u32> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let mut got = tokenizer.encode(text).unwrap_or_default();
        // llama.cpp's expected ids are without the BOS a SentencePiece vocabulary adds.
        if bos.is_some() && got.first() == bos.as_ref() && want.first() != bos.as_ref() {
            got.remove(0);
        }
        if got == want {
            ok += 1;
        } else if shown < 3 {
            shown += 1;
            println!("  {text:?}: webmoe {got:?}, llama.cpp {want:?}");
        }
    }
    println!(
        "{path}: {ok} of {} texts give llama.cpp's ids",
        texts.len().min(outputs.lines().count())
    );
}
