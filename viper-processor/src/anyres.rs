//! AnyRes geometry of upstream `viper/mm_utils.py` (docs/spec.md §3) and the unpad geometry of
//! `viper/model/model_arch.py` (docs/spec.md §4.3), with sizes as `(width, height)` like upstream.

use std::ops::Range;

use image::RgbImage;
use serde_json::Value;

use crate::error::{Origin, ProcessorError, Result};
use crate::limits;
use crate::resample::resize_or_borrow;

/// Parse `image_grid_pinpoints` from a model config into `(width, height)` pairs, in list order.
///
/// Accepted forms: a JSON list of `[w, h]` pairs; its Python-literal string form (what upstream reads
/// with `ast.literal_eval`), e.g. `"[(336, 672), (672, 336)]"` or `"[[336, 672], [672, 336]]"`; and
/// LLaVA-OneVision's range form `"(1x1),...,(3x3)"`, meaning every `(i * tile, j * tile)` for `i` then
/// `j` in the given ranges. Values are checked by [`Processor::new`](crate::Processor::new); the
/// number of pinpoints ([`MAX_PINPOINTS`](crate::MAX_PINPOINTS)) is checked here, before a list is
/// copied or a range expanded.
pub fn parse_pinpoints(value: &Value, tile_size: u32) -> Result<Vec<(u32, u32)>> {
    let error = |reason: String| ProcessorError::Pinpoints { value: limits::excerpt(value), reason };
    let pinpoints: Vec<(u32, u32)> = match value {
        Value::String(s) if s.contains('x') => {
            grid_range(s, tile_size).unwrap_or_else(|| Err(error("expected \"(AxB),...,(CxD)\"".into())))?
        }
        Value::String(s) => serde_json::from_str(&s.replace('(', "[").replace(')', "]"))
            .map_err(|e| error(format!("not a list of (width, height) pairs: {e}")))?,
        list @ Value::Array(items) => {
            limits::check_count(items.len() as u64)?;
            serde_json::from_value(list.clone())
                .map_err(|e| error(format!("not a list of [width, height] pairs: {e}")))?
        }
        _ => return Err(error("expected a list or a string".into())),
    };
    limits::check_count(pinpoints.len() as u64)?;
    Ok(pinpoints)
}

/// `"(1x1),...,(3x3)"` → all `(i * tile, j * tile)`, `i` outer, between the first and last `(AxB)`;
/// `None` if malformed, an error if beyond the limits.
fn grid_range(s: &str, tile: u32) -> Option<Result<Vec<(u32, u32)>>> {
    let mut pairs = s.split('(').skip(1).map(|part| {
        let (a, b) = part.split_once(')')?.0.split_once('x')?;
        Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
    });
    let first = pairs.next()??;
    let last = pairs.last().unwrap_or(Some(first))?;
    if let Err(e) = limits::check_grid_range(first, last, tile) {
        return Some(Err(e));
    }
    let pinpoints = (first.0..=last.0).flat_map(|i| (first.1..=last.1).map(move |j| (i * tile, j * tile)));
    Some(Ok(pinpoints.collect()))
}

/// Upstream `select_best_resolution`: the pinpoint that keeps the most pixels of an image of
/// `original = (W, H)` once scaled to fit it, ties going to the least wasted area, then to the first in
/// list order. When no pinpoint keeps a whole pixel (extreme aspect ratios), every effective area is 0
/// and the least wasteful pinpoint wins, as upstream. `None` only for an empty list.
pub fn select_best_resolution(original: (u32, u32), pinpoints: &[(u32, u32)]) -> Option<(u32, u32)> {
    let (ow, oh) = (f64::from(original.0), f64::from(original.1));
    let original_area = u64::from(original.0) * u64::from(original.1);
    let mut best = None;
    let (mut max_effective, mut min_wasted) = (0u64, u64::MAX);
    for &(w, h) in pinpoints {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        // Python `int()` truncates toward zero, as does `as`.
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let effective = (dw * dh).min(original_area);
        let wasted = (u64::from(w) * u64::from(h)).saturating_sub(effective);
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            (max_effective, min_wasted, best) = (effective, wasted, Some((w, h)));
        }
    }
    best
}

/// Size and position of the resized image on the black canvas of [`resize_and_pad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// `(width, height)` the original is resized to.
    pub size: (u32, u32),
    /// Top-left corner `(x, y)` of the resized image on the canvas.
    pub offset: (u32, u32),
}

