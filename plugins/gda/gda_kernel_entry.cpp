// C entry point of the kernel-only library (librvrt_gda_cuda.so): launches the fused GDA kernel of
// gda_kernel.cu on a caller's stream, for PyTorch through ctypes (rvrt_plugins.gda_cuda). No
// TensorRT; the C ABI keeps exceptions and C++ types off the boundary.
#include "gda_kernel.h"

#include <stdio.h>

namespace
{

void writeMessage(char* error, int32_t errorSize, char const* message)
{
    if (error != nullptr && errorSize > 0)
        snprintf(error, static_cast<size_t>(errorSize), "%s", message);
}

} // namespace

// elementType: 0 float32, 1 float16 (rvrt::gda::GdaElementType). All tensors device-resident and
// contiguous in the layouts of gda_math.h; stream is a cudaStream_t (null: the legacy stream).
// Returns 0 when the kernel was queued; -1 for arguments the kernel cannot compute (nothing is
// launched); otherwise the cudaError_t of the launch. error (errorSize bytes, may be null) then
// holds the reason.
extern "C" __attribute__((visibility("default"))) int32_t rvrt_gda_cuda_forward(int32_t elementType,
    void const* q, void const* kv, void const* offset, void* out, int32_t frames, int32_t clip, int32_t channels,
    int32_t height, int32_t width, int32_t kernelH, int32_t kernelW, int32_t padding, int32_t heads, int32_t groups,
    void* stream, char* error, int32_t errorSize)
{
    rvrt::gda::GdaShape const shape{frames, clip, channels, height, width, kernelH, kernelW, padding, heads, groups};
    if (char const* problem = rvrt::gda::validateShape(shape))
    {
        writeMessage(error, errorSize, problem);
        return -1;
    }
    if (elementType != static_cast<int32_t>(rvrt::gda::GdaElementType::kFloat32)
        && elementType != static_cast<int32_t>(rvrt::gda::GdaElementType::kFloat16))
    {
        writeMessage(error, errorSize, "element type must be 0 (float32) or 1 (float16)");
        return -1;
    }
    if (q == nullptr || kv == nullptr || offset == nullptr || out == nullptr)
    {
        writeMessage(error, errorSize, "q, kv, offset and out must be device pointers, got a null pointer");
        return -1;
    }
    auto const type = static_cast<rvrt::gda::GdaElementType>(elementType);
    cudaError_t const status = rvrt::gda::launchGuidedDeformAttention(type, shape, q, kv, offset, out,
        static_cast<cudaStream_t>(stream));
    if (status != cudaSuccess)
    {
        if (error != nullptr && errorSize > 0)
            snprintf(error, static_cast<size_t>(errorSize), "%s: %s", cudaGetErrorName(status),
                cudaGetErrorString(status));
        return static_cast<int32_t>(status);
    }
    return 0;
}
