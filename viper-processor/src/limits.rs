//! Bounds on the anyres configuration, checked before anything is allocated for it: a config can
//! otherwise ask for a billion pinpoints (`"(1x1),...,(99999x99999)"`) or a canvas of terapixels.

use serde_json::Value;

use crate::error::{ProcessorError, Result};

/// Most grid pinpoints accepted (published configs hold 48 or fewer). The range form
/// `"(AxB),...,(CxD)"` is counted before it is expanded.
pub const MAX_PINPOINTS: usize = 1024;
/// Largest pinpoint width or height in pixels (published ones go up to 5040 = 15 x 336); the canvas of
/// one image is at most this squared.
pub const MAX_PINPOINT_SIDE: u32 = 16_384;

/// Fails if `count` pinpoints are more than [`MAX_PINPOINTS`].
pub(crate) fn check_count(count: u64) -> Result<()> {
    if count > MAX_PINPOINTS as u64 {
        return Err(ProcessorError::Limit {
            field: "the number of image_grid_pinpoints",
            value: count,
            limit: MAX_PINPOINTS as u64,
        });
    }
    Ok(())
}

/// Fails if a pinpoint side of `side` pixels is beyond [`MAX_PINPOINT_SIDE`].
pub(crate) fn check_side(side: u64) -> Result<()> {
    if side > u64::from(MAX_PINPOINT_SIDE) {
        return Err(ProcessorError::Limit {
            field: "an image_grid_pinpoints side",
            value: side,
            limit: u64::from(MAX_PINPOINT_SIDE),
        });
    }
    Ok(())
}

/// Checks the range form `(first),...,(last)` in tiles of `tile` pixels before it is expanded: the
/// number of pinpoints it gives and its largest sides (computed without overflow).
pub(crate) fn check_grid_range(first: (u32, u32), last: (u32, u32), tile: u32) -> Result<()> {
    let span = |a: u32, b: u32| if b >= a { u64::from(b - a) + 1 } else { 0 };
    let count = span(first.0, last.0).saturating_mul(span(first.1, last.1));
    check_count(count)?;
    if count > 0 {
        check_side(u64::from(last.0) * u64::from(tile))?;
        check_side(u64::from(last.1) * u64::from(tile))?;
    }
    Ok(())
}

/// `value` as JSON, cut to a readable length for an error message.
pub(crate) fn excerpt(value: &Value) -> String {
    const MAX_CHARS: usize = 200;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}