impl Placement {
    /// Upstream `resize_and_pad_image` geometry: the limiting side is scaled exactly, the other with
    /// `ceil` (clamped to the target); centred with floor division.
    pub fn new(original: (u32, u32), target: (u32, u32)) -> Self {
        let (tw, th) = target;
        let scale_w = f64::from(tw) / f64::from(original.0);
        let scale_h = f64::from(th) / f64::from(original.1);
        let size = if scale_w < scale_h {
            (tw, ((f64::from(original.1) * scale_w).ceil() as u32).min(th))
        } else {
            (((f64::from(original.0) * scale_h).ceil() as u32).min(tw), th)
        };
        Self { size, offset: ((tw - size.0) / 2, (th - size.1) / 2) }
    }
}

/// Upstream `resize_and_pad_image`: resize with Pillow BICUBIC into [`Placement::new`]'s size and paste
/// it on a black `target` canvas.
pub fn resize_and_pad(image: &RgbImage, target: (u32, u32)) -> RgbImage {
    let placement = Placement::new(image.dimensions(), target);
    let resized = resize_or_borrow(image, placement.size.0, placement.size.1);
    let mut canvas = RgbImage::new(target.0, target.1);
    let (x, y) = (placement.offset.0 as usize * 3, placement.offset.1 as usize);
    let (src_row, dst_row) = (resized.width() as usize * 3, target.0 as usize * 3);
    if src_row > 0 {
        let rows = canvas.chunks_exact_mut(dst_row).skip(y).zip(resized.chunks_exact(src_row));
        rows.for_each(|(dst, src)| dst[x..x + src_row].copy_from_slice(src));
    }
    canvas
}

/// Upstream `divide_to_patches`: `size`x`size` tiles, row-major (tile `row * cols + col`). The image
/// sides should be multiples of `size` (they are for pinpoints accepted by
/// [`Processor::new`](crate::Processor::new)); otherwise the last column and row of tiles are cut short
/// at the image's edge. `size` 0 gives no tiles.
pub fn divide_to_patches(image: &RgbImage, size: u32) -> Vec<RgbImage> {
    let (w, h) = image.dimensions();
    if size == 0 {
        return Vec::new();
    }
    (0..h)
        .step_by(size as usize)
        .flat_map(|y| (0..w).step_by(size as usize).map(move |x| (x, y)))
        .map(|(x, y)| {
            // Clamped to the image like `crop_imm`, should a side not be a multiple of `size`.
            let (tw, th) = (size.min(w - x), size.min(h - y));
            let row = w as usize * 3;
            let rows = image.as_raw()[y as usize * row..].chunks(row).take(th as usize);
            let tile = rows.flat_map(|r| &r[x as usize * 3..(x + tw) as usize * 3]).copied().collect();
            RgbImage::from_raw(tw, th, tile).expect("tw * th * 3 bytes")
        })
        .collect()
}

/// Which part of the tile feature grid the `spatial_unpad` merge keeps (upstream `unpad_image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpad {
    /// `(rows * side, cols * side)`: height and width of the feature grid before unpadding, where
    /// `side = tile_size / patch_size`.
    pub grid_hw: (usize, usize),
    /// Kept feature rows.
    pub rows: Range<usize>,
    /// Kept feature columns.
    pub cols: Range<usize>,
}

impl Unpad {
    /// Upstream `unpad_image` for an image of `original = (W, H)` on a `grid = (cols, rows)` of tiles of
    /// `side`x`side` features: the padded side loses `(cur - int(other * cur_other / orig_other)) // 2`
    /// at each end (f64, truncation), so `cur - 2 * pad` is kept, possibly `new + 1`.
    pub fn new(original: (u32, u32), grid: (u32, u32), side: u32) -> Self {
        let (ow, oh) = (f64::from(original.0), f64::from(original.1));
        let (cur_h, cur_w) = ((grid.1 * side) as usize, (grid.0 * side) as usize);
        let keep = |cur: usize, new: f64| {
            let pad = cur.saturating_sub(new as usize) / 2;
            pad..cur - pad
        };
        let (rows, cols) = if ow / oh > cur_w as f64 / cur_h as f64 {
            (keep(cur_h, oh * (cur_w as f64 / ow)), 0..cur_w)
        } else {
            (0..cur_h, keep(cur_w, ow * (cur_h as f64 / oh)))
        };
        Self { grid_hw: (cur_h, cur_w), rows, cols }
    }

    /// Kept height H'.
    pub fn height(&self) -> usize {
        self.rows.len()
    }

