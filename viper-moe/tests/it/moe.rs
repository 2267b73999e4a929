//! The MoE's device routing and the attention's block-grown KV cache against naive per-token computations
//! (docs/spec.md §7.3, §7.5), on random weights.

use burn::backend::NdArray;
use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use viper_checkpoint::max_errors;
use viper_moe::{JambaAttention, KvCache, SparseMoe};

type B = NdArray;

const H: usize = 16;

fn dev() -> burn::tensor::Device<B> {
    Default::default()
}

fn randn<const D: usize>(shape: [usize; D], std: f64) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), &dev())
}

fn linear(d_in: usize, d_out: usize) -> Linear<B> {
    Linear { weight: Param::from_tensor(randn([d_out, d_in], (d_in as f64).powf(-0.5)).transpose()), bias: None }
}

fn vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Asserts max abs and relative error below `tol`.
fn close(what: &str, ours: Vec<f32>, want: Vec<f32>, tol: f32) {
    let (abs, rel) = max_errors(&ours, &want).expect("comparable tensors");
    assert!(abs < tol && rel < tol, "{what}: max abs {abs:e}, rel {rel:e}");
}

fn moe(experts: usize, top_k: usize, ffn: usize) -> SparseMoe<B> {
    let stack = |d_out: usize, d_in: usize| Param::from_tensor(randn([experts, d_out, d_in], (d_in as f64).powf(-0.5)));
    SparseMoe {
        // A sharper router: distinct probabilities, so ties cannot make the top-k ambiguous.
        router: Linear { weight: Param::from_tensor(randn([H, experts], 1.0)), bias: None },
        gate_proj: stack(ffn, H),
        up_proj: stack(ffn, H),
        down_proj: stack(H, ffn),
        top_k,
    }
}

/// docs/spec.md §7.5 token by token on the host's view of the routing: softmax, top-k without
/// renormalising, the weighted outputs summed in expert order into a zero buffer.
fn naive(m: &SparseMoe<B>, x: Tensor<B, 3>) -> Vec<f32> {
    let [_, l, h] = x.dims();
    let mut out = Vec::new();
    for t in 0..l {
        let xt = x.clone().narrow(1, t, 1).reshape([1, h]);
        let logits = vec(xt.clone().matmul(m.router.weight.val()));
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut ranked: Vec<usize> = (0..exp.len()).collect();
        ranked.sort_by(|&a, &b| exp[b].partial_cmp(&exp[a]).unwrap().then(a.cmp(&b)));
        let mut chosen = ranked[..m.top_k].to_vec();
        chosen.sort_unstable();
        let mut acc = Tensor::<B, 2>::zeros([1, h], &dev());
        for e in chosen {
            acc = acc + m.expert(e).forward(xt.clone()) * (exp[e] / sum);
        }
        out.extend(vec(acc));
    }
    out
}

#[test]
fn moe_paths_match_naive_routing() {
    for (experts, top_k) in [(8, 2), (6, 3), (4, 1)] {
        let m = moe(experts, top_k, 24);
        let x = randn([1, 7, H], 1.0);
        let want = naive(&m, x.clone());
        close("grouped", vec(m.forward_grouped(x.clone())), want.clone(), 1e-5);
        close("routed", vec(m.forward_routed(x.clone())), want.clone(), 1e-5);
        close("forward", vec(m.forward(x)), want, 1e-5);
    }
}

#[test]
fn moe_token_output_does_not_depend_on_its_batch() {
    let m = moe(8, 2, 24);
    let x = randn([2, 5, H], 1.0);
    let batched = vec(m.forward(x.clone())); // grouped: 10 tokens
    let mut alone = Vec::new();
    for b in 0..2 {
        for t in 0..5 {
            alone.extend(vec(m.forward(x.clone().narrow(0, b, 1).narrow(1, t, 1))));
            // routed: 1 token
        }
    }
    close("batched vs one by one", batched.clone(), alone, 1e-6);
    // Each token in a batch of two (the routed path with several tokens) as well.
    let pair = vec(m.forward_routed(x.clone().narrow(0, 0, 1).narrow(1, 1, 2)));
    close("pair", pair, batched[H..3 * H].to_vec(), 1e-6);
}

