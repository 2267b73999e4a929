//! Prompts and ids identical to transformers 4.45.2 + upstream `tokenizer_image_token`
//! (tests/fixtures/chat/expected.json, written by tests/generator/gen_chat.py) and to the reference
//! checkpoints' reference.json (tests/fixtures/chat/reference_cases.json).

use std::path::PathBuf;

use serde::Deserialize;
use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, Tokenizer, VIPER_SYSTEM_PROMPT};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat")
}

fn read<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(fixtures().join(name)).expect("fixture file");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn tokenizer(name: &str) -> Tokenizer {
    Tokenizer::from_dir(fixtures().join(name)).expect("fixture tokenizer")
}

#[derive(Deserialize)]
struct ReferenceCase {
    name: String,
    question: String,
    images: usize,
    prompt: String,
    input_ids: Vec<i64>,
    image_token_position: Option<usize>,
}

#[derive(Deserialize)]
struct Expected {
    tokenizers: std::collections::BTreeMap<String, TokenizerInfo>,
    clean_up_tokenization_spaces: CleanUp,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct CleanUp {
    ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct TokenizerInfo {
    vocab_size: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    encode: Vec<Encode>,
    decode: Vec<Decode>,
}

#[derive(Deserialize)]
struct Encode {
    text: String,
    add_special_tokens: bool,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Decode {
    ids: Vec<u32>,
    skip_special_tokens: bool,
    text: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    tokenizer: String,
    template: TemplateSpec,
    system: Option<String>,
    turns: Vec<TurnSpec>,
    add_generation_prompt: bool,
    prompt: String,
    input_ids: Vec<i64>,
    image_positions: Vec<usize>,
}

#[derive(Deserialize)]
struct TemplateSpec {
    builtin: Option<String>,
    source: Option<String>,
}

#[derive(Deserialize)]
struct TurnSpec {
    role: String,
    text: String,
    images: usize,
    inline: bool,
}

impl Case {
    fn conversation(&self) -> Conversation {
        let mut conv = Conversation::new();
        conv.system = self.system.clone();
        self.turns.iter().fold(conv, |conv, t| match (t.role.as_str(), t.inline) {
            ("assistant", _) => conv.assistant(&t.text),
            (_, true) => conv.user_inline_images(&t.text, vec![(); t.images]),
            (_, false) => conv.user_with_images(&t.text, vec![(); t.images]),
        })
    }

    fn template(&self) -> ChatTemplate {
        match (&self.template.builtin, &self.template.source) {
            (Some(name), _) => ChatTemplate::builtin(BuiltinTemplate::from_name(name).expect("known builtin")),
            (None, Some(source)) => ChatTemplate::new(source.as_str(), &self.name).expect("variant compiles"),
            (None, None) => ChatTemplate::from_checkpoint(fixtures().join(&self.tokenizer))
                .expect("readable config")
                .expect("checkpoint has a template"),
        }
    }
}

#[test]
fn reference_checkpoint_prompts_and_ids_are_reproduced() {
    let cases: std::collections::BTreeMap<String, Vec<ReferenceCase>> = read("reference_cases.json");
    assert_eq!(cases.len(), 2);
    for (dir, cases) in cases {
        let tok = tokenizer(&dir);
        let template = ChatTemplate::from_checkpoint(fixtures().join(&dir)).unwrap().unwrap();
        for case in cases {
            let conv = Conversation::new()
                .with_system(VIPER_SYSTEM_PROMPT)
                .user_with_images(&case.question, vec![(); case.images]);
            let prompt = template.render(&conv, tok.special_tokens(), true).unwrap();
            assert_eq!(prompt, case.prompt, "{dir}/{}", case.name);
            let tokens = tok.encode_prompt(&prompt).unwrap();
            assert_eq!(tokens.ids, case.input_ids, "{dir}/{}", case.name);
            assert_eq!(tokens.image_positions, Vec::from_iter(case.image_token_position), "{dir}/{}", case.name);
        }
    }
}

#[test]
fn conversations_render_and_tokenise_like_transformers() {
    let expected: Expected = read("expected.json");
    assert!(expected.cases.len() >= 25);
    for case in &expected.cases {
        let tok = tokenizer(&case.tokenizer);
        let prompt = case.template().render(&case.conversation(), tok.special_tokens(), case.add_generation_prompt);
        assert_eq!(prompt.as_ref().ok(), Some(&case.prompt), "{}: {prompt:?}", case.name);
        let tokens = tok.encode_prompt(&case.prompt).unwrap();
        assert_eq!(tokens.ids, case.input_ids, "{}", case.name);
        assert_eq!(tokens.image_positions, case.image_positions, "{}", case.name);
    }
}

#[test]
fn builtin_viper_templates_match_the_reference_checkpoint_templates() {
    for (dir, builtin) in [("mamba-s1", BuiltinTemplate::SystemFalconMamba), ("jamba-s1", BuiltinTemplate::SystemJamba)]
    {
        let tok = tokenizer(dir);
        let own = ChatTemplate::from_checkpoint(fixtures().join(dir)).unwrap().unwrap();
        let conv = Conversation::new()
            .with_system(builtin.default_system())
            .user_with_images("Q?", [()])
            .assistant("A.")
            .user("Again?");
        let render = |t: &ChatTemplate| t.render(&conv, tok.special_tokens(), true).unwrap();
        assert_eq!(render(&ChatTemplate::builtin(builtin)), render(&own), "{dir}");
    }
}

#[test]
fn token_lookups_encode_and_decode_like_transformers() {
    let expected: Expected = read("expected.json");
    assert_eq!(expected.tokenizers.len(), 4);
    for (name, info) in &expected.tokenizers {
        let tok = tokenizer(name);
        assert_eq!(tok.vocab_size(), info.vocab_size, "{name}");
        assert_eq!(tok.bos_token_id(), info.bos_token_id, "{name}");
        assert_eq!(tok.eos_token_id(), info.eos_token_id, "{name}");
        assert_eq!(tok.pad_token_id(), info.pad_token_id, "{name}");
        for e in &info.encode {
            assert_eq!(tok.encode(&e.text, e.add_special_tokens).unwrap(), e.ids, "{name}: {:?}", e.text);
        }
        for d in &info.decode {
            assert_eq!(tok.decode(&d.ids, d.skip_special_tokens).unwrap(), d.text, "{name}: {:?}", d.ids);
        }
    }
    let jamba = tokenizer("jamba-s1");
    assert_eq!(jamba.token_to_id("<|eom|>"), Some(518));
    assert_eq!(jamba.token_to_id("<|no such token|>"), None);
}

#[test]
fn streaming_never_splits_a_character_and_adds_up_to_decode() {
    let expected: Expected = read("expected.json");
    let mut buffered = 0;
    for (name, info) in &expected.tokenizers {
        let tok = tokenizer(name);
        for d in &info.decode {
            let mut stream = tok.stream(d.skip_special_tokens);
            let mut text = String::new();
            for &id in &d.ids {
                match stream.step(id).unwrap() {
                    Some(chunk) => {
                        assert!(!chunk.contains('\u{FFFD}'), "{name}: split character in {chunk:?}");
                        text += &chunk;
                    }
                    None => buffered += 1,
                }
            }
            text.extend(stream.finish().unwrap());
            assert_eq!(text, d.text, "{name}: {:?}", d.ids);
        }
    }
    assert!(buffered > 0, "the fixtures hold multi-byte characters split over several tokens");
}

#[test]
fn decode_cleans_up_spaces_when_the_config_asks() {
    let expected = read::<Expected>("expected.json").clean_up_tokenization_spaces;
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "special_tokens_map.json"] {
        std::fs::copy(fixtures().join("jamba-s1").join(f), dir.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value = read("jamba-s1/tokenizer_config.json");
    config["clean_up_tokenization_spaces"] = true.into();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.decode(&expected.ids, true).unwrap(), expected.text);
}
