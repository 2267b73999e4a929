//! The Jinja environment behaves like transformers' `apply_chat_template`.

use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, SpecialTokens};

fn render(source: &str, conv: &Conversation) -> String {
    let special = SpecialTokens { bos: Some("<s>".into()), eos: Some("</s>".into()), ..Default::default() };
    ChatTemplate::new(source, "test").unwrap().render(conv, &special, true).unwrap()
}

fn chat() -> Conversation {
    Conversation::new().with_system("  Be brief.  ").user("hello").assistant("hi").user("bye")
}

#[test]
fn builtin_templates_compile_and_round_trip_their_names() {
    for t in BuiltinTemplate::ALL {
        assert_eq!(BuiltinTemplate::from_name(t.name()), Some(t));
        assert_eq!(ChatTemplate::builtin(t).origin(), format!("builtin:{}", t.name()));
    }
    assert_eq!(BuiltinTemplate::from_name("vicuna_v0"), None);
}

#[test]
fn whitespace_control_matches_hf() {
    // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it,
    // and the source's single trailing newline is not kept.
    let source =
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(render(source, &chat()), "[hello]\n[bye]\n");
}

#[test]
fn python_methods_namespace_and_loop_controls() {
    let source = "{%- set ns = namespace(n=0) -%}\
        {%- for m in messages -%}\
            {%- if m.content.startswith('by') %}{% break %}{% endif -%}\
            {%- set ns.n = ns.n + 1 -%}\
            {{ m.content.strip().upper() }}|{% for k, v in m.items() %}{{ k }}={{ v.strip() }};{% endfor %}\
        {%- endfor -%}\
        {{ ns.n }}{{ bos_token }}{{ eos_token }}{{ pad_token is defined }}{{ tools is none }}{{ add_generation_prompt }}";
    assert_eq!(
        render(source, &chat()),
        "BE BRIEF.|role=system;content=Be brief.;HELLO|role=user;content=hello;HI|role=assistant;content=hi;3<s></s>FalseTrueTrue"
    );
}

#[test]
fn tojson_writes_like_python_json_dumps() {
    let conv = Conversation::new().user("<b>é\"</b>");
    let compact = render("{{ messages | tojson }}", &conv);
    assert_eq!(compact, r#"[{"role": "user", "content": "<b>é\"</b>"}]"#);
    let indented = render("{{ messages[0] | tojson(indent=2) }}", &conv);
    assert_eq!(indented, "{\n  \"role\": \"user\",\n  \"content\": \"<b>é\\\"</b>\"\n}");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let year = render("{{ strftime_now('%Y') }}", &chat());
    assert!(year.len() == 4 && year.parse::<u32>().is_ok_and(|y| y >= 2024), "{year}");
}

#[test]
fn classic_llava_formats() {
    let conv = |t: BuiltinTemplate| {
        Conversation::new().with_system(t.default_system()).user_with_images("Q", [()]).assistant("A").user("R")
    };
    let render = |t| ChatTemplate::builtin(t).render(&conv(t), &SpecialTokens::default(), true).unwrap();
    assert_eq!(
        render(BuiltinTemplate::LlavaV1),
        format!("{} USER: <image>\nQ ASSISTANT: A</s>USER: R ASSISTANT:", BuiltinTemplate::LlavaV1.default_system())
    );
    assert_eq!(
        render(BuiltinTemplate::ChatmlDirect),
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nQ<|im_end|>\
         <|im_start|>assistant\nA<|im_end|><|im_start|>user\nR<|im_end|><|im_start|>assistant\n"
    );
}

/// The default render budget is far above what real conversations need: a thousand exchanges through
/// every built-in template and the fixtures' own fit in a tenth of it.
#[test]
fn long_conversations_fit_a_tenth_of_the_default_budget() {
    use viper_chat_template::{RenderBudget, DEFAULT_TEMPLATE_FUEL};
    let mut conversation = viper_chat_template::Conversation::<()>::new().with_system("sys");
    for i in 0..1000 {
        conversation = conversation.user(format!("question {i}")).assistant(format!("answer {i}"));
    }
    conversation = conversation.user("last");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat");
    let mut templates: Vec<ChatTemplate> = BuiltinTemplate::ALL
        .iter()
        .filter(|&&t| t != BuiltinTemplate::Plain) // `plain` cannot render replies (upstream's sep2 is None)
        .map(|&t| ChatTemplate::builtin(t))
        .collect();
    for name in ["jamba-s1", "mamba-s1"] {
        templates.push(ChatTemplate::from_checkpoint(fixtures.join(name)).unwrap().unwrap());
    }
    let budget = RenderBudget { fuel: DEFAULT_TEMPLATE_FUEL / 10, ..Default::default() };
    for template in templates {
        let origin = template.origin().to_string();
        let prompt = template.with_budget(budget).render(&conversation, &Default::default(), true);
        assert!(prompt.is_ok_and(|p| p.contains("answer 999")), "{origin}");
    }
}
