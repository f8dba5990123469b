//! Streaming detokenization (`DecodeWindow`, `TextStream`, the server's
//! `TextAssembler`): the pieces add up to the whole text's decode, characters are
//! never split, and each step decodes a short window of ids, not the whole
//! generation (which made long generations O(n²)).

use std::cell::Cell;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use webmoe::model::gguf::parse_gguf;
use webmoe::model::tokenizer::{TextStream, Tokenizer};
use webmoe::openai::TextAssembler;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The embedded model's byte-level BPE (GPT-2 style: multi-byte characters span tokens).
fn byte_level() -> Tokenizer {
    let path = root().join("models/tiny-moe/tokenizer.json");
    Tokenizer::from_bytes(&std::fs::read(&path).unwrap(), "tiny-moe tokenizer.json").unwrap()
}

/// A SentencePiece vocabulary from GGUF metadata (`▁` for spaces, byte fallback).
fn sentence_piece() -> Tokenizer {
    let path = root().join("tests/fixtures/gguf/spm-vocab.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let file = parse_gguf("spm-vocab.gguf", &bytes, bytes.len() as u64).unwrap();
    webmoe::model::gguf::tokenizer_of(&file.metadata, "spm-vocab.gguf")
        .unwrap()
        .unwrap()
}

const TEXT: &str = "The Rust programming language, née 2006 — «fast», «safe»; 東京 and 北京 🦀🦀 \
    are cities.\n\tIndented line  with  double  spaces, naïve café, Ünïcödé 😀!\n";

fn long_text() -> String {
    TEXT.repeat(12)
}

/// Streams `ids` through a `TextStream`, checking each piece is whole characters
/// (a `&str` already is) with no replacement character, and returns the pieces.
fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = TextStream::default();
    ids.iter().map(|&id| stream.push(tokenizer, id).unwrap()).collect()
}

/// What a `TextAssembler` sent for `ids`, with the most ids one step decoded and the
/// number of decodes.
struct Assembled {
    sent: String,
    tokens: usize,
    longest_window: usize,
    decodes: usize,
}

fn assemble(tokenizer: &Tokenizer, ids: &[u32]) -> Assembled {
    let (longest, calls) = (Cell::new(0usize), Cell::new(0usize));
    let mut assembler = TextAssembler::new(Vec::new());
    let mut sent = String::new();
    for &id in ids {
        sent += &assembler.push(id, |window| {
            longest.set(longest.get().max(window.len()));
            calls.set(calls.get() + 1);
            tokenizer.decode(window).unwrap()
        });
    }
    sent += &assembler.finish();
    Assembled {
        sent,
        tokens: assembler.tokens(),
        longest_window: longest.get(),
        decodes: calls.get(),
    }
}

/// Every id of the vocabulary.
fn vocabulary(tokenizer: &Tokenizer) -> impl Iterator<Item = u32> + '_ {
    (0..u32::MAX).take_while(|&id| tokenizer.token_text(id).is_some())
}

#[test]
fn streamed_pieces_add_up_to_the_whole_decode() {
    for (name, tokenizer) in [("byte-level BPE", byte_level()), ("SentencePiece", sentence_piece())] {
        let ids = tokenizer.encode_plain(&long_text()).unwrap();
        assert!(ids.len() > 500, "{name}: {} tokens", ids.len());
        let whole = tokenizer.decode(&ids).unwrap();
        assert!(whole.contains("東京") && whole.contains('🦀'), "{name}: {whole:?}");
        let pieces = stream(&tokenizer, &ids);
        assert!(
            pieces.iter().all(|p| !p.contains('\u{fffd}')),
            "{name}: a piece split a character"
        );
        assert_eq!(pieces.concat(), whole, "{name}");
        // Multi-byte characters span tokens here: some steps must wait for the rest.
        assert!(pieces.iter().any(String::is_empty), "{name}: no step waited");
    }
}

#[test]
fn each_step_decodes_a_short_window_not_the_whole_generation() {
    let tokenizer = byte_level();
    let ids = tokenizer.encode_plain(&long_text()).unwrap();
    let got = assemble(&tokenizer, &ids);
    assert_eq!(got.sent, tokenizer.decode(&ids).unwrap());
    assert_eq!(got.tokens, ids.len());
    // The window holds the last piece's ids and those pending (a 4-byte emoji is
    // at most 4 byte tokens), so it stays a few ids long however long the text.
    assert!(
        got.longest_window <= 12,
        "a step decoded {} of {} ids",
        got.longest_window,
        ids.len()
    );
    assert!(
        got.decodes <= 2 * ids.len(),
        "{} decodes for {} ids",
        got.decodes,
        ids.len()
    );
}

