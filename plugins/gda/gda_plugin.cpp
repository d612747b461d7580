#include "gda_plugin.h"

#include "gda_kernel.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>

namespace rvrt
{
namespace gda
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;
using Severity = nvinfer1::ILogger::Severity;

constexpr int32_t kNbInputs = 3;
constexpr int32_t kNbOutputs = 1;
constexpr int32_t kMessageSize = 512;

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

char const* const kAttributeNames[kAttributeCount] = {"kernel_h", "kernel_w", "padding", "heads", "groups", "clip"};

int32_t* attributeSlot(GdaAttributes& attributes, int32_t index)
{
    int32_t* const slots[kAttributeCount] = {&attributes.kernelH, &attributes.kernelW, &attributes.padding,
        &attributes.heads, &attributes.groups, &attributes.clip};
    return slots[index];
}

int32_t fail(char const* where, char const* why) noexcept
{
    char message[kMessageSize];
    std::snprintf(message, sizeof(message), "%s::%s %s: %s", kPluginNamespace, kPluginName, where, why);
    logMessage(Severity::kERROR, message);
    return 1;
}

char const* validateAttributes(GdaAttributes const& a)
{
    if (a.kernelH <= 0 || a.kernelW <= 0 || a.padding < 0)
        return "kernel_h and kernel_w must be positive, padding non-negative";
    if (a.heads <= 0 || a.groups <= 0 || a.clip <= 0)
        return "heads, groups and clip must be positive";
    return nullptr;
}

// Full GDA shape from concrete input dims; nullptr or why the dims do not fit the node's contract.
char const* shapeFromDims(GdaAttributes const& a, Dims const& q, Dims const& kv, Dims const& offset, GdaShape& shape)
{
    if (q.nbDims != 5 || kv.nbDims != 5 || offset.nbDims != 4)
        return "expected q (B*clip, 1, C, H, W), kv (B, clip, 2C, H, W), offset (B*clip, clip*G*K*2, H, W)";
    shape = GdaShape{static_cast<int32_t>(q.d[0]), a.clip, static_cast<int32_t>(q.d[2]), static_cast<int32_t>(q.d[3]),
        static_cast<int32_t>(q.d[4]), a.kernelH, a.kernelW, a.padding, a.heads, a.groups};
    if (q.d[1] != 1)
        return "q must have a singleton second dimension";
    if (kv.d[0] * a.clip != q.d[0] || kv.d[1] != a.clip || kv.d[2] != 2 * q.d[2] || kv.d[3] != q.d[3]
        || kv.d[4] != q.d[4])
        return "kv must be (B, clip, 2C, H, W) for q of shape (B*clip, 1, C, H, W)";
    if (offset.d[0] != q.d[0] || offset.d[1] != shape.offsetChannels() || offset.d[2] != q.d[3]
        || offset.d[3] != q.d[4])
        return "offset must be (B*clip, clip*groups*kernel_h*kernel_w*2, H, W)";
    return validateShape(shape);
}

bool isSupportedType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

} // namespace

void logMessage(Severity severity, char const* message) noexcept
{
    nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
    nvinfer1::ILogger* const logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
        logger->log(severity, message);
    else
        std::fprintf(stderr, "%s\n", message);
}

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

GuidedDeformAttentionPlugin::GuidedDeformAttentionPlugin(GdaAttributes const& attributes) noexcept
    : mAttributes(attributes)
{
    for (int32_t i = 0; i < kAttributeCount; ++i)
        mSerializedFields[i] = PluginField(kAttributeNames[i], attributeSlot(mAttributes, i), PluginFieldType::kINT32, 1);
    mSerializedCollection.nbFields = kAttributeCount;
    mSerializedCollection.fields = mSerializedFields.data();
}

nvinfer1::IPluginCapability* GuidedDeformAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* GuidedDeformAttentionPlugin::clone() noexcept
{
    auto* const copy = new (std::nothrow) GuidedDeformAttentionPlugin(mAttributes);
    if (copy == nullptr)
        fail("clone", "out of host memory");
    return copy;
}

char const* GuidedDeformAttentionPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* GuidedDeformAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* GuidedDeformAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t GuidedDeformAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        return fail("configurePlugin", "expects 3 inputs (q, kv, offset) and 1 output");
    // Check the profile's largest shapes: dims left as wildcards in desc.dims are known there.
    GdaShape shape{};
    if (char const* why = shapeFromDims(mAttributes, in[0].max, in[1].max, in[2].max, shape))
        return fail("configurePlugin", why);
    return 0;
}

