// 2-D convolution pieces (NHWC activations, HWIO kernels, float32) for XLA's CPU backend,
// computed by oneDNN. Why: XLA:CPU runs convolutions with fewer than 128 output channels on
// one thread, and oneDNN's kernels use every core and the CPU's vector extensions
// (benchmarks/README.md, "CPU: JAX beside PyTorch"). Built and loaded by
// distill_jax/models/onednn_conv.py; each handler is an XLA FFI custom call.
//
//   forward:      a = x (N,H,W,C),   b = kernel (kh,kw,C,F) -> y  (N,Ho,Wo,F)
//   input grad:   a = dy (N,Ho,Wo,F), b = kernel (kh,kw,C,F) -> dx (N,H,W,C)
//   kernel grad:  a = x (N,H,W,C),   b = dy (N,Ho,Wo,F)      -> dk (kh,kw,C,F)
// Attributes: strides (sh, sw) and zero padding (pt, pb, pl, pr).
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Op : int64_t { kForward = 0, kInputGrad = 1, kKernelGrad = 2 };

struct Shape {
  int64_t n, h, w, c, kh, kw, f, ho, wo;
};

// op, then Shape, then sh, sw, pt, pb, pl, pr.
using Key = std::array<int64_t, 16>;

// A primitive built once per shape: building one costs far more than running it.
struct Plan {
  dnnl::primitive primitive;
  memory::desc src, dst;     // x and y (or their gradients), NHWC
  memory::desc kernel;       // the kernel layout the primitive wants
  memory::desc user_kernel;  // HWIO, as JAX holds it
  memory::desc scratchpad;
  bool reorder = false;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::shared_ptr<Plan> MakePlan(const Key& k) {
  const Shape s{k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8], k[9]};
  const memory::dims strides = {k[10], k[11]}, pad_l = {k[12], k[14]}, pad_r = {k[13], k[15]};
  auto plan = std::make_shared<Plan>();
  plan->src = memory::desc({s.n, s.c, s.h, s.w}, dt::f32, tag::nhwc);
  plan->dst = memory::desc({s.n, s.f, s.ho, s.wo}, dt::f32, tag::nhwc);
  const memory::desc& src = plan->src;
  const memory::desc& dst = plan->dst;
  const memory::desc any_kernel({s.f, s.c, s.kh, s.kw}, dt::f32, tag::any);
  plan->user_kernel = memory::desc({s.f, s.c, s.kh, s.kw}, dt::f32, tag::hwio);
  auto& engine = Engine();
  // XLA may run two custom calls at once on its threads; oneDNN's default (library-owned)
  // scratchpad is shared between them (two concurrent calls corrupt it and can hang), so each
  // call brings its own.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                      src, any_kernel, dst, strides, pad_l, pad_r),
      attr, engine);
  if (k[0] == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->kernel = forward.weights_desc();
    plan->scratchpad = forward.scratchpad_desc();
  } else if (k[0] == kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc pd(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src, any_kernel, dst,
                                              strides, pad_l, pad_r),
        attr, engine, forward);
    plan->primitive = dnnl::convolution_backward_data(pd);
    plan->kernel = pd.weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src, any_kernel, dst,
                                                 strides, pad_l, pad_r),
        attr, engine, forward);
    plan->primitive = dnnl::convolution_backward_weights(pd);
    plan->kernel = pd.diff_weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  }
  plan->reorder = plan->kernel != plan->user_kernel;
  return plan;
}

std::shared_ptr<Plan> GetPlan(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  auto plan = MakePlan(key);
  plans.emplace(key, plan);
  return plan;
}

template <typename Dims>
bool Rank4(const Dims& d, int64_t out[4]) {
  if (d.size() != 4) return false;
  for (int i = 0; i < 4; ++i) out[i] = d[i];
  return true;
}

ffi::Error Run(Op op, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  int64_t da[4], db[4], dout[4];
  if (!Rank4(a.dimensions(), da) || !Rank4(b.dimensions(), db) || !Rank4(out->dimensions(), dout)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: every operand must have rank 4");
  }
  // x (N,H,W,C), kernel (kh,kw,C,F), y (N,Ho,Wo,F), whichever operands carry them.
  const int64_t* x = op == kInputGrad ? dout : da;
  const int64_t* kernel = op == kKernelGrad ? dout : db;
  const int64_t* y = op == kForward ? dout : (op == kInputGrad ? da : db);
  if (x[0] != y[0] || x[3] != kernel[2] || y[3] != kernel[3]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: operand shapes do not match");
  }
  const Key key = {op, x[0], x[1], x[2], x[3], kernel[0], kernel[1], kernel[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
  try {
    auto plan = GetPlan(key);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    const memory::desc& src = plan->src;
    const memory::desc& dst = plan->dst;
    void* kernel_data = op == kKernelGrad ? out->untyped_data() : b.untyped_data();
    memory user_kernel(plan->user_kernel, engine, kernel_data);
    memory kernel_mem = plan->reorder ? memory(plan->kernel, engine) : user_kernel;
    if (plan->reorder && op != kKernelGrad) {
      dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
    }
    std::unordered_map<int, memory> args;
    if (op == kForward) {
      args = {{DNNL_ARG_SRC, memory(src, engine, a.untyped_data())},
              {DNNL_ARG_WEIGHTS, kernel_mem},
              {DNNL_ARG_DST, memory(dst, engine, out->untyped_data())}};
    } else if (op == kInputGrad) {
      args = {{DNNL_ARG_DIFF_DST, memory(dst, engine, a.untyped_data())},
              {DNNL_ARG_WEIGHTS, kernel_mem},
              {DNNL_ARG_DIFF_SRC, memory(src, engine, out->untyped_data())}};
    } else {
      args = {{DNNL_ARG_SRC, memory(src, engine, a.untyped_data())},
              {DNNL_ARG_DIFF_DST, memory(dst, engine, b.untyped_data())},
              {DNNL_ARG_DIFF_WEIGHTS, kernel_mem}};
    }
    args.insert({DNNL_ARG_SCRATCHPAD, memory(plan->scratchpad, engine)});
    plan->primitive.execute(stream, args);
    if (plan->reorder && op == kKernelGrad) {
      dnnl::reorder(kernel_mem, user_kernel).execute(stream, kernel_mem, user_kernel);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn_conv: oneDNN failed: ") + e.what());
  }
  return ffi::Error::Success();
}

template <Op op>
ffi::Error Handler(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(op, a, b, out, sh, sw, pt, pb, pl, pr);
}

}  // namespace

#define DISTILL_ONEDNN_BINDING                                                                 \
  ffi::Ffi::Bind()                                                                             \
      .Arg<ffi::Buffer<ffi::F32>>()                                                            \
      .Arg<ffi::Buffer<ffi::F32>>()                                                            \
      .Ret<ffi::Buffer<ffi::F32>>()                                                            \
      .Attr<int64_t>("sh")                                                                     \
      .Attr<int64_t>("sw")                                                                     \
      .Attr<int64_t>("pt")                                                                     \
      .Attr<int64_t>("pb")                                                                     \
      .Attr<int64_t>("pl")                                                                     \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DistillOnednnConvForward, Handler<kForward>, DISTILL_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DistillOnednnConvInputGrad, Handler<kInputGrad>, DISTILL_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DistillOnednnConvKernelGrad, Handler<kKernelGrad>, DISTILL_ONEDNN_BINDING);
