//! Pillow 10.4 `Image.resize(size, BICUBIC)` for RGB8 images, bit for bit.
//!
//! Mirrors `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`, `ImagingResampleInner`):
//!
//! - separable; per axis, `scale = in / out`, `filterscale = max(scale, 1)` (antialiasing when
//!   downscaling), support `2 * filterscale`, Keys cubic with `a = -0.5`;
//! - weights in f64, normalised by their sum, then converted to 22-bit fixed point rounding half away
//!   from zero;
//! - `acc = 2^21 + Σ pixel·weight` in i32, output `clamp(acc >> 22, 0, 255)`;
//! - horizontal pass first, over only the source rows the vertical pass reads, into a u8 intermediate;
//!   then the vertical pass; a pass is skipped when its dimension is unchanged.
//!
//! Both passes run over rows in parallel (rayon), and the horizontal one on transposed blocks of rows so
//! that it is the same contiguous multiply-add as the vertical one. Each output byte is still the same
//! sum of the same i32 products (integer addition does not depend on order), so the result is Pillow's
//! whatever the thread count.

use std::borrow::Cow;
use std::ops::Range;

use image::RgbImage;
use rayon::prelude::*;

/// Fixed-point precision of the weights (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic filter at scale 1.
const SUPPORT: f64 = 2.0;

/// Keys cubic convolution kernel with `a = -0.5`, evaluated in Pillow's operation order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps along one axis: output pixel `i` reads source pixels
/// `starts[i]..starts[i] + taps(i).len()`.
#[derive(Clone)]
struct Coefficients {
    /// First source index per output index.
    starts: Vec<usize>,
    /// Number of taps per output index.
    lens: Vec<usize>,
    /// `ksize` weights per output index (only the first `lens[i]` are used).
    weights: Vec<i32>,
    ksize: usize,
}

