//! FalconMamba against transformers' `FalconMambaForCausalLM` (fixtures from
//! tests/generator/gen_falcon_mamba.py): logits, greedy tokens, prefill state, forward ≡ step.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use viper_checkpoint::{max_errors, Checkpoint, LoadOptions};
use viper_ssm::{FalconMambaConfig, FalconMambaForCausalLM, LanguageModel, Logits};

type B = NdArray;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/falcon_mamba").join(name)
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    max_errors(a, b).expect("comparable, non-degenerate tensors").1
}

fn vec3(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

struct Fixture {
    model: FalconMambaForCausalLM<B>,
    expected: Checkpoint,
}

fn load(name: &str) -> Fixture {
    let dir = fixture(name);
    let config = FalconMambaConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = FalconMambaForCausalLM::load(&config, &ckpt, LoadOptions::default(), &Default::default()).unwrap();
    assert!(ckpt.unused_keys(|_| false).is_empty(), "unused: {:?}", ckpt.unused_keys(|_| false));
    Fixture { model, expected: Checkpoint::open(dir.join("expected.safetensors")).unwrap() }
}

fn ids_tensor(ids: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default())
}

fn argmax(logits: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as i64
}

fn check_model(name: &str) {
    let f = load(name);
    let m = &f.model;
    let cases = f.expected.keys().iter().filter(|k| k.ends_with(".input_ids")).count();
    assert!(cases >= 3);
    for case in 0..cases {
        let (ids, _) = f.expected.read_i64(&format!("case{case}.input_ids")).unwrap();
        let (want_logits, shape) = f.expected.read_f32(&format!("case{case}.logits")).unwrap();
        let (want_gen, _) = f.expected.read_i64(&format!("case{case}.generated_ids")).unwrap();

        // Full-sequence logits.
        let mut cache = m.new_cache(1);
        let logits = m.forward(m.embed(ids_tensor(&ids)), &mut cache, Logits::All);
        assert_eq!(logits.dims(), [1, shape[0], shape[1]]);
        let err = rel_err(&vec3(logits.clone()), &want_logits);
        assert!(err < 1e-4, "{name} case {case}: logits rel err {err}");

        // Prefill state equals transformers' cache (conv window is [I, K] there, [b, K, I] here).
        for (layer, state) in cache.layers.iter().enumerate() {
            let (conv, cs) = f.expected.read_f32(&format!("case{case}.conv.{layer}")).unwrap();
            let ours = state.conv.clone().reshape([cs[1], cs[0]]).transpose();
            let err = rel_err(&ours.into_data().to_vec::<f32>().unwrap(), &conv);
            assert!(err < 1e-5, "{name} case {case} layer {layer}: conv state rel err {err}");
            let (ssm, _) = f.expected.read_f32(&format!("case{case}.ssm.{layer}")).unwrap();
            let err = rel_err(&vec3(state.ssm.clone()), &ssm);
            assert!(err < 1e-4, "{name} case {case} layer {layer}: ssm state rel err {err}");
        }

        // 16 greedy tokens through the cached single-token path.
        let last = vec3(logits.narrow(1, shape[0] - 1, 1));
        let mut next = argmax(&last);
        let mut generated = vec![next];
        while generated.len() < want_gen.len() {
            let l = m.forward(m.embed(ids_tensor(&[next])), &mut cache, Logits::Last);
            next = argmax(&vec3(l));
            generated.push(next);
        }
        assert_eq!(generated, want_gen, "{name} case {case}: greedy tokens");
    }
}

#[test]
fn odd_sizes_match_transformers() {
    check_model("fm-odd");
}

#[test]
fn tied_bf16_on_disk_matches_transformers() {
    check_model("fm-tied-bf16");
}

#[test]
fn forward_equals_step_by_step() {
    let f = load("fm-odd");
    let m = &f.model;
    let (ids, _) = f.expected.read_i64("case3.input_ids").unwrap();
    let mut seq_cache = m.new_cache(1);
    let seq = vec3(m.forward(m.embed(ids_tensor(&ids)), &mut seq_cache, Logits::All));
    let v = m.vocab_size();

    let mut step_cache = m.new_cache(1);
    let mut stepped = Vec::new();
    for &id in &ids {
        stepped.extend(vec3(m.forward(m.embed(ids_tensor(&[id])), &mut step_cache, Logits::Last)));
    }
    assert_eq!(stepped.len(), ids.len() * v);
    let err = rel_err(&stepped, &seq);
    assert!(err < 1e-5, "forward vs step logits rel err {err}");
    for (a, b) in seq_cache.layers.iter().zip(&step_cache.layers) {
        assert!(rel_err(&vec3(a.ssm.clone()), &vec3(b.ssm.clone())) < 1e-5);
        assert_eq!(vec3(a.conv.clone()), vec3(b.conv.clone()));
    }

    // A prefill split in two chunks continues from the state exactly like one call.
    let mut split_cache = m.new_cache(1);
    let (head, tail) = ids.split_at(29);
    let mut split = vec3(m.forward(m.embed(ids_tensor(head)), &mut split_cache, Logits::All));
    split.extend(vec3(m.forward(m.embed(ids_tensor(tail)), &mut split_cache, Logits::All)));
    let err = rel_err(&split, &seq);
    assert!(err < 1e-5, "split prefill rel err {err}");
}
