//! Bad input gives typed errors that say what and where, never a panic.

use std::path::{Path, PathBuf};

use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, Error, SpecialTokens, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat").join(name)
}

/// A temporary checkpoint dir with the jamba-s1 tokenizer files, `files` overriding some.
fn checkpoint(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(fixture("jamba-s1").join(f), dir.path().join(f)).unwrap();
    }
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

fn render(template: &ChatTemplate, conv: &Conversation) -> Result<String, Error> {
    template.render(conv, &SpecialTokens::default(), true)
}

#[test]
fn image_markers_must_match_images() {
    let template = ChatTemplate::builtin(BuiltinTemplate::SystemFalconMamba);
    let more_markers = Conversation::new().user("hi").user_inline_images("<image> and <image>", [()]);
    let err = render(&template, &more_markers).unwrap_err();
    assert!(matches!(err, Error::ImageCount { markers: 2, images: 1, .. }), "{err:?}");
    assert_eq!(err.to_string(), "turn 1 (user): 2 `<image>` marker(s) but 1 image(s)");

    let fewer_markers = Conversation::new().user_inline_images("no marker", [(), ()]);
    let err = render(&template, &fewer_markers).unwrap_err();
    assert!(matches!(err, Error::ImageCount { markers: 0, images: 2, .. }), "{err:?}");

    // a marker that does not come from a turn (here the system prompt) is caught after rendering
    let in_system = Conversation::new().with_system("<image>").user("hi");
    let err = render(&template, &in_system).unwrap_err();
    assert_eq!(err.to_string(), "prompt rendered by builtin:system_falcon_mamba: 1 `<image>` marker(s) but 0 image(s)");
}

#[test]
fn template_syntax_and_runtime_errors_name_the_template() {
    let err = ChatTemplate::new("{% for m in messages %}", "broken.jinja").unwrap_err();
    assert!(matches!(&err, Error::Template { template, .. } if template == "broken.jinja"), "{err:?}");
    assert!(err.to_string().contains("syntax error"), "{err}");

    let template = ChatTemplate::new("line one\n{{ messages | no_such_filter }}", "runtime.jinja").unwrap();
    let err = render(&template, &Conversation::new().user("hi")).unwrap_err();
    assert!(matches!(err, Error::Template { .. }), "{err:?}");
    assert!(err.to_string().contains("runtime.jinja:2"), "{err}");
}

#[test]
fn raise_exception_becomes_a_typed_error() {
    let template = ChatTemplate::new(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}",
        "strict",
    )
    .unwrap();
    let err = render(&template, &Conversation::new().with_system("sys").user("hi")).unwrap_err();
    assert!(
        matches!(&err, Error::TemplateException { template, message }
            if template == "strict" && message == "Conversations must start with a user turn"),
        "{err:?}"
    );
    assert!(render(&template, &Conversation::new().user("hi")).is_ok());

    // upstream's `plain` style cannot render a reply (its sep2 is None)
    let plain = ChatTemplate::builtin(BuiltinTemplate::Plain);
    let err = render(&plain, &Conversation::new().user("q").assistant("a")).unwrap_err();
    assert!(matches!(err, Error::TemplateException { .. }), "{err:?}");
}

#[test]
fn missing_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::MissingFile { path } if path == &dir.path().join("tokenizer.json")), "{err:?}");
    // without tokenizer_config.json a checkpoint simply has no template
    assert!(ChatTemplate::from_checkpoint(dir.path()).unwrap().is_none());
}

#[test]
fn unparsable_files_are_reported_with_their_path() {
    let dir = checkpoint(&[("tokenizer.json", r#"{"version": "1.0", "model": 42}"#)]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().join("tokenizer.json").display().to_string()), "{err}");

    let dir = checkpoint(&[("tokenizer_config.json", "{\"bos_token\": ")]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::Json { path, .. } if path.ends_with("tokenizer_config.json")), "{err:?}");

    let dir = checkpoint(&[("tokenizer_config.json", r#"{"add_bos_token": "yes"}"#)]);
    assert!(matches!(ChatTemplate::from_checkpoint(dir.path()), Err(Error::Json { .. })));
}

#[test]
fn unusable_configs_are_reported() {
    let named = r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#;
    let dir = checkpoint(&[("tokenizer_config.json", named)]);
    let err = ChatTemplate::from_checkpoint(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("\"default\""), "{err}");

    // transformers' LlamaTokenizerFast refuses add_bos_token without a bos_token, and so do we
    let llama = r#"{"tokenizer_class": "LlamaTokenizer", "eos_token": "<|endoftext|>"}"#;
    let dir = checkpoint(&[("tokenizer_config.json", llama), ("special_tokens_map.json", "{}")]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[test]
fn template_sources_follow_transformers_precedence() {
    let named = r#"{"chat_template": [{"name": "rag", "template": "R"}, {"name": "default", "template": "D"}]}"#;
    let dir = checkpoint(&[("tokenizer_config.json", named)]);
    let template = ChatTemplate::from_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(render(&template, &Conversation::new()).unwrap(), "D");

    std::fs::write(dir.path().join("chat_template.jinja"), "J\n").unwrap();
    let template = ChatTemplate::from_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(render(&template, &Conversation::new()).unwrap(), "J");
    assert!(Path::new(template.origin()).ends_with("chat_template.jinja"));
}
