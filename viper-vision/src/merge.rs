//! The `spatial_unpad` merge of one image's projected crops into the token sequence spliced into the
//! prompt (spec §4.3, reference README Q9–Q11; upstream `model_arch.py`
//! `prepare_inputs_labels_for_multimodal` and `mm_utils.py` `unpad_image`).
//!
//! Shapes: 1 base crop + `cols × rows` tiles (row-major), P = s² tokens per crop, D width.

use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::error::{Result, VisionError};

/// The part of the tiles' feature grid that `unpad_image` keeps: rows `top..top + rows`, columns
/// `left..left + cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpadRegion {
    /// First kept row.
    pub top: usize,
    /// First kept column.
    pub left: usize,
    /// Kept rows H'.
    pub rows: usize,
    /// Kept columns W'.
    pub cols: usize,
}

impl UnpadRegion {
    /// Tokens the region contributes to the merged sequence, one newline per row: `H' · (W' + 1)`.
    pub fn num_tokens(&self) -> usize {
        self.rows * (self.cols + 1)
    }
}

/// Upstream `unpad_image` on a feature grid of `grid_rows × grid_cols` for an image of
/// `image_width × image_height` pixels.
///
/// The side along which the image is relatively shorter lost its letterbox padding:
/// `new = int(orig_other · (cur / orig))` (f64, truncation), `pad = (cur − new) // 2`, and the kept
/// extent is `cur − 2·pad`, which can be `new + 1` (97×61 on an 8×8 grid keeps 6 rows, new = 5).
/// Equal aspect ratios crop columns (by nothing, for a square image on a square grid).
pub fn unpad_region(
    grid_rows: usize,
    grid_cols: usize,
    image_width: usize,
    image_height: usize,
) -> Result<UnpadRegion> {
    if grid_rows == 0 || grid_cols == 0 || image_width == 0 || image_height == 0 {
        return Err(VisionError::Input(format!(
            "unpad needs a non-empty grid and image, got grid {grid_rows}x{grid_cols} (rows x cols) and image \
             {image_width}x{image_height} (W x H)"
        )));
    }
    let (w, h) = (image_width as f64, image_height as f64);
    let (cur_w, cur_h) = (grid_cols as f64, grid_rows as f64);
    // `new` cannot exceed `cur` (the image is relatively shorter along that side); saturate anyway.
    Ok(if w / h > cur_w / cur_h {
        let new_h = (h * (cur_w / w)) as usize;
        let pad = grid_rows.saturating_sub(new_h) / 2;
        UnpadRegion { top: pad, left: 0, rows: grid_rows - 2 * pad, cols: grid_cols }
    } else {
        let new_w = (w * (cur_h / h)) as usize;
        let pad = grid_cols.saturating_sub(new_w) / 2;
        UnpadRegion { top: 0, left: pad, rows: grid_rows, cols: grid_cols - 2 * pad }
    })
}

/// Merges one image's projected features `[1 + cols·rows, P, D]` (base crop first, then the tiles
/// row-major) into `[P + H'·(W' + 1), D]`.
///
/// `grid` is `(cols, rows)` = best resolution / tile size (upstream `get_anyres_image_grid_shape`,
/// spec §3.1), `image_size` the original `(W, H)`. The tiles are laid out as one `(rows·s) × (cols·s)`
/// grid, cropped by [`unpad_region`], and read row by row with `image_newline` after every row; the
/// base crop's P tokens come first, without a newline.
pub fn spatial_unpad_merge<B: Backend>(
    features: Tensor<B, 3>,
    grid: (usize, usize),
    image_size: (usize, usize),
    image_newline: Tensor<B, 1>,
) -> Result<Tensor<B, 2>> {
    let [n, p, d] = features.dims();
    let (cols, rows) = grid;
    if cols == 0 || rows == 0 || n != 1 + cols * rows {
        return Err(VisionError::Input(format!(
            "{n} crops do not fit a {cols}x{rows} (cols x rows) grid, which needs 1 base + {} tiles",
            cols * rows
        )));
    }
    let side = p.isqrt();
    if side * side != p {
        return Err(VisionError::Input(format!("{p} tokens per crop is not a square grid (CLS not dropped?)")));
    }
    if image_newline.dims() != [d] {
        return Err(VisionError::Input(format!(
            "image_newline has shape {:?}, features have width {d}",
            image_newline.dims()
        )));
    }
    let region = unpad_region(rows * side, cols * side, image_size.0, image_size.1)?;
    let base = features.clone().narrow(0, 0, 1).reshape([p, d]);
    if region.rows == 0 {
        return Ok(base);
    }
    let newline = image_newline.cast(FloatDType::from(base.dtype())).reshape([1, 1, d]).expand([region.rows, 1, d]);
    let lines = if region.cols == 0 {
        newline
    } else {
        // Tile ty*cols+tx, token r*s+c → grid position (ty*s + r, tx*s + c).
        let grid = features
            .narrow(0, 1, n - 1)
            .reshape([rows, cols, side, side, d])
            .permute([0, 2, 1, 3, 4])
            .reshape([rows * side, cols * side, d]);
        let kept = grid.narrow(0, region.top, region.rows).narrow(1, region.left, region.cols); // (H', W', D)
        Tensor::cat(vec![kept, newline], 1)
    }; // (H', W' + 1, D)
    Ok(Tensor::cat(vec![base, lines.reshape([region.num_tokens(), d])], 0))
}
