//! The interface generation needs from a causal language model, shared by both families.

use burn::prelude::*;

/// Which positions' logits [`LanguageModel::forward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position (`[b, l, V]`): tests and scoring.
    All,
    /// Only the last position (`[b, 1, V]`): generation (transformers' `num_logits_to_keep = 1`).
    Last,
}

/// A causal LM that runs over embeddings and carries a cache between calls.
pub trait LanguageModel<B: Backend> {
    /// Recurrent state and/or KV cache of one batch.
    type Cache: Clone;

    /// Rows of the embedding matrix (ids must be below this).
    fn vocab_size(&self) -> usize;
    /// Width of the embeddings.
    fn hidden_size(&self) -> usize;
    /// Token embeddings, `[b, l] → [b, l, H]` in the model's dtype.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;
    /// An empty cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> Self::Cache;
    /// Runs `embeds` (`[b, l, H]`) after whatever `cache` holds and updates it; returns f32 logits.
    /// A call with `l = 1` is a decode step and takes the single-token path.
    fn forward(&self, embeds: Tensor<B, 3>, cache: &mut Self::Cache, logits: Logits) -> Tensor<B, 3>;
}