fn attention(heads: usize, kv_heads: usize, hd: usize, kv_block: usize) -> JambaAttention<B> {
    JambaAttention {
        q_proj: linear(H, heads * hd),
        k_proj: linear(H, kv_heads * hd),
        v_proj: linear(H, kv_heads * hd),
        o_proj: linear(heads * hd, H),
        heads,
        kv_heads,
        kv_block,
    }
}

/// docs/spec.md §7.3 without a cache: repeated K/V, f32 scores, causal mask, softmax.
fn naive_attention(a: &JambaAttention<B>, x: Tensor<B, 3>) -> Vec<f32> {
    let [b, l, _] = x.dims();
    let hd = a.q_proj.weight.dims()[1] / a.heads;
    let split = |p: &Linear<B>, n: usize| p.forward(x.clone()).reshape([b, l, n, hd]).swap_dims(1, 2);
    let (q, k, v) = (split(&a.q_proj, a.heads), split(&a.k_proj, a.kv_heads), split(&a.v_proj, a.kv_heads));
    let g = a.heads / a.kv_heads;
    let rep = |t: Tensor<B, 4>| t.unsqueeze_dim::<5>(2).expand([b, a.kv_heads, g, l, hd]).reshape([b, a.heads, l, hd]);
    let scores = q.matmul(rep(k).swap_dims(2, 3)) / (hd as f32).sqrt();
    let rows = Tensor::<B, 1, Int>::arange(0..l as i64, &dev()).reshape([l, 1]);
    let cols = Tensor::<B, 1, Int>::arange(0..l as i64, &dev()).reshape([1, l]);
    let future = cols.greater(rows).reshape([1, 1, l, l]).expand([b, a.heads, l, l]);
    let probs = burn::tensor::activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
    let out = probs.matmul(rep(v)).swap_dims(1, 2).reshape([b, l, a.heads * hd]);
    vec(a.o_proj.forward(out))
}

#[test]
fn block_grown_kv_cache_matches_uncached_attention() {
    for (heads, kv_heads) in [(4, 2), (4, 1), (2, 2)] {
        let a = attention(heads, kv_heads, 8, 4);
        let x = randn([2, 11, H], 1.0);
        let want = naive_attention(&a, x.clone());
        let mut none = None;
        close("prefill", vec(a.forward(x.clone(), &mut none)), want.clone(), 1e-5);

        // Token by token across the block boundaries at 4 and 8: one position written per step.
        let mut cache: Option<KvCache<B>> = None;
        let mut stepped = vec![Vec::new(); 2];
        for t in 0..11 {
            let y = a.forward(x.clone().narrow(1, t, 1), &mut cache);
            let c = cache.as_ref().unwrap();
            assert_eq!((c.len, c.capacity()), (t + 1, (t + 1).next_multiple_of(4)));
            for (b, s) in stepped.iter_mut().enumerate() {
                s.extend(vec(y.clone().narrow(0, b, 1)));
            }
        }
        close("stepped", stepped.concat(), want.clone(), 1e-5);

        // A prefill, a follow-up crossing a boundary, then decode steps.
        let mut cache = None;
        let mut parts = vec![Vec::new(); 2];
        for (start, len) in [(0, 3), (3, 6), (9, 1), (10, 1)] {
            let y = a.forward(x.clone().narrow(1, start, len), &mut cache);
            for (b, p) in parts.iter_mut().enumerate() {
                p.extend(vec(y.clone().narrow(0, b, 1)));
            }
        }
        close("split", parts.concat(), want, 1e-5);
    }
}
