//! The decoder's shapes a cache is sized by. The model converts its own configuration into
//! this (the model knows the cache, not the other way round).

/// Layers and heads of the decoder a cache serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl Shape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head.max(1)
    }
}
