//! Upper limits on the sizes a `config.json` declares, checked on the JSON before it is parsed into
//! a typed config, so no field can ask for an absurd allocation or loop; each failure names the field
//! and its range ([`LmError::ConfigLimit`]). Zero and other inconsistencies are left to the typed
//! configs' own validation, which says more about them.

use serde_json::Value;

use crate::error::LmError;

/// `(field, min, max)` for the size fields of the FalconMamba, Jamba and LLaVA keys of a Viper
/// `config.json`. The published models are far inside: hidden 4096, 64 / 32 layers, vocabularies of
/// 65k, 16 experts, a context of 2048 to 256k.
pub const CONFIG_LIMITS: &[(&str, u64, u64)] = &[
    ("hidden_size", 0, 65_536),
    ("intermediate_size", 0, 1 << 20),
    ("num_hidden_layers", 0, 1024),
    ("vocab_size", 0, 1 << 22),
    ("state_size", 0, 4096),
    ("mamba_d_state", 0, 4096),
    ("conv_kernel", 0, 256),
    ("mamba_d_conv", 0, 256),
    ("time_step_rank", 0, 65_536),
    ("mamba_dt_rank", 0, 65_536),
    ("expand", 0, 64),
    ("mamba_expand", 0, 64),
    ("num_attention_heads", 0, 4096),
    ("num_key_value_heads", 0, 4096),
    ("num_experts", 0, 4096),
    ("num_experts_per_tok", 0, 4096),
    ("expert_layer_period", 0, 1024),
    ("expert_layer_offset", 0, 1024),
    ("attn_layer_period", 0, 1024),
    ("attn_layer_offset", 0, 1024),
    ("mm_hidden_size", 0, 65_536),
    // Upstream cuts the spliced prompt to this many positions: 0 would leave nothing to run.
    ("tokenizer_model_max_length", 1, 1 << 24),
];

/// Checks every field of [`CONFIG_LIMITS`] present in the top-level object `json` as a non-negative
/// integer (other types are left to serde, which names them).
pub fn check_config_limits(json: &Value) -> Result<(), LmError> {
    for &(field, min, max) in CONFIG_LIMITS {
        let Some(value) = json.get(field).and_then(Value::as_u64) else { continue };
        if !(min..=max).contains(&value) {
            return Err(LmError::ConfigLimit { field, value, min, max });
        }
    }
    Ok(())
}
