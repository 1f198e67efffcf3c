#include "checks.h"

#include <cctype>
#include <cmath>
#include <limits>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace ada_vtp::cpu {

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

namespace {

std::string dtype_str(at::ScalarType t) {
  // Python's spelling (str(torch.dtype)), so both backends print the same message
  switch (t) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: break;
  }
  // the rest lower-case their C++ names: Bool, BFloat16, Float8_e4m3fn, UInt16, QInt8, Bits16, ...
  std::string s = c10::toString(t);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return "torch." + s;
}

bool is_length_dtype(at::ScalarType t) {
  // _validation.LENGTH_DTYPES: the integer dtypes every backend converts to int64
  return t == at::kByte || t == at::kChar || t == at::kShort || t == at::kInt || t == at::kLong;
}

bool is_value_dtype(at::ScalarType t) {
  // _validation.VALUE_DTYPES: the float dtypes that convert exactly to float64
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

std::string num_str(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream os;
  os << v;
  return os.str();
}

void check_choice(const char* name, const std::string& value, std::initializer_list<const char*> choices) {
  std::ostringstream expected;
  bool found = false;
  size_t i = 0;
  for (const char* c : choices) {
    found = found || value == c;
    expected << (i++ ? ", " : "") << "'" << c << "'";
  }
  TORCH_CHECK_VALUE(found, "unknown ", name, " '", value, "'; expected one of ", expected.str());
}

void check_range(const char* name, double v, double lo, double hi, bool lo_open) {
  bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
  if (!ok) {
    std::ostringstream msg;
    msg << name << " = " << num_str(v) << "; expected a finite number " << (lo_open ? "> " : ">= ")
        << num_str(lo);
    if (hi != std::numeric_limits<double>::infinity()) msg << " and <= " << num_str(hi);
    TORCH_CHECK_VALUE(false, msg.str());
  }
}

constexpr double kInf = std::numeric_limits<double>::infinity();

// max |x| over a tensor, NaN when any element is NaN or infinite: one pass at memory speed
// (branch-free chunks the compiler vectorises, split over the threads), the check and the
// rescale's input at once.
double max_abs_or_nan(const at::Tensor& x) {
  auto xc = x.contiguous();
  double out = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "max_abs_or_nan", [&] {
    const scalar_t* p = xc.data_ptr<scalar_t>();
    constexpr float kNonFinite = std::numeric_limits<float>::infinity();
    const float largest = at::parallel_reduce(
        0, xc.numel(), 1 << 16, 0.0f,
        [p](int64_t begin, int64_t end, float acc) {
          int nonfinite = 0;
          for (int64_t i = begin; i < end; ++i) {
            const float a = std::fabs(static_cast<float>(p[i]));
            nonfinite |= !(a <= std::numeric_limits<float>::max());
            acc = acc < a ? a : acc;
          }
          return nonfinite ? kNonFinite : acc;
        },
        [](float a, float b) { return std::max(a, b); });
    out = largest == kNonFinite ? std::numeric_limits<double>::quiet_NaN() : largest;
  });
  return out;
}

}  // namespace

void check_features(const at::Tensor& features) {
  TORCH_CHECK_VALUE(features.dim() == 3, "features must have shape [B, N, D], got ", features.dim(), " dims ",
                    shape_str(features.sizes()));
  auto t = features.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
                    "features must be float32, float16 or bfloat16, got ", dtype_str(t));
  TORCH_CHECK_VALUE(features.numel() > 0, "features must be non-empty, got shape ", shape_str(features.sizes()));
}

std::vector<int64_t> check_lengths(const std::optional<at::Tensor>& lengths, int64_t batch, int64_t n,
                                   const at::Device& device) {
  if (!lengths.has_value()) return std::vector<int64_t>(batch, n);
  const at::Tensor& l = *lengths;
  auto t = l.scalar_type();
  TORCH_CHECK_VALUE(is_length_dtype(t), "lengths must have an integer dtype (uint8, int8, int16, int32 or int64), got ",
                    dtype_str(t));
  TORCH_CHECK_VALUE(l.dim() == 1 && l.size(0) == batch, "lengths must have shape [B]=[", batch, "], got ",
                    shape_str(l.sizes()));
  TORCH_CHECK_VALUE(l.device() == device, "lengths is on ", l.device(), " but features is on ", device);
  auto l64 = l.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = l64.data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + batch);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(out[b] >= 1 && out[b] <= n, "lengths[", b, "] = ", out[b], " is outside [1, N=", n, "]");
  }
  return out;
}