    /// Kept width W'.
    pub fn width(&self) -> usize {
        self.cols.len()
    }
}

/// Everything the model needs to know about an image's anyres layout, computable without pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnyResGeometry {
    /// `(W, H)` of the original image (upstream `image_sizes`).
    pub original_size: (u32, u32),
    /// The chosen pinpoint `(width, height)`.
    pub best_resolution: (u32, u32),
    /// `(cols, rows)` of tiles (upstream `get_anyres_image_grid_shape`).
    pub grid: (u32, u32),
    /// Where the resized original sits on the `best_resolution` canvas.
    pub placement: Placement,
    /// Features per tile side, `tile_size / patch_size`.
    pub side: u32,
    /// Unpad ranges for the `spatial_unpad` merge.
    pub unpad: Unpad,
}

impl AnyResGeometry {
    /// Geometry of an image of `original = (W, H)` for `pinpoints` and tiles of `tile_size` pixels,
    /// each giving `side`x`side` features. Fails for an empty image or an empty pinpoint list.
    pub fn new(original: (u32, u32), pinpoints: &[(u32, u32)], tile_size: u32, side: u32) -> Result<Self> {
        let (width, height) = original;
        if width == 0 || height == 0 {
            return Err(ProcessorError::NoPixels { origin: Origin::Memory, width, height });
        }
        let best_resolution = select_best_resolution(original, pinpoints)
            .ok_or_else(|| ProcessorError::Pinpoints { value: "[]".into(), reason: "empty list".into() })?;
        let grid = (best_resolution.0 / tile_size, best_resolution.1 / tile_size);
        Ok(Self {
            original_size: original,
            best_resolution,
            grid,
            placement: Placement::new(original, best_resolution),
            side,
            unpad: Unpad::new(original, grid, side),
        })
    }

    /// Number of crops fed to the vision tower: the base image plus one per tile.
    pub fn num_crops(&self) -> usize {
        1 + (self.grid.0 * self.grid.1) as usize
    }

