// TensorRT IPluginV3 implementation of the ONNX node rvrt::GuidedDeformAttention (version 1):
// inputs q (B*clip, 1, C, H, W), kv (B, clip, 2C, H, W), offset (B*clip, clip*groups*kh*kw*2, H, W);
// one output shaped like q; int attributes kernel_h, kernel_w, padding, heads, groups, clip.
// Every method is noexcept and reports failure by return code and the TensorRT logger.
#pragma once

#include "gda_math.h"

#include <NvInferRuntime.h>

#include <array>

namespace rvrt
{
namespace gda
{

constexpr char const* kPluginName = "GuidedDeformAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "rvrt";

// Attribute order of the ONNX node; both the creator's field list and serialization use it.
constexpr int32_t kAttributeCount = 6;

struct GdaAttributes
{
    int32_t kernelH;
    int32_t kernelW;
    int32_t padding;
    int32_t heads;
    int32_t groups;
    int32_t clip;
};

// Logs through the logger TensorRT handed over with setLoggerFinder, else to stderr (a library
// loaded by ctypes only, before any TensorRT object exists).
void logMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept;
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

class GuidedDeformAttentionPlugin final : public nvinfer1::IPluginV3,
                                          public nvinfer1::IPluginV3OneCore,
                                          public nvinfer1::IPluginV3OneBuild,
                                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit GuidedDeformAttentionPlugin(GdaAttributes const& attributes) noexcept;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    GdaAttributes mAttributes;
    // Fixed arrays: nothing here allocates, so no method can throw.
    std::array<nvinfer1::PluginField, kAttributeCount> mSerializedFields;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

class GuidedDeformAttentionCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    GuidedDeformAttentionCreator() noexcept;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::array<nvinfer1::PluginField, kAttributeCount> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// The library's single creator, shared by both ways of registering it.
GuidedDeformAttentionCreator& pluginCreator() noexcept;

} // namespace gda
} // namespace rvrt
