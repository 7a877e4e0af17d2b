// Tensor lists of well-known model shapes, for benchmarks and synthetic runs. The trainable model
// itself (issue: built-in model) will build its tensors from the same presets.
#pragma once

#include <string>
#include <vector>

#include "optim/manifest.hpp"

namespace distro {

struct LlamaShape {
  int layers = 0, d_model = 0, ffn = 0, heads = 0, vocab = 0;
};

// Decoder-only Llama tensors: embedding, per layer {attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up,
// w_down}, final norm, untied output head.
std::vector<TensorSpec> llama_tensors(const LlamaShape& s);

// "gpt2-124m" (GPT-2 small, tied head, with biases), "llama-134m" (d 768, 12 layers, FFN 2048,
// vocab 32000), "llama-1b" (the DisTrO report's 1.2B shape), or "params:N" (one N-element tensor,
// as near to square as the divisors allow). Throws Error(not_found) listing the names.
std::vector<TensorSpec> model_shape(const std::string& name);

uint64_t count_params(const std::vector<TensorSpec>& specs);

}  // namespace distro