    /// Image tokens after the merge: `side² + H' * (W' + 1)` (base tile, then each kept row and a newline).
    pub fn num_image_tokens(&self) -> usize {
        (self.side * self.side) as usize + self.unpad.height() * (self.unpad.width() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// train.py's rule: `[x * 336, y * 336]` for x, y in 1..=15 with x * y <= 16, x outer.
    fn jamba_pinpoints() -> Vec<(u32, u32)> {
        (1..=15).flat_map(|x| (1..=15).filter(move |y| x * y <= 16).map(move |y| (x * 336, y * 336))).collect()
    }

    #[test]
    fn spec_worked_examples() {
        // docs/spec.md §3.7: (W, H), best, grid, resized, paste, unpadded H' x W', tokens.
        #[rustfmt::skip]
        let table = [
            ((1024, 768), (1344, 1008), (4, 3), (1344, 1008), (0, 0), (72, 96), 7560),
            ((640, 480), (672, 672), (2, 2), (672, 504), (0, 84), (36, 48), 2340),
            ((336, 336), (336, 336), (1, 1), (336, 336), (0, 0), (24, 24), 1176),
            ((500, 1500), (672, 1680), (2, 5), (560, 1680), (56, 0), (120, 40), 5496),
            ((2000, 300), (2016, 336), (6, 1), (2016, 303), (0, 16), (22, 144), 3766),
            ((1920, 1080), (1680, 1008), (5, 3), (1680, 945), (0, 31), (68, 120), 8804),
            ((800, 600), (1008, 672), (3, 2), (897, 672), (55, 0), (48, 64), 3696),
        ];
        let pinpoints = jamba_pinpoints();
        assert_eq!(pinpoints.len(), 48);
        for (size, best, grid, resized, paste, (h, w), tokens) in table {
            let g = AnyResGeometry::new(size, &pinpoints, 336, 24).unwrap();
            assert_eq!(g.best_resolution, best, "{size:?}");
            assert_eq!(g.grid, grid, "{size:?}");
            assert_eq!(g.placement, Placement { size: resized, offset: paste }, "{size:?}");
            assert_eq!((g.unpad.height(), g.unpad.width()), (h, w), "{size:?}");
            assert_eq!(g.num_image_tokens(), tokens, "{size:?}");
            assert_eq!(g.num_crops(), 1 + (grid.0 * grid.1) as usize);
        }
    }

    #[test]
    fn unpad_keeps_cur_minus_twice_pad() {
        // docs/reference-checkpoints.md Q10: kept extent can be `new + 1`.
        assert_eq!(Unpad::new((97, 61), (2, 2), 4).rows, 1..7);
        assert_eq!(Unpad::new((131, 45), (3, 2), 3).rows, 1..5);
        assert_eq!(Unpad::new((15, 29), (1, 1), 3).cols, 1..2);
        assert_eq!(Unpad::new((84, 84), (2, 2), 4), Unpad { grid_hw: (8, 8), rows: 0..8, cols: 0..8 });
    }

    #[test]
    fn unpad_rounding_matches_upstream() {
        // (W, H), (cols, rows) of tiles, side → kept region (README Q10 / docs/spec.md §4.3 examples first; the
        // table `viper-vision`'s merge test held while the merge computed its own region).
        let unpad = |grid_hw, rows, cols| Unpad { grid_hw, rows, cols };
        #[rustfmt::skip]
        let cases = [
            ((97, 61), (2, 2), 4, unpad((8, 8), 1..7, 0..8)), // new_h = 5, keeps 6
            ((131, 45), (3, 2), 3, unpad((6, 9), 1..5, 0..9)), // new_h = 3, keeps 4
            ((15, 29), (1, 1), 3, unpad((3, 3), 0..3, 1..2)),
            ((2000, 300), (6, 1), 24, unpad((24, 144), 1..23, 0..144)), // new_h = 21
            ((23, 17), (2, 2), 2, unpad((4, 4), 1..3, 0..4)),
            ((40, 120), (1, 3), 4, unpad((12, 4), 0..12, 0..4)),
            ((1, 1000), (1, 1), 24, unpad((24, 24), 0..24, 12..12)), // nothing left of a sliver
        ];
        for (size, grid, side, want) in cases {
            assert_eq!(Unpad::new(size, grid, side), want, "{size:?} on {grid:?} tiles of {side}");
        }
    }

    #[test]
    fn ties_go_to_the_least_waste_then_the_first() {
        let best = |size, pinpoints: &[(u32, u32)]| select_best_resolution(size, pinpoints);
        assert_eq!(best((10, 10), &[(20, 10), (10, 20), (10, 10)]), Some((10, 10)));
        assert_eq!(best((10, 10), &[(20, 10), (10, 20)]), Some((20, 10)));
        assert_eq!(best((10, 10), &[(20, 20), (40, 40)]), Some((20, 20)));
        // Every effective area truncates to 0: least waste wins, as upstream.
        assert_eq!(best((1, 100_000), &[(56, 112), (56, 56)]), Some((56, 56)));
        assert_eq!(best((5, 5), &[]), None);
    }

    #[test]
    fn pinpoint_forms() {
        let expected = vec![(336, 672), (672, 336)];
        for value in
            [json!([[336, 672], [672, 336]]), json!("[(336, 672), (672, 336)]"), json!("[[336,672],[672,336]]")]
        {
            assert_eq!(parse_pinpoints(&value, 336).unwrap(), expected, "{value}");
        }
        let range = parse_pinpoints(&json!("(1x1),...,(2x3)"), 336).unwrap();
        assert_eq!(range, [(336, 336), (336, 672), (336, 1008), (672, 336), (672, 672), (672, 1008)]);
        for bad in [json!("(1x1"), json!([[-1, 336]]), json!(5), json!("[(1, 2, 3)]"), json!("[(1, 2),]")] {
            let err = parse_pinpoints(&bad, 336).unwrap_err();
            assert!(matches!(err, ProcessorError::Pinpoints { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn pad_and_tiles() {
        let image = RgbImage::from_pixel(10, 5, image::Rgb([9, 9, 9]));
        let padded = resize_and_pad(&image, (8, 8));
        assert_eq!(Placement::new((10, 5), (8, 8)), Placement { size: (8, 4), offset: (0, 2) });
        assert_eq!(padded.get_pixel(3, 1).0, [0, 0, 0]);
        assert_eq!(padded.get_pixel(3, 2).0, [9, 9, 9]);
        let mut tiles_src = RgbImage::new(4, 6);
        tiles_src.put_pixel(2, 0, image::Rgb([1, 0, 0]));
        tiles_src.put_pixel(0, 2, image::Rgb([2, 0, 0]));
        let tiles = divide_to_patches(&tiles_src, 2);
        assert_eq!(tiles.len(), 6);
        assert_eq!(tiles[1].get_pixel(0, 0).0[0], 1);
        assert_eq!(tiles[2].get_pixel(0, 0).0[0], 2);
    }
}
