//! Image decoding to RGB8 the way upstream does it: `Image.open(path).convert("RGB")` (Pillow 10.4).
//!
//! Conversion rules, checked against Pillow by the fixtures:
//! - alpha is dropped, never composited; grey is replicated to R = G = B; palettes are expanded
//!   (a transparent palette entry keeps its colour);
//! - 16-bit grey is clipped to 255 (Pillow opens it as `I;16`, whose conversion to `L` saturates),
//!   other 16-bit images keep the high byte (Pillow's `RGB;16B`-style raw modes);
//! - no EXIF orientation, no ICC or gamma handling; GIF and animated PNG give their first frame.
//!
//! Known differences from Pillow: JPEG is decoded by `zune-jpeg`, whose IDCT / chroma upsampling differ
//! from libjpeg-turbo by a few levels on some pixels (lossy WebP matches libwebp exactly); a GIF whose
//! first frame does not cover the logical screen gets black outside it (Pillow paints the background
//! colour). CMYK JPEGs and floating-point TIFFs follow the `image` crate's conversions, unchecked.

use std::io::Cursor;
use std::path::Path;

use image::error::{DecodingError, ImageFormatHint};
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, Pixel, RgbImage};

use crate::error::{Origin, ProcessorError, Result};

/// Pillow's default `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3); large enough for
/// 2352x2352 (5.5 MP) and ordinary photographs.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Default cap on an encoded image's size in bytes (512 MiB: an uncompressed 16-bit RGB TIFF at the
/// pixel limit is about 512 MB; photographs are a few MB).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// Default limit on an image's width and on its height (65535, JPEG's own limit; a panorama within
/// the pixel limit fits). Together with the pixel limit it bounds the resize's intermediate images.
pub const DEFAULT_MAX_DIMENSION: u32 = 65_535;

/// Bytes per allowed pixel granted to the decoder's allocations (16-bit RGBA, the widest format decoded
/// here); never less than the `image` crate's default budget of 512 MiB.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Formats this crate decodes.
const SUPPORTED: [ImageFormat; 6] =
    [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff];

/// Decodes PNG, JPEG, WebP, GIF (first frame), BMP and TIFF files to RGB8 like Pillow's
/// `Image.open(..).convert("RGB")`, refusing images beyond the byte, pixel and dimension limits
/// before decoding them.
///
/// A file is read only if it is a regular file (a FIFO or a device is an error, never a hang) of at
/// most `max_bytes` bytes; the limits on pixels and dimensions are checked against the header before
/// any pixel is decoded.
///
/// Truncated data fails as it does in Pillow, which raises `OSError("image file is truncated")` from
/// `ImageFile.load()` (`src/PIL/ImageFile.py`) when the data ends before the decoder has finished,
/// unless `ImageFile.LOAD_TRUNCATED_IMAGES` is set (upstream does not set it; only then does
/// `JpegImagePlugin.load_read` feed libjpeg a fake end marker). The `image` crate's decoders are more
/// forgiving in three places, so those formats get a rule of their own, checked before decoding:
///
/// - **JPEG: the entropy-coded data of the last scan must be ended by the EOI marker (`FF D9`), with
///   at least one scan (SOS) before it.** `zune-jpeg` fills missing scan data with grey; libjpeg only
///   finishes once it has every bit of the last scan, in practice once it has read the marker that
///   ends it. Checked against Pillow 10.4 (`tests/generator/gen_truncation.py --jpeg-rule`) on every
///   prefix of 34 JPEGs (baseline and progressive, grey and colour, 4:4:4 and 4:2:0; 412,568 prefixes): the
///   same verdict on all but two, a file missing only its final `FF D9` or `D9`, which libjpeg may
///   finish from the lookahead of its bit buffer; those are refused here. Scan data cut short but
///   still followed by an EOI decodes in both (libjpeg warns "premature end of data segment", which
///   Pillow ignores, and both fill the missing blocks).
/// - **GIF: every data sub-block of the first image must be whole** (Pillow reads them all; the `gif`
///   crate stops at the LZW end code, which can come before the last byte). The zero-length block
///   that terminates them may be missing, as in Pillow.
/// - **WebP: the data must hold the whole RIFF chunk its header declares** (libwebp refuses less;
///   `image-webp` decodes a lossy frame missing its last bytes).
///
/// With these rules no prefix of the decode fixtures (`tests/fixtures/processor/decode`, every format)
/// decodes here that Pillow 10.4 refuses. PNG, BMP and TIFF decoders already fail on truncated data,
/// and are stricter than Pillow on one point: a PNG missing its `IEND` (and the IDAT checksum before
/// it) or a BMP missing the padding of its last row, which Pillow decodes and this crate refuses.
///
/// ```no_run
/// # fn f() -> viper_processor::Result<()> {
/// let image = viper_processor::ImageLoader::default().open("photo.jpg")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLoader {
    /// Largest `width * height` accepted, checked against the header before any pixel is decoded;
    /// decoder allocations are capped at 8 bytes per allowed pixel (at least 512 MiB).
    pub max_pixels: u64,
    /// Largest encoded size in bytes, checked before the file is read ([`DEFAULT_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Largest width and largest height, checked against the header ([`DEFAULT_MAX_DIMENSION`]).
    pub max_dimension: u32,
}

