// GDA on the CPU, two C functions for ctypes (rvrt_plugins.gda_cpu):
//
// - rvrt_gda_cpu_twin_f32: the CUDA kernel's per-(pixel, head) routine from gda_math.h driven by
//   plain loops, so the GPU arithmetic is tested on machines without a GPU.
// - rvrt_gda_cpu_forward_f32: the fast kernel. The same shared pieces (bilinearTap, kvFrameIndex,
//   offsetChannel, validateGeometry, softmaxInPlace), arranged for a CPU: kv is copied once per call
//   to channel-last, so each bilinear corner of a group is one contiguous run of channels and the
//   channel loops vectorise; each tap is computed once per (pixel, point, group) for all the
//   group's channels; rows of (frame, y) are spread over threads.
#include "gda_math.h"

#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace
{

using rvrt::gda::BilinearTap;
using rvrt::gda::GdaShape;

bool reportProblem(char const* problem, char* error, int32_t errorSize)
{
    if (problem != nullptr && error != nullptr && errorSize > 0)
        snprintf(error, static_cast<size_t>(errorSize), "%s", problem);
    return problem != nullptr;
}

template <int32_t kCapacity>
void twinAllPixels(GdaShape const& s, float const* q, float const* kv, float const* offset, float* out)
{
    for (int32_t b = 0; b < s.frames; ++b)
        for (int32_t head = 0; head < s.heads; ++head)
            for (int32_t y = 0; y < s.height; ++y)
                for (int32_t x = 0; x < s.width; ++x)
                    rvrt::gda::gdaOutputPixelHead<kCapacity>(s, q, kv, offset, out, b, head, y, x);
}

// Runs items 0..count-1 on up to `threads` threads, the caller being one of them. Each thread
// makes its own body (its scratch rows) with makeBody() and takes the next free item until none
// is left, so uneven rows (many samples outside the image skip work) balance themselves. A
// thread that cannot be started leaves its share to the others; a failure (out of memory) stops
// all threads and is rethrown to the caller.
template <typename MakeBody>
void parallelFor(int32_t count, int32_t threads, MakeBody const& makeBody)
{
    std::atomic<int32_t> next{0};
    std::mutex failureLock;
    std::exception_ptr failure;
    auto work = [&]() {
        try
        {
            auto body = makeBody();
            for (int32_t item = next++; item < count; item = next++)
                body(item);
        }
        catch (...)
        {
            next = count;
            std::lock_guard<std::mutex> const lock(failureLock);
            failure = std::current_exception();
        }
    };
    std::vector<std::thread> helpers;
    for (int32_t i = 1; i < std::min(threads, count); ++i)
    {
        try
        {
            helpers.emplace_back(work);
        }
        catch (std::system_error const&)
        {
            break;
        }
    }
    work();
    for (std::thread& helper : helpers)
        helper.join();
    if (failure)
        std::rethrow_exception(failure);
}

// A run of channels sharing one deformable group and one head: one tap and one softmax weight
// serve the whole run. start indexes the 2C kv channels (keys below C, values from C).
struct ChannelRun
{
    int32_t start;
    int32_t length;
    int32_t group;
    int32_t head;
};

// Runs covering channels [side * C, (side + 1) * C) in order, side 0 = keys, 1 = values.
std::vector<ChannelRun> channelRuns(GdaShape const& s, int32_t side)
{
    std::vector<ChannelRun> runs;
    int32_t const first = side * s.channels;
    int32_t const headDim = s.headDim();
    int32_t const groupChannels = s.groupChannels();
    for (int32_t c = first; c < first + s.channels;)
    {
        int32_t const group = c / groupChannels;
        int32_t const head = (c - first) / headDim;
        int32_t const end = std::min((group + 1) * groupChannels, first + (head + 1) * headDim);
        runs.push_back(ChannelRun{c, end - c, group, head});
        c = end;
    }
    return runs;
}

// The length all runs share when it is a whole number of Vec8 (RVRT: the head dimension, 24 or
// 32, each group holding whole heads), else 0.
int32_t commonVectorLength(std::vector<ChannelRun> const& keyRuns, std::vector<ChannelRun> const& valueRuns)
{
    int32_t const length = keyRuns.front().length;
    for (auto const* runs : {&keyRuns, &valueRuns})
        for (ChannelRun const& run : *runs)
            if (run.length != length)
                return 0;
    return length % 8 == 0 ? length : 0;
}

// Eight floats in whatever vector registers the target has (AVX, SSE pairs, NEON pairs, or
// scalars): GCC/Clang vector extensions keep the kernel portable without intrinsics.
typedef float Vec8 __attribute__((vector_size(32)));

inline Vec8 load8(float const* source)
{
    Vec8 v;
    memcpy(&v, source, sizeof v);
    return v;
}

inline void store8(float* target, Vec8 v)
{
    memcpy(target, &v, sizeof v);
}

// target[x * channels + c] = scale * source[c * sourceStride + x] for x < width, c < channels: a
// channel-major row to pixel-major. Blocks of 16 channels keep both sides on few cache lines.
void toPixelMajor(float const* source, int64_t sourceStride, int32_t channels, int32_t width, float scale,
    float* target)
{
    constexpr int32_t kBlock = 16;
    for (int32_t first = 0; first < channels; first += kBlock)
    {
        int32_t const last = std::min(first + kBlock, channels);
        for (int32_t x = 0; x < width; ++x)
            for (int32_t c = first; c < last; ++c)
                target[static_cast<int64_t>(x) * channels + c] = scale * source[c * sourceStride + x];
    }
}

// The inverse: target[c * targetStride + x] = source[x * channels + c].
void toChannelMajor(float const* source, int32_t channels, int32_t width, float* target, int64_t targetStride)
{
    constexpr int32_t kBlock = 16;
    for (int32_t first = 0; first < width; first += kBlock)
    {
        int32_t const last = std::min(first + kBlock, width);
        for (int32_t c = 0; c < channels; ++c)
            for (int32_t x = first; x < last; ++x)
                target[c * targetStride + x] = source[static_cast<int64_t>(x) * channels + c];
    }
}

bool tapIsEmpty(BilinearTap const& tap)
{
    return tap.weight[0] == 0.f && tap.weight[1] == 0.f && tap.weight[2] == 0.f && tap.weight[3] == 0.f;
}

// The four corners of a tap as rows of the channel-last frame, at channel `start`.
struct Corners
{
    float const* row[4];
    float weight[4];

    Corners(float const* frame, int32_t kvChannels, BilinearTap const& tap, int32_t start, float scale)
    {
        for (int32_t i = 0; i < 4; ++i)
        {
            row[i] = frame + static_cast<int64_t>(tap.pixel[i]) * kvChannels + start;
            weight[i] = scale * tap.weight[i];
        }
    }

    float sample(int32_t c) const
    {
        return weight[0] * row[0][c] + weight[1] * row[1][c] + weight[2] * row[2][c] + weight[3] * row[3][c];
    }

    Vec8 sample8(int32_t c) const
    {
        return weight[0] * load8(row[0] + c) + weight[1] * load8(row[1] + c) + weight[2] * load8(row[2] + c)
            + weight[3] * load8(row[3] + c);
    }
};

// One output row (query frame b, row y) at a time; the row's queries and outputs live
// pixel-major in per-thread scratch so the channel loops walk contiguous memory.
class RowKernel
{
public:
    RowKernel(GdaShape const& s, float const* q, float const* kvChannelLast, float const* offset, float* out,
        std::vector<ChannelRun> const& keyRuns, std::vector<ChannelRun> const& valueRuns)
        : s_(s)
        , q_(q)
        , kv_(kvChannelLast)
        , offset_(offset)
        , out_(out)
        , keyRuns_(keyRuns)
        , valueRuns_(valueRuns)
        , queryRow_(static_cast<size_t>(s.width) * s.channels)
        , outRow_(static_cast<size_t>(s.width) * s.channels)
        , weights_(static_cast<size_t>(s.clip) * s.points() * s.heads)
        , vectorLength_(commonVectorLength(keyRuns, valueRuns))
    {
    }

    void operator()(int32_t item)
    {
        int32_t const b = item / s_.height;
        int32_t const y = item % s_.height;
        int64_t const plane = s_.plane();
        int64_t const rowStart = static_cast<int64_t>(y) * s_.width;
        float const scale = 1.f / sqrtf(static_cast<float>(s_.headDim()));
        float const* qFrame = q_ + static_cast<int64_t>(b) * s_.channels * plane + rowStart;
        toPixelMajor(qFrame, plane, s_.channels, s_.width, scale, queryRow_.data());
        for (int32_t x = 0; x < s_.width; ++x)
        {
            switch (vectorLength_)
            {
            case 8: pixel<1>(b, y, x); break;
            case 16: pixel<2>(b, y, x); break;
            case 24: pixel<3>(b, y, x); break;
            case 32: pixel<4>(b, y, x); break;
            case 64: pixel<8>(b, y, x); break;
            default: pixel<0>(b, y, x); break;
            }
        }
        float* outFrame = out_ + static_cast<int64_t>(b) * s_.channels * plane + rowStart;
        toChannelMajor(outRow_.data(), s_.channels, s_.width, outFrame, plane);
    }

private:
    BilinearTap tap(float const* offsets, int32_t n, int32_t group, int32_t k, int32_t y, int32_t x) const
    {
        int32_t const points = s_.points();
        int64_t const plane = s_.plane();
        float const dy = offsets[rvrt::gda::offsetChannel(n, group, k, 0, s_.groups, points) * plane];
        float const dx = offsets[rvrt::gda::offsetChannel(n, group, k, 1, s_.groups, points) * plane];
        float const baseY = static_cast<float>(y - s_.padding + k / s_.kernelW);
        float const baseX = static_cast<float>(x - s_.padding + k % s_.kernelW);
        return rvrt::gda::bilinearTap(baseY + dy, baseX + dx, s_.height, s_.width);
    }

    float const* kvFrame(int32_t b, int32_t n) const
    {
        return kv_ + static_cast<int64_t>(rvrt::gda::kvFrameIndex(b, n, s_.clip)) * s_.plane() * 2 * s_.channels;
    }

    // Pass 1 scores every (point, head), the softmax turns scores into weights, pass 2 sums the
    // weighted values straight into the output row. kChunks > 0: every run is kChunks Vec8 long;
    // 0: runs of any length, scalar loops.
    template <int32_t kChunks>
    void pixel(int32_t b, int32_t y, int32_t x)
    {
        int32_t const kvChannels = 2 * s_.channels;
        int32_t const points = s_.points();
        int64_t const pixelIndex = static_cast<int64_t>(y) * s_.width + x;
        float const* query = queryRow_.data() + static_cast<size_t>(x) * s_.channels;
        float const* offsets = offset_ + static_cast<int64_t>(b) * s_.offsetChannels() * s_.plane() + pixelIndex;
        float* scores = weights_.data();
        std::fill(weights_.begin(), weights_.end(), 0.f);
        for (int32_t n = 0; n < s_.clip; ++n)
        {
            float const* frame = kvFrame(b, n);
            for (int32_t k = 0; k < points; ++k)
            {
                float* pointScores = scores + (n * points + k) * s_.heads;
                BilinearTap t{};
                for (size_t r = 0; r < keyRuns_.size(); ++r)
                {
                    ChannelRun const& run = keyRuns_[r];
                    if (r == 0 || run.group != keyRuns_[r - 1].group)
                        t = tap(offsets, n, run.group, k, y, x);
                    if (tapIsEmpty(t))
                        continue;
                    Corners const corners(frame, kvChannels, t, run.start, 1.f);
                    float const* queryRun = query + run.start;
                    float dot = 0.f;
                    if (kChunks > 0)
                    {
                        Vec8 partial = load8(queryRun) * corners.sample8(0);
                        for (int32_t j = 1; j < kChunks; ++j)
                            partial += load8(queryRun + 8 * j) * corners.sample8(8 * j);
                        dot = ((partial[0] + partial[4]) + (partial[1] + partial[5]))
                            + ((partial[2] + partial[6]) + (partial[3] + partial[7]));
                    }
                    else
                    {
                        for (int32_t c = 0; c < run.length; ++c)
                            dot += queryRun[c] * corners.sample(c);
                    }
                    pointScores[run.head] += dot;
                }
            }
        }
        for (int32_t head = 0; head < s_.heads; ++head)
            rvrt::gda::softmaxInPlace(scores + head, s_.clip * points, s_.heads);

        float* accumulated = outRow_.data() + static_cast<size_t>(x) * s_.channels;
        std::fill(accumulated, accumulated + s_.channels, 0.f);
        for (int32_t n = 0; n < s_.clip; ++n)
        {
            float const* frame = kvFrame(b, n);
            for (int32_t k = 0; k < points; ++k)
            {
                float const* pointWeights = scores + (n * points + k) * s_.heads;
                BilinearTap t{};
                for (size_t r = 0; r < valueRuns_.size(); ++r)
                {
                    ChannelRun const& run = valueRuns_[r];
                    if (r == 0 || run.group != valueRuns_[r - 1].group)
                        t = tap(offsets, n, run.group, k, y, x);
                    if (tapIsEmpty(t))
                        continue;
                    Corners const corners(frame, kvChannels, t, run.start, pointWeights[run.head]);
                    float* accumulatedRun = accumulated + (run.start - s_.channels);
                    if (kChunks > 0)
                    {
                        for (int32_t j = 0; j < kChunks; ++j)
                            store8(accumulatedRun + 8 * j, load8(accumulatedRun + 8 * j) + corners.sample8(8 * j));
                    }
                    else
                    {
                        for (int32_t c = 0; c < run.length; ++c)
                            accumulatedRun[c] += corners.sample(c);
                    }
                }
            }
        }
    }

    GdaShape const& s_;
    float const* q_;
    float const* kv_;
    float const* offset_;
    float* out_;
    std::vector<ChannelRun> const& keyRuns_;
    std::vector<ChannelRun> const& valueRuns_;
    std::vector<float> queryRow_;
    std::vector<float> outRow_;
    std::vector<float> weights_;
    int32_t vectorLength_;
};

void forward(GdaShape const& s, float const* q, float const* kv, float const* offset, float* out, int32_t threads)
{
    int32_t const kvChannels = 2 * s.channels;
    int64_t const plane = s.plane();
    int32_t const kvFrames = s.frames;
    std::unique_ptr<float[]> kvChannelLast(new float[static_cast<size_t>(kvFrames) * plane * kvChannels]);
    float* kvLast = kvChannelLast.get();
    // (frame, 2C, H, W) -> (frame, H, W, 2C), one (frame, row) per item.
    parallelFor(kvFrames * s.height, threads, [&]() {
        return [&](int32_t item) {
            int32_t const f = item / s.height;
            int64_t const rowStart = static_cast<int64_t>(item % s.height) * s.width;
            toPixelMajor(kv + static_cast<int64_t>(f) * kvChannels * plane + rowStart, plane, kvChannels, s.width, 1.f,
                kvLast + (static_cast<int64_t>(f) * plane + rowStart) * kvChannels);
        };
    });
    std::vector<ChannelRun> const keyRuns = channelRuns(s, 0);
    std::vector<ChannelRun> const valueRuns = channelRuns(s, 1);
    parallelFor(s.frames * s.height, threads,
        [&]() { return RowKernel(s, q, kvLast, offset, out, keyRuns, valueRuns); });
}

} // namespace