/// Ids of the SentencePiece vocabulary's byte tokens (`<0x41>`) and of the rest.
fn byte_and_word_ids(tokenizer: &Tokenizer) -> (Vec<u32>, Vec<u32>) {
    vocabulary(tokenizer).partition(|&id| tokenizer.token_text(id).unwrap().starts_with("<0x"))
}

#[test]
fn random_ids_stream_like_their_whole_decode() {
    // Sampled ids need not form valid text: stray continuation bytes, characters cut
    // off by other tokens. The pieces still add up to the whole decode (where that
    // ends inside a character, the last steps wait, so they may stop short of it).
    let (bytes, words) = byte_and_word_ids(&sentence_piece());
    assert_eq!(bytes.len(), 256);
    for (name, tokenizer, ids_from) in [
        ("byte-level BPE", byte_level(), None),
        // SentencePiece's byte fallback turns a whole run of byte tokens into U+FFFD
        // when any of them is invalid, rewriting text already sent (next test).
        ("SentencePiece", sentence_piece(), Some(words)),
    ] {
        let vocab = vocabulary(&tokenizer).count() as u32;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for trial in 0..100 {
            let ids: Vec<u32> = (0..rng.random_range(1..60))
                .map(|_| match &ids_from {
                    None => rng.random_range(0..vocab),
                    Some(from) => from[rng.random_range(0..from.len())],
                })
                .collect();
            let streamed = stream(&tokenizer, &ids).concat();
            let whole = tokenizer.decode(&ids).unwrap();
            let complete = whole.trim_end_matches('\u{fffd}');
            assert!(
                streamed == whole || (whole.ends_with('\u{fffd}') && complete.starts_with(&streamed)),
                "{name}, trial {trial}, ids {ids:?}: streamed {streamed:?}, whole {whole:?}"
            );
        }
    }
}

#[test]
fn text_keeps_flowing_after_the_decoder_rewrites_text_already_sent() {
    // "]" (a byte token) is sent alone; with an invalid byte after it, the whole
    // decode turns both into U+FFFD, so the text sent is no longer a prefix of it.
    // The stream goes on with the text after that (re-decoding everything and
    // slicing at the length sent stalled here for the rest of the generation).
    let tokenizer = sentence_piece();
    let byte = |b: u8| {
        let name = format!("<0x{b:02X}>");
        vocabulary(&tokenizer)
            .find(|&id| tokenizer.token_text(id).as_deref() == Some(name.as_str()))
            .unwrap()
    };
    let mut ids = tokenizer.encode_plain("code").unwrap();
    ids.extend([byte(b']'), byte(0xE2)]);
    ids.extend(tokenizer.encode_plain(" does more here").unwrap());
    let whole = tokenizer.decode(&ids).unwrap();
    assert!(
        whole.starts_with("code\u{fffd}\u{fffd}") && whole.ends_with("does more here"),
        "{whole:?}"
    );
    let pieces = stream(&tokenizer, &ids);
    assert!(pieces.concat().starts_with("code]"), "{pieces:?}");
    assert!(pieces.concat().ends_with("does more here"), "{pieces:?}");
}

#[test]
fn ids_that_add_no_text_do_not_pile_up_in_the_window() {
    // A sampled run of special tokens (skipped when decoding), e.g. a server request
    // with ignore_eos whose model keeps choosing end-of-text: each step still decodes
    // a few ids, and the text around them streams whole.
    let tokenizer = byte_level();
    let end_of_text = 0; // <|endoftext|>, special
    assert_eq!(tokenizer.token_text(end_of_text).as_deref(), Some("<|endoftext|>"));
    let mut ids = tokenizer.encode_plain("Before ").unwrap();
    ids.extend(std::iter::repeat_n(end_of_text, 500));
    ids.extend(tokenizer.encode_plain("after é").unwrap());
    let got = assemble(&tokenizer, &ids);
    assert_eq!(got.sent, tokenizer.decode(&ids).unwrap());
    assert!(got.longest_window <= 12, "a step decoded {} ids", got.longest_window);
}
