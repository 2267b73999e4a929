//! Loading keeps one copy of the weights: the resident set grows by about the checkpoint's size,
//! not twice it (the memory map's pages are dropped as each tensor is converted). Alone in its test
//! binary so no other test's allocations count; Linux only (reads /proc/self/status).
#![cfg(target_os = "linux")]

use std::io::Write;

use burn::backend::NdArray;
use viper_checkpoint::{Checkpoint, LoadOptions};
use viper_ssm::{FalconMambaConfig, FalconMambaForCausalLM};

/// `(VmHWM, VmRSS)` in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Writes a FalconMamba checkpoint tensor by tensor (never holding it all in memory); returns its size.
fn write_checkpoint(dir: &std::path::Path, c: &FalconMambaConfig) -> u64 {
    let (h, i, n, r, k, v) = (c.hidden_size, c.d_inner(), c.state_size, 16, c.conv_kernel, c.vocab_size);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![("backbone.embeddings.weight".into(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("backbone.layers.{l}.");
        for (name, shape) in [
            ("norm.weight", vec![h]),
            ("mixer.in_proj.weight", vec![2 * i, h]),
            ("mixer.conv1d.weight", vec![i, 1, k]),
            ("mixer.conv1d.bias", vec![i]),
            ("mixer.x_proj.weight", vec![r + 2 * n, i]),
            ("mixer.dt_proj.weight", vec![i, r]),
            ("mixer.dt_proj.bias", vec![i]),
            ("mixer.A_log", vec![i, n]),
            ("mixer.D", vec![i]),
            ("mixer.out_proj.weight", vec![h, i]),
        ] {
            tensors.push((format!("{p}{name}"), shape));
        }
    }
    tensors.push(("backbone.norm_f.weight".into(), vec![h]));
    tensors.push(("lm_head.weight".into(), vec![v, h]));
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    header.resize(header.len().next_multiple_of(8), b' ');
    let path = dir.join("model.safetensors");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&header).unwrap();
    for (idx, (_, shape)) in tensors.iter().enumerate() {
        let values: Vec<u8> = (0..shape.iter().product::<usize>())
            .flat_map(|j| (((j * 31 + idx * 7) % 97) as f32 / 97.0 - 0.5).to_le_bytes())
            .collect();
        file.write_all(&values).unwrap();
    }
    file.flush().unwrap();
    std::fs::metadata(&path).unwrap().len()
}

#[test]
fn loading_holds_one_copy_of_the_weights() {
    let json = serde_json::json!({
        "hidden_size": 256, "num_hidden_layers": 8, "vocab_size": 8192, "state_size": 16,
        "conv_kernel": 4, "time_step_rank": 16, "intermediate_size": 1024, "tie_word_embeddings": false
    });
    let config: FalconMambaConfig = serde_json::from_value(json).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = write_checkpoint(dir.path(), &config);

    // Reset the high-water mark (Linux: writing 5 to clear_refs), then load.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (_, before) = memory();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let model =
        FalconMambaForCausalLM::<NdArray>::load(&config, &ckpt, LoadOptions::default(), &Default::default()).unwrap();
    let (peak, after) = memory();
    let (peak_growth, kept) =
        ((peak - before) as f64 / size as f64, (after.saturating_sub(before)) as f64 / size as f64);
    eprintln!(
        "checkpoint {:.1} MB: peak RSS growth {peak_growth:.2}x, resident after loading {kept:.2}x",
        size as f64 / 1e6
    );
    assert!(peak_growth < 1.3, "loading peaked at {peak_growth:.2}x the checkpoint size");
    drop(model);
}
