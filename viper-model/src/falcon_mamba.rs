//! The FalconMamba causal LM, the language side of Viper-Mamba-7B; it lives in `viper-ssm`
//! ([`viper_ssm::falcon_mamba`], docs/spec.md §6) and is re-exported here.

pub use viper_ssm::falcon_mamba::{
    FalconMambaBlock, FalconMambaCache, FalconMambaConfig, FalconMambaForCausalLM, FalconMambaModel,
};
