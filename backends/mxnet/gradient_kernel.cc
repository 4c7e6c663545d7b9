// w2v_dense_gradients: both dense table gradients of a batch's pairs, as an MXNet 1.9
// extension-library operator (built into the same library as w2v_adam_update, adam_kernel.cc).
//
// Why it exists: `fast.dense_gradients` gets the gradients as two `mx.nd.sparse.dot` products
// over a CSR matrix M (rows: centres, columns: contexts, values: d loss / d logit). On MXNet
// 1.9.1's SSE3 wheel those products and the zero-filling of their outputs are scalar loops over
// a large share of a PTB step (benchmarks/README.md). This loop is the same sums, written so
// that g++ -O3 vectorizes them over E.
//
// Inputs: g (P,) d loss / d logit per pair, col (P,) context ids, row_starts (V+1,) CSR row
// starts over the centres (pairs sorted by centre; only the first row_starts[V] pairs are read,
// so padding after them is ignored), center_table (V, E), context_table (V, E).
// Outputs, written whole (rows no pair touches are zero; no separate fill is needed):
//   center_grad[r]         = sum_{k in row r} g[k] context_table[col[k]]     (M @ context)
//   context_grad[col[k]]  += g[k] center_table[r]  for every pair k of row r (M^T @ center)
// Both sums run in pair order, as MXNet's CSR products do; compiled without -ffast-math and
// with -ffp-contract=off, so each product and sum rounds on its own, as on the SSE3 wheel.
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;  // NOLINT(build/namespaces): the API's own examples do this

namespace {

template <typename T>
inline void add_scaled(T* __restrict__ out, const T* __restrict__ row, T scale, int64_t size) {
  for (int64_t e = 0; e < size; ++e) out[e] += scale * row[e];
}

template <typename T, typename I>
void gradients(const T* g, const I* col, const I* row_starts, const T* center_table,
               const T* context_table, T* center_grad, T* context_grad, int64_t vocab,
               int64_t embed) {
  std::memset(context_grad, 0, sizeof(T) * vocab * embed);
  for (int64_t r = 0; r < vocab; ++r) {
    T* center_out = center_grad + r * embed;
    const T* center_row = center_table + r * embed;
    std::memset(center_out, 0, sizeof(T) * embed);
    for (I k = row_starts[r]; k < row_starts[r + 1]; ++k) {
      const int64_t c = col[k];
      add_scaled<T>(center_out, context_table + c * embed, g[k], embed);
      add_scaled<T>(context_grad + c * embed, center_row, g[k], embed);
    }
  }
}

// The CSR structure is checked before anything is read through it: a bad plan is an error,
// not a read out of bounds.
template <typename I>
bool valid(const I* col, const I* row_starts, int64_t pairs, int64_t vocab) {
  if (row_starts[0] != 0) {
    MX_ERROR_MSG << "w2v_dense_gradients: row_starts[0] must be 0";
    return false;
  }
  for (int64_t r = 0; r < vocab; ++r) {
    if (row_starts[r + 1] < row_starts[r]) {
      MX_ERROR_MSG << "w2v_dense_gradients: row_starts must not decrease";
      return false;
    }
  }
  if (row_starts[vocab] > pairs) {
    MX_ERROR_MSG << "w2v_dense_gradients: row_starts[V] = " << row_starts[vocab]
                 << " exceeds the " << pairs << " pairs given";
    return false;
  }
  for (int64_t k = 0; k < static_cast<int64_t>(row_starts[vocab]); ++k) {
    if (col[k] < 0 || col[k] >= vocab) {
      MX_ERROR_MSG << "w2v_dense_gradients: context id " << col[k] << " outside [0, " << vocab
                   << ")";
      return false;
    }
  }
  return true;
}

template <typename T, typename I>
MXReturnValue run(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  const int64_t pairs = (*inputs)[0].size();
  const int64_t vocab = (*inputs)[3].shape[0], embed = (*inputs)[3].shape[1];
  const I* col = (*inputs)[1].data<I>();
  const I* row_starts = (*inputs)[2].data<I>();
  if (!valid<I>(col, row_starts, pairs, vocab)) return MX_FAIL;
  gradients<T, I>((*inputs)[0].data<T>(), col, row_starts, (*inputs)[3].data<T>(),
                  (*inputs)[4].data<T>(), (*outputs)[0].data<T>(), (*outputs)[1].data<T>(),
                  vocab, embed);
  return MX_SUCCESS;
}

template <typename T>
MXReturnValue run_ids(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  switch ((*inputs)[1].dtype) {
    case kInt64: return run<T, int64_t>(inputs, outputs);
    case kInt32: return run<T, int32_t>(inputs, outputs);
    default:
      MX_ERROR_MSG << "w2v_dense_gradients: ids must be int32 or int64";
      return MX_FAIL;
  }
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  switch ((*inputs)[0].dtype) {
    case kFloat32: return run_ids<float>(inputs, outputs);
    case kFloat64: return run_ids<double>(inputs, outputs);
    default:
      MX_ERROR_MSG << "w2v_dense_gradients: float32 or float64 values only";
      return MX_FAIL;
  }
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_inputs, int* num_outputs) {
  *num_inputs = 5;
  *num_outputs = 2;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  const int dtype = (*in_types)[0];
  if (dtype != kFloat32 && dtype != kFloat64) {
    MX_ERROR_MSG << "w2v_dense_gradients: float32 or float64 values only";
    return MX_FAIL;
  }
  if ((*in_types)[3] != dtype || (*in_types)[4] != dtype) {
    MX_ERROR_MSG << "w2v_dense_gradients: values and tables must share one dtype";
    return MX_FAIL;
  }
  const int ids = (*in_types)[1];
  if ((ids != kInt64 && ids != kInt32) || (*in_types)[2] != ids) {
    MX_ERROR_MSG << "w2v_dense_gradients: ids and row_starts must be int32 or int64, alike";
    return MX_FAIL;
  }
  (*out_types)[0] = dtype;
  (*out_types)[1] = dtype;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& shapes = *in_shapes;
  if (shapes[0].size() != 1 || shapes[1] != shapes[0]) {
    MX_ERROR_MSG << "w2v_dense_gradients: values and context ids must be (P,) alike";
    return MX_FAIL;
  }
  if (shapes[3].size() != 2 || shapes[4] != shapes[3]) {
    MX_ERROR_MSG << "w2v_dense_gradients: the tables must be (V, E) alike";
    return MX_FAIL;
  }
  if (shapes[2].size() != 1 || shapes[2][0] != shapes[3][0] + 1) {
    MX_ERROR_MSG << "w2v_dense_gradients: row_starts must be (V + 1,)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = shapes[3];
  (*out_shapes)[1] = shapes[3];
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(w2v_dense_gradients)
.setForward(forward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);
