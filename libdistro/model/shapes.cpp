#include "model/shapes.hpp"

#include <cmath>

#include "core/error.hpp"

namespace distro {

std::vector<TensorSpec> llama_tensors(const LlamaShape& s) {
  const int64_t d = s.d_model, f = s.ffn, v = s.vocab;
  std::vector<TensorSpec> t;
  t.push_back({"tok_embeddings", {v, d}});
  for (int l = 0; l < s.layers; ++l) {
    std::string p = "layers." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm", {d}});
    t.push_back({p + "wq", {d, d}});
    t.push_back({p + "wk", {d, d}});
    t.push_back({p + "wv", {d, d}});
    t.push_back({p + "wo", {d, d}});
    t.push_back({p + "mlp_norm", {d}});
    t.push_back({p + "w_gate", {f, d}});
    t.push_back({p + "w_up", {f, d}});
    t.push_back({p + "w_down", {d, f}});
  }
  t.push_back({"norm", {d}});
  t.push_back({"output", {v, d}});
  return t;
}

static std::vector<TensorSpec> gpt2_124m() {
  const int64_t d = 768, v = 50257, ctx = 1024;
  std::vector<TensorSpec> t;
  t.push_back({"wte", {v, d}});
  t.push_back({"wpe", {ctx, d}});
  for (int l = 0; l < 12; ++l) {
    std::string p = "h." + std::to_string(l) + ".";
    t.push_back({p + "ln_1.weight", {d}});
    t.push_back({p + "ln_1.bias", {d}});
    t.push_back({p + "attn.c_attn.weight", {d, 3 * d}});
    t.push_back({p + "attn.c_attn.bias", {3 * d}});
    t.push_back({p + "attn.c_proj.weight", {d, d}});
    t.push_back({p + "attn.c_proj.bias", {d}});
    t.push_back({p + "ln_2.weight", {d}});
    t.push_back({p + "ln_2.bias", {d}});
    t.push_back({p + "mlp.c_fc.weight", {d, 4 * d}});
    t.push_back({p + "mlp.c_fc.bias", {4 * d}});
    t.push_back({p + "mlp.c_proj.weight", {4 * d, d}});
    t.push_back({p + "mlp.c_proj.bias", {d}});
  }
  t.push_back({"ln_f.weight", {d}});
  t.push_back({"ln_f.bias", {d}});
  return t;
}

std::vector<TensorSpec> model_shape(const std::string& name) {
  if (name == "gpt2-124m") return gpt2_124m();
  if (name == "llama-134m") return llama_tensors({12, 768, 2048, 12, 32000});
  if (name == "llama-1b") return llama_tensors({16, 2048, 8192, 8, 32000});
  if (name.rfind("params:", 0) == 0) {
    char* end = nullptr;
    const char* num = name.c_str() + 7;
    unsigned long long n = std::strtoull(num, &end, 10);
    if (*num == '\0' || *end != '\0' || n == 0 || n > (1ull << 36))
      fail(Code::invalid_argument, "'" + name + "' is not a parameter count; expected params:N with 1 <= N <= 2^36");
    int64_t rows = int64_t(std::sqrt(double(n)));
    while (rows > 1 && n % uint64_t(rows) != 0) --rows;
    return {{"weight", {rows, int64_t(n / uint64_t(rows))}}};
  }
  fail(Code::not_found, "unknown model shape '" + name + "'; expected gpt2-124m, llama-134m, llama-1b or params:N");
}

uint64_t count_params(const std::vector<TensorSpec>& specs) {
  uint64_t n = 0;
  for (const auto& s : specs) {
    uint64_t e = 1;
    for (int64_t d : s.shape) e *= uint64_t(d);
    n += e;
  }
  return n;
}

}  // namespace distro