// Both functions return 0 on success; otherwise 1 and a message in error (of errorSize bytes,
// may be null). The C ABI keeps exceptions and C++ types off the boundary ctypes calls through.
extern "C" int32_t rvrt_gda_cpu_twin_f32(float const* q, float const* kv, float const* offset, float* out,
    int32_t frames, int32_t clip, int32_t channels, int32_t height, int32_t width, int32_t kernelH, int32_t kernelW,
    int32_t padding, int32_t heads, int32_t groups, char* error, int32_t errorSize)
{
    GdaShape const s{frames, clip, channels, height, width, kernelH, kernelW, padding, heads, groups};
    if (reportProblem(rvrt::gda::validateShape(s), error, errorSize))
        return 1;
    switch (rvrt::gda::headDimCapacity(s.headDim()))
    {
    case 8: twinAllPixels<8>(s, q, kv, offset, out); break;
    case 16: twinAllPixels<16>(s, q, kv, offset, out); break;
    case 32: twinAllPixels<32>(s, q, kv, offset, out); break;
    default: twinAllPixels<64>(s, q, kv, offset, out); break;
    }
    return 0;
}

// Any head dimension. threads: how many threads to use (the calling one included); below 1 means 1.
extern "C" int32_t rvrt_gda_cpu_forward_f32(float const* q, float const* kv, float const* offset, float* out,
    int32_t frames, int32_t clip, int32_t channels, int32_t height, int32_t width, int32_t kernelH, int32_t kernelW,
    int32_t padding, int32_t heads, int32_t groups, int32_t threads, char* error, int32_t errorSize)
{
    GdaShape const s{frames, clip, channels, height, width, kernelH, kernelW, padding, heads, groups};
    if (reportProblem(rvrt::gda::validateGeometry(s), error, errorSize))
        return 1;
    try
    {
        forward(s, q, kv, offset, out, std::max(threads, 1));
    }
    catch (std::exception const& failure)
    {
        if (error != nullptr && errorSize > 0)
            snprintf(error, static_cast<size_t>(errorSize), "GDA CPU kernel failed: %s", failure.what());
        return 1;
    }
    return 0;
}
