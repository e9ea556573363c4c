//! The tokenizer rebuilt from SmolLM2's GGUF against an independent one built in Python from the
//! same vocabulary and merges (`tests/fixtures/smollm2_tokens.json`), with every supported
//! pre-tokenizer; streaming decode; the chat template against Jinja2's rendering
//! (`tests/fixtures/smollm2_chat.json`). Fixtures: `scripts/gguf_tokenizer_fixture.py`.

use qfuse::import::chat::{ChatMessage, ChatTemplate};
use qfuse::import::gguf::{GgufFile, GgufTokenizer, GgufVocab, StreamDecoder};
use serde_json::Value;
use std::path::Path;

const MODEL: &str = ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn open() -> Option<GgufFile> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    if !path.exists() {
        eprintln!("skipping: {} is absent (bash scripts/cache.sh decoder installs it)", path.display());
        return None;
    }
    Some(GgufFile::open(&path).unwrap())
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn ids_match_the_python_tokenizer_for_every_pre_tokenizer() {
    let Some(file) = open() else { return };
    let fixture = fixture("smollm2_tokens.json");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut vocab = GgufVocab::read(&file).unwrap();
    assert_eq!(vocab.pre, fixture["pre"].as_str().unwrap());
    for pre in fixture["pre_tokenizers"].as_array().unwrap() {
        vocab.pre = pre.as_str().unwrap().into();
        let tokenizer = vocab.build().unwrap();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tokenizer.encode(text).unwrap(), ids(&case["ids"][&vocab.pre]), "pre {}, text {text:?}", vocab.pre);
        }
    }
}

#[test]
fn decoding_round_trips() {
    let Some(file) = open() else { return };
    let tokenizer = GgufTokenizer::from_gguf(&file).unwrap();
    for case in fixture("smollm2_tokens.json")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let decoded = tokenizer.decode(&tokenizer.encode(text).unwrap(), false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap());
        assert_eq!(decoded, text);
    }
    let ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nhi");
}

#[test]
fn special_ids_and_flags() {
    let Some(file) = open() else { return };
    let tokenizer = GgufTokenizer::from_gguf(&file).unwrap();
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.add_bos()), (Some(1), Some(2), false));
    assert_eq!((tokenizer.bos_text().as_str(), tokenizer.eos_text().as_str()), ("<|im_start|>", "<|im_end|>"));
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert!(tokenizer.decode(&[49152], false).unwrap_err().to_string().contains("token id 49152"));
    let mut vocab = GgufVocab::read(&file).unwrap();
    vocab.add_bos = true;
    assert_eq!(vocab.build().unwrap().encode("hi").unwrap()[0], 1);
}

#[test]
fn unsupported_vocabularies_are_named() {
    let Some(file) = open() else { return };
    let mut vocab = GgufVocab::read(&file).unwrap();
    vocab.pre = "default".into();
    let message = vocab.build().err().unwrap().to_string();
    assert!(message.contains("key `tokenizer.ggml.pre`") && message.contains("\"default\"") && message.contains(MODEL), "{message}");
    vocab.pre = "smollm".into();
    vocab.model = "llama".into();
    let message = vocab.build().err().unwrap().to_string();
    assert!(message.contains("key `tokenizer.ggml.model`") && message.contains("\"llama\""), "{message}");
}

#[test]
fn streaming_never_splits_a_character() {
    let Some(file) = open() else { return };
    let tokenizer = GgufTokenizer::from_gguf(&file).unwrap();
    let text = "Emoji 😀🎉👍🏽, 日本語, Привет, ok.";
    let ids = tokenizer.encode(text).unwrap();
    let (mut stream, mut pieces) = (StreamDecoder::new(), Vec::new());
    for n in 1..=ids.len() {
        pieces.push(stream.next_text(&tokenizer, &ids[..n], true).unwrap());
    }
    assert!(pieces.iter().all(|p| !p.contains(char::REPLACEMENT_CHARACTER)), "{pieces:?}");
    assert!(pieces.iter().any(String::is_empty), "no token held a partial character: {pieces:?}");
    assert_eq!(pieces.concat(), text);
}

#[test]
fn chat_template_matches_jinja2() {
    let Some(file) = open() else { return };
    let tokenizer = GgufTokenizer::from_gguf(&file).unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let fixture = fixture("smollm2_chat.json");
    for case in fixture["cases"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template.render(&messages, add, &tokenizer.bos_text(), &tokenizer.eos_text()).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn chat_template_errors_name_the_source() {
    let message = ChatTemplate::new("x.gguf: key `tokenizer.chat_template`", "{% for m in messages %}").unwrap_err().to_string();
    assert!(message.starts_with("x.gguf: key `tokenizer.chat_template`: chat template: line 1"), "{message}");
    let template = ChatTemplate::new("cfg.json: field `chat_template`", "{{ raise_exception('roles must alternate') }}").unwrap();
    let message = template.render(&[], true, "", "").unwrap_err().to_string();
    assert!(
        message.starts_with("cfg.json: field `chat_template`: chat template:") && message.contains("roles must alternate"),
        "{message}"
    );
    let trimmed = ChatTemplate::new("t", "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}").unwrap();
    assert_eq!(trimmed.render(&[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")], false, "", "").unwrap(), "  a\n  b\n");
}