void check_row_values(const char* name, const at::Tensor& values, int64_t batch, int64_t n,
                      const at::Device& device, const std::vector<int64_t>& lengths) {
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(0) == batch && values.size(1) == n, name,
                    " must have shape [B, N]=[", batch, ", ", n, "], got ", shape_str(values.sizes()));
  TORCH_CHECK_VALUE(is_value_dtype(values.scalar_type()), name,
                    " must have a floating dtype (float16, bfloat16, float32 or float64), got ",
                    dtype_str(values.scalar_type()));
  TORCH_CHECK_VALUE(values.device() == device, name, " is on ", values.device(), " but features is on ", device);
  auto v = values.to(at::kDouble).contiguous();
  const double* p = v.data_ptr<double>();
  // per row: non-finite values first, then negative ones (the order _validation.py reports them)
  for (int64_t b = 0; b < batch; ++b) {
    const double* row = p + b * n;
    for (int64_t j = 0; j < lengths[b]; ++j) {
      TORCH_CHECK_VALUE(std::isfinite(row[j]), name, "[", b, ", ", j, "] = ", num_str(row[j]), " is not finite");
    }
    for (int64_t j = 0; j < lengths[b]; ++j) {
      TORCH_CHECK_VALUE(row[j] >= 0, name, "[", b, ", ", j, "] = ", num_str(row[j]),
                        " is negative; expected values >= 0");
    }
  }
}

std::vector<double> check_finite_features(const at::Tensor& features, const std::vector<int64_t>& lengths) {
  const int64_t batch = features.size(0);
  std::vector<double> amax(batch);
  for (int64_t b = 0; b < batch; ++b) amax[b] = max_abs_or_nan(features[b].narrow(0, 0, lengths[b]));
  for (int64_t b = 0; b < batch; ++b) {
    if (std::isfinite(amax[b])) continue;
    auto rows = features[b].narrow(0, 0, lengths[b]);
    auto bad = at::logical_not(at::isfinite(rows)).nonzero()[0];
    int64_t j = bad[0].item<int64_t>(), d = bad[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, "features[", b, ", ", j, ", ", d, "] = ", num_str(rows[j][d].item<double>()),
                      " is not finite");
  }
  return amax;
}

void check_keep(int64_t keep, int64_t n, const std::vector<int64_t>& lengths) {
  int64_t shortest = *std::min_element(lengths.begin(), lengths.end());
  if (keep < 1 || keep > shortest) {
    std::ostringstream where;
    if (shortest == n) {
      where << "N=" << n;
    } else {
      where << "the shortest row's length " << shortest;
    }
    TORCH_CHECK_VALUE(false, "keep = ", keep, " is outside [1, ", where.str(), "]");
  }
}

// defaults.ERANK_METHODS
const std::initializer_list<const char*> kErankMethods = {"exact", "fast"};

void check_erank_method(const std::string& method) { check_choice("erank method", method, kErankMethods); }

void check_params(const PruneParams& p) {
  check_choice("method", p.method, {"attention", "divprune", "dpp", "vispruner", "mix", "mix_adaptive", "agile"});
  check_choice("complexity", p.complexity, {"erank", "entropy"});
  check_choice("erank_method", p.erank_method, kErankMethods);
  check_range("important_ratio", p.important_ratio, 0.0, 1.0, false);
  check_range("attention_ratio", p.attention_ratio, 0.0, 1.0, false);
  check_range("gain", p.gain, -kInf, kInf, false);
  check_range("erank_ref", p.erank_ref, 0.0, kInf, true);
  check_range("entropy_ref", p.entropy_ref, 0.0, kInf, true);
  check_range("tau_max", p.tau_max, 0.0, kInf, false);
  check_range("tau_scale", p.tau_scale, 0.0, kInf, false);
}

}  // namespace ada_vtp::cpu
