//! Jamba attention (docs/spec.md §7.3): grouped-query heads, causal, **no positional encoding**, KV cache. The
//! four projections go through [`viper_ssm::linear`].

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::FloatDType;
use viper_checkpoint::{Result, Weights};
use viper_ssm::{linear, SsmBackend};

use crate::config::JambaConfig;

/// Keys and values of all positions seen so far, `[b, kv_heads, T, head_dim]` each.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Cached keys.
    pub k: Tensor<B, 4>,
    /// Cached values.
    pub v: Tensor<B, 4>,
}

/// `self_attn.{q,k,v,o}_proj`, no biases.
#[derive(Module, Debug)]
pub struct JambaAttention<B: Backend> {
    /// H → heads · hd.
    pub q_proj: Linear<B>,
    /// H → kv_heads · hd.
    pub k_proj: Linear<B>,
    /// H → kv_heads · hd.
    pub v_proj: Linear<B>,
    /// heads · hd → H.
    pub o_proj: Linear<B>,
    /// Query heads.
    #[module(skip)]
    pub heads: usize,
    /// Key/value heads.
    #[module(skip)]
    pub kv_heads: usize,
}

impl<B: SsmBackend> JambaAttention<B> {
    /// Loads `…self_attn.*`.
    pub fn load(c: &JambaConfig, w: &Weights, device: &B::Device) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim());
        Ok(Self {
            q_proj: w.linear("q_proj", h, c.num_attention_heads * hd, false, device)?,
            k_proj: w.linear("k_proj", h, c.num_key_value_heads * hd, false, device)?,
            v_proj: w.linear("v_proj", h, c.num_key_value_heads * hd, false, device)?,
            o_proj: w.linear("o_proj", c.num_attention_heads * hd, h, false, device)?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
        })
    }

    /// Attends `x` (`[b, l, H]`) to the cached positions and itself, appending its keys and values.
    pub fn forward(&self, x: Tensor<B, 3>, cache: &mut Option<KvCache<B>>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let hd = self.q_proj.weight.dims()[1] / self.heads;
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, l, heads, hd]).swap_dims(1, 2);
        let q = split(linear(&self.q_proj, x.clone()), self.heads); // (b, heads, l, hd)
        let k = split(linear(&self.k_proj, x.clone()), self.kv_heads); // (b, kv, l, hd)
        let v = split(linear(&self.v_proj, x), self.kv_heads);
        let (k, v) = match cache.take() {
            Some(c) => (Tensor::cat(vec![c.k, k], 2), Tensor::cat(vec![c.v, v], 2)),
            None => (k, v),
        };
        *cache = Some(KvCache { k: k.clone(), v: v.clone() });
        let t = k.dims()[2];

        // GQA: query head h reads kv head h / group (transformers' `repeat_kv`).
        let group = self.heads / self.kv_heads;
        let repeat = |t4: Tensor<B, 4>| {
            t4.unsqueeze_dim::<5>(2).expand([b, self.kv_heads, group, t, hd]).reshape([b, self.heads, t, hd])
        };
        let (k, v) = (repeat(k), repeat(v));

        // Scores and softmax in f32 (eager attention's `softmax(dtype=float32)`).
        let scale = (hd as f64).powf(-0.5);
        let scores = q.cast(FloatDType::F32).matmul(k.cast(FloatDType::F32).swap_dims(2, 3)) * scale; // (b, heads, l, t)
        let scores = if l > 1 {
            // Query i sits at absolute position t - l + i and sees keys 0..=t - l + i.
            let device = scores.device();
            let rows = Tensor::<B, 1, Int>::arange(0..l as i64, &device).reshape([l, 1]) + (t - l) as i64;
            let cols = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]);
            let future = cols.greater(rows).reshape([1, 1, l, t]).expand([b, self.heads, l, t]);
            scores.mask_fill(future, f32::NEG_INFINITY)
        } else {
            scores
        };
        let probs = softmax(scores, 3).cast(v.dtype());
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, l, self.heads * hd]);
        linear(&self.o_proj, out)
    }
}
