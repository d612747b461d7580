// Launcher of the fused GDA kernel (gda_kernel.cu), callable from host code compiled without nvcc.
#pragma once

#include "gda_math.h"

#include <cuda_runtime_api.h>

namespace rvrt
{
namespace gda
{

enum class GdaElementType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

// All tensors device-resident, contiguous, of the given element type; shape validated by the
// caller (validateShape). Returns the launch status; never throws.
cudaError_t launchGuidedDeformAttention(GdaElementType type, GdaShape const& shape, void const* q, void const* kv,
    void const* offset, void* out, cudaStream_t stream) noexcept;

} // namespace gda
} // namespace rvrt
