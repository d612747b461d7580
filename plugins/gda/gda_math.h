// Guided deformable attention (shared/GDA.md): the per-element math shared by the CUDA kernel
// (gda_kernel.cu) and the CPU kernels (gda_cpu.cpp). The CUDA kernel and the CPU twin run the same
// per-pixel routine from here, so the CPU tests against the PyTorch reference also check the
// arithmetic the GPU runs; only the thread mapping and memory types differ. The fast CPU kernel
// arranges the same pieces (taps, indices, softmax) channel-last for vector units.
//
// Layouts (all contiguous, NCHW-style, as the ONNX node and TensorRT's linear format give them):
//   q      (frames, 1, C, H, W)            frames = batch * clip
//   kv     (batch, clip, 2C, H, W)         seen here as (frames, 2C, H, W)
//   offset (frames, clip * G * K * 2, H, W) as (clip, G, K, (dy, dx))
//   out    like q
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define RVRT_GDA_HD __host__ __device__ __forceinline__
#else
#define RVRT_GDA_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define RVRT_GDA_UNROLL _Pragma("unroll")
#else
#define RVRT_GDA_UNROLL
#endif

namespace rvrt
{
namespace gda
{

// Query and accumulator rows live in per-thread arrays (registers on the GPU) whose size must be
// a compile-time constant; the kernel is instantiated for these capacities and a head dimension
// picks the smallest one that fits.
constexpr int32_t kMaxHeadDim = 64;

RVRT_GDA_HD int32_t headDimCapacity(int32_t headDim)
{
    return headDim <= 8 ? 8 : headDim <= 16 ? 16 : headDim <= 32 ? 32 : 64;
}

struct GdaShape
{
    int32_t frames;
    int32_t clip;
    int32_t channels;
    int32_t height;
    int32_t width;
    int32_t kernelH;
    int32_t kernelW;
    int32_t padding;
    int32_t heads;
    int32_t groups;

