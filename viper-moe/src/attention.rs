//! Jamba attention (docs/spec.md §7.3): grouped-query heads, causal, **no positional encoding**, KV cache. The
//! four projections go through [`viper_ssm::linear`], the scores through [`viper_ssm::attention`].

use burn::nn::Linear;
use burn::prelude::*;
use viper_checkpoint::{Result, Weights};
use viper_ssm::{attention, linear, AttentionInput, SsmBackend};

use crate::config::JambaConfig;

/// Positions the KV cache grows by when full ([`JambaAttention::kv_block`]'s default).
pub const KV_BLOCK: usize = 256;

/// Keys and values of all positions seen so far, `[b, kv_heads, capacity, head_dim]` each, of which the
/// first `len` positions are filled. Grown by whole blocks, so a decode step writes one position in place
/// instead of concatenating the whole cache.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Cached keys.
    pub k: Tensor<B, 4>,
    /// Cached values.
    pub v: Tensor<B, 4>,
    /// Filled positions.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions the cache holds without growing.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// Writes `k`, `v` (`[b, kv_heads, l, hd]`) after the filled positions, first growing the capacity to
    /// the next multiple of `block` if they do not fit; returns the filled prefixes (views).
    fn append(
        cache: &mut Option<Self>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        block: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, kv, l, hd] = k.dims();
        let grow = |t: Option<Tensor<B, 4>>, len: usize, like: &Tensor<B, 4>| {
            let cap = t.as_ref().map_or(0, |t| t.dims()[2]);
            let need = (len + l).next_multiple_of(block.max(1));
            let extra = Tensor::zeros([b, kv, need.saturating_sub(cap), hd], (&like.device(), like.dtype()));
            match t {
                Some(t) if cap >= len + l => t,
                Some(t) => Tensor::cat(vec![t, extra], 2),
                None => extra,
            }
        };
        let (ck, cv, len) = match cache.take() {
            Some(c) => (Some(c.k), Some(c.v), c.len),
            None => (None, None, 0),
        };
        let (ck, cv) = (grow(ck, len, &k), grow(cv, len, &v));
        // The cache owns the only handles here, so the write may happen in place.
        let at = [0..b, 0..kv, len..len + l, 0..hd];
        let (ck, cv) = (ck.slice_assign(at.clone(), k), cv.slice_assign(at, v));
        let t = len + l;
        let filled = (ck.clone().narrow(2, 0, t), cv.clone().narrow(2, 0, t));
        *cache = Some(Self { k: ck, v: cv, len: t });
        filled
    }
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
    /// Positions the KV cache grows by ([`KV_BLOCK`] when loaded).
    #[module(skip)]
    pub kv_block: usize,
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
            kv_block: KV_BLOCK,
        })
    }

    /// Attends `x` (`[b, l, H]`) to the cached positions and itself, appending its keys and values,
    /// through [`viper_ssm::attention`] (scale `1/√hd`, docs/spec.md §7.3): causal with the mask aligned
    /// to the last key, so a chunk after cached positions sees them; grouped-query heads without
    /// repeated K/V on CUDA (cuBLAS), repeated elsewhere (Burn's `attention`).
    pub fn forward(&self, x: Tensor<B, 3>, cache: &mut Option<KvCache<B>>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let hd = self.q_proj.weight.dims()[1] / self.heads;
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, l, heads, hd]).swap_dims(1, 2);
        let q = split(linear(&self.q_proj, x.clone()), self.heads); // (b, heads, l, hd)
        let k = split(linear(&self.k_proj, x.clone()), self.kv_heads); // (b, kv, l, hd)
        let v = split(linear(&self.v_proj, x), self.kv_heads);
        let (k, v) = KvCache::append(cache, k, v, self.kv_block);
        let t = k.dims()[2];
        // Batches fold into the head index; query head h reads kv head h / group (transformers'
        // `repeat_kv`). The cache views fold into a batch stride over the capacity; the cuBLAS path
        // reads them in place.
        let fold = |t4: Tensor<B, 4>, heads: usize, len: usize| t4.reshape([b * heads, len, hd]);
        let input = AttentionInput {
            q: fold(q, self.heads, l),
            k: fold(k, self.kv_heads, t),
            v: fold(v, self.kv_heads, t),
            causal: true,
        };
        let out = attention(input).reshape([b, self.heads, l, hd]);
        linear(&self.o_proj, out.swap_dims(1, 2).reshape([b, l, self.heads * hd]))
    }
}
