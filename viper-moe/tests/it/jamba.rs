//! Jamba against transformers' `JambaForCausalLM` (fixtures from tests/generator/gen_jamba.py):
//! full-sequence logits, 16 greedy tokens through the hybrid cache, and forward ≡ step.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use viper_checkpoint::{max_errors, Checkpoint, LoadOptions};
use viper_moe::{JambaConfig, JambaForCausalLM, LanguageModel, Logits};

type B = NdArray;

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    max_errors(a, b).expect("comparable, non-degenerate tensors").1
}

fn vec3(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn ids(v: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &Default::default())
}

fn argmax(v: &[f32]) -> i64 {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as i64
}

fn load(name: &str) -> (JambaForCausalLM<B>, Checkpoint) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jamba").join(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: JambaConfig = serde_json::from_str(&text).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = JambaForCausalLM::load(&config, &ckpt, LoadOptions::default(), &Default::default()).unwrap();
    assert!(ckpt.unused_keys(|_| false).is_empty(), "unused: {:?}", ckpt.unused_keys(|_| false));
    (model, Checkpoint::open(dir.join("expected.safetensors")).unwrap())
}

fn check(name: &str) {
    let (m, expected) = load(name);
    for case in 0..4 {
        let (prompt, _) = expected.read_i64(&format!("case{case}.input_ids")).unwrap();
        let (want, shape) = expected.read_f32(&format!("case{case}.logits")).unwrap();
        let (want_gen, _) = expected.read_i64(&format!("case{case}.generated_ids")).unwrap();
        let mut cache = m.new_cache(1);
        let logits = m.forward(m.embed(ids(&prompt)), &mut cache, Logits::All);
        let err = rel_err(&vec3(logits.clone()), &want);
        assert!(err < 1e-4, "{name} case {case}: logits rel err {err}");

        let mut next = argmax(&vec3(logits.narrow(1, shape[0] - 1, 1)));
        let mut generated = vec![next];
        while generated.len() < want_gen.len() {
            next = argmax(&vec3(m.forward(m.embed(ids(&[next])), &mut cache, Logits::Last)));
            generated.push(next);
        }
        assert_eq!(generated, want_gen, "{name} case {case}: greedy tokens");
    }
}

#[test]
fn gqa_moe_matches_transformers() {
    check("jb-gqa");
}

#[test]
fn mqa_bf16_on_disk_matches_transformers() {
    check("jb-mqa-bf16");
}

#[test]
fn forward_equals_step_with_hybrid_cache() {
    let (m, expected) = load("jb-gqa");
    let (prompt, _) = expected.read_i64("case3.input_ids").unwrap();
    let mut seq_cache = m.new_cache(1);
    let seq = vec3(m.forward(m.embed(ids(&prompt)), &mut seq_cache, Logits::All));
    let mut step_cache = m.new_cache(1);
    let mut stepped = Vec::new();
    for &t in &prompt {
        stepped.extend(vec3(m.forward(m.embed(ids(&[t])), &mut step_cache, Logits::Last)));
    }
    let err = rel_err(&stepped, &seq);
    assert!(err < 1e-5, "forward vs step rel err {err}");

    // A prefill in two parts (a follow-up turn) attends across the boundary like one call.
    let mut split_cache = m.new_cache(1);
    let (a, b) = prompt.split_at(17);
    let mut split = vec3(m.forward(m.embed(ids(a)), &mut split_cache, Logits::All));
    split.extend(vec3(m.forward(m.embed(ids(b)), &mut split_cache, Logits::All)));
    let err = rel_err(&split, &seq);
    assert!(err < 1e-5, "split prefill rel err {err}");
}

#[test]
fn bad_configs_are_rejected() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jamba/jb-gqa");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (key, value, needle) in [
        ("num_key_value_heads", serde_json::json!(3), "multiple"),
        ("num_experts_per_tok", serde_json::json!(9), "exceeds"),
        ("attn_layer_period", serde_json::json!(0), "attn_layer_period"),
        ("hidden_size", serde_json::json!(50), "divisible"),
    ] {
        let mut c = base.clone();
        c[key] = value;
        let config: JambaConfig = serde_json::from_value(c).unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.contains(needle), "{key}: {err}");
    }
}
