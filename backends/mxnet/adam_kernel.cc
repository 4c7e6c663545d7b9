// w2v_adam_update: dense Adam for the MXNet backend, as an MXNet 1.9 extension-library operator.
//
// Why it exists: MXNet 1.9.1's CPU wheel is built for SSE3 and its `adam_update` kernel runs one
// float at a time (benchmarks/README.md has its share of a PTB step). This loop is the same
// arithmetic, written so that g++ -O3 -fno-math-errno vectorizes it (the square root and the
// division included) for the CPU it is compiled on. `backends/mxnet/kernels.py` builds it on
// first use against the wheel's own lib_api.h / lib_api.cc and loads it with mx.library.load.
//
// Inputs: weight, grad, exp_avg, exp_avg_sq (dense, same shape, float32 or float64).
// Output: the updated weight (call with out=weight to update in place); exp_avg and exp_avg_sq
// are updated in place (mutated inputs). Attributes, per step: lr, epsilon, beta1, beta2.
// Per element, in the order of MXNet's AdamUpdateKernel (wd 0, rescale_grad 1, no clipping):
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g g;  w = w - lr m / (sqrt(v) + eps)
// With TorchAdam's lr = lr / (1 - beta1^t) * sqrt(1 - beta2^t) and eps = eps sqrt(1 - beta2^t)
// that is torch.optim.Adam's update. Compiled without -ffast-math and with -ffp-contract=off,
// so every operation rounds as MXNet's own kernel rounds it. The scalars are parsed exactly
// (strtod, then float); MXNet's fast parser can put epsilon an ulp or so off, so where sqrt(v)
// is as small as epsilon the two kernels' weights can differ in the last bit.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;  // NOLINT(build/namespaces): the API's own examples do this

namespace {

const char* const kScalars[] = {"lr", "epsilon", "beta1", "beta2"};

template <typename T>
void adam_in_place(T* __restrict__ weight, const T* __restrict__ grad, T* __restrict__ mean,
                   T* __restrict__ var, int64_t size, T lr, T epsilon, T beta1, T beta2) {
  const T keep1 = T(1) - beta1, keep2 = T(1) - beta2;
  for (int64_t i = 0; i < size; ++i) {
    const T g = grad[i];
    const T m = beta1 * mean[i] + keep1 * g;
    const T v = beta2 * var[i] + keep2 * g * g;
    mean[i] = m;
    var[i] = v;
    weight[i] = weight[i] - lr * m / (std::sqrt(v) + epsilon);
  }
}

// Scalars are float, as MXNet's AdamParam fields are, then widened to the data type.
bool scalar(const std::unordered_map<std::string, std::string>& attrs, const char* key,
            float* value) {
  auto found = attrs.find(key);
  if (found == attrs.end()) {
    MX_ERROR_MSG << "w2v_adam_update: missing attribute '" << key << "'";
    return false;
  }
  char* end = nullptr;
  *value = static_cast<float>(std::strtod(found->second.c_str(), &end));
  if (end == found->second.c_str() || *end != '\0') {
    MX_ERROR_MSG << "w2v_adam_update: attribute '" << key << "' is not a number: '"
                 << found->second << "'";
    return false;
  }
  return true;
}

template <typename T>
MXReturnValue run(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                  const float* scalars) {
  T* weight = (*inputs)[0].data<T>();
  T* out = (*outputs)[0].data<T>();
  const int64_t size = (*inputs)[0].size();
  if (out != weight) std::memcpy(out, weight, size * sizeof(T));  // then update `out` in place
  adam_in_place<T>(out, (*inputs)[1].data<T>(), (*inputs)[2].data<T>(), (*inputs)[3].data<T>(),
                   size, scalars[0], scalars[1], scalars[2], scalars[3]);
  return MX_SUCCESS;
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  float scalars[4];
  for (int i = 0; i < 4; ++i) {
    if (!scalar(attrs, kScalars[i], &scalars[i])) return MX_FAIL;
  }
  switch ((*inputs)[0].dtype) {
    case kFloat32: return run<float>(inputs, outputs, scalars);
    case kFloat64: return run<double>(inputs, outputs, scalars);
    default:
      MX_ERROR_MSG << "w2v_adam_update: float32 or float64 arrays only";
      return MX_FAIL;
  }
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_inputs, int* num_outputs) {
  *num_inputs = 4;
  *num_outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  const int dtype = (*in_types)[0];
  if (dtype != kFloat32 && dtype != kFloat64) {
    MX_ERROR_MSG << "w2v_adam_update: float32 or float64 arrays only";
    return MX_FAIL;
  }
  for (int type : *in_types) {
    if (type != dtype) {
      MX_ERROR_MSG << "w2v_adam_update: weight, grad and moments must share one dtype";
      return MX_FAIL;
    }
  }
  (*out_types)[0] = dtype;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  for (const auto& shape : *in_shapes) {
    if (shape != (*in_shapes)[0]) {
      MX_ERROR_MSG << "w2v_adam_update: weight, grad and moments must share one shape";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = (*in_shapes)[0];
  return MX_SUCCESS;
}

MXReturnValue mutate_inputs(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<int>* input_indices) {
  input_indices->push_back(2);  // exp_avg
  input_indices->push_back(3);  // exp_avg_sq
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(w2v_adam_update)
.setForward(forward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape)
.setMutateInputs(mutate_inputs);

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;  // the API of MXNet 1.9
}
