//! A session's key/value cache, fed to and returned by the graph at each step (caller-fed).

use tract_onnx::prelude::*;

use crate::config::KvCacheConfig;
use crate::error::{Error, Result};

/// Axis of the sequence in `[batch, kv_heads, sequence, head_dim]`.
const SEQ_AXIS: usize = 2;

/// Keys and values of every layer for the tokens seen so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(TValue, TValue)>,
    len: usize,
    geometry: KvCacheConfig,
}

impl KvCache {
    /// An empty cache of the given geometry.
    pub fn new(geometry: &KvCacheConfig) -> Result<Self> {
        let empty = Tensor::zero::<f32>(&[1, geometry.num_kv_heads, 0, geometry.head_dim])
            .map_err(Error::inference)?
            .into_tvalue();
        Ok(KvCache { layers: vec![(empty.clone(), empty); geometry.num_layers], len: 0, geometry: geometry.clone() })
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// (key, value) of one layer.
    pub fn layer(&self, layer: usize) -> &(TValue, TValue) {
        &self.layers[layer]
    }

    /// Replaces all layers with the graph's `present` outputs, which must hold `len` positions.
    pub fn replace(&mut self, layers: Vec<(TValue, TValue)>, len: usize) -> Result<()> {
        let want = [1, self.geometry.num_kv_heads, len, self.geometry.head_dim];
        if layers.len() != self.geometry.num_layers {
            return Err(Error::Inference(format!("graph returned {} cache layers", layers.len())));
        }
        if let Some((k, _)) = layers.iter().find(|(k, v)| k.shape() != want || v.shape() != want) {
            return Err(Error::Inference(format!("cache shape {:?}, expected {want:?}", k.shape())));
        }
        self.layers = layers;
        self.len = len;
        Ok(())
    }

    /// Keeps only the first `len` positions.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if len == 0 {
            // tract cannot slice to an empty range.
            *self = KvCache::new(&self.geometry)?;
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut() {
            *k = k.slice(SEQ_AXIS, 0, len).map_err(Error::inference)?.into_tvalue();
            *v = v.slice(SEQ_AXIS, 0, len).map_err(Error::inference)?.into_tvalue();
        }
        self.len = len;
        Ok(())
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.geometry.num_layers * self.geometry.num_kv_heads * self.geometry.head_dim * self.len * 4
    }
}
