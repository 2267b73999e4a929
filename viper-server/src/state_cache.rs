//! Model caches kept after a prompt prefix, so that the next request with the same prefix (the same
//! image and question preamble) prefills only the rest.
//!
//! An entry is keyed by the prefix's exact token ids and a hash of the bytes of every image in it
//! (the raw encoded bytes the client sent), and holds a clone of the model cache after the prefix
//! (Mamba conv/SSM states; for Jamba the attention KV caches too). Entries are sized by their tensors'
//! elements × the dtype's bytes and evicted least recently used first to stay within the budget.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use burn::prelude::Backend;
use viper_model::ViperCache;

/// What identifies a prefix: its ids ([`IMAGE_TOKEN_INDEX`](viper_chat_template::IMAGE_TOKEN_INDEX)
/// where an image goes) and the content of its images.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// The prefix's token ids.
    pub ids: Vec<i64>,
    /// [`hash_images`] of the images in the prefix.
    pub images: u64,
}

/// A 64-bit hash of the images' encoded bytes, in order (each length-prefixed).
pub fn hash_images<'a>(images: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = DefaultHasher::new();
    for bytes in images {
        bytes.len().hash(&mut h);
        bytes.hash(&mut h);
    }
    h.finish()
}

/// One kept state.
#[derive(Debug)]
pub struct Entry<B: Backend> {
    /// The model cache after the prefix (batch 1).
    pub cache: ViperCache<B>,
    /// Positions the prefix spans (each image counted as its feature rows).
    pub positions: usize,
    /// Bytes of the cache's tensors.
    pub bytes: usize,
    last_used: u64,
}

/// An LRU map from prefixes to model caches, bounded in bytes.
#[derive(Debug)]
pub struct StateCache<B: Backend> {
    entries: HashMap<PrefixKey, Entry<B>>,
    budget: usize,
    bytes: usize,
    clock: u64,
}

/// What [`StateCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// The entry is in the cache (false when it alone exceeds the budget).
    pub stored: bool,
    /// Entries evicted to make room.
    pub evicted: usize,
}

impl<B: Backend> StateCache<B> {
    /// An empty cache holding at most `budget` bytes (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self { entries: HashMap::new(), budget, bytes: 0, clock: 0 }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entry for `key`, marked most recently used.
    pub fn get(&mut self, key: &PrefixKey) -> Option<&Entry<B>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = clock;
        Some(entry)
    }

    /// Keeps `cache` (of `bytes` bytes) for `key`, evicting least recently used entries until it fits.
    pub fn insert(&mut self, key: PrefixKey, cache: ViperCache<B>, positions: usize, bytes: usize) -> Inserted {
        if bytes > self.budget {
            return Inserted::default();
        }
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.bytes;
        }
        let mut evicted = 0;
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.bytes;
                evicted += 1;
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(key, Entry { cache, positions, bytes, last_used: self.clock });
        Inserted { stored: true, evicted }
    }
}

/// Bytes of a model cache's tensors: elements × the size of `dtype`.
pub fn cache_bytes<B: Backend>(cache: &ViperCache<B>, dtype: burn::tensor::DType) -> usize {
    cache.num_elements() * dtype.size()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::prelude::*;
    use viper_model::FalconMambaCache;
    use viper_ssm::MambaState;

    fn cache(n: usize) -> ViperCache<NdArray> {
        let t = Tensor::zeros([1, n, 1], &Default::default());
        ViperCache::FalconMamba(FalconMambaCache { layers: vec![MambaState { conv: t.clone(), ssm: t }] })
    }

    fn key(id: i64) -> PrefixKey {
        PrefixKey { ids: vec![id], images: hash_images([b"png".as_slice()]) }
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let mut c = StateCache::<NdArray>::new(100);
        assert!(c.insert(key(1), cache(10), 5, 40).stored);
        assert!(c.insert(key(2), cache(10), 5, 40).stored);
        assert!(c.get(&key(1)).is_some()); // 2 is now the oldest
        let r = c.insert(key(3), cache(10), 5, 40);
        assert_eq!(r, Inserted { stored: true, evicted: 1 });
        assert!(c.get(&key(2)).is_none() && c.get(&key(1)).is_some() && c.get(&key(3)).is_some());
        assert_eq!((c.len(), c.bytes()), (2, 80));
        // Too large alone: not kept, nothing evicted.
        assert_eq!(c.insert(key(4), cache(10), 5, 101), Inserted::default());
        assert_eq!(c.len(), 2);
        assert_eq!(cache_bytes(&cache(10), burn::tensor::DType::F32), 80);
    }

    #[test]
    fn image_bytes_are_part_of_the_key() {
        assert_ne!(hash_images([b"a".as_slice()]), hash_images([b"b".as_slice()]));
        assert_ne!(hash_images([b"ab".as_slice()]), hash_images([b"a".as_slice(), b"b".as_slice()]));
    }
}
