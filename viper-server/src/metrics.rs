//! Counters the engine updates and `GET /metrics` reads (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Server-wide counters, shared between the engine thread and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests the engine admitted.
    pub requests: AtomicU64,
    /// Requests answered in full.
    pub completed: AtomicU64,
    /// Requests refused by the engine (bad prompt, context limit) or failed while running.
    pub failed: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    /// Requests refused with 503 because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Sequences in the engine right now (prefilling or decoding).
    pub active: AtomicU64,
    /// Prompt positions run through the model (prefill).
    pub prefill_positions: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Decode steps run (one per tick with decoding sequences, however many sequences it held).
    pub decode_steps: AtomicU64,
    /// Sequences stepped by those decode steps (÷ `decode_steps`: the mean batch).
    pub decode_sequences: AtomicU64,
    /// State-cache lookups that found the prefix.
    pub cache_hits: AtomicU64,
    /// State-cache lookups that did not.
    pub cache_misses: AtomicU64,
    /// Prompt positions not run thanks to cache hits.
    pub cache_positions_saved: AtomicU64,
    /// Entries in the state cache now.
    pub cache_entries: AtomicU64,
    /// Bytes held by the state cache now.
    pub cache_bytes: AtomicU64,
    /// Entries evicted to stay within the byte budget.
    pub cache_evictions: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text exposition format, `queued` (requests waiting for a
    /// slot) added.
    pub fn prometheus(&self, queued: u64) -> String {
        let rows: [(&str, &str, &str, u64); 17] = [
            ("viper_requests_total", "counter", "Requests the engine admitted.", get(&self.requests)),
            ("viper_requests_completed_total", "counter", "Requests answered in full.", get(&self.completed)),
            ("viper_requests_failed_total", "counter", "Requests refused or failed in the engine.", get(&self.failed)),
            (
                "viper_requests_cancelled_total",
                "counter",
                "Sequences dropped after a disconnect.",
                get(&self.cancelled),
            ),
            (
                "viper_requests_rejected_queue_full_total",
                "counter",
                "Requests answered 503 (queue full).",
                get(&self.rejected_queue_full),
            ),
            ("viper_active_sequences", "gauge", "Sequences in the engine.", get(&self.active)),
            ("viper_queued_requests", "gauge", "Requests waiting for a slot.", queued),
            ("viper_prefill_positions_total", "counter", "Prompt positions prefilled.", get(&self.prefill_positions)),
            ("viper_generated_tokens_total", "counter", "Tokens generated.", get(&self.generated_tokens)),
            ("viper_decode_steps_total", "counter", "Batched decode steps.", get(&self.decode_steps)),
            (
                "viper_decode_sequences_total",
                "counter",
                "Sequences stepped by decode steps.",
                get(&self.decode_sequences),
            ),
            ("viper_state_cache_hits_total", "counter", "State-cache hits.", get(&self.cache_hits)),
            ("viper_state_cache_misses_total", "counter", "State-cache misses.", get(&self.cache_misses)),
            (
                "viper_state_cache_positions_saved_total",
                "counter",
                "Prompt positions not prefilled thanks to the state cache.",
                get(&self.cache_positions_saved),
            ),
            ("viper_state_cache_entries", "gauge", "State-cache entries.", get(&self.cache_entries)),
            ("viper_state_cache_bytes", "gauge", "Bytes held by the state cache.", get(&self.cache_bytes)),
            ("viper_state_cache_evictions_total", "counter", "State-cache evictions.", get(&self.cache_evictions)),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