int32_t GuidedDeformAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        return fail("getOutputDataTypes", "expects 3 inputs (q, kv, offset) and 1 output");
    if (!isSupportedType(inputTypes[0]) || inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0])
        return fail("getOutputDataTypes", "q, kv and offset must all be float32 or all float16");
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t GuidedDeformAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /* exprBuilder */) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        return fail("getOutputShapes", "expects 3 inputs (q, kv, offset) and 1 output");
    if (inputs[0].nbDims != 5 || inputs[1].nbDims != 5 || inputs[2].nbDims != 4)
        return fail("getOutputShapes", "q and kv must be 5-D, offset 4-D");
    outputs[0] = inputs[0];
    return 0;
}

bool GuidedDeformAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs)
        return false;
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
        return false;
    return pos == 0 ? isSupportedType(desc.type) : desc.type == inOut[0].desc.type;
}

int32_t GuidedDeformAttentionPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

size_t GuidedDeformAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /* inputs */,
    int32_t /* nbInputs */, nvinfer1::DynamicPluginTensorDesc const* /* outputs */,
    int32_t /* nbOutputs */) const noexcept
{
    return 0;
}

int32_t GuidedDeformAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        return fail("onShapeChange", "expects 3 inputs (q, kv, offset) and 1 output");
    GdaShape shape{};
    if (char const* why = shapeFromDims(mAttributes, in[0].dims, in[1].dims, in[2].dims, shape))
        return fail("onShapeChange", why);
    return 0;
}

int32_t GuidedDeformAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* /* workspace */, cudaStream_t stream) noexcept
{
    // The shape is re-derived from the descriptors: a few integer checks, and no state that a
    // missed onShapeChange could leave stale.
    GdaShape shape{};
    if (char const* why = shapeFromDims(mAttributes, inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims, shape))
        return fail("enqueue", why);
    GdaElementType const type
        = inputDesc[0].type == DataType::kHALF ? GdaElementType::kFloat16 : GdaElementType::kFloat32;
    cudaError_t const status = launchGuidedDeformAttention(type, shape, inputs[0], inputs[1], inputs[2], outputs[0], stream);
    if (status != cudaSuccess)
        return fail("enqueue", cudaGetErrorString(status));
    return 0;
}

nvinfer1::IPluginV3* GuidedDeformAttentionPlugin::attachToContext(
    nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* GuidedDeformAttentionPlugin::getFieldsToSerialize() noexcept
{
    return &mSerializedCollection;
}

GuidedDeformAttentionCreator::GuidedDeformAttentionCreator() noexcept
{
    for (int32_t i = 0; i < kAttributeCount; ++i)
        mFieldNames[i] = PluginField(kAttributeNames[i], nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = kAttributeCount;
    mFieldCollection.fields = mFieldNames.data();
}

nvinfer1::IPluginV3* GuidedDeformAttentionCreator::createPlugin(
    char const* /* name */, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        fail("createPlugin", "no attribute fields given");
        return nullptr;
    }
    GdaAttributes attributes{};
    bool seen[kAttributeCount] = {};
    for (int32_t f = 0; f < fc->nbFields; ++f)
    {
        PluginField const& field = fc->fields[f];
        for (int32_t i = 0; i < kAttributeCount; ++i)
        {
            if (field.name == nullptr || std::strcmp(field.name, kAttributeNames[i]) != 0)
                continue;
            if (field.length != 1 || field.data == nullptr)
            {
                fail("createPlugin", "each attribute must be a single integer");
                return nullptr;
            }
            // The ONNX parser passes INT attributes as kINT32; kINT64 is accepted for hand-built networks.
            if (field.type == PluginFieldType::kINT32)
                *attributeSlot(attributes, i) = *static_cast<int32_t const*>(field.data);
            else if (field.type == PluginFieldType::kINT64)
                *attributeSlot(attributes, i) = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
            else
            {
                fail("createPlugin", "attributes must be of type INT32 or INT64");
                return nullptr;
            }
            seen[i] = true;
        }
    }
    for (int32_t i = 0; i < kAttributeCount; ++i)
    {
        if (!seen[i])
        {
            char why[kMessageSize];
            std::snprintf(why, sizeof(why), "missing attribute %s", kAttributeNames[i]);
            fail("createPlugin", why);
            return nullptr;
        }
    }
    if (char const* why = validateAttributes(attributes))
    {
        fail("createPlugin", why);
        return nullptr;
    }
    auto* const plugin = new (std::nothrow) GuidedDeformAttentionPlugin(attributes);
    if (plugin == nullptr)
        fail("createPlugin", "out of host memory");
    return plugin;
}

nvinfer1::PluginFieldCollection const* GuidedDeformAttentionCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* GuidedDeformAttentionCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* GuidedDeformAttentionCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* GuidedDeformAttentionCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

GuidedDeformAttentionCreator& pluginCreator() noexcept
{
    static GuidedDeformAttentionCreator creator;
    return creator;
}

} // namespace gda
} // namespace rvrt
