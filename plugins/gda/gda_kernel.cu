// The fused GDA kernel: one thread computes one output pixel of one head of one query frame,
// sampling keys and values of every clip frame and window point, scoring them and keeping an
// online softmax, all in registers (gdaOutputPixelHead in gda_math.h). Nothing is staged in
// global memory besides the output.
//
// Thread mapping: the flat thread index runs over (frame, head, y, x) with x fastest. The tensors
// are NCHW, so for a fixed channel consecutive x are consecutive addresses: a warp's reads of q
// and of the offsets, and its writes of the output, are single coalesced transactions per
// channel. The bilinear gathers from kv are data-dependent; neighbouring pixels mostly carry
// similar offsets (they come from a smooth flow plus a bounded residue), so a warp's corner
// reads land in a few adjacent segments of the same rows. A channel-last layout would make a
// thread's channel loop contiguous instead, but TensorRT hands the plugin linear NCHW, and
// transposing would cost a global-memory pass on each of the three inputs.
#include "gda_kernel.h"

#include <cuda_fp16.h>

namespace rvrt
{
namespace gda
{
namespace
{

// Four resident blocks of 128 threads cap a thread at 128 registers. Without the cap, ptxas
// hoists the gathers of every unrolled channel for latency hiding and runs out of registers
// (255 plus spills at head dim 32); with it, the query and accumulator rows stay in registers
// and enough warps are resident to hide gather latency instead.
constexpr int32_t kThreadsPerBlock = 128;
constexpr int32_t kMinBlocksPerMultiprocessor = 4;
constexpr int64_t kMaxBlocks = 65535;

template <int32_t kCapacity, typename T>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerMultiprocessor) guidedDeformAttentionKernel(GdaShape shape,
    T const* __restrict__ q, T const* __restrict__ kv, T const* __restrict__ offset, T* __restrict__ out,
    int64_t totalThreads)
{
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < totalThreads;
         index += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int32_t const x = static_cast<int32_t>(index % shape.width);
        int64_t rest = index / shape.width;
        int32_t const y = static_cast<int32_t>(rest % shape.height);
        rest /= shape.height;
        int32_t const head = static_cast<int32_t>(rest % shape.heads);
        int32_t const b = static_cast<int32_t>(rest / shape.heads);
        gdaOutputPixelHead<kCapacity>(shape, q, kv, offset, out, b, head, y, x);
    }
}

template <typename T>
cudaError_t launchForType(GdaShape const& shape, void const* q, void const* kv, void const* offset, void* out,
    cudaStream_t stream)
{
    int64_t const totalThreads = static_cast<int64_t>(shape.frames) * shape.heads * shape.plane();
    if (totalThreads == 0)
        return cudaSuccess;
    int64_t const wantedBlocks = (totalThreads + kThreadsPerBlock - 1) / kThreadsPerBlock;
    dim3 const grid(static_cast<unsigned>(wantedBlocks < kMaxBlocks ? wantedBlocks : kMaxBlocks));
    dim3 const block(kThreadsPerBlock);
    auto const* qT = static_cast<T const*>(q);
    auto const* kvT = static_cast<T const*>(kv);
    auto const* offsetT = static_cast<T const*>(offset);
    auto* outT = static_cast<T*>(out);
    switch (headDimCapacity(shape.headDim()))
    {
    case 8:
        guidedDeformAttentionKernel<8, T><<<grid, block, 0, stream>>>(shape, qT, kvT, offsetT, outT, totalThreads);
        break;
    case 16:
        guidedDeformAttentionKernel<16, T><<<grid, block, 0, stream>>>(shape, qT, kvT, offsetT, outT, totalThreads);
        break;
    case 32:
        guidedDeformAttentionKernel<32, T><<<grid, block, 0, stream>>>(shape, qT, kvT, offsetT, outT, totalThreads);
        break;
    default:
        guidedDeformAttentionKernel<64, T><<<grid, block, 0, stream>>>(shape, qT, kvT, offsetT, outT, totalThreads);
        break;
    }
    return cudaGetLastError();
}

} // namespace

cudaError_t launchGuidedDeformAttention(GdaElementType type, GdaShape const& shape, void const* q, void const* kv,
    void const* offset, void* out, cudaStream_t stream) noexcept
{
    if (validateShape(shape) != nullptr)
        return cudaErrorInvalidValue;
    switch (type)
    {
    case GdaElementType::kFloat32: return launchForType<float>(shape, q, kv, offset, out, stream);
    case GdaElementType::kFloat16: return launchForType<__half>(shape, q, kv, offset, out, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace gda
} // namespace rvrt