impl Default for ImageLoader {
    fn default() -> Self {
        Self { max_pixels: DEFAULT_MAX_PIXELS, max_bytes: DEFAULT_MAX_BYTES, max_dimension: DEFAULT_MAX_DIMENSION }
    }
}

impl ImageLoader {
    /// Decode the image file at `path`; the format is detected from its content, not its extension.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        let origin = Origin::File(path.as_ref().to_path_buf());
        let bytes = viper_io::read_capped(path.as_ref(), self.max_bytes).map_err(|e| match e {
            viper_io::FileError::Io { source, .. } => ProcessorError::Io { origin: origin.clone(), source },
            viper_io::FileError::TooLarge { size, cap, .. } => {
                ProcessorError::TooManyBytes { origin: origin.clone(), bytes: size, max_bytes: cap }
            }
            other => ProcessorError::File(other),
        })?;
        self.load(&bytes, origin)
    }

    /// Decode an encoded image held in memory.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage> {
        self.load(bytes, Origin::Memory)
    }

    fn load(&self, bytes: &[u8], origin: Origin) -> Result<RgbImage> {
        if bytes.is_empty() {
            return Err(ProcessorError::Empty { origin });
        }
        if bytes.len() as u64 > self.max_bytes {
            let (bytes, max_bytes) = (bytes.len() as u64, self.max_bytes);
            return Err(ProcessorError::TooManyBytes { origin, bytes, max_bytes });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| ProcessorError::Io { origin: origin.clone(), source })?;
        let format = match reader.format() {
            Some(format) if SUPPORTED.contains(&format) => format,
            other => {
                let format = other.map_or_else(|| "unrecognised signature".into(), |f| format!("{f:?}"));
                return Err(ProcessorError::UnsupportedFormat { origin, format });
            }
        };
        let decode_error =
            |source| ProcessorError::Decode { origin: origin.clone(), format: format!("{format:?}"), source };
        let mut limits = Limits::default();
        limits.max_alloc = limits.max_alloc.max(Some(self.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL)));
        reader.limits(limits.clone());

        let decoder = reader.into_decoder().map_err(decode_error)?;
        let (width, height) = decoder.dimensions();
        if width == 0 || height == 0 {
            return Err(ProcessorError::NoPixels { origin, width, height });
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            let max_pixels = self.max_pixels;
            return Err(ProcessorError::TooManyPixels { origin, width, height, max_pixels });
        }
        if width.max(height) > self.max_dimension {
            let max_dimension = self.max_dimension;
            return Err(ProcessorError::DimensionTooLarge { origin, width, height, max_dimension });
        }
        complete(format, bytes).map_err(|reason| {
            decode_error(ImageError::Decoding(DecodingError::new(ImageFormatHint::Exact(format), reason)))
        })?;
        limits.reserve(decoder.total_bytes()).map_err(decode_error)?;
        let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
        log::debug!("{origin}: decoded {format:?} {width}x{height} {:?}", image.color());
        Ok(to_rgb8(image))
    }
}

/// What [`complete`] says about data that ends too early, in Pillow's words.
const TRUNCATED: &str = "image file is truncated";

/// The truncation rules of [`ImageLoader`] for JPEG, GIF and WebP (other formats: `Ok`).
fn complete(format: ImageFormat, data: &[u8]) -> std::result::Result<(), &'static str> {
    match format {
        ImageFormat::Jpeg => jpeg_complete(data),
        ImageFormat::Gif => gif_complete(data),
        ImageFormat::WebP => {
            // "RIFF", the size of what follows, "WEBP" (the format was recognised from them).
            let declared = data.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match declared {
                Some(size) if data.len() as u64 >= 8 + u64::from(size) => Ok(()),
                _ => Err("image file is truncated: shorter than the RIFF chunk its header declares"),
            }
        }
        _ => Ok(()),
    }
}

