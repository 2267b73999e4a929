//! What a user waits for, measured on the product path: loading, image preprocessing, the vision tower,
//! prefill, time to first token and decode. `viper generate --stats` prints these; apps log them.
//!
//! GPU work is asynchronous, so each stage that ends on the device is closed by a device sync before
//! its clock is read (one sync per stage, not per token: decode reads each token back anyway).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long loading a checkpoint took and how much it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadStats {
    /// Wall time of [`crate::Viper::load`] (weights, tokenizer, template), seconds.
    pub seconds: f64,
    /// Bytes of the tensors that were loaded.
    pub bytes: u64,
}

impl LoadStats {
    /// Loading throughput, GB/s (10⁹ bytes); `None` when nothing was timed.
    pub fn gb_per_s(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.bytes as f64 / self.seconds / 1e9)
    }
}

/// The stages of one answer, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Images decoded and tiled for this answer (earlier turns' images are not counted again).
    pub images: usize,
    /// AnyRes preprocessing (resize, tiles, normalisation) of those images, ms.
    pub preprocess_ms: f64,
    /// 336×336 crops through the vision tower (base image + tiles, every image).
    pub crops: usize,
    /// Vision tower + projector + merge, ms (device synced).
    pub vision_ms: f64,
    /// Positions prefilled: text ids and image features that the cache had not seen.
    pub prefill_positions: usize,
    /// Prompt splice + language-model prefill up to the first logits on the host, ms.
    pub prefill_ms: f64,
    /// From the start of the request (template rendering) to the first sampled token, ms.
    pub ttft_ms: f64,
    /// Tokens produced by decode steps (every generated token after the first).
    pub decode_tokens: usize,
    /// Wall time of those decode steps, ms.
    pub decode_ms: f64,
    /// Device memory the backend reserved at the end of the answer (its pools only grow during a
    /// request, so this is the request's peak), bytes; `None` where the backend cannot tell.
    pub peak_device_bytes: Option<u64>,
}

impl GenerationStats {
    /// Prefill throughput, positions per second.
    pub fn prefill_tokens_per_s(&self) -> Option<f64> {
        rate(self.prefill_positions, self.prefill_ms)
    }

    /// Decode throughput, tokens per second.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        rate(self.decode_tokens, self.decode_ms)
    }
}

impl GenerationStats {
    /// These image-stage figures joined with `answer`'s prefill and decode figures; the time to first
    /// token counts from `request_start` (before the template was rendered).
    pub fn with_answer(&self, answer: &GenerationStats, request_start: Instant) -> GenerationStats {
        let waited_before_prefill = ms(request_start.elapsed()) - answer.prefill_ms - answer.decode_ms;
        GenerationStats {
            prefill_positions: answer.prefill_positions,
            prefill_ms: answer.prefill_ms,
            ttft_ms: waited_before_prefill.max(0.0) + answer.ttft_ms,
            decode_tokens: answer.decode_tokens,
            decode_ms: answer.decode_ms,
            peak_device_bytes: answer.peak_device_bytes,
            ..self.clone()
        }
    }
}

fn rate(count: usize, ms: f64) -> Option<f64> {
    (count > 0 && ms > 0.0).then(|| count as f64 / (ms / 1e3))
}

/// Milliseconds of a duration, as the stats report them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_s(f: &mut fmt::Formatter<'_>, value: Option<f64>, unit: &str) -> fmt::Result {
    match value {
        Some(v) => write!(f, " ({v:.1} {unit})"),
        None => Ok(()),
    }
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "load        {:9.1} ms  {:.2} GB", self.seconds * 1e3, self.bytes as f64 / 1e9)?;
        per_s(f, self.gb_per_s(), "GB/s")
    }
}

impl fmt::Display for GenerationStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "preprocess  {:9.1} ms  {} image(s)", self.preprocess_ms, self.images)?;
        writeln!(f, "vision      {:9.1} ms  {} crop(s)", self.vision_ms, self.crops)?;
        write!(f, "prefill     {:9.1} ms  {} position(s)", self.prefill_ms, self.prefill_positions)?;
        per_s(f, self.prefill_tokens_per_s(), "tokens/s")?;
        writeln!(f)?;
        writeln!(f, "first token {:9.1} ms", self.ttft_ms)?;
        write!(f, "decode      {:9.1} ms  {} token(s)", self.decode_ms, self.decode_tokens)?;
        per_s(f, self.decode_tokens_per_s(), "tokens/s")?;
        if let Some(bytes) = self.peak_device_bytes {
            write!(f, "\ndevice mem  {:9.2} GiB reserved", bytes as f64 / (1u64 << 30) as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_display_without_work() {
        let empty = GenerationStats::default();
        assert_eq!(empty.decode_tokens_per_s(), None);
        assert_eq!(empty.prefill_tokens_per_s(), None);
        let shown = empty.to_string();
        assert!(shown.contains("decode") && !shown.contains("tokens/s") && !shown.contains("device mem"));
        assert_eq!(LoadStats::default().gb_per_s(), None);
    }

    #[test]
    fn rates() {
        let s = GenerationStats {
            decode_tokens: 50,
            decode_ms: 250.0,
            prefill_positions: 1000,
            prefill_ms: 100.0,
            ..Default::default()
        };
        assert_eq!(s.decode_tokens_per_s(), Some(200.0));
        assert_eq!(s.prefill_tokens_per_s(), Some(10_000.0));
        let load = LoadStats { seconds: 2.0, bytes: 6_000_000_000 };
        assert_eq!(load.gb_per_s(), Some(3.0));
        assert!(load.to_string().contains("(3.0 GB/s)"), "{load}");
    }
}