impl Coefficients {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size -> out_size` (both > 0).
    fn new(in_size: u32, out_size: u32) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let one = f64::from(1u32 << PRECISION_BITS);

        let out = out_size as usize;
        let mut starts = Vec::with_capacity(out);
        let mut lens = Vec::with_capacity(out);
        let mut weights = vec![0i32; out * ksize];
        let mut taps = Vec::with_capacity(ksize);
        for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero, like C's `(int)` cast.
            let min = ((center - support + 0.5) as i64).max(0);
            let max = ((center + support + 0.5) as i64).min(i64::from(in_size));
            taps.clear();
            taps.extend((min..max).map(|x| bicubic((x as f64 - center + 0.5) * inv_filterscale)));
            let sum: f64 = taps.iter().sum();
            for (w, &t) in row.iter_mut().zip(&taps) {
                let t = if sum != 0.0 { t / sum } else { t };
                *w = if t < 0.0 { (-0.5 + t * one) as i32 } else { (0.5 + t * one) as i32 };
            }
            starts.push(min as usize);
            lens.push(taps.len());
        }
        Self { starts, lens, weights, ksize }
    }

    /// First source index and weights of output index `i`.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let k = &self.weights[i * self.ksize..];
        (self.starts[i], &k[..self.lens[i]])
    }

    /// The source indices read by any output index.
    fn source_range(&self) -> Range<usize> {
        let last = self.starts.len() - 1;
        self.starts[0]..self.starts[last] + self.lens[last]
    }
}

/// `clip8`: fixed-point accumulator to u8.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Multiply-adds a parallel task should hold at least, so that small images are not split into tasks
/// cheaper than rayon's scheduling.
const MIN_TASK_WORK: usize = 1 << 16;

/// Source rows the horizontal pass handles together, transposed so that a tap reads `3 *
/// HORIZONTAL_BLOCK` contiguous bytes (a vector) instead of 3 scattered ones. 16 (48 lanes): with 8 (24
/// lanes) the compiler kept the accumulators scalar.
const HORIZONTAL_BLOCK: usize = 16;

/// Horizontal pass over source rows `rows` of an RGB8 buffer `src_width` pixels wide; blocks of rows in
/// parallel.
fn horizontal(src: &[u8], src_width: usize, rows: Range<usize>, c: &Coefficients) -> Vec<u8> {
    let out_width = c.starts.len();
    let (src_row, dst_row) = (src_width * 3, out_width * 3);
    let mut out = vec![0u8; dst_row * rows.len()];
    let src = &src[rows.start * src_row..rows.end * src_row];
    let min_blocks = MIN_TASK_WORK / (HORIZONTAL_BLOCK * dst_row * c.ksize).max(1);
    out.par_chunks_mut(HORIZONTAL_BLOCK * dst_row)
        .zip(src.par_chunks(HORIZONTAL_BLOCK * src_row))
        .with_min_len(min_blocks.max(1))
        .for_each_init(Vec::new, |columns, (dst, src)| {
            if src.len() == HORIZONTAL_BLOCK * src_row {
                horizontal_block(src, src_width, dst, c, columns);
            } else {
                for (dst, row) in dst.chunks_exact_mut(dst_row).zip(src.chunks_exact(src_row)) {
                    horizontal_row(row, dst, c);
                }
            }
        });
    out
}

/// `HORIZONTAL_BLOCK` rows of the horizontal pass: transposed into `columns` (per source pixel, the
/// block's rows' R, G, B), then accumulated like the vertical pass.
fn horizontal_block(src: &[u8], src_width: usize, dst: &mut [u8], c: &Coefficients, columns: &mut Vec<u8>) {
    const LANES: usize = 3 * HORIZONTAL_BLOCK;
    let (src_row, dst_row) = (src_width * 3, c.starts.len() * 3);
    columns.resize(src_width * LANES, 0);
    let rows: [&[u8]; HORIZONTAL_BLOCK] = std::array::from_fn(|r| &src[r * src_row..(r + 1) * src_row]);
    for (x, column) in columns.chunks_exact_mut(LANES).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            column[r * 3..r * 3 + 3].copy_from_slice(&row[x * 3..x * 3 + 3]);
        }
    }
    for i in 0..c.starts.len() {
        let (start, k) = c.taps(i);
        let mut out = [0u8; LANES];
        vertical_block::<LANES>(&columns[start * LANES..(start + k.len()) * LANES], LANES, 0, k, &mut out);
        for (r, px) in out.chunks_exact(3).enumerate() {
            dst[r * dst_row + i * 3..r * dst_row + i * 3 + 3].copy_from_slice(px);
        }
    }
}

/// One row of the horizontal pass.
fn horizontal_row(row: &[u8], dst: &mut [u8], c: &Coefficients) {
    for (i, px) in dst.chunks_exact_mut(3).enumerate() {
        let (start, k) = c.taps(i);
        // Sliced to the taps' extent up front, so the loop carries no bounds checks.
        let src = &row[start * 3..(start + k.len()) * 3];
        let mut acc = [HALF; 3];
        for (p, &w) in src.chunks_exact(3).zip(k) {
            acc[0] += i32::from(p[0]) * w;
            acc[1] += i32::from(p[1]) * w;
            acc[2] += i32::from(p[2]) * w;
        }
        px.copy_from_slice(&acc.map(clip8));
    }
}

/// Bytes of an output row the vertical pass accumulates at once (in registers, not a row buffer).
const VERTICAL_BLOCK: usize = 32;

/// Vertical pass; `src` holds source rows from `first_row` on, each `row_len` bytes; output rows in
/// parallel.
fn vertical(src: &[u8], row_len: usize, first_row: usize, c: &Coefficients) -> Vec<u8> {
    let mut out = vec![0u8; row_len * c.starts.len()];
    let min_rows = MIN_TASK_WORK / (row_len * c.ksize).max(1);
    out.par_chunks_mut(row_len).enumerate().with_min_len(min_rows.max(1)).for_each(|(i, dst)| {
        let (start, k) = c.taps(i);
        let rows = &src[(start - first_row) * row_len..(start - first_row + k.len()) * row_len];
        let mut blocks = dst.chunks_exact_mut(VERTICAL_BLOCK);
        let mut x = 0;
        for block in &mut blocks {
            vertical_block::<VERTICAL_BLOCK>(rows, row_len, x, k, block.try_into().expect("block size"));
            x += VERTICAL_BLOCK;
        }
        for (j, d) in blocks.into_remainder().iter_mut().enumerate() {
            let taps = rows[x + j..].iter().step_by(row_len);
            *d = clip8(taps.zip(k).fold(HALF, |acc, (&p, &w)| acc + i32::from(p) * w));
        }
    });
    out
}

