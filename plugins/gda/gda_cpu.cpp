// GDA on the CPU, three C functions for ctypes (rvrt_plugins.gda_cpu):
//
// - rvrt_gda_cpu_twin_f32: the CUDA kernel's per-(pixel, head) routine from gda_math.h driven by
//   plain loops, so the GPU arithmetic is tested on machines without a GPU.
// - rvrt_gda_cpu_forward_f32: the fast multi-threaded kernel, built from gda_math.h's pieces
//   (validateGeometry, kvFrameIndex, offsetChannel, bilinearTap8 = bilinearTap for eight pixels,
//   softmax8) arranged for a CPU:
//   * kv is copied once per call to group-major (frame, group, H, W, group channels), so a
//     bilinear corner of a group is one contiguous run of channels and a group's samples stay in
//     one compact plane;
//   * work items are blocks of rows of one query frame, spread over std::threads; inside a block
//     the work goes group by group, so the kv rows a group's samples reach stay in cache;
//   * each tap is computed once per (pixel, point, group), eight pixels at a time, and serves all
//     the group's heads; channel loops run on eight-float vectors (GCC/Clang vector extensions,
//     AVX where the compiler targets it) with per-head sums kept in registers;
//   * scores of all clip * K points are kept, then one softmax per (head, pixel), eight pixels
//     at a time.
//   Results do not depend on the thread count.
// - rvrt_gda_cpu_forward_channels_last_f32: the same kernel on channels-last q, keys, values and
//   out (frames, H, W, C), for graphs whose tensors are channels-last anyway (ONNX Runtime): the
//   kernel works pixel-major inside, so its query and output copies become plain row copies and
//   the caller's transposes to and from NCHW go away. Results are the NCHW entry's, transposed,
//   bit for bit.
#if defined(__GNUC__) && !defined(__clang__)
// Vectors pass between inline functions of this translation unit only: built without AVX, GCC
// would warn about an ABI that no caller outside sees.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include "gda_math.h"

#include <stdio.h>
#include <string.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

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
    int32_t inGroup; // start - group * groupChannels: where the run begins in its group's channels
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
        runs.push_back(ChannelRun{c, end - c, group, head, c - group * groupChannels});
        c = end;
    }
    return runs;
}

// The length all runs share when it is a whole number of Float8 (RVRT: the head dimension, 24 or
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

using rvrt::gda::BilinearTap8;
using rvrt::gda::Float8;

Float8 load8(float const* source)
{
    Float8 v;
    memcpy(&v, source, sizeof v);
    return v;
}

// The first `lanes` of eight floats, the others 0: rows whose width is not a multiple of 8 end
// without reading past them. Always inlined: a partly inlined copy would pass a vector by value.
__attribute__((always_inline)) inline Float8 loadLanes(float const* source, int32_t lanes)
{
    if (lanes == 8)
        return load8(source);
    Float8 v = {};
    memcpy(&v, source, sizeof(float) * lanes);
    return v;
}

void store8(float* target, Float8 v)
{
    memcpy(target, &v, sizeof v);
}

