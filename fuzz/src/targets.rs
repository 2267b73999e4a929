//! The three fuzz targets, their seeds and dictionaries.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, RenderBudget, SpecialTokens};
use viper_checkpoint::Checkpoint;
use viper_processor::{ImageLoader, PreprocessorConfig, Processor};

use crate::{fixtures, scratch_dir, Target};

/// Every target, in the order the binary runs them.
pub static TARGETS: [&Target; 3] = [&SAFETENSORS, &IMAGE, &TEMPLATE];

/// Separates header and data in the structured form of a [`SAFETENSORS`] input.
const SPLIT: &[u8] = &[0xFF, 0x00, 0xFF, 0x00];

/// Safetensors files through `Checkpoint::open`, then every tensor read back.
///
/// An input starting with an even byte is the file itself; with an odd byte it is
/// `header JSON ++ [FF 00 FF 00] ++ data`, assembled with the header's true length, so mutations of
/// the JSON reach the header validation instead of stopping at the length prefix.
pub static SAFETENSORS: Target = Target {
    name: "safetensors",
    seeds: safetensors_seeds,
    dictionary: &[
        b"\"dtype\"",
        b"\"shape\"",
        b"\"data_offsets\"",
        b"\"__metadata__\"",
        b"\"F32\"",
        b"\"F16\"",
        b"\"BF16\"",
        b"\"F64\"",
        b"\"I64\"",
        b"\"U8\"",
        b"\"BOOL\"",
        b"\"F8_E4M3\"",
        b"[]",
        b"[0,0]",
        b"{}",
        b",",
        b":",
        b"18446744073709551615",
        b"4294967296",
    ],
    max_len: 1 << 16,
    fixup: None,
    run: run_safetensors,
};

fn safetensors_sample(tensors: &[(&str, Dtype, Vec<usize>)], metadata: bool) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, dtype, shape)| {
            let n = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            (name.to_string(), shape.clone(), *dtype, (0..n).map(|i| (i * 37 % 251) as u8).collect())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).expect("a valid view"))
        })
        .collect();
    let info = metadata.then(|| HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize(views, info).expect("serializable")
}

/// Both forms of a safetensors file as seeds: raw, and split into header and data.
fn both_forms(file: &[u8]) -> [Vec<u8>; 2] {
    let raw = [&[0u8][..], file].concat();
    let n = file.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).unwrap_or(0);
    let split =
        if 8 + n <= file.len() { [&[1u8][..], &file[8..8 + n], SPLIT, &file[8 + n..]].concat() } else { vec![1] };
    [raw, split]
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut files = vec![
        safetensors_sample(&[("a.weight", Dtype::F32, vec![2, 3]), ("a.bias", Dtype::F32, vec![2])], true),
        safetensors_sample(
            &[("b", Dtype::BF16, vec![3]), ("c", Dtype::F16, vec![1, 1]), ("d", Dtype::F64, vec![])],
            false,
        ),
        safetensors_sample(
            &[("ids", Dtype::I64, vec![2]), ("mask", Dtype::U8, vec![4]), ("n", Dtype::I32, vec![1])],
            false,
        ),
        safetensors_sample(&[("flag", Dtype::BOOL, vec![2]), ("empty", Dtype::F32, vec![0, 4])], true),
    ];
    // Headers of the fixture checkpoints, with the start of their data.
    for rel in ["falcon_mamba/fm-odd/model.safetensors", "vision/clip-odd/model.safetensors"] {
        if let Ok(file) = std::fs::read(fixtures().join(rel)) {
            let n = file.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).unwrap_or(0);
            files.push(file[..(8 + n + 4096).min(file.len())].to_vec());
        }
    }
    files.iter().flat_map(|f| both_forms(f)).collect()
}

fn run_safetensors(input: &[u8]) -> Result<(), String> {
    let file = match input.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => {
            let at = rest.windows(SPLIT.len()).position(|w| w == SPLIT).unwrap_or(rest.len());
            let data = rest.get(at + SPLIT.len()..).unwrap_or_default();
            [&(at as u64).to_le_bytes()[..], &rest[..at], data].concat()
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    };
    let path = scratch_dir().join("model.safetensors");
    std::fs::write(&path, &file).map_err(|e| format!("cannot write the scratch file: {e}"))?;
    let Ok(ckpt) = Checkpoint::open(&path) else { return Ok(()) };
    for key in ckpt.keys() {
        let meta = ckpt.meta(key).ok_or_else(|| format!("`{key}` is listed but has no metadata"))?;
        let expected: usize = meta.shape.iter().product();
        let len = match meta.dtype {
            Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16 => ckpt.read_f32(key).map(|(v, _)| v.len()),
            _ => ckpt.read_i64(key).map(|(v, _)| v.len()),
        };
        if let Ok(len) = len {
            if len != expected {
                return Err(format!("`{key}` of shape {:?} read back {len} values", meta.shape));
            }
        }
        let _ = ckpt.prefix_of(key);
    }
    Ok(())
}

/// Encoded images through `ImageLoader::decode` (small limits), then the AnyRes processor.
pub static IMAGE: Target = Target {
    name: "image",
    seeds: image_seeds,
    dictionary: &[
        b"\xFF\xD8\xFF",
        b"\xFF\xDA",
        b"\xFF\xD9",
        b"\xFF\xC0",
        b"\xFF\xC2",
        b"\xFF\xC4",
        b"\xFF\xDB",
        b"\xFF\xDD\x00\x04\x00\x01",
        b"\x89PNG\r\n\x1a\n",
        b"IHDR",
        b"IDAT",
        b"IEND",
        b"PLTE",
        b"tRNS",
        b"acTL",
        b"fcTL",
        b"GIF89a",
        b"\x21\xF9\x04",
        b"\x2C",
        b"\x3B",
        b"RIFF",
        b"WEBP",
        b"VP8 ",
        b"VP8L",
        b"VP8X",
        b"ALPH",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
    ],
    max_len: 1 << 18,
    fixup: Some(fix_png_crcs),
    run: run_image,
};