/// `N` output bytes from column `x` on: a fixed-size accumulator the compiler keeps in vector registers.
fn vertical_block<const N: usize>(rows: &[u8], row_len: usize, x: usize, k: &[i32], dst: &mut [u8; N]) {
    let mut acc = [HALF; N];
    for (row, &w) in rows.chunks_exact(row_len).zip(k) {
        let p: &[u8; N] = row[x..x + N].try_into().expect("block within the row");
        for (a, &p) in acc.iter_mut().zip(p) {
            *a += i32::from(p) * w;
        }
    }
    for (d, a) in dst.iter_mut().zip(acc) {
        *d = clip8(a);
    }
}

/// Resize an RGB8 image to `width`x`height` exactly as Pillow 10.4's `Image.resize((width, height))`
/// with its default filter for RGB, `BICUBIC` (no `box`, no `reducing_gap`).
///
/// Same size returns a copy; an empty source or target gives a black (all-zero) image of the target size.
/// Rows are resampled in parallel on rayon's global pool; the result does not depend on the number of
/// threads.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_or_borrow(image, width, height).into_owned()
}

/// [`resize_bicubic`], borrowing the source when the size is unchanged.
pub(crate) fn resize_or_borrow(image: &RgbImage, width: u32, height: u32) -> Cow<'_, RgbImage> {
    let (in_width, in_height) = image.dimensions();
    if (width, height) == (in_width, in_height) {
        return Cow::Borrowed(image);
    }
    if width == 0 || height == 0 || in_width == 0 || in_height == 0 {
        return Cow::Owned(RgbImage::new(width, height));
    }
    let vertical_coeffs = (height != in_height).then(|| Coefficients::new(in_height, height));
    let mut pixels = Cow::Borrowed(image.as_raw().as_slice());
    let mut first_row = 0;
    if width != in_width {
        let rows = vertical_coeffs.as_ref().map_or(0..in_height as usize, Coefficients::source_range);
        first_row = rows.start;
        let coeffs = match &vertical_coeffs {
            // A square resize of a square image: one set of taps serves both axes.
            Some(v) if (in_width, width) == (in_height, height) => Cow::Borrowed(v),
            _ => Cow::Owned(Coefficients::new(in_width, width)),
        };
        pixels = Cow::Owned(horizontal(&pixels, in_width as usize, rows, &coeffs));
    }
    let data = match vertical_coeffs {
        Some(coeffs) => vertical(&pixels, width as usize * 3, first_row, &coeffs),
        None => pixels.into_owned(),
    };
    Cow::Owned(RgbImage::from_raw(width, height, data).expect("resampled buffer has width * height * 3 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(37, 13), (13, 37), (5, 5), (2352, 336), (1, 97)] {
            let c = Coefficients::new(i, o);
            for x in 0..o as usize {
                let (start, k) = c.taps(x);
                assert!(start + k.len() <= i as usize);
                let sum: i32 = k.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= k.len() as i32, "{i}->{o} @ {x}: {sum}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = RgbImage::from_pixel(17, 9, image::Rgb([200, 3, 77]));
        let out = resize_bicubic(&image, 40, 5);
        assert!(out.pixels().all(|p| p.0 == [200, 3, 77]));
    }

    #[test]
    fn empty_sizes_do_not_panic() {
        let image = RgbImage::new(3, 4);
        assert_eq!(resize_bicubic(&image, 0, 7).dimensions(), (0, 7));
        assert_eq!(resize_bicubic(&RgbImage::new(0, 0), 2, 2).dimensions(), (2, 2));
    }
}