// target[j * targetStride + i] = scale * source[i * sourceStride + j] for an 8 x 8 block.
void transpose8x8(float const* source, int64_t sourceStride, float* target, int64_t targetStride, float scale)
{
#if defined(__AVX__)
    __m256 r[8];
    for (int32_t i = 0; i < 8; ++i)
        r[i] = _mm256_loadu_ps(source + i * sourceStride);
    __m256 t[8];
    for (int32_t i = 0; i < 8; i += 2)
    {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    __m256 u[8];
    for (int32_t i = 0; i < 8; i += 4)
    {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    __m256 const factor = _mm256_set1_ps(scale);
    for (int32_t j = 0; j < 4; ++j)
    {
        __m256 const low = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        __m256 const high = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
        _mm256_storeu_ps(target + j * targetStride, _mm256_mul_ps(factor, low));
        _mm256_storeu_ps(target + (j + 4) * targetStride, _mm256_mul_ps(factor, high));
    }
#else
    for (int32_t i = 0; i < 8; ++i)
        for (int32_t j = 0; j < 8; ++j)
            target[j * targetStride + i] = scale * source[i * sourceStride + j];
#endif
}

// target[x * targetStride + c] = scale * source[c * sourceStride + x] for c < channels, x < width:
// 8 x 8 blocks, then the ragged edges one value at a time.
void transpose(float const* source, int64_t sourceStride, int32_t channels, int32_t width, float* target,
    int64_t targetStride, float scale)
{
    int32_t const fullChannels = channels / 8 * 8;
    int32_t const fullWidth = width / 8 * 8;
    for (int32_t c = 0; c < fullChannels; c += 8)
        for (int32_t x = 0; x < fullWidth; x += 8)
            transpose8x8(source + c * sourceStride + x, sourceStride, target + x * targetStride + c, targetStride,
                scale);
    for (int32_t c = 0; c < channels; ++c)
        for (int32_t x = c < fullChannels ? fullWidth : 0; x < width; ++x)
            target[x * targetStride + c] = scale * source[c * sourceStride + x];
}

// The sums of eight vectors' lanes: result[i] = v[i][0] + ... + v[i][7].
Float8 laneSums(Float8 const* v)
{
#if defined(__AVX__)
    __m256 h[4];
    for (int32_t i = 0; i < 4; ++i)
        h[i] = _mm256_hadd_ps(v[2 * i], v[2 * i + 1]);
    __m256 const low = _mm256_hadd_ps(h[0], h[1]);
    __m256 const high = _mm256_hadd_ps(h[2], h[3]);
    return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
#else
    Float8 sums;
    for (int32_t i = 0; i < 8; ++i)
        sums[i] = ((v[i][0] + v[i][4]) + (v[i][1] + v[i][5])) + ((v[i][2] + v[i][6]) + (v[i][3] + v[i][7]));
    return sums;
#endif
}

// A non-empty tap of sampled point n * K + k: its four corners as pixels (rows of groupChannels)
// of the group-major kv frame, and their weights.
struct PointTap
{
    float const* row[4];
    float weight[4];
    int32_t point;

    float sample(int32_t c) const
    {
        return weight[0] * row[0][c] + weight[1] * row[1][c] + weight[2] * row[2][c] + weight[3] * row[3][c];
    }

    Float8 sample8(int32_t c) const
    {
        return weight[0] * load8(row[0] + c) + weight[1] * load8(row[1] + c) + weight[2] * load8(row[2] + c)
            + weight[3] * load8(row[3] + c);
    }
};

// The runs of one group, keyRuns[first..end) or valueRuns[first..end): they share one tap.
struct GroupSpan
{
    int32_t group;
    size_t first;
    size_t end;
};

std::vector<GroupSpan> groupSpans(std::vector<ChannelRun> const& runs)
{
    std::vector<GroupSpan> spans;
    for (size_t r = 0; r < runs.size(); ++r)
    {
        if (r == 0 || runs[r].group != runs[r - 1].group)
            spans.push_back(GroupSpan{runs[r].group, r, r});
        spans.back().end = r + 1;
    }
    return spans;
}

// The caller's q, keys (kv channels below C), values (from C) and out, and their memory layout:
// NCHW, value (frame f, channel c, pixel p) at f * frameStride + c * H * W + p, or channels-last,
// at (f * H * W + p) * C + c. q and out have frameStride C * H * W; keys and values kvFrameStride
// (NCHW: the 2C channels of kv, values = keys + C * H * W; channels-last: C * H * W).
struct Layout
{
    bool channelsLast;
    float const* q;
    float const* keys;
    float const* values;
    int64_t kvFrameStride;
    float* out;
};

// Rows per work item. Work goes group by group over a block of rows of all query frames of a
// clip, so the kv rows one group's samples reach (the block plus the offsets' reach, in the
// clip's kv frames) stay in the core's cache across the block instead of all groups' channels
// competing for it pixel by pixel.
constexpr int32_t kBlockRows = 8;
// Pixels whose taps are computed together (bilinearTap8): eight consecutive x of one row.
constexpr int32_t kLanes = 8;
// How far ahead (floats) offsets are prefetched: the cache line after the one in use.
constexpr int32_t kOffsetPrefetch = 16;

// One block at a time: rows y0..y0+rows-1 of the query frames of one clip. Its queries and
// outputs live pixel-major in per-thread scratch so the channel loops walk contiguous memory;
// scores live (head, point, pixel) so eight pixels' softmaxes run as one (softmax8).
class BlockKernel
{
public:
    BlockKernel(GdaShape const& s, Layout const& layout, float const* kvGroupMajor, float const* offset,
        std::vector<ChannelRun> const& keyRuns, std::vector<ChannelRun> const& valueRuns)
        : s_(s)
        , layout_(layout)
        , kv_(kvGroupMajor)
        , offset_(offset)
        , keyRuns_(keyRuns)
        , valueRuns_(valueRuns)
        , keySpans_(groupSpans(keyRuns))
        , valueSpans_(groupSpans(valueRuns))
        , blockPixels_(static_cast<size_t>(s.clip) * std::min(kBlockRows, s.height) * s.width)
        , query_(blockPixels_ * s.channels)
        , accumulated_(blockPixels_ * s.channels)
        , scores_((blockPixels_ + kLanes) * s.heads * s.clip * s.points())
        , taps_(static_cast<size_t>(kLanes) * s.clip * s.points())
        , scoreTile_(static_cast<size_t>(s.heads) * s.clip * s.points() * kLanes)
        , vectorLength_(commonVectorLength(keyRuns, valueRuns))
    {
    }

    static int32_t items(GdaShape const& s)
    {
        return s.frames / s.clip * ((s.height + kBlockRows - 1) / kBlockRows);
    }

    // Item: the same rows of every query frame of one clip, which all sample the same kv frames.
    void operator()(int32_t item)
    {
        int32_t const blocks = (s_.height + kBlockRows - 1) / kBlockRows;
        int32_t const b0 = item / blocks * s_.clip;
        int32_t const y0 = item % blocks * kBlockRows;
        int32_t const rows = std::min(kBlockRows, s_.height - y0);
        int32_t const framePixels = rows * s_.width;
        int64_t const plane = s_.plane();
        int64_t const blockStart = static_cast<int64_t>(y0) * s_.width;
        int64_t const blockValues = static_cast<int64_t>(framePixels) * s_.channels;
        float const scale = 1.f / sqrtf(static_cast<float>(s_.headDim()));
        for (int32_t t = 0; t < s_.clip; ++t)
        {
            float* query = query_.data() + t * blockValues;
            int64_t const frame = b0 + t;
            if (layout_.channelsLast)
            {
                // The block is already pixel-major: scale it as transpose does (the same products).
                float const* source = layout_.q + (frame * plane + blockStart) * s_.channels;
                for (int64_t i = 0; i < blockValues; ++i)
                    query[i] = scale * source[i];
            }
            else
                transpose(layout_.q + frame * s_.channels * plane + blockStart, plane, s_.channels, framePixels, query,
                    s_.channels, scale);
        }
        switch (vectorLength_)
        {
        case 8: block<1>(b0, y0, rows); break;
        case 16: block<2>(b0, y0, rows); break;
        case 24: block<3>(b0, y0, rows); break;
        case 32: block<4>(b0, y0, rows); break;
        case 64: block<8>(b0, y0, rows); break;
        default: block<0>(b0, y0, rows); break;
        }
        for (int32_t t = 0; t < s_.clip; ++t)
        {
            float const* accumulated = accumulated_.data() + t * blockValues;
            int64_t const frame = b0 + t;
            if (layout_.channelsLast)
                memcpy(layout_.out + (frame * plane + blockStart) * s_.channels, accumulated,
                    sizeof(float) * blockValues);
            else
                transpose(accumulated, s_.channels, framePixels, s_.channels,
                    layout_.out + frame * s_.channels * plane + blockStart, plane, 1.f);
        }
    }

private:
    // Group `group` of the kv frame that query frame b samples as its n-th: (H, W, groupChannels).
    float const* kvGroupPlane(int32_t b, int32_t n, int32_t group) const
    {
        int64_t const plane = static_cast<int64_t>(rvrt::gda::kvFrameIndex(b, n, s_.clip)) * s_.groups + group;
        return kv_ + plane * s_.plane() * s_.groupChannels();
    }

    // The non-empty taps of one group for pixels (y, x0 + l), l < lanes: lane l's go to
    // taps_[l * clip * K ...], their number to tapCounts_[l].
    void gatherTaps(int32_t b, int32_t y, int32_t x0, int32_t lanes, int32_t group)
    {
        int32_t const points = s_.points();
        int32_t const sampled = s_.clip * points;
        int64_t const plane = s_.plane();
        float const* offsets = offset_ + static_cast<int64_t>(b) * s_.offsetChannels() * plane
            + static_cast<int64_t>(y) * s_.width + x0;
        Float8 const laneIndex = {0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f};
        std::fill(tapCounts_, tapCounts_ + kLanes, 0);
        for (int32_t n = 0; n < s_.clip; ++n)
        {
            float const* groupPlane = kvGroupPlane(b, n, group);
            for (int32_t i = 0, k = 0; i < s_.kernelH; ++i)
            {
                for (int32_t j = 0; j < s_.kernelW; ++j, ++k)
                {
                    float const* dyRow = offsets + rvrt::gda::offsetChannel(n, group, k, 0, s_.groups, points) * plane;
                    float const* dxRow = offsets + rvrt::gda::offsetChannel(n, group, k, 1, s_.groups, points) * plane;
                    // The offsets are read once, in 36 interleaved streams the hardware does not all
                    // follow: ask for the next cache line of each ahead of time.
                    __builtin_prefetch(dyRow + kOffsetPrefetch);
                    __builtin_prefetch(dxRow + kOffsetPrefetch);
                    Float8 const dy = loadLanes(dyRow, lanes);
                    Float8 const dx = loadLanes(dxRow, lanes);
                    BilinearTap8 const tap = rvrt::gda::bilinearTap8(static_cast<float>(y - s_.padding + i) + dy,
                        (static_cast<float>(x0 - s_.padding + j) + laneIndex) + dx, s_.height, s_.width);
                    for (int32_t l = 0; l < lanes; ++l)
                    {
                        if (!tap.inside[l])
                            continue;
                        PointTap& target = taps_[static_cast<size_t>(l) * sampled + tapCounts_[l]++];
                        for (int32_t c = 0; c < 4; ++c)
                        {
                            target.row[c] = groupPlane + static_cast<int64_t>(tap.pixel[c][l]) * s_.groupChannels();
                            target.weight[c] = tap.weight[c][l];
                        }
                        target.point = n * points + k;
                    }
                }
            }
        }
    }

    // Calls visit(block pixel p, lane, its taps, their number) for every pixel of the block (frame
    // by frame, row by row), taps of `group`, eight pixels' (lanes') taps computed at a time, with
    // begin(first pixel, lanes) before and end(first pixel, lanes) after each eight.
    template <typename Visit, typename Begin, typename End>
    void forEachPixel(
        int32_t b0, int32_t y0, int32_t rows, int32_t group, Visit const& visit, Begin const& begin, End const& end)
    {
        size_t const sampled = static_cast<size_t>(s_.clip) * s_.points();
        for (int32_t t = 0; t < s_.clip; ++t)
        {
            for (int32_t row = 0; row < rows; ++row)
            {
                int32_t const rowStart = (t * rows + row) * s_.width;
                for (int32_t x0 = 0; x0 < s_.width; x0 += kLanes)
                {
                    int32_t const lanes = std::min(kLanes, s_.width - x0);
                    gatherTaps(b0 + t, y0 + row, x0, lanes, group);
                    begin(rowStart + x0, lanes);
                    for (int32_t l = 0; l < lanes; ++l)
                        visit(rowStart + x0 + l, l, taps_.data() + l * sampled, tapCounts_[l]);
                    end(rowStart + x0, lanes);
                }
            }
        }
    }

    // Pass 1 scores every (head, pixel, point), the softmax turns scores into weights, pass 2
    // sums the weighted values into the block's outputs. Within a group, taps are computed once
    // and then each run (one head's channels) goes over them with its query or sums in registers.
    // kChunks > 0: every run is kChunks Float8 long; 0: runs of any length, scalar loops.
    template <int32_t kChunks>
    void block(int32_t b0, int32_t y0, int32_t rows)
    {
        // Scores are (head, point, pixel) with the pixels of a row of the layout padded to lanes.
        int32_t const pixels = s_.clip * rows * s_.width;
        int32_t const stride = (pixels + kLanes - 1) / kLanes * kLanes;
        int32_t const sampled = s_.clip * s_.points();
        size_t const headStride = static_cast<size_t>(sampled) * stride;
        float* scores = scores_.data();
        std::fill(scores_.begin(), scores_.begin() + static_cast<size_t>(stride) * s_.heads * sampled, 0.f);
        // Key scores of eight pixels go to scoreTile_ as (run of the group, point, lane) first and
        // then, eight lanes at a time, into the (head, point, pixel) scores.
        size_t const tileRun = static_cast<size_t>(sampled) * kLanes;
        auto const addTile = [&](GroupSpan const& span, int32_t p0, int32_t lanes) {
            for (size_t r = span.first; r < span.end; ++r)
            {
                float const* tile = scoreTile_.data() + (r - span.first) * tileRun;
                float* headScores = scores + keyRuns_[r].head * headStride + p0;
                for (int32_t point = 0; point < sampled; ++point)
                {
                    float* target = headScores + point * stride;
                    if (lanes == kLanes)
                        store8(target, load8(target) + load8(tile + point * kLanes));
                    else
                        for (int32_t l = 0; l < lanes; ++l)
                            target[l] += tile[point * kLanes + l];
                }
            }
            std::fill(scoreTile_.begin(), scoreTile_.begin() + (span.end - span.first) * tileRun, 0.f);
        };
        for (GroupSpan const& span : keySpans_)
        {
            if (kChunks > 0)
            {
                std::fill(scoreTile_.begin(), scoreTile_.begin() + (span.end - span.first) * tileRun, 0.f);
                forEachPixel(
                    b0, y0, rows, span.group,
                    [&](int32_t p, int32_t lane, PointTap const* taps, int32_t count) {
                        // Two heads of a group at a time share each tap's loads.
                        float const* query = query_.data() + static_cast<size_t>(p) * s_.channels;
                        float* tile = scoreTile_.data() + lane;
                        size_t r = span.first;
                        for (; r + 2 <= span.end; r += 2)
                            scoreRuns<kChunks, 2>(&keyRuns_[r], query, taps, count, tile + (r - span.first) * tileRun,
                                tileRun);
                        if (r < span.end)
                            scoreRuns<kChunks, 1>(&keyRuns_[r], query, taps, count, tile + (r - span.first) * tileRun,
                                tileRun);
                    },
                    [](int32_t, int32_t) {}, [&](int32_t p0, int32_t lanes) { addTile(span, p0, lanes); });
                continue;
            }
            forEachPixel(b0, y0, rows, span.group, [&](int32_t p, int32_t, PointTap const* taps, int32_t count) {
                float const* query = query_.data() + static_cast<size_t>(p) * s_.channels;
                for (size_t r = span.first; r < span.end; ++r)
                {
                    ChannelRun const& run = keyRuns_[r];
                    float const* queryRun = query + run.start;
                    float* runScores = scores + run.head * headStride + p;
                    for (int32_t t = 0; t < count; ++t)
                    {
                        float dot = 0.f;
                        for (int32_t c = 0; c < run.length; ++c)
                            dot += queryRun[c] * taps[t].sample(run.inGroup + c);
                        runScores[taps[t].point * stride] += dot;
                    }
                }
            }, [](int32_t, int32_t) {}, [](int32_t, int32_t) {});
        }
        for (int32_t head = 0; head < s_.heads; ++head)
            for (int32_t p = 0; p < pixels; p += kLanes)
                rvrt::gda::softmax8(scores + head * headStride + p, sampled, stride);

        // Every output channel belongs to exactly one run, which writes it once. The softmax
        // weights of eight pixels are copied to scoreTile_ as (run of the group, point, lane) first.
        auto const loadTile = [&](GroupSpan const& span, int32_t p0, int32_t lanes) {
            for (size_t r = span.first; r < span.end; ++r)
            {
                float* tile = scoreTile_.data() + (r - span.first) * tileRun;
                float const* headWeights = scores + valueRuns_[r].head * headStride + p0;
                for (int32_t point = 0; point < sampled; ++point)
                {
                    if (lanes == kLanes)
                        store8(tile + point * kLanes, load8(headWeights + point * stride));
                    else
                        std::copy(headWeights + point * stride, headWeights + point * stride + lanes,
                            tile + point * kLanes);
                }
            }
        };
        for (GroupSpan const& span : valueSpans_)
        {
            if (kChunks > 0)
            {
                forEachPixel(
                    b0, y0, rows, span.group,
                    [&](int32_t p, int32_t lane, PointTap const* taps, int32_t count) {
                        float* accumulated = accumulated_.data() + static_cast<size_t>(p) * s_.channels - s_.channels;
                        float const* tile = scoreTile_.data() + lane;
                        size_t r = span.first;
                        for (; r + 2 <= span.end; r += 2)
                            sumRuns<kChunks, 2>(&valueRuns_[r], taps, count, tile + (r - span.first) * tileRun, tileRun,
                                accumulated);
                        if (r < span.end)
                            sumRuns<kChunks, 1>(&valueRuns_[r], taps, count, tile + (r - span.first) * tileRun, tileRun,
                                accumulated);
                    },
                    [&](int32_t p0, int32_t lanes) { loadTile(span, p0, lanes); }, [](int32_t, int32_t) {});
                continue;
            }
            forEachPixel(b0, y0, rows, span.group, [&](int32_t p, int32_t, PointTap const* taps, int32_t count) {
                float* accumulated = accumulated_.data() + static_cast<size_t>(p) * s_.channels - s_.channels;
                for (size_t r = span.first; r < span.end; ++r)
                {
                    ChannelRun const& run = valueRuns_[r];
                    float const* weights = scores + run.head * headStride + p;
                    float* accumulatedRun = accumulated + run.start;
                    std::fill(accumulatedRun, accumulatedRun + run.length, 0.f);
                    for (int32_t t = 0; t < count; ++t)
                    {
                        float const weight = weights[taps[t].point * stride];
                        for (int32_t c = 0; c < run.length; ++c)
                            accumulatedRun[c] += weight * taps[t].sample(run.inGroup + c);
                    }
                }
            }, [](int32_t, int32_t) {}, [](int32_t, int32_t) {});
        }
    }

    // Writes to tile[r * tileRun + point * kLanes] the dot products of kRuns runs r of queries with
    // their keys at each tap, runs of kChunks Float8. Each tap's corners are read once for all kRuns
    // runs; eight taps' products are summed across lanes together.
    template <int32_t kChunks, int32_t kRuns>
    static void scoreRuns(ChannelRun const* runs, float const* query, PointTap const* taps, int32_t count,
        float* tile, size_t tileRun)
    {
        Float8 queryChunks[kRuns][kChunks];
        for (int32_t r = 0; r < kRuns; ++r)
            for (int32_t j = 0; j < kChunks; ++j)
                queryChunks[r][j] = load8(query + runs[r].start + 8 * j);
        for (int32_t first = 0; first < count; first += 8)
        {
            int32_t const batch = std::min(8, count - first);
            Float8 partials[kRuns][8] = {};
            for (int32_t i = 0; i < batch; ++i)
            {
                PointTap const& tap = taps[first + i];
                for (int32_t r = 0; r < kRuns; ++r)
                {
                    partials[r][i] = queryChunks[r][0] * tap.sample8(runs[r].inGroup);
                    for (int32_t j = 1; j < kChunks; ++j)
                        partials[r][i] += queryChunks[r][j] * tap.sample8(runs[r].inGroup + 8 * j);
                }
            }
            for (int32_t r = 0; r < kRuns; ++r)
            {
                Float8 const dots = laneSums(partials[r]);
                for (int32_t i = 0; i < batch; ++i)
                    tile[r * tileRun + taps[first + i].point * kLanes] = dots[i];
            }
        }
    }

    // Writes the outputs of kRuns value runs (kChunks Float8 each) at one pixel: the sum over taps
    // of softmax weight (tile[r * tileRun + point * kLanes]) times sampled values, in registers,
    // each tap's corners read once.
    template <int32_t kChunks, int32_t kRuns>
    static void sumRuns(ChannelRun const* runs, PointTap const* taps, int32_t count, float const* tile,
        size_t tileRun, float* accumulated)
    {
        Float8 sums[kRuns][kChunks] = {};
        for (int32_t t = 0; t < count; ++t)
        {
            for (int32_t r = 0; r < kRuns; ++r)
            {
                float const weight = tile[r * tileRun + taps[t].point * kLanes];
                for (int32_t j = 0; j < kChunks; ++j)
                    sums[r][j] += weight * taps[t].sample8(runs[r].inGroup + 8 * j);
            }
        }
        for (int32_t r = 0; r < kRuns; ++r)
            for (int32_t j = 0; j < kChunks; ++j)
                store8(accumulated + runs[r].start + 8 * j, sums[r][j]);
    }

    GdaShape const& s_;
    Layout const& layout_;
    float const* kv_;
    float const* offset_;
    std::vector<ChannelRun> const& keyRuns_;
    std::vector<ChannelRun> const& valueRuns_;
    std::vector<GroupSpan> keySpans_;
    std::vector<GroupSpan> valueSpans_;
    size_t blockPixels_;
    std::vector<float> query_;
    std::vector<float> accumulated_;
    std::vector<float> scores_;
    std::vector<PointTap> taps_;
    std::vector<float> scoreTile_;
    int32_t tapCounts_[kLanes];
    int32_t vectorLength_;
};

void forward(GdaShape const& s, Layout const& layout, float const* offset, int32_t threads)
{
    int64_t const plane = s.plane();
    int32_t const groupChannels = s.groupChannels();
    std::unique_ptr<float[]> kvGroupMajor(new float[static_cast<size_t>(s.frames) * plane * 2 * s.channels]);
    float* kvGroups = kvGroupMajor.get();
    // The 2C kv channels are (G, groupChannels) -> (frame, G, H, W, groupChannels): each group's
    // samples read contiguous channels from one compact plane. One (frame, row) per item; a group
    // is copied as its runs of keys and of values (two when groupChannels does not divide C).
    parallelFor(s.frames * s.height, threads, [&]() {
        return [&](int32_t item) {
            int32_t const f = item / s.height;
            int64_t const rowStart = static_cast<int64_t>(item % s.height) * s.width;
            for (int32_t g = 0; g < s.groups; ++g)
            {
                int64_t const groupPlane = static_cast<int64_t>(f) * s.groups + g;
                float* target = kvGroups + (groupPlane * plane + rowStart) * groupChannels;
                int32_t const groupEnd = (g + 1) * groupChannels;
                for (int32_t c = g * groupChannels; c < groupEnd;)
                {
                    bool const isValue = c >= s.channels;
                    int32_t const end = isValue ? groupEnd : std::min(groupEnd, s.channels);
                    int32_t const channel = isValue ? c - s.channels : c;
                    float const* frame = (isValue ? layout.values : layout.keys) + f * layout.kvFrameStride;
                    float* runTarget = target + (c - g * groupChannels);
                    if (layout.channelsLast)
                        for (int32_t x = 0; x < s.width; ++x)
                            memcpy(runTarget + static_cast<int64_t>(x) * groupChannels,
                                frame + (rowStart + x) * s.channels + channel, sizeof(float) * (end - c));
                    else
                        transpose(frame + channel * plane + rowStart, plane, end - c, s.width, runTarget, groupChannels,
                            1.f);
                    c = end;
                }
            }
        };
    });
    std::vector<ChannelRun> const keyRuns = channelRuns(s, 0);
    std::vector<ChannelRun> const valueRuns = channelRuns(s, 1);
    parallelFor(BlockKernel::items(s), threads,
        [&]() { return BlockKernel(s, layout, kvGroups, offset, keyRuns, valueRuns); });
}

// Runs forward on a validated shape, turning a failure (out of memory) into the C entries' status
// and message.
int32_t runForward(GdaShape const& s, Layout const& layout, float const* offset, int32_t threads, char* error,
    int32_t errorSize)
{
    try
    {
        forward(s, layout, offset, std::max(threads, 1));
    }
    catch (std::exception const& failure)
    {
        if (error != nullptr && errorSize > 0)
            snprintf(error, static_cast<size_t>(errorSize), "GDA CPU kernel failed: %s", failure.what());
        return 1;
    }
    return 0;
}

} // namespace

// All functions return 0 on success; otherwise 1 and a message in error (of errorSize bytes,
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
    int64_t const channelPlanes = static_cast<int64_t>(channels) * s.plane();
    Layout const layout{false, q, kv, kv + channelPlanes, 2 * channelPlanes, out};
    return runForward(s, layout, offset, threads, error, errorSize);
}

// rvrt_gda_cpu_forward_f32 on channels-last tensors: q, k, v and out (frames, H, W, C), k and v the
// key and value halves of the same kv frames; offset as there (frames, offset channels, H, W).
extern "C" int32_t rvrt_gda_cpu_forward_channels_last_f32(float const* q, float const* k, float const* v,
    float const* offset, float* out, int32_t frames, int32_t clip, int32_t channels, int32_t height, int32_t width,
    int32_t kernelH, int32_t kernelW, int32_t padding, int32_t heads, int32_t groups, int32_t threads, char* error,
    int32_t errorSize)
{
    GdaShape const s{frames, clip, channels, height, width, kernelH, kernelW, padding, heads, groups};
    if (reportProblem(rvrt::gda::validateGeometry(s), error, errorSize))
        return 1;
    Layout const layout{true, q, k, v, static_cast<int64_t>(channels) * s.plane(), out};
    return runForward(s, layout, offset, threads, error, errorSize);
}
