//! The `spatial_unpad` merge of one image's projected crops into the token sequence spliced into the
//! prompt (docs/spec.md §4.3, docs/reference-checkpoints.md Q9–Q11; upstream `model_arch.py`
//! `prepare_inputs_labels_for_multimodal`).
//!
//! Shapes: 1 base crop + `cols × rows` tiles (row-major), P = s² tokens per crop, D width.
//!
//! The geometry is not computed here: the processor works out the grid, the features per tile side
//! and the region upstream's `unpad_image` keeps once per image ([`AnyResGeometry`], carried by
//! `viper_processor::ProcessedImage::geometry`), and the merge lays the features out by it.

use burn::prelude::*;
use burn::tensor::FloatDType;
use viper_processor::AnyResGeometry;

use crate::error::{Result, VisionError};

/// Merges one image's projected features `[1 + cols·rows, P, D]` (base crop first, then the tiles
/// row-major) into `[P + H'·(W' + 1), D]`, by the image's anyres `geometry`.
///
/// The tiles are laid out as one `(rows·s) × (cols·s)` grid (`geometry.grid` = `(cols, rows)`,
/// `s = geometry.side`), cropped to `geometry.unpad`, and read row by row with `image_newline` after
/// every row; the base crop's P tokens come first, without a newline.
pub fn spatial_unpad_merge<B: Backend>(
    features: Tensor<B, 3>,
    geometry: &AnyResGeometry,
    image_newline: Tensor<B, 1>,
) -> Result<Tensor<B, 2>> {
    let [n, p, d] = features.dims();
    let (cols, rows) = (geometry.grid.0 as usize, geometry.grid.1 as usize);
    if cols == 0 || rows == 0 || n != 1 + cols * rows {
        return Err(VisionError::Input(format!(
            "{n} crops do not fit a {cols}x{rows} (cols x rows) grid, which needs 1 base + {} tiles",
            cols * rows
        )));
    }
    let side = geometry.side as usize;
    if side * side != p {
        return Err(VisionError::Input(format!(
            "{p} tokens per crop do not make the geometry's {side}x{side} feature grid (CLS not dropped?)"
        )));
    }
    if image_newline.dims() != [d] {
        return Err(VisionError::Input(format!(
            "image_newline has shape {:?}, features have width {d}",
            image_newline.dims()
        )));
    }
    let unpad = &geometry.unpad;
    let (height, width) = (rows * side, cols * side);
    if unpad.grid_hw != (height, width)
        || unpad.rows.start > unpad.rows.end
        || unpad.rows.end > height
        || unpad.cols.start > unpad.cols.end
        || unpad.cols.end > width
    {
        return Err(VisionError::Input(format!(
            "unpad rows {:?} and columns {:?} of a {:?} grid do not fit the {height}x{width} feature grid",
            unpad.rows, unpad.cols, unpad.grid_hw
        )));
    }
    let (kept_rows, kept_cols) = (unpad.height(), unpad.width());
    let base = features.clone().narrow(0, 0, 1).reshape([p, d]);
    if kept_rows == 0 {
        return Ok(base);
    }
    let newline = image_newline.cast(FloatDType::from(base.dtype())).reshape([1, 1, d]).expand([kept_rows, 1, d]);
    let lines = if kept_cols == 0 {
        newline
    } else {
        // Tile ty*cols+tx, token r*s+c → grid position (ty*s + r, tx*s + c).
        let grid = features
            .narrow(0, 1, n - 1)
            .reshape([rows, cols, side, side, d])
            .permute([0, 2, 1, 3, 4])
            .reshape([height, width, d]);
        let kept = grid.narrow(0, unpad.rows.start, kept_rows).narrow(1, unpad.cols.start, kept_cols); // (H', W', D)
        Tensor::cat(vec![kept, newline], 1)
    }; // (H', W' + 1, D)
    Ok(Tensor::cat(vec![base, lines.reshape([kept_rows * (kept_cols + 1), d])], 0))
}
