// The built-in model: a decoder-only Llama-style transformer (RMSNorm, rotary position embedding,
// causal multi-head attention, SwiGLU MLP, untied input and output embeddings, no biases), written as
// a sequence of Device ops so every backend runs it unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/device.hpp"

namespace distro {

struct LlamaConfig {
  int vocab = 256;
  int d_model = 128;
  int layers = 4;
  int heads = 4;
  int ffn = 384;      // SwiGLU hidden width
  int max_seq = 256;  // longest sequence forward() accepts (RoPE tables are built for it)
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
};

// "nano" (~1M params), "micro" (~5M), "small" (d 768, 12 layers, FFN 2048: 85M without embeddings),
// "1b" (16 layers, d 2048, FFN 8192, 8 heads, vocab 32000: the DisTrO report's shape). vocab
// overrides the preset's vocabulary when > 0. Throws Error(not_found) listing the names.
LlamaConfig llama_preset(const std::string& name, int vocab = 0);
// Checks a config (positive sizes, heads divide d_model, even head size for RoPE); throws
// Error(invalid_argument) naming the field.
void validate(const LlamaConfig& c);

struct ModelTensor {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  float* param = nullptr;  // device memory, owned by the model
  float* grad = nullptr;   // device memory, owned by the model
};

class LlamaModel {
 public:
  // Allocates parameters, gradients and activations on dev and initialises the parameters from
  // seed (the same seed gives the same bits on every platform).
  LlamaModel(Device& dev, const LlamaConfig& c, uint64_t seed);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const LlamaConfig& config() const;
  // In a fixed order: tok_embeddings, per layer {attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up,
  // w_down}, norm, output (the same names and shapes as llama_tensors() in model/shapes.hpp).
  const std::vector<ModelTensor>& tensors() const;
  uint64_t num_params() const;

  void zero_grad();
  // Mean cross-entropy over the B*T positions of tokens -> targets (host int32 arrays), and adds the
  // gradient of that mean to every tensor's grad. T <= max_seq; tokens and targets < vocab.
  float forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T);
  // The same loss without gradients (validation).
  float loss(const int32_t* tokens, const int32_t* targets, int B, int T);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace distro
