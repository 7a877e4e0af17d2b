#include "peers.hpp"

#include "model/shapes.hpp"
#include "optim/merger.hpp"
#include "synthetic.hpp"
#include "wire/codec.hpp"

namespace distro::bench {

struct Peers::Peer {
  std::vector<std::vector<float>> params, grads;
  std::unique_ptr<Optimizer> opt;
};

Peers::Peers(const PeersConfig& c) : cfg_(c) {
  if (c.peers < 1 || c.peers > 1024) fail(Code::invalid_argument, "peers must be 1..1024");
  pool_ = std::make_unique<ThreadPool>(c.threads);
  auto specs = model_shape(c.model);
  for (unsigned p = 0; p < c.peers; ++p) {
    auto peer = std::make_unique<Peer>();
    OptimizerOptions o;
    o.run_id = c.seed;
    o.peer_id = p;
    o.chunk = c.chunk;
    o.topk = c.topk;
    o.decay = c.decay;
    o.values = c.values;
    o.threads = c.threads;
    peer->opt = std::make_unique<Optimizer>(o);
    for (size_t t = 0; t < specs.size(); ++t) {
      uint64_t n = count_params({specs[t]});
      peer->params.emplace_back(n);
      peer->grads.emplace_back(n);
      // Every replica starts from the same parameters.
      fill_uniform(*pool_, peer->params.back().data(), n, c.seed * 1000003 + t, 0.02f);
      peer->opt->add_tensor(specs[t].name, specs[t].shape, peer->params.back().data(), peer->grads.back().data());
    }
    peer->opt->freeze();
    peers_.push_back(std::move(peer));
  }
}

Peers::~Peers() = default;

const Manifest& Peers::manifest() const { return peers_[0]->opt->manifest(); }
Optimizer& Peers::optimizer(unsigned i) { return *peers_.at(i)->opt; }
uint64_t Peers::params() const { return manifest().total_params; }

void Peers::randomize_grads(uint64_t step) {
  const Manifest& m = manifest();
  for (unsigned p = 0; p < peers_.size(); ++p)
    for (size_t t = 0; t < m.tensors.size(); ++t)
      fill_uniform(*pool_, peers_[p]->grads[t].data(), m.tensors[t].numel, (step * 7919 + p) * 65537 + t + 1, 1.0f);
}

StepFigures Peers::step(uint64_t step) {
  StepFigures f;
  const Manifest& m = manifest();
  // Each peer's gradient differs (its own batch); drawn outside the timed region.
  randomize_grads(step);
  double t0 = now_seconds();
  Merger merger(m, cfg_.seed, step);
  for (auto& peer : peers_) {
    PeerPayload pl = peer->opt->compress(step, cfg_.lr);
    std::vector<uint8_t> bytes = encode_payload(m, pl);
    f.payload_bytes += bytes.size();
    f.coefficients += pl.index.size();
    merger.add(bytes);
  }
  f.payload_bytes /= peers_.size();
  f.coefficients /= peers_.size();
  uint64_t prev = peers_[0]->opt->param_hash();
  MergedUpdate u = merger.finish(cfg_.lr, cfg_.weight_decay, prev);
  std::vector<uint8_t> ub = encode_update(m, u);
  f.update_bytes = ub.size();
  f.union_size = u.index.size();
  for (auto& peer : peers_) {
    peer->opt->apply(decode_update(m, ub));
    f.hashes.push_back(peer->opt->param_hash());
  }
  f.seconds = now_seconds() - t0;
  return f;
}

}  // namespace distro::bench