/// The JPEG rule of [`ImageLoader`]: walks the marker segments from SOI, skipping each scan's
/// entropy-coded data to the marker that ends it, and requires an EOI after at least one scan.
/// Marker syntax as libjpeg reads it: garbage before a marker and `FF` fill bytes are skipped; in
/// entropy-coded data `FF 00` is a stuffed byte and `FF D0`..`FF D7` are restart markers.
fn jpeg_complete(data: &[u8]) -> std::result::Result<(), &'static str> {
    const ENDS_EARLY: &str = "image file is truncated: the data ends before the end-of-image marker of its last scan";
    let next = |from: usize, byte: u8| data[from.min(data.len())..].iter().position(|&b| b == byte).map(|i| from + i);
    let mut p = 2; // past SOI, which identified the format
    let mut scans = 0usize;
    loop {
        p = next(p, 0xFF).ok_or(ENDS_EARLY)?;
        while data.get(p) == Some(&0xFF) {
            p += 1;
        }
        let marker = *data.get(p).ok_or(ENDS_EARLY)?;
        p += 1;
        match marker {
            0xD9 if scans > 0 => return Ok(()),
            0xD9 => return Err("the JPEG data holds no scan before its end-of-image marker"),
            // A stuffed byte outside a scan, TEM and RSTn carry no length.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let length = data.get(p..p + 2).ok_or(ENDS_EARLY)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return Err("a JPEG marker segment declares a length below 2");
        }
        p += length;
        if p > data.len() {
            return Err(ENDS_EARLY);
        }
        if marker == 0xDA {
            scans += 1;
            loop {
                p = next(p, 0xFF).ok_or(ENDS_EARLY)?;
                match data.get(p + 1) {
                    None => return Err(ENDS_EARLY),
                    Some(0x00 | 0xD0..=0xD7) => p += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// The GIF rule of [`ImageLoader`]: walks header, colour tables and extension blocks to the first
/// image and requires each of its data sub-blocks to be whole (the data may end where the next
/// block's size byte would be, as Pillow allows).
fn gif_complete(data: &[u8]) -> std::result::Result<(), &'static str> {
    let table_size = |flags: u8| if flags & 0x80 != 0 { 3usize << ((flags & 7) + 1) } else { 0 };
    // Skips sub-blocks from `p` to past their terminator; `at_end_ok`: the data may end between blocks.
    let skip_sub_blocks = |mut p: usize, at_end_ok: bool| loop {
        let size = match data.get(p) {
            Some(&size) => usize::from(size),
            None if at_end_ok && p == data.len() => return Ok(p),
            None => return Err(TRUNCATED),
        };
        p += 1 + size;
        if size == 0 {
            return Ok::<usize, &'static str>(p);
        }
    };
    // Header "GIF89a" and the logical screen descriptor, whose flags byte is at offset 10.
    let mut p = 13 + table_size(*data.get(10).ok_or(TRUNCATED)?);
    loop {
        match data.get(p) {
            None => return Err(TRUNCATED),
            // An extension: introducer, label, sub-blocks.
            Some(0x21) => p = skip_sub_blocks(p + 2, false)?,
            // The first image: descriptor (flags at offset 9), local colour table, LZW code size, data.
            Some(0x2C) => {
                let flags = *data.get(p + 9).ok_or(TRUNCATED)?;
                skip_sub_blocks(p + 10 + table_size(flags) + 1, true)?;
                return Ok(());
            }
            // The trailer or garbage before any image: the decoder's error says more.
            Some(_) => return Ok(()),
        }
    }
}

/// Pillow's `convert("RGB")` of what Pillow's decoders would have produced (see the module docs).
fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(grey) => map_pixels(&grey, |c| [c[0].min(255) as u8; 3]),
        DynamicImage::ImageLumaA16(grey) => map_pixels(&grey, |c| [(c[0] >> 8) as u8; 3]),
        DynamicImage::ImageRgb16(rgb) => map_pixels(&rgb, high_bytes),
        DynamicImage::ImageRgba16(rgba) => map_pixels(&rgba, high_bytes),
        // 8-bit grey / grey+alpha / RGBA: replicate grey, drop alpha, as Pillow does (floats: `image` rules).
        other => other.to_rgb8(),
    }
}

fn high_bytes(c: &[u16]) -> [u8; 3] {
    [c[0], c[1], c[2]].map(|v| (v >> 8) as u8)
}

fn map_pixels<P: Pixel<Subpixel = u16>>(image: &ImageBuffer<P, Vec<u16>>, rgb: impl Fn(&[u16]) -> [u8; 3]) -> RgbImage {
    let data = image.pixels().flat_map(|p| rgb(p.channels())).collect();
    RgbImage::from_raw(image.width(), image.height(), data).expect("3 bytes per pixel")
}
