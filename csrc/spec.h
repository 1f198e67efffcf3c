// Generated from ada_vtp_kernels/spec.py by `python -m ada_vtp_kernels.spec > csrc/spec.h`;
// tests/test_spec.py checks that it is current.  Do not edit.
#pragma once

#include <cstdint>

namespace ada_vtp::spec {

// spec.Selection
enum class Selection : int64_t {
  kTopk = 0,
  kMaxmin = 1,
  kDpp = 2,
  kVispruner = 3,
  kAgile = 4,
};

// spec.ERANK_METHODS, by position
enum class ErankMethod : int64_t {
  kExact = 0,
  kFast = 1,
};

constexpr double kNormEps = 0x1.0c6f7a0b5ed8dp-20;  // 1e-06
constexpr double kDistanceSnap = 0x1.0c6f7a0b5ed8dp-20;  // 1e-06
constexpr double kDppStop = 0x1.0c6f7a0b5ed8dp-20;  // 1e-06
constexpr double kSafeMin = 0x1.0000000000000p-56;  // 1.38778e-17
constexpr double kSafeMax = 0x1.0000000000000p+56;  // 7.20576e+16
constexpr double kFastErankOrthDrop = 0x1.4f8b588e368f1p-17;  // 1e-05
constexpr int64_t kVisprunerRound = 8;
constexpr int64_t kFastErankBlock = 64;
constexpr int64_t kFastErankLargeBlock = 128;
constexpr int64_t kFastErankLargeAbove = 768;
constexpr int64_t kFastErankPowerSteps = 2;
constexpr int64_t kFastErankProbes = 8;
constexpr int64_t kFastErankLanczosSteps = 8;

}  // namespace ada_vtp::spec