fn image_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in ["processor/decode", "processor/bad", "reference/mamba-s1/images"] {
        let Ok(entries) = std::fs::read_dir(fixtures().join(dir)) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e != "rgb")) {
            if let Ok(bytes) = std::fs::read(path) {
                seeds.push(bytes);
            }
        }
    }
    seeds
}

/// Recomputes the CRC of every whole chunk of a PNG, so mutated chunk data reaches the decoder.
fn fix_png_crcs(data: &mut [u8]) {
    if !data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return;
    }
    let mut p = 8;
    while p + 12 <= data.len() {
        let len = u32::from_be_bytes(data[p..p + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (p + 8).checked_add(len).filter(|&end| end + 4 <= data.len()) else { return };
        let crc = crc32fast::hash(&data[p + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        p = end + 4;
    }
}

fn run_image(input: &[u8]) -> Result<(), String> {
    let loader = ImageLoader { max_pixels: 1 << 22, max_bytes: 1 << 20, max_dimension: 8192 };
    let Ok(image) = loader.decode(input) else { return Ok(()) };
    let pinpoints = vec![(28, 28), (28, 56), (56, 28), (56, 56), (84, 28), (28, 84)];
    let processor = Processor::new(pinpoints, 28, 14, PreprocessorConfig::default()).expect("a valid processor");
    let out = processor
        .process(&image)
        .map_err(|e| format!("a decoded {:?} image fails to process: {e}", image.dimensions()))?;
    if out.pixel_values.len() != out.shape.iter().product::<usize>() || out.shape[0] != out.geometry.num_crops() {
        return Err(format!("pixel_values of {} values for shape {:?}", out.pixel_values.len(), out.shape));
    }
    if let Some(bad) = out.pixel_values.iter().find(|v| !v.is_finite()) {
        return Err(format!("a non-finite pixel value {bad}"));
    }
    Ok(())
}

/// Jinja sources through `ChatTemplate::new` and a render of a four-message conversation, on a
/// budget of 100k instructions and 1 MiB of output.
pub static TEMPLATE: Target = Target {
    name: "template",
    seeds: template_seeds,
    dictionary: &[
        b"{%",
        b"%}",
        b"{{",
        b"}}",
        b"{#",
        b"#}",
        b"{%- ",
        b" -%}",
        b" for m in messages ",
        b" endfor ",
        b" if ",
        b" elif ",
        b" else ",
        b" endif ",
        b" in range(100000) ",
        b" set ns = namespace(x=0) ",
        b" set ns.x = ns.x + 1 ",
        b" macro f(n) ",
        b" endmacro ",
        b"f(n - 1)",
        b" call ",
        b" recursive ",
        b"loop(",
        b"loop.index",
        b"loop.last",
        b"messages[0]['content']",
        b"message['role']",
        b"raise_exception('x')",
        b"strftime_now('%Y')",
        b"|tojson",
        b"|tojson(indent=2)",
        b"|length",
        b"|join(',')",
        b"|trim",
        b".strip()",
        b".split(' ')",
        b".startswith('<')",
        b".items()",
        b" ~ ",
        b" * ",
        b" ** ",
        b"10**9",
        b"bos_token",
        b"eos_token",
        b"add_generation_prompt",
        b"'<image>'",
        b"\"",
        b"(",
        b")",
        b"[",
        b"]",
    ],
    max_len: 1 << 14,
    fixup: None,
    run: run_template,
};

fn template_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = BuiltinTemplate::ALL.iter().map(|t| t.source().as_bytes().to_vec()).collect();
    for dir in ["chat/jamba-s1", "chat/mamba-s1", "reference/jamba-s1", "reference/mamba-s1"] {
        let path = fixtures().join(dir).join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(template) = json.get("chat_template").and_then(|t| t.as_str()) {
            seeds.push(template.as_bytes().to_vec());
        }
    }
    for snippet in [
        "{% for m in messages %}{% for n in messages %}{{ m.role }}:{{ n.content }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(10) }}",
        "{% set ns = namespace(x=0) %}{% for i in range(100) %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}",
        "{{ messages | tojson(indent=2) }}{{ 'ab' * 3 }}{% if not messages %}{{ raise_exception('none') }}{% endif %}",
        "{% for m in messages recursive %}{{ m.role }}{% if m.children %}{{ loop(m.children) }}{% endif %}{% endfor %}",
        "{{ strftime_now('%Y-%m-%d') }}{{ messages[0]['content'].strip().split(' ') | join('|') }}",
        "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ m['content'] | trim }}{{ eos_token }}{% endfor %}",
    ] {
        seeds.push(snippet.as_bytes().to_vec());
    }
    seeds
}

fn run_template(input: &[u8]) -> Result<(), String> {
    let source = String::from_utf8_lossy(input).into_owned();
    let Ok(template) = ChatTemplate::new(source, "fuzz") else { return Ok(()) };
    let template = template.with_budget(RenderBudget { fuel: 100_000, max_output_bytes: 1 << 20 });
    let conversation = Conversation::new()
        .with_system("You are a helpful assistant. ")
        .user_with_images("What is in this picture?", [()])
        .assistant("A cat.")
        .user("And its colour?");
    let special = SpecialTokens {
        bos: Some("<|startoftext|>".into()),
        eos: Some("<|endoftext|>".into()),
        pad: None,
        unk: Some("<unk>".into()),
        additional: vec!["<|im_start|>".into()],
    };
    let _ = template.render(&conversation, &special, true);
    Ok(())
}
