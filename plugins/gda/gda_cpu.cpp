// CPU twin of the GDA kernel: the same per-(pixel, head) routine from gda_math.h, driven by
// plain loops. Built with the host compiler and called from Python through ctypes, so the
// kernel's arithmetic is tested on machines without a GPU.
#include "gda_math.h"

#include <stdio.h>

namespace
{

using rvrt::gda::GdaShape;

template <int32_t kCapacity>
void forwardAllPixels(GdaShape const& s, float const* q, float const* kv, float const* offset, float* out)
{
    for (int32_t b = 0; b < s.frames; ++b)
        for (int32_t head = 0; head < s.heads; ++head)
            for (int32_t y = 0; y < s.height; ++y)
                for (int32_t x = 0; x < s.width; ++x)
                    rvrt::gda::gdaOutputPixelHead<kCapacity>(s, q, kv, offset, out, b, head, y, x);
}

} // namespace

// Returns 0 on success; otherwise 1 and a message in error (of errorSize bytes, may be null).
// The C ABI keeps exceptions and C++ types off the boundary ctypes calls through.
extern "C" int32_t rvrt_gda_cpu_forward_f32(float const* q, float const* kv, float const* offset, float* out,
    int32_t frames, int32_t clip, int32_t channels, int32_t height, int32_t width, int32_t kernelH, int32_t kernelW,
    int32_t padding, int32_t heads, int32_t groups, char* error, int32_t errorSize)
{
    GdaShape const s{frames, clip, channels, height, width, kernelH, kernelW, padding, heads, groups};
    if (char const* problem = rvrt::gda::validateShape(s))
    {
        if (error != nullptr && errorSize > 0)
            snprintf(error, static_cast<size_t>(errorSize), "%s", problem);
        return 1;
    }
    switch (rvrt::gda::headDimCapacity(s.headDim()))
    {
    case 8: forwardAllPixels<8>(s, q, kv, offset, out); break;
    case 16: forwardAllPixels<16>(s, q, kv, offset, out); break;
    case 32: forwardAllPixels<32>(s, q, kv, offset, out); break;
    default: forwardAllPixels<64>(s, q, kv, offset, out); break;
    }
    return 0;
}