    RVRT_GDA_HD int32_t points() const
    {
        return kernelH * kernelW;
    }
    RVRT_GDA_HD int32_t headDim() const
    {
        return channels / heads;
    }
    RVRT_GDA_HD int32_t groupChannels() const
    {
        return 2 * channels / groups;
    }
    RVRT_GDA_HD int64_t plane() const
    {
        return static_cast<int64_t>(height) * width;
    }
    RVRT_GDA_HD int32_t offsetChannels() const
    {
        return clip * groups * points() * 2;
    }
};

// Returns nullptr when the shape is consistent, else why not; any head dimension. Host only:
// callers turn the message into a return code (TensorRT glue, C API of the CPU library), never an
// exception.
inline char const* validateGeometry(GdaShape const& s)
{
    if (s.frames <= 0 || s.clip <= 0 || s.channels <= 0 || s.height <= 0 || s.width <= 0)
        return "frames, clip, channels, height and width must be positive";
    if (s.plane() > INT32_MAX)
        return "H * W must fit in 32 bits";
    if (s.frames % s.clip != 0)
        return "the number of query frames must be a multiple of clip";
    if (s.kernelH <= 0 || s.kernelW <= 0 || s.padding < 0)
        return "kernel_h and kernel_w must be positive and padding non-negative";
    if (s.heads <= 0 || s.channels % s.heads != 0)
        return "heads must be positive and divide the channel count C";
    if (s.groups <= 0 || (2 * s.channels) % s.groups != 0)
        return "groups must be positive and divide the kv channel count 2C";
    return nullptr;
}

// validateGeometry, and a head dimension that fits the per-thread rows of gdaOutputPixelHead.
inline char const* validateShape(GdaShape const& s)
{
    if (char const* problem = validateGeometry(s))
        return problem;
    if (s.headDim() > kMaxHeadDim)
        return "head dimension C / heads exceeds 64";
    return nullptr;
}

// Query frame b of a clip looks at kv frame (n + t) % clip of its own clip, t = b % clip.
RVRT_GDA_HD int32_t kvFrameIndex(int32_t b, int32_t n, int32_t clip)
{
    return (b / clip) * clip + (n + b) % clip;
}

// Channel of the offset tensor holding component (0 = dy, 1 = dx) of kernel point k, group g,
// sampled frame n.
RVRT_GDA_HD int32_t offsetChannel(int32_t n, int32_t g, int32_t k, int32_t component, int32_t groups, int32_t points)
{
    return ((n * groups + g) * points + k) * 2 + component;
}

RVRT_GDA_HD int32_t min32(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

RVRT_GDA_HD float loadAsFloat(float v)
{
    return v;
}
RVRT_GDA_HD void storeFromFloat(float* dst, float v)
{
    *dst = v;
}
#ifdef __CUDACC__
RVRT_GDA_HD float loadAsFloat(__half v)
{
    return __half2float(v);
}
RVRT_GDA_HD void storeFromFloat(__half* dst, float v)
{
    *dst = __float2half_rn(v);
}
#endif

// The four corners of a bilinear sample. A corner outside the image gets weight 0 and the
// nearest pixel inside, so sampling reads valid memory unconditionally instead of branching per
// corner. Pixel indices are 32-bit (validateShape bounds H * W) to halve the registers the kernel
// spends on them.
struct BilinearTap
{
    int32_t pixel[4];
    float weight[4];
};

RVRT_GDA_HD BilinearTap bilinearTap(float y, float x, int32_t height, int32_t width)
{
    BilinearTap tap;
    // Also rejects NaN, and keeps floor() of huge offsets from overflowing the int conversion.
    if (!(y > -1.f && y < static_cast<float>(height) && x > -1.f && x < static_cast<float>(width)))
    {
        for (int32_t i = 0; i < 4; ++i)
        {
            tap.pixel[i] = 0;
            tap.weight[i] = 0.f;
        }
        return tap;
    }
    float const fy = floorf(y);
    float const fx = floorf(x);
    int32_t const y0 = static_cast<int32_t>(fy);
    int32_t const x0 = static_cast<int32_t>(fx);
    float const ly = y - fy;
    float const lx = x - fx;
    // Here y0 is in [-1, H - 1]: row y0 is missing only when y0 = -1, row y0 + 1 only when
    // y0 = H - 1; likewise for columns. Four comparisons decide all four corners.
    float const wy[2] = {y0 >= 0 ? 1.f - ly : 0.f, y0 + 1 < height ? ly : 0.f};
    float const wx[2] = {x0 >= 0 ? 1.f - lx : 0.f, x0 + 1 < width ? lx : 0.f};
    int32_t const rows[2] = {(y0 >= 0 ? y0 : 0) * width, (y0 + 1 < height ? y0 + 1 : height - 1) * width};
    int32_t const cols[2] = {x0 >= 0 ? x0 : 0, x0 + 1 < width ? x0 + 1 : width - 1};
    for (int32_t i = 0; i < 2; ++i)
    {
        for (int32_t j = 0; j < 2; ++j)
        {
            tap.pixel[2 * i + j] = rows[i] + cols[j];
            tap.weight[2 * i + j] = wy[i] * wx[j];
        }
    }
    return tap;
}

#if defined(__GNUC__) && !defined(__CUDACC__)
// Host only (GCC/Clang vector extensions): bilinearTap for eight samples at once, for the CPU
// kernel, whose taps were the bulk of its scalar work. Each lane computes what bilinearTap does,
// in the same order, so lane l equals bilinearTap(y[l], x[l], height, width) bit for bit; keep the
// two side by side. floorf becomes truncation corrected downwards, exact for the range kept.
#if !defined(__clang__)
// Without AVX, GCC warns that these 32-byte vectors pass by value under a changed ABI, even where
// the functions go unused; they are inline and never cross a library boundary.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float Float8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

struct BilinearTap8
{
    Int8 pixel[4];
    Float8 weight[4];
    Int8 inside; // -1 where the sample touches the image, else 0 (all weights 0)
};

inline Float8 select8(Int8 mask, Float8 yes, Float8 no)
{
    return reinterpret_cast<Float8>((mask & reinterpret_cast<Int8>(yes)) | (~mask & reinterpret_cast<Int8>(no)));
}

inline Int8 select8(Int8 mask, Int8 yes, Int8 no)
{
    return (mask & yes) | (~mask & no);
}

inline BilinearTap8 bilinearTap8(Float8 y, Float8 x, int32_t height, int32_t width)
{
    BilinearTap8 tap;
    Float8 const zero = {};
    tap.inside = (y > -1.f) & (y < static_cast<float>(height)) & (x > -1.f) & (x < static_cast<float>(width));
    // Lanes outside (NaN, huge offsets) are computed at 0 and zeroed below.
    y = select8(tap.inside, y, zero);
    x = select8(tap.inside, x, zero);
    Int8 y0 = __builtin_convertvector(y, Int8);
    Int8 x0 = __builtin_convertvector(x, Int8);
    y0 += __builtin_convertvector(y0, Float8) > y; // a true comparison is -1
    x0 += __builtin_convertvector(x0, Float8) > x;
    // + 0 turns a -0 difference into the +0 that floorf's y - floorf(y) gives at y = -0.
    Float8 const ly = (y - __builtin_convertvector(y0, Float8)) + 0.f;
    Float8 const lx = (x - __builtin_convertvector(x0, Float8)) + 0.f;
    Int8 const hasRow[2] = {y0 >= 0, y0 + 1 < height};
    Int8 const hasCol[2] = {x0 >= 0, x0 + 1 < width};
    Float8 const wy[2] = {select8(hasRow[0], 1.f - ly, zero), select8(hasRow[1], ly, zero)};
    Float8 const wx[2] = {select8(hasCol[0], 1.f - lx, zero), select8(hasCol[1], lx, zero)};
    Int8 const rows[2]
        = {select8(hasRow[0], y0, Int8{}) * width, select8(hasRow[1], y0 + 1, Int8{} + (height - 1)) * width};
    Int8 const cols[2] = {select8(hasCol[0], x0, Int8{}), select8(hasCol[1], x0 + 1, Int8{} + (width - 1))};
    for (int32_t i = 0; i < 2; ++i)
    {
        for (int32_t j = 0; j < 2; ++j)
        {
            tap.pixel[2 * i + j] = select8(tap.inside, rows[i] + cols[j], Int8{});
            tap.weight[2 * i + j] = select8(tap.inside, wy[i] * wx[j], zero);
        }
    }
    return tap;
}

inline Float8 max8(Float8 a, Float8 b)
{
    return select8(a > b, a, b);
}

// exp for the softmax, eight lanes: 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2,
// exp(r) by its Taylor polynomial to degree 6 (relative error below 1e-7, about one float ulp).
// Below -87.3 the result is 0 (expf would return denormals, under 1.2e-38); softmax arguments are
// never positive.
inline Float8 exp8(Float8 x)
{
    Int8 const vanishes = x < -87.3f;
    x = select8(vanishes, Float8{} - 87.3f, x);
    Float8 const scaled = x * 1.44269504f + 0.5f;
    Int8 n = __builtin_convertvector(scaled, Int8);
    n += __builtin_convertvector(n, Float8) > scaled; // floor, as in bilinearTap8
    Float8 const fn = __builtin_convertvector(n, Float8);
    // ln 2 in two parts, the first exact in float, so r keeps its low bits.
    Float8 const r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;
    Float8 p = Float8{} + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    Float8 const power = reinterpret_cast<Float8>((n + 127) << 23);
    return select8(vanishes, Float8{}, p * power);
}

// Softmax over count rows of eight lanes spaced stride floats apart, in place, each lane
// separately: the CPU kernel lays scores out as (head, point, pixel), so eight pixels' softmaxes
// over their clip * K points run as one. (The GPU kernel streams points with OnlineSoftmax.)
inline void softmax8(float* values, int32_t count, int64_t stride)
{
    Float8 maxValue = Float8{} - INFINITY;
    for (int32_t i = 0; i < count; ++i)
    {
        Float8 row;
        memcpy(&row, values + i * stride, sizeof row);
        maxValue = max8(row, maxValue);
    }
    Float8 denominator = {};
    for (int32_t i = 0; i < count; ++i)
    {
        Float8 row;
        memcpy(&row, values + i * stride, sizeof row);
        row = exp8(row - maxValue);
        denominator += row;
        memcpy(values + i * stride, &row, sizeof row);
    }
    Float8 const normalizer = 1.f / denominator;
    for (int32_t i = 0; i < count; ++i)
    {
        Float8 row;
        memcpy(&row, values + i * stride, sizeof row);
        row *= normalizer;
        memcpy(values + i * stride, &row, sizeof row);
    }
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

template <typename T>
RVRT_GDA_HD float sampleBilinear(T const* channelPlane, BilinearTap const& tap)
{
    float value = 0.f;
    for (int32_t i = 0; i < 4; ++i)
        value += tap.weight[i] * loadAsFloat(channelPlane[tap.pixel[i]]);
    return value;
}

// Online softmax (running maximum and denominator): lets one pass over the clip * K sampled
// points produce the weighted sum without storing logits. Each push returns how much to scale
// what was accumulated so far and the weight of the new point.
struct OnlineSoftmax
{
    float maxLogit;
    float denominator;
};

struct SoftmaxStep
{
    float rescale;
    float weight;
};

RVRT_GDA_HD OnlineSoftmax onlineSoftmaxStart()
{
    return OnlineSoftmax{-INFINITY, 0.f};
}

RVRT_GDA_HD SoftmaxStep onlineSoftmaxPush(OnlineSoftmax& state, float logit)
{
    float const newMax = fmaxf(state.maxLogit, logit);
    SoftmaxStep step{expf(state.maxLogit - newMax), expf(logit - newMax)};
    state.denominator = state.denominator * step.rescale + step.weight;
    state.maxLogit = newMax;
    return step;
}

// Bilinear tap of kernel point k, group g, sampled frame n for the output pixel whose offsets
// start at offsetPixel (already advanced to query frame b and pixel (y, x)).
template <typename T>
RVRT_GDA_HD BilinearTap groupTap(GdaShape const& s, T const* offsetPixel, int32_t n, int32_t g, int32_t k,
    float baseY, float baseX)
{
    int32_t const points = s.points();
    int64_t const plane = s.plane();
    float const dy = loadAsFloat(offsetPixel[offsetChannel(n, g, k, 0, s.groups, points) * plane]);
    float const dx = loadAsFloat(offsetPixel[offsetChannel(n, g, k, 1, s.groups, points) * plane]);
    return bilinearTap(baseY + dy, baseX + dx, s.height, s.width);
}

// The whole GDA output of one (query frame b, head, pixel): kCapacity >= head dimension.
// Keys and values of a point are sampled, scored and accumulated before the next point, so
// nothing proportional to clip * K is ever stored.
template <int32_t kCapacity, typename T>
RVRT_GDA_HD void gdaOutputPixelHead(GdaShape const& s, T const* q, T const* kv, T const* offset, T* out, int32_t b,
    int32_t head, int32_t y, int32_t x)
{
    int32_t const headDim = s.headDim();
    int32_t const groupChannels = s.groupChannels();
    int32_t const points = s.points();
    int64_t const plane = s.plane();
    int64_t const pixel = static_cast<int64_t>(y) * s.width + x;
    int64_t const firstChannel = static_cast<int64_t>(b) * s.channels + static_cast<int64_t>(head) * headDim;

    float query[kCapacity];
    float accumulated[kCapacity];
    float const scale = 1.f / sqrtf(static_cast<float>(headDim));
    RVRT_GDA_UNROLL
    for (int32_t c = 0; c < kCapacity; ++c)
    {
        query[c] = c < headDim ? loadAsFloat(q[(firstChannel + c) * plane + pixel]) * scale : 0.f;
        accumulated[c] = 0.f;
    }

    T const* offsetPixel = offset + static_cast<int64_t>(b) * s.offsetChannels() * plane + pixel;
    OnlineSoftmax softmax = onlineSoftmaxStart();
    for (int32_t n = 0; n < s.clip; ++n)
    {
        T const* frame = kv + static_cast<int64_t>(kvFrameIndex(b, n, s.clip)) * 2 * s.channels * plane;
        for (int32_t k = 0; k < points; ++k)
        {
            float const baseY = static_cast<float>(y - s.padding + k / s.kernelW);
            float const baseX = static_cast<float>(x - s.padding + k % s.kernelW);

            // A head's channels usually sit in one group: walk them in runs of equal group so the
            // offsets are read and the tap computed once per run, outside the unrolled loops.
            float logit = 0.f;
            int32_t const keyBase = head * headDim;
            for (int32_t runStart = 0; runStart < headDim;)
            {
                int32_t const g = (keyBase + runStart) / groupChannels;
                int32_t const runEnd = min32(headDim, (g + 1) * groupChannels - keyBase);
                BilinearTap const tap = groupTap(s, offsetPixel, n, g, k, baseY, baseX);
                T const* channelPlane = frame + (keyBase + runStart) * plane;
                RVRT_GDA_UNROLL
                for (int32_t c = 0; c < kCapacity; ++c)
                {
                    if (c >= runStart && c < runEnd)
                    {
                        logit += query[c] * sampleBilinear(channelPlane, tap);
                        channelPlane += plane;
                    }
                }
                runStart = runEnd;
            }

            SoftmaxStep const step = onlineSoftmaxPush(softmax, logit);
            RVRT_GDA_UNROLL
            for (int32_t c = 0; c < kCapacity; ++c)
                accumulated[c] *= step.rescale;
            int32_t const valueBase = s.channels + head * headDim;
            for (int32_t runStart = 0; runStart < headDim;)
            {
                int32_t const g = (valueBase + runStart) / groupChannels;
                int32_t const runEnd = min32(headDim, (g + 1) * groupChannels - valueBase);
                BilinearTap const tap = groupTap(s, offsetPixel, n, g, k, baseY, baseX);
                T const* channelPlane = frame + (valueBase + runStart) * plane;
                RVRT_GDA_UNROLL
                for (int32_t c = 0; c < kCapacity; ++c)
                {
                    if (c >= runStart && c < runEnd)
                    {
                        accumulated[c] += step.weight * sampleBilinear(channelPlane, tap);
                        channelPlane += plane;
                    }
                }
                runStart = runEnd;
            }
        }
    }

    float const normalizer = 1.f / softmax.denominator;
    RVRT_GDA_UNROLL
    for (int32_t c = 0; c < kCapacity; ++c)
    {
        if (c < headDim)
            storeFromFloat(&out[(firstChannel + c) * plane + pixel], accumulated[c] * normalizer);
    }
}

} // namespace gda
} // namespace rvrt
